//! Attributes (OMA LwM2M Core 1.2, "Attributes" of the object model):
//! the notification attributes pmin, pmax, gt, lt, st, epmin, epmax, edge, con and hqmax
//! that Write-Attributes sets, and the properties dim, ver, ssid and uri that Discover
//! reports. Parsed from Uri-Query strings (`pmin=10`, `pmin` alone unsets) and link-format
//! parameters, written back to both, and validated against the rules the specification gives for them.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use thiserror::Error;

use crate::model::{ResourceModel, Version};
use crate::path::LwM2mPath;
use crate::value::ResourceType;

/// An attribute name.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub enum AttributeName {
    /// Dimension: number of instances of a multiple-instance resource (property).
    Dim,
    /// Short server id (property, LwM2M 1.1).
    Ssid,
    /// Server URI (property, LwM2M 1.1).
    Uri,
    /// Object version (property).
    Ver,
    /// Minimum period, seconds.
    Pmin,
    /// Maximum period, seconds.
    Pmax,
    /// Greater than.
    Gt,
    /// Less than.
    Lt,
    /// Step.
    St,
    /// Minimum evaluation period, seconds (1.1).
    Epmin,
    /// Maximum evaluation period, seconds (1.1).
    Epmax,
    /// Edge: notify on a boolean's rising (1) or falling (0) edge (1.2).
    Edge,
    /// Confirmable notifications (1.2).
    Con,
    /// Maximum historical queue (1.2).
    Hqmax,
}

impl AttributeName {
    /// Every attribute, in the order they are written.
    pub const ALL: [AttributeName; 14] = [
        AttributeName::Dim,
        AttributeName::Ssid,
        AttributeName::Uri,
        AttributeName::Ver,
        AttributeName::Pmin,
        AttributeName::Pmax,
        AttributeName::Gt,
        AttributeName::Lt,
        AttributeName::St,
        AttributeName::Epmin,
        AttributeName::Epmax,
        AttributeName::Edge,
        AttributeName::Con,
        AttributeName::Hqmax,
    ];

    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            AttributeName::Dim => "dim",
            AttributeName::Ssid => "ssid",
            AttributeName::Uri => "uri",
            AttributeName::Ver => "ver",
            AttributeName::Pmin => "pmin",
            AttributeName::Pmax => "pmax",
            AttributeName::Gt => "gt",
            AttributeName::Lt => "lt",
            AttributeName::St => "st",
            AttributeName::Epmin => "epmin",
            AttributeName::Epmax => "epmax",
            AttributeName::Edge => "edge",
            AttributeName::Con => "con",
            AttributeName::Hqmax => "hqmax",
        }
    }

    /// Can Write-Attributes set it (notification attributes), or is it a property
    /// reported by Discover?
    pub fn is_writable(self) -> bool {
        !matches!(
            self,
            AttributeName::Dim | AttributeName::Ssid | AttributeName::Uri | AttributeName::Ver
        )
    }
}

impl FromStr for AttributeName {
    type Err = AttributeError;

    fn from_str(text: &str) -> Result<Self, AttributeError> {
        AttributeName::ALL
            .into_iter()
            .find(|n| n.as_str() == text)
            .ok_or_else(|| AttributeError::Unknown(text.chars().take(32).collect()))
    }
}

impl fmt::Display for AttributeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An attribute value, typed by its name.
#[derive(Clone, PartialEq, Debug)]
pub enum AttributeValue {
    /// pmin, pmax, epmin, epmax, hqmax, dim, ssid.
    Unsigned(u64),
    /// gt, lt, st.
    Float(f64),
    /// edge, con.
    Boolean(bool),
    /// ver.
    Version(Version),
    /// uri.
    Text(String),
}

impl fmt::Display for AttributeValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttributeValue::Unsigned(v) => write!(f, "{v}"),
            AttributeValue::Float(v) => write!(f, "{v}"),
            AttributeValue::Boolean(v) => f.write_str(if *v { "1" } else { "0" }),
            AttributeValue::Version(v) => write!(f, "{v}"),
            AttributeValue::Text(v) => f.write_str(v),
        }
    }
}

/// Why attributes were refused.
#[derive(Debug, Error, PartialEq, Eq, Clone)]
pub enum AttributeError {
    /// Not an LwM2M attribute.
    #[error("unknown attribute {0:?}")]
    Unknown(String),
    /// The value does not fit the attribute's type.
    #[error("attribute {name}: {value:?} is not {expected}")]
    BadValue {
        /// Attribute.
        name: AttributeName,
        /// Offending text (truncated).
        value: String,
        /// Expected form.
        expected: &'static str,
    },
    /// The same attribute given twice.
    #[error("attribute {0} given twice")]
    Duplicate(AttributeName),
    /// A rule of the specification is broken.
    #[error("{0}")]
    Rule(String),
    /// The attribute does not apply at this level or to this resource.
    #[error("attribute {name} does not apply to {path}: {why}")]
    NotApplicable {
        /// Attribute.
        name: AttributeName,
        /// Target path.
        path: LwM2mPath,
        /// Why.
        why: &'static str,
    },
}

/// A set of attributes; a name mapped to `None` is "unset" (a query `pmin` without value).
#[derive(Clone, PartialEq, Debug, Default)]
pub struct AttributeSet {
    entries: BTreeMap<AttributeName, Option<AttributeValue>>,
}

impl AttributeSet {
    /// An empty set.
    pub fn new() -> AttributeSet {
        AttributeSet::default()
    }

    /// Sets an attribute (builder style); the value is not checked against the name.
    pub fn with(mut self, name: AttributeName, value: AttributeValue) -> AttributeSet {
        self.entries.insert(name, Some(value));
        self
    }

    /// Marks an attribute as unset (builder style).
    pub fn with_unset(mut self, name: AttributeName) -> AttributeSet {
        self.entries.insert(name, None);
        self
    }

    /// The value of an attribute, if set.
    pub fn get(&self, name: AttributeName) -> Option<&AttributeValue> {
        self.entries.get(&name).and_then(Option::as_ref)
    }

    /// Every entry; `None` values are unsets.
    pub fn iter(&self) -> impl Iterator<Item = (AttributeName, Option<&AttributeValue>)> {
        self.entries.iter().map(|(n, v)| (*n, v.as_ref()))
    }

    /// Is the set empty?
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn unsigned(&self, name: AttributeName) -> Option<u64> {
        match self.get(name) {
            Some(AttributeValue::Unsigned(v)) => Some(*v),
            _ => None,
        }
    }

    fn float(&self, name: AttributeName) -> Option<f64> {
        match self.get(name) {
            Some(AttributeValue::Float(v)) => Some(*v),
            _ => None,
        }
    }

    /// Parses one `name=value` (or bare `name`) pair.
    pub fn parse_pair(
        name: &str,
        value: Option<&str>,
    ) -> Result<(AttributeName, Option<AttributeValue>), AttributeError> {
        let name: AttributeName = name.parse()?;
        let Some(text) = value else {
            return Ok((name, None));
        };
        let bad = |expected| AttributeError::BadValue {
            name,
            value: text.chars().take(32).collect(),
            expected,
        };
        let value = match name {
            AttributeName::Pmin
            | AttributeName::Pmax
            | AttributeName::Epmin
            | AttributeName::Epmax
            | AttributeName::Hqmax
            | AttributeName::Dim
            | AttributeName::Ssid => {
                if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad("an unsigned integer"));
                }
                AttributeValue::Unsigned(text.parse().map_err(|_| bad("an unsigned integer"))?)
            }
            AttributeName::Gt | AttributeName::Lt | AttributeName::St => {
                let valid = !text.is_empty()
                    && text.bytes().all(|b| {
                        b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E')
                    });
                let v: f64 = if valid {
                    text.parse().map_err(|_| bad("a number"))?
                } else {
                    return Err(bad("a number"));
                };
                AttributeValue::Float(v)
            }
            AttributeName::Edge | AttributeName::Con => match text {
                "0" => AttributeValue::Boolean(false),
                "1" => AttributeValue::Boolean(true),
                _ => return Err(bad("0 or 1")),
            },
            AttributeName::Ver => {
                AttributeValue::Version(text.parse().map_err(|_| bad("a major.minor version"))?)
            }
            AttributeName::Uri => AttributeValue::Text(text.to_owned()),
        };
        Ok((name, Some(value)))
    }

    /// Parses Uri-Query options of a Write-Attributes request (`pmin=10`, `gt=30.5`,
    /// `pmax` to unset).
    pub fn from_queries<S: AsRef<str>>(queries: &[S]) -> Result<AttributeSet, AttributeError> {
        let mut set = AttributeSet::new();
        for query in queries {
            let query = query.as_ref();
            let (name, value) = match query.split_once('=') {
                Some((name, value)) => (name, Some(value)),
                None => (query, None),
            };
            let (name, value) = AttributeSet::parse_pair(name, value)?;
            if set.entries.insert(name, value).is_some() {
                return Err(AttributeError::Duplicate(name));
            }
        }
        Ok(set)
    }

    /// Reads the attributes of a link (Discover output), ignoring link parameters that
    /// are not LwM2M attributes.
    pub fn from_link_params(
        params: &[(String, Option<String>)],
    ) -> Result<AttributeSet, AttributeError> {
        let mut set = AttributeSet::new();
        for (name, value) in params {
            if name.parse::<AttributeName>().is_err() {
                continue;
            }
            let (name, value) = AttributeSet::parse_pair(name, value.as_deref())?;
            if set.entries.insert(name, value).is_some() {
                return Err(AttributeError::Duplicate(name));
            }
        }
        Ok(set)
    }

    /// The Uri-Query options that express this set.
    pub fn to_queries(&self) -> Vec<String> {
        self.iter()
            .map(|(name, value)| match value {
                Some(value) => format!("{name}={value}"),
                None => name.to_string(),
            })
            .collect()
    }

    /// The link parameters that express the set values (unsets are not written).
    pub fn to_link_params(&self) -> Vec<(String, Option<String>)> {
        self.iter()
            .filter_map(|(name, value)| value.map(|v| (name.to_string(), Some(v.to_string()))))
            .collect()
    }

    /// Applies a Write-Attributes update: set values replace, unsets remove.
    pub fn apply(&mut self, update: &AttributeSet) {
        for (name, value) in &update.entries {
            match value {
                Some(value) => {
                    self.entries.insert(*name, Some(value.clone()));
                }
                None => {
                    self.entries.remove(name);
                }
            }
        }
    }

    /// Checks the specification's rules for a Write-Attributes at `path`: only writable
    /// attributes; gt/lt/st only on a numeric resource (or resource instance); edge only on
    /// a boolean resource; pmin ≤ pmax, epmin ≤ epmax; lt < gt and lt + 2·st < gt; st > 0.
    pub fn validate_write(
        &self,
        path: &LwM2mPath,
        resource: Option<&ResourceModel>,
    ) -> Result<(), AttributeError> {
        for (name, _) in self.iter() {
            let not_applicable = |why| AttributeError::NotApplicable {
                name,
                path: *path,
                why,
            };
            if !name.is_writable() {
                return Err(not_applicable(
                    "it is a property, not a notification attribute",
                ));
            }
            if path.is_root() {
                return Err(not_applicable("attributes cannot be written on the root"));
            }
            let numeric_or_edge = matches!(
                name,
                AttributeName::Gt | AttributeName::Lt | AttributeName::St | AttributeName::Edge
            );
            if numeric_or_edge && path.depth() < 3 {
                return Err(not_applicable("it applies to resources only"));
            }
            if let (true, Some(model)) = (numeric_or_edge, resource) {
                let numeric = matches!(
                    model.resource_type,
                    ResourceType::Integer | ResourceType::UnsignedInteger | ResourceType::Float
                );
                if name == AttributeName::Edge && model.resource_type != ResourceType::Boolean {
                    return Err(not_applicable("edge applies to boolean resources"));
                }
                if name != AttributeName::Edge && !numeric {
                    return Err(not_applicable("gt, lt and st apply to numeric resources"));
                }
            }
        }
        self.check_rules()
    }

    fn check_rules(&self) -> Result<(), AttributeError> {
        use AttributeName::*;
        if let (Some(pmin), Some(pmax)) = (self.unsigned(Pmin), self.unsigned(Pmax)) {
            if pmin > pmax {
                return Err(AttributeError::Rule(format!(
                    "pmin {pmin} is greater than pmax {pmax}"
                )));
            }
        }
        if let (Some(epmin), Some(epmax)) = (self.unsigned(Epmin), self.unsigned(Epmax)) {
            if epmin > epmax {
                return Err(AttributeError::Rule(format!(
                    "epmin {epmin} is greater than epmax {epmax}"
                )));
            }
        }
        let st = self.float(St);
        if let Some(st) = st {
            if st.is_nan() || st <= 0.0 {
                return Err(AttributeError::Rule(format!("st {st} is not positive")));
            }
        }
        if let (Some(lt), Some(gt)) = (self.float(Lt), self.float(Gt)) {
            if lt >= gt {
                return Err(AttributeError::Rule(format!(
                    "lt {lt} is not less than gt {gt}"
                )));
            }
            let step = st.unwrap_or(0.0);
            if lt + 2.0 * step >= gt {
                return Err(AttributeError::Rule(format!(
                    "lt {lt} + 2 × st {step} is not less than gt {gt}"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::ModelRegistry;
    use proptest::prelude::*;

    #[test]
    fn parses_queries_and_writes_them_back() {
        let set = AttributeSet::from_queries(&[
            "pmin=10", "pmax=60", "gt=30.5", "lt=10", "st=2", "epmin", "con=1",
        ])
        .expect("valid");
        assert_eq!(
            set.get(AttributeName::Pmin),
            Some(&AttributeValue::Unsigned(10))
        );
        assert_eq!(
            set.get(AttributeName::Gt),
            Some(&AttributeValue::Float(30.5))
        );
        assert_eq!(set.get(AttributeName::Epmin), None);
        assert_eq!(
            set.get(AttributeName::Con),
            Some(&AttributeValue::Boolean(true))
        );
        assert_eq!(
            AttributeSet::from_queries(&set.to_queries()),
            Ok(set.clone())
        );
        assert_eq!(
            set.to_queries(),
            [
                "pmin=10", "pmax=60", "gt=30.5", "lt=10", "st=2", "epmin", "con=1"
            ]
        );
    }

    #[test]
    fn rejects_bad_values() {
        assert!(matches!(
            AttributeSet::from_queries(&["pmin=-1"]),
            Err(AttributeError::BadValue { .. })
        ));
        assert!(matches!(
            AttributeSet::from_queries(&["gt=abc"]),
            Err(AttributeError::BadValue { .. })
        ));
        assert!(matches!(
            AttributeSet::from_queries(&["edge=2"]),
            Err(AttributeError::BadValue { .. })
        ));
        assert!(matches!(
            AttributeSet::from_queries(&["foo=1"]),
            Err(AttributeError::Unknown(_))
        ));
        assert!(matches!(
            AttributeSet::from_queries(&["pmin=1", "pmin=2"]),
            Err(AttributeError::Duplicate(_))
        ));
    }

    #[test]
    fn enforces_the_attribute_rules() {
        let models = ModelRegistry::with_core_models();
        let battery = crate::model::ModelLookup::resource(&models, 3, 9);
        let path = LwM2mPath::Resource(3, 0, 9);
        let ok = AttributeSet::from_queries(&["gt=50", "lt=10", "st=5"]).expect("valid");
        assert_eq!(ok.validate_write(&path, battery), Ok(()));
        let cases: [&[&str]; 6] = [
            &["gt=20", "lt=10", "st=5"],
            &["gt=10", "lt=10"],
            &["pmin=60", "pmax=10"],
            &["epmin=60", "epmax=10"],
            &["st=0"],
            &["st=-1"],
        ];
        for queries in cases {
            let set = AttributeSet::from_queries(queries).expect("parses");
            assert!(
                matches!(
                    set.validate_write(&path, battery),
                    Err(AttributeError::Rule(_))
                ),
                "{queries:?}"
            );
        }
        let manufacturer = crate::model::ModelLookup::resource(&models, 3, 0);
        let gt = AttributeSet::from_queries(&["gt=1"]).expect("parses");
        assert!(
            gt.validate_write(&LwM2mPath::Resource(3, 0, 0), manufacturer)
                .is_err()
        );
        assert!(
            gt.validate_write(&LwM2mPath::ObjectInstance(3, 0), None)
                .is_err()
        );
        let dim = AttributeSet::from_queries(&["dim=2"]).expect("parses");
        assert!(
            dim.validate_write(&LwM2mPath::Resource(3, 0, 7), None)
                .is_err()
        );
    }

    #[test]
    fn apply_sets_and_unsets() {
        let mut current = AttributeSet::from_queries(&["pmin=10", "pmax=60"]).expect("valid");
        current.apply(&AttributeSet::from_queries(&["pmin", "gt=5"]).expect("valid"));
        assert_eq!(current.to_queries(), ["pmax=60", "gt=5"]);
    }

    fn attribute_strategy() -> impl Strategy<Value = (AttributeName, Option<AttributeValue>)> {
        let value = prop_oneof![
            (0usize..7, any::<u32>()).prop_map(|(i, v)| {
                let names = [
                    AttributeName::Pmin,
                    AttributeName::Pmax,
                    AttributeName::Epmin,
                    AttributeName::Epmax,
                    AttributeName::Hqmax,
                    AttributeName::Dim,
                    AttributeName::Ssid,
                ];
                (names[i], AttributeValue::Unsigned(u64::from(v)))
            }),
            (0usize..3, -1e6f64..1e6).prop_map(|(i, v)| {
                let names = [AttributeName::Gt, AttributeName::Lt, AttributeName::St];
                (names[i], AttributeValue::Float(v))
            }),
            (any::<bool>(), any::<bool>()).prop_map(|(edge, v)| {
                let name = if edge {
                    AttributeName::Edge
                } else {
                    AttributeName::Con
                };
                (name, AttributeValue::Boolean(v))
            }),
            (any::<u8>(), any::<u8>()).prop_map(|(major, minor)| (
                AttributeName::Ver,
                AttributeValue::Version(Version::new(major, minor))
            )),
        ];
        (value, any::<bool>()).prop_map(|((name, value), unset)| (name, (!unset).then_some(value)))
    }

    proptest! {
        #[test]
        fn queries_round_trip(entries in proptest::collection::vec(attribute_strategy(), 0..8)) {
            let mut set = AttributeSet::new();
            for (name, value) in entries {
                set = match value {
                    Some(value) => set.with(name, value),
                    None => set.with_unset(name),
                };
            }
            prop_assert_eq!(AttributeSet::from_queries(&set.to_queries()), Ok(set.clone()));
            let params = set.to_link_params();
            let values_only = AttributeSet::from_link_params(&params).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(values_only.iter().all(|(name, value)| value == set.get(name)));
        }

        #[test]
        fn never_panics(queries in proptest::collection::vec("[a-z]{0,6}(=[-+.0-9a-z]{0,8})?", 0..6)) {
            if let Ok(set) = AttributeSet::from_queries(&queries) {
                let _ = set.validate_write(&LwM2mPath::Resource(3, 0, 9), None);
            }
        }
    }
}
