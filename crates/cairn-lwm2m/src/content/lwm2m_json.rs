//! LwM2M JSON (Content-Format 11543, legacy 1543; OMA LwM2M Core 1.1 §7.4, JSON; the
//! JSON format of LwM2M 1.0): `{"bn":"/3/0/","e":[{"n":"0","sv":"..."}]}` with value
//! fields `v` (number), `sv` (string, Base64 for opaque), `bv` (boolean), `ov` (object
//! link) and optional `bt`/`t` times.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::Number;

use crate::content::CodecError;
use crate::content::senml::join_name;
use crate::content::senml_json::{BoundedVec, json_number, number, parse_json, write_json_string};
use crate::path::LwM2mPath;
use crate::value::{ObjectLink, Value};

const FORMAT: &str = "LwM2M JSON";
const MAX_NAME_LEN: usize = 64;

/// Encodes the records of the node at `path`, names relative to `path`.
pub fn encode(path: &LwM2mPath, records: &[(LwM2mPath, Value)]) -> Result<Vec<u8>, CodecError> {
    // A single value is named by its full path; several by names relative to "path/".
    let single = matches!(records, [(record_path, _)] if record_path == path);
    let base = if single {
        path.to_string()
    } else if path.is_root() {
        "/".to_owned()
    } else {
        format!("{path}/")
    };
    let mut out = String::with_capacity(16 + records.len() * 24);
    out.push_str("{\"bn\":");
    write_json_string(&mut out, &base);
    out.push_str(",\"e\":[");
    for (index, (record_path, value)) in records.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        let full = record_path.to_string();
        let relative = full.get(base.len()..).unwrap_or_default();
        out.push_str("{\"n\":");
        write_json_string(&mut out, relative);
        match value {
            Value::Integer(v) | Value::Time(v) => out.push_str(&format!(",\"v\":{v}")),
            Value::UnsignedInteger(v) => out.push_str(&format!(",\"v\":{v}")),
            Value::Float(v) => out.push_str(&format!(",\"v\":{}", number(*v)?)),
            Value::Boolean(v) => out.push_str(if *v { ",\"bv\":true" } else { ",\"bv\":false" }),
            Value::Objlnk(link) => {
                out.push_str(",\"ov\":");
                write_json_string(&mut out, &link.to_string());
            }
            other => {
                out.push_str(",\"sv\":");
                write_json_string(&mut out, &other.to_text());
            }
        }
        out.push('}');
    }
    out.push_str("]}");
    Ok(out.into_bytes())
}

#[derive(Deserialize)]
struct JsonDocument<'a> {
    #[serde(borrow, default)]
    bn: Option<Cow<'a, str>>,
    #[serde(borrow)]
    e: BoundedVec<JsonEntry<'a>>,
}

#[derive(Deserialize)]
struct JsonEntry<'a> {
    #[serde(borrow, default)]
    n: Option<Cow<'a, str>>,
    #[serde(default)]
    v: Option<Number>,
    #[serde(borrow, default)]
    sv: Option<Cow<'a, str>>,
    #[serde(default)]
    bv: Option<bool>,
    #[serde(borrow, default)]
    ov: Option<Cow<'a, str>>,
}

/// Decodes an LwM2M JSON payload as (path, value) records.
pub fn decode(payload: &[u8]) -> Result<Vec<(LwM2mPath, Value)>, CodecError> {
    let document: JsonDocument = parse_json(payload, FORMAT)?;
    let base = document.bn.as_deref().unwrap_or("");
    document
        .e
        .0
        .into_iter()
        .enumerate()
        .map(|(index, entry)| record(base, index, entry))
        .collect()
}

fn record(base: &str, index: usize, entry: JsonEntry) -> Result<(LwM2mPath, Value), CodecError> {
    let bad = |what: String| CodecError::Record {
        format: FORMAT,
        index,
        what,
    };
    let name = entry.n.as_deref().unwrap_or("");
    if base.len() + name.len() > MAX_NAME_LEN {
        return Err(bad(format!(
            "name of {} bytes is too long for a path",
            base.len() + name.len()
        )));
    }
    let segments = base.split('/').chain(name.split('/'));
    let path = LwM2mPath::parse_segments(segments, true).map_err(|source| CodecError::Path {
        name: join_name(base, name),
        source,
    })?;
    let mut values = Vec::with_capacity(1);
    values.extend(entry.v.as_ref().map(json_number));
    values.extend(entry.sv.map(|s| Value::String(s.into_owned())));
    values.extend(entry.bv.map(Value::Boolean));
    if let Some(text) = entry.ov {
        let link = ObjectLink::parse(&text)
            .ok_or_else(|| bad("field \"ov\" is not an object link".into()))?;
        values.push(Value::Objlnk(link));
    }
    if values.len() > 1 {
        return Err(bad("more than one value field".into()));
    }
    let value = values
        .pop()
        .ok_or_else(|| bad(format!("no value for {path}")))?;
    Ok((path, value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn decodes_resource_level_and_links() {
        let payload = br#"{"bn":"/3/0/7/","e":[{"n":"0","v":3800},{"n":"1","v":5000}]}"#;
        let records = decode(payload).expect("valid");
        assert_eq!(
            records[1],
            (
                LwM2mPath::ResourceInstance(3, 0, 7, 1),
                Value::Integer(5000)
            )
        );
        let links = br#"{"e":[{"n":"/66/0/0","ov":"3:0"}]}"#;
        let records = decode(links).expect("valid");
        assert_eq!(
            records[0].1,
            Value::Objlnk(ObjectLink {
                object_id: 3,
                instance_id: 0
            })
        );
    }

    #[test]
    fn names_concatenate_to_the_full_path() {
        let single = [(LwM2mPath::Resource(3, 0, 9), Value::Integer(87))];
        let text = encode(&LwM2mPath::Resource(3, 0, 9), &single).map(String::from_utf8);
        assert_eq!(
            text,
            Ok(Ok(r#"{"bn":"/3/0/9","e":[{"n":"","v":87}]}"#.to_owned()))
        );
        let multiple = [(LwM2mPath::ResourceInstance(3, 0, 7, 0), Value::Integer(1))];
        let text = encode(&LwM2mPath::Resource(3, 0, 7), &multiple).map(String::from_utf8);
        assert_eq!(
            text,
            Ok(Ok(r#"{"bn":"/3/0/7/","e":[{"n":"0","v":1}]}"#.to_owned()))
        );
    }

    #[test]
    fn errors_say_what_and_where() {
        assert!(matches!(
            decode(br#"{"bn":"/3/0/"}"#),
            Err(CodecError::Malformed { .. })
        ));
        assert!(matches!(
            decode(br#"{"bn":"/3/0/","e":[{"n":"0","v":1},{"n":"1"}]}"#),
            Err(CodecError::Record { index: 1, .. })
        ));
        assert!(matches!(
            decode(br#"{"bn":"/3/0/","e":[{"n":"x","v":1}]}"#),
            Err(CodecError::Path { .. })
        ));
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = decode(&bytes);
        }
    }
}
