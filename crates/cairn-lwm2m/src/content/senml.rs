//! The SenML data model shared by SenML JSON (110) and SenML CBOR (112) as LwM2M uses it
//! (RFC 8428 §4, OMA LwM2M Core 1.2 §7.4, SenML JSON and SenML CBOR): base name and base time
//! resolution, the LwM2M value fields (`v`, `vs`, `vb`, `vd`, `vlo`) and the mapping of
//! resolved names to paths.
//!
//! Names are resolved the way real clients write them: `bn` `/3/0/` with `n` `0`, `bn`
//! `/3/0` with `n` `/0` or `0`, a full path in `n`, a base name alone, names without the
//! leading '/'. Several records for the same path (a time series in a Send) are kept in
//! order; [`latest_values`] keeps the newest.

use std::collections::BTreeMap;

use crate::content::CodecError;
use crate::node::LwM2mNode;
use crate::path::LwM2mPath;
use crate::value::Value;

/// Longest resolved name accepted (a path is at most 24 characters).
const MAX_NAME_LEN: usize = 64;

/// A SenML record as written on the wire, before resolution.
#[derive(Clone, PartialEq, Debug, Default)]
pub struct RawRecord {
    /// `bn`
    pub base_name: Option<String>,
    /// `bt`
    pub base_time: Option<f64>,
    /// `n`
    pub name: Option<String>,
    /// `t`
    pub time: Option<f64>,
    /// The value field (`v`, `vs`, `vb`, `vd` or `vlo`), if any.
    pub value: Option<Value>,
}

/// A resolved record: an LwM2M path, its time (base time + time) and its value.
#[derive(Clone, PartialEq, Debug)]
pub struct SenmlRecord {
    /// Resolved path.
    pub path: LwM2mPath,
    /// Resolved time, if any record gave one (RFC 8428: below 2^28 it is relative to now).
    pub time: Option<f64>,
    /// Value, if any (Read-Composite requests carry names only).
    pub value: Option<Value>,
}

/// Resolves base names and base times (RFC 8428 §4.6).
pub fn resolve(raw: Vec<RawRecord>, format: &'static str) -> Result<Vec<SenmlRecord>, CodecError> {
    let mut base_name = String::new();
    let mut base_time: Option<f64> = None;
    let mut out = Vec::with_capacity(raw.len());
    for (index, record) in raw.into_iter().enumerate() {
        if let Some(bn) = record.base_name {
            base_name = bn;
        }
        if let Some(bt) = record.base_time {
            base_time = Some(bt);
        }
        let name = record.name.as_deref().unwrap_or("");
        if base_name.len() + name.len() > MAX_NAME_LEN {
            return Err(CodecError::Record {
                format,
                index,
                what: format!(
                    "name of {} bytes is too long for an LwM2M path",
                    base_name.len() + name.len()
                ),
            });
        }
        let segments = base_name.split('/').chain(name.split('/'));
        let path =
            LwM2mPath::parse_segments(segments, true).map_err(|source| CodecError::Path {
                name: join_name(&base_name, name),
                source,
            })?;
        let time = match (base_time, record.time) {
            (None, None) => None,
            (bt, t) => Some(bt.unwrap_or(0.0) + t.unwrap_or(0.0)),
        };
        out.push(SenmlRecord {
            path,
            time,
            value: record.value,
        });
    }
    Ok(out)
}

/// Concatenates a base name and a name, tolerating the separators clients get wrong.
pub(crate) fn join_name(base: &str, name: &str) -> String {
    let mut joined = String::with_capacity(base.len() + name.len() + 2);
    let absolute = base.starts_with('/') || (base.is_empty() && name.starts_with('/'));
    if !absolute {
        joined.push('/');
    }
    joined.push_str(base);
    if !base.is_empty() && !name.is_empty() && !base.ends_with('/') && !name.starts_with('/') {
        joined.push('/');
    }
    joined.push_str(name);
    while let Some(at) = joined.find("//") {
        joined.remove(at);
    }
    joined
}

/// The newest value of each path (by time, then by order), in path order. A record
/// without a value is an error here: a read response or a write carries values.
pub fn latest_values(records: Vec<SenmlRecord>) -> Result<Vec<(LwM2mPath, Value)>, CodecError> {
    if records.windows(2).all(|pair| pair[0].path < pair[1].path) {
        return records
            .into_iter()
            .enumerate()
            .map(|(index, record)| match record.value {
                Some(value) => Ok((record.path, value)),
                None => Err(no_value(index, &record.path)),
            })
            .collect();
    }
    let mut latest: BTreeMap<LwM2mPath, (Option<f64>, Value)> = BTreeMap::new();
    for (index, record) in records.into_iter().enumerate() {
        let value = record.value.ok_or_else(|| no_value(index, &record.path))?;
        let newer = latest
            .get(&record.path)
            .is_none_or(|(time, _)| record.time.unwrap_or(f64::MIN) >= time.unwrap_or(f64::MIN));
        if newer {
            latest.insert(record.path, (record.time, value));
        }
    }
    Ok(latest
        .into_iter()
        .map(|(path, (_, value))| (path, value))
        .collect())
}

fn no_value(index: usize, path: &LwM2mPath) -> CodecError {
    CodecError::Record {
        format: "SenML",
        index,
        what: format!("no value for {path}"),
    }
}

/// Records for one node. A single value is one record named by its full path as base
/// name; otherwise the first record carries the node's path with a trailing '/' as base
/// name and every record a name relative to it, so that plain concatenation (RFC 8428
/// §4.5.1) gives the full path: `bn` `/3/0/7/` with `n` `0`, never `/3/0/7` with `0`.
pub fn records_for(path: &LwM2mPath, node: &LwM2mNode) -> Vec<RawRecord> {
    let records = node.flatten(path);
    if let [(record_path, value)] = records.as_slice() {
        if record_path == path {
            return vec![RawRecord {
                base_name: Some(path.to_string()),
                value: Some(value.clone()),
                ..Default::default()
            }];
        }
    }
    let base = if path.is_root() {
        "/".to_owned()
    } else {
        format!("{path}/")
    };
    records
        .into_iter()
        .enumerate()
        .map(|(index, (record_path, value))| {
            let full = record_path.to_string();
            RawRecord {
                base_name: (index == 0).then(|| base.clone()),
                name: Some(full.get(base.len()..).unwrap_or_default().to_owned()),
                value: Some(value),
                ..Default::default()
            }
        })
        .collect()
}

/// Records with absolute names (composite payloads).
pub fn absolute_records(records: &[(LwM2mPath, Value)]) -> Vec<RawRecord> {
    records
        .iter()
        .map(|(path, value)| RawRecord {
            name: Some(path.to_string()),
            value: Some(value.clone()),
            ..Default::default()
        })
        .collect()
}

/// Records carrying only names (Read-Composite, Observe-Composite requests).
pub fn name_records(paths: &[LwM2mPath]) -> Vec<RawRecord> {
    paths
        .iter()
        .map(|path| RawRecord {
            name: Some(path.to_string()),
            ..Default::default()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(bn: Option<&str>, n: Option<&str>) -> RawRecord {
        RawRecord {
            base_name: bn.map(str::to_owned),
            name: n.map(str::to_owned),
            value: Some(Value::Integer(1)),
            ..Default::default()
        }
    }

    #[test]
    fn resolves_the_ways_clients_write_names() {
        let cases = [
            (Some("/3/0/"), Some("0"), "/3/0/0"),
            (Some("/3/0"), Some("/0"), "/3/0/0"),
            (Some("/3/0"), Some("0"), "/3/0/0"),
            (Some("/3/0/"), Some("/0"), "/3/0/0"),
            (None, Some("/3/0/0"), "/3/0/0"),
            (None, Some("3/0/0"), "/3/0/0"),
            (Some("/3/0/0"), None, "/3/0/0"),
            (Some("3/0/"), Some("7/1"), "/3/0/7/1"),
            (Some("/"), Some("3/0/7/1"), "/3/0/7/1"),
        ];
        for (bn, n, expected) in cases {
            let records = resolve(vec![raw(bn, n)], "test").expect("resolves");
            assert_eq!(records[0].path.to_string(), expected, "{bn:?} + {n:?}");
        }
    }

    #[test]
    fn base_values_carry_forward() {
        let records = vec![
            RawRecord {
                base_name: Some("/3303/0/".into()),
                base_time: Some(1000.0),
                name: Some("5700".into()),
                time: Some(-10.0),
                value: Some(Value::Float(20.5)),
            },
            RawRecord {
                name: Some("5700".into()),
                value: Some(Value::Float(21.5)),
                ..Default::default()
            },
        ];
        let resolved = resolve(records, "test").expect("resolves");
        assert_eq!(resolved[0].time, Some(990.0));
        assert_eq!(resolved[1].time, Some(1000.0));
        assert_eq!(resolved[1].path, LwM2mPath::Resource(3303, 0, 5700));
        let latest = latest_values(resolved).expect("values");
        assert_eq!(
            latest,
            vec![(LwM2mPath::Resource(3303, 0, 5700), Value::Float(21.5))]
        );
    }

    #[test]
    fn encoded_names_concatenate_to_the_full_path() {
        use crate::node::{LwM2mResource, LwM2mResourceInstance};
        let multiple = LwM2mNode::Resource(LwM2mResource::multiple(7, [(0, Value::Integer(1))]));
        let records = records_for(&LwM2mPath::Resource(3, 0, 7), &multiple);
        assert_eq!(records[0].base_name.as_deref(), Some("/3/0/7/"));
        assert_eq!(records[0].name.as_deref(), Some("0"));
        let single = LwM2mNode::Resource(LwM2mResource::single(9, Value::Integer(1)));
        let records = records_for(&LwM2mPath::Resource(3, 0, 9), &single);
        assert_eq!(
            (records[0].base_name.as_deref(), records[0].name.as_deref()),
            (Some("/3/0/9"), None)
        );
        let instance = LwM2mNode::ResourceInstance(LwM2mResourceInstance {
            id: 1,
            value: Value::Integer(1),
        });
        let records = records_for(&LwM2mPath::ResourceInstance(3, 0, 7, 1), &instance);
        assert_eq!(
            (records[0].base_name.as_deref(), records[0].name.as_deref()),
            (Some("/3/0/7/1"), None)
        );
    }

    #[test]
    fn bad_names_are_reported() {
        let err = resolve(vec![raw(Some("/3/0/"), Some("x"))], "test");
        assert!(matches!(err, Err(CodecError::Path { ref name, .. }) if name == "/3/0/x"));
        let long = "1/".repeat(40);
        assert!(matches!(
            resolve(vec![raw(None, Some(&long))], "test"),
            Err(CodecError::Record { index: 0, .. })
        ));
    }
}
