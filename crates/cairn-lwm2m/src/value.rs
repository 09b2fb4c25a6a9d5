//! Resource values and their data types (OMA LwM2M Core 1.2 Appendix C "Data Types"):
//! String, Integer, Unsigned Integer, Float, Boolean, Opaque, Time, Objlnk, Corelnk and
//! none (executable resources), with the text representation of the Plain Text format (Core §7.4).

use core::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use thiserror::Error;

/// The data type of a resource, as a DDF file's `<Type>` names it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum ResourceType {
    /// UTF-8 string.
    String,
    /// Signed integer (up to 64 bits).
    Integer,
    /// Unsigned integer (up to 64 bits), LwM2M 1.1.
    UnsignedInteger,
    /// IEEE 754 float (32 or 64 bits on the wire).
    Float,
    /// Boolean.
    Boolean,
    /// Byte sequence.
    Opaque,
    /// Seconds since the Unix epoch, signed.
    Time,
    /// Object link `object:instance`.
    Objlnk,
    /// CoRE link (RFC 6690) as a string, LwM2M 1.1.
    Corelnk,
    /// No value: the type of executable resources.
    None,
}

impl ResourceType {
    /// Reads a DDF `<Type>` element; an empty element is [`ResourceType::None`].
    pub fn from_ddf(text: &str) -> Option<ResourceType> {
        let normalized: String = text
            .chars()
            .filter(|c| !c.is_whitespace())
            .map(|c| c.to_ascii_lowercase())
            .collect();
        Some(match normalized.as_str() {
            "string" => ResourceType::String,
            "integer" => ResourceType::Integer,
            "unsignedinteger" => ResourceType::UnsignedInteger,
            "float" => ResourceType::Float,
            "boolean" => ResourceType::Boolean,
            "opaque" => ResourceType::Opaque,
            "time" => ResourceType::Time,
            "objlnk" => ResourceType::Objlnk,
            "corelnk" => ResourceType::Corelnk,
            "" | "none" => ResourceType::None,
            _ => return None,
        })
    }

    /// The name a DDF file uses for this type.
    pub fn ddf_name(self) -> &'static str {
        match self {
            ResourceType::String => "String",
            ResourceType::Integer => "Integer",
            ResourceType::UnsignedInteger => "Unsigned Integer",
            ResourceType::Float => "Float",
            ResourceType::Boolean => "Boolean",
            ResourceType::Opaque => "Opaque",
            ResourceType::Time => "Time",
            ResourceType::Objlnk => "Objlnk",
            ResourceType::Corelnk => "Corelnk",
            ResourceType::None => "",
        }
    }
}

/// An object link (Appendix C): the object and instance it points to; `65535:65535` is
/// the null link.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct ObjectLink {
    /// Object identifier.
    pub object_id: u16,
    /// Object instance identifier.
    pub instance_id: u16,
}

impl ObjectLink {
    /// The null object link.
    pub const NULL: ObjectLink = ObjectLink {
        object_id: 65535,
        instance_id: 65535,
    };

    /// Parses `object:instance`.
    pub fn parse(text: &str) -> Option<ObjectLink> {
        let (object, instance) = text.split_once(':')?;
        Some(ObjectLink {
            object_id: parse_u16(object)?,
            instance_id: parse_u16(instance)?,
        })
    }
}

fn parse_u16(text: &str) -> Option<u16> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

impl fmt::Display for ObjectLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.object_id, self.instance_id)
    }
}

/// A resource value.
#[derive(Clone, PartialEq, Debug)]
pub enum Value {
    /// String.
    String(String),
    /// Signed integer.
    Integer(i64),
    /// Unsigned integer.
    UnsignedInteger(u64),
    /// Float.
    Float(f64),
    /// Boolean.
    Boolean(bool),
    /// Opaque bytes.
    Opaque(Vec<u8>),
    /// Time, seconds since the Unix epoch.
    Time(i64),
    /// Object link.
    Objlnk(ObjectLink),
    /// CoRE link, kept as text.
    Corelnk(String),
}

/// A value that does not fit the type asked for.
#[derive(Debug, Error, PartialEq, Eq, Clone)]
#[error("{text:?} is not a valid {expected:?} value")]
pub struct ValueError {
    /// The type that was expected.
    pub expected: ResourceType,
    /// The offending value, as text (truncated to 64 characters).
    pub text: String,
}

impl ValueError {
    pub(crate) fn new(expected: ResourceType, text: &str) -> ValueError {
        ValueError {
            expected,
            text: text.chars().take(64).collect(),
        }
    }
}

impl Value {
    /// The data type of this value.
    pub fn resource_type(&self) -> ResourceType {
        match self {
            Value::String(_) => ResourceType::String,
            Value::Integer(_) => ResourceType::Integer,
            Value::UnsignedInteger(_) => ResourceType::UnsignedInteger,
            Value::Float(_) => ResourceType::Float,
            Value::Boolean(_) => ResourceType::Boolean,
            Value::Opaque(_) => ResourceType::Opaque,
            Value::Time(_) => ResourceType::Time,
            Value::Objlnk(_) => ResourceType::Objlnk,
            Value::Corelnk(_) => ResourceType::Corelnk,
        }
    }

    /// The text/plain representation (Core §7.4, Plain Text): decimal numbers, `0`/`1` booleans,
    /// `o:i` links and Base64 for opaque values.
    pub fn to_text(&self) -> String {
        match self {
            Value::String(s) | Value::Corelnk(s) => s.clone(),
            Value::Integer(v) | Value::Time(v) => v.to_string(),
            Value::UnsignedInteger(v) => v.to_string(),
            Value::Float(v) => format_float(*v),
            Value::Boolean(v) => if *v { "1" } else { "0" }.to_owned(),
            Value::Opaque(bytes) => STANDARD.encode(bytes),
            Value::Objlnk(link) => link.to_string(),
        }
    }

    /// Parses the text/plain representation of a value of type `ty`.
    pub fn from_text(text: &str, ty: ResourceType) -> Result<Value, ValueError> {
        let err = || ValueError::new(ty, text);
        let trimmed = text.trim();
        Ok(match ty {
            ResourceType::String => Value::String(text.to_owned()),
            ResourceType::Corelnk => Value::Corelnk(text.to_owned()),
            ResourceType::Integer => Value::Integer(trimmed.parse().map_err(|_| err())?),
            ResourceType::Time => Value::Time(trimmed.parse().map_err(|_| err())?),
            ResourceType::UnsignedInteger => {
                Value::UnsignedInteger(trimmed.parse().map_err(|_| err())?)
            }
            ResourceType::Float => Value::Float(parse_float(trimmed).ok_or_else(err)?),
            ResourceType::Boolean => match trimmed {
                "1" | "true" => Value::Boolean(true),
                "0" | "false" => Value::Boolean(false),
                _ => return Err(err()),
            },
            ResourceType::Opaque => Value::Opaque(STANDARD.decode(trimmed).map_err(|_| err())?),
            ResourceType::Objlnk => Value::Objlnk(ObjectLink::parse(trimmed).ok_or_else(err)?),
            ResourceType::None => return Err(err()),
        })
    }

    /// Converts a value decoded without knowing its type to `ty` (numbers between the
    /// numeric types when lossless, strings to links, Base64 strings to opaque).
    pub fn convert(self, ty: ResourceType) -> Result<Value, ValueError> {
        if self.resource_type() == ty {
            return Ok(self);
        }
        let fail = |value: &Value| ValueError::new(ty, &value.to_text());
        let converted = match (&self, ty) {
            (Value::Integer(v) | Value::Time(v), ResourceType::Integer) => Some(Value::Integer(*v)),
            (Value::Integer(v) | Value::Time(v), ResourceType::Time) => Some(Value::Time(*v)),
            (Value::Integer(v) | Value::Time(v), ResourceType::UnsignedInteger) => {
                u64::try_from(*v).ok().map(Value::UnsignedInteger)
            }
            (Value::Integer(v) | Value::Time(v), ResourceType::Float) => {
                exact_float(*v as f64, *v as i128).map(Value::Float)
            }
            (Value::UnsignedInteger(v), ResourceType::Integer) => {
                i64::try_from(*v).ok().map(Value::Integer)
            }
            (Value::UnsignedInteger(v), ResourceType::Time) => {
                i64::try_from(*v).ok().map(Value::Time)
            }
            (Value::UnsignedInteger(v), ResourceType::Float) => {
                exact_float(*v as f64, i128::from(*v)).map(Value::Float)
            }
            (Value::Float(v), ResourceType::Integer) => float_to_int(*v).map(Value::Integer),
            (Value::Float(v), ResourceType::Time) => float_to_int(*v).map(Value::Time),
            (Value::Float(v), ResourceType::UnsignedInteger) => float_to_int(*v)
                .and_then(|i| u64::try_from(i).ok())
                .map(Value::UnsignedInteger),
            (Value::String(s), ResourceType::Objlnk) => ObjectLink::parse(s).map(Value::Objlnk),
            (Value::String(s), ResourceType::Corelnk) => Some(Value::Corelnk(s.clone())),
            (Value::Corelnk(s), ResourceType::String) => Some(Value::String(s.clone())),
            (Value::String(s), ResourceType::Opaque) => STANDARD.decode(s).ok().map(Value::Opaque),
            _ => None,
        };
        converted.ok_or_else(|| fail(&self))
    }
}

fn exact_float(float: f64, exact: i128) -> Option<f64> {
    (float as i128 == exact).then_some(float)
}

fn float_to_int(v: f64) -> Option<i64> {
    const LIMIT: f64 = 9_223_372_036_854_775_808.0;
    (v.fract() == 0.0 && (-LIMIT..LIMIT).contains(&v)).then_some(v as i64)
}

/// Formats a float so that it parses back to the same value and reads as a number in
/// every LwM2M text format (no `inf`/`NaN` text is produced for finite values).
pub(crate) fn format_float(v: f64) -> String {
    let text = format!("{v:?}");
    if text.contains('e') || text.contains('.') || !v.is_finite() {
        text
    } else {
        format!("{text}.0")
    }
}

fn parse_float(text: &str) -> Option<f64> {
    let valid = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E'));
    if valid { text.parse().ok() } else { None }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ddf_type_names() {
        for ty in [
            ResourceType::String,
            ResourceType::Integer,
            ResourceType::UnsignedInteger,
            ResourceType::Float,
            ResourceType::Boolean,
            ResourceType::Opaque,
            ResourceType::Time,
            ResourceType::Objlnk,
            ResourceType::Corelnk,
            ResourceType::None,
        ] {
            assert_eq!(ResourceType::from_ddf(ty.ddf_name()), Some(ty));
        }
        assert_eq!(
            ResourceType::from_ddf("unsigned integer"),
            Some(ResourceType::UnsignedInteger)
        );
        assert_eq!(ResourceType::from_ddf("Double"), None);
    }

    #[test]
    fn text_representation() {
        let cases = [
            (Value::Integer(-42), "-42"),
            (Value::Float(1.5), "1.5"),
            (Value::Float(3.0), "3.0"),
            (Value::Boolean(true), "1"),
            (Value::Opaque(vec![0x01, 0x02, 0xff]), "AQL/"),
            (
                Value::Objlnk(ObjectLink {
                    object_id: 3,
                    instance_id: 0,
                }),
                "3:0",
            ),
            (Value::Time(1_700_000_000), "1700000000"),
        ];
        for (value, text) in cases {
            assert_eq!(value.to_text(), text);
            assert_eq!(Value::from_text(text, value.resource_type()), Ok(value));
        }
        assert!(Value::from_text("12a", ResourceType::Integer).is_err());
        assert!(Value::from_text("2", ResourceType::Boolean).is_err());
        assert!(Value::from_text("3:", ResourceType::Objlnk).is_err());
        assert!(Value::from_text("inf", ResourceType::Float).is_err());
    }

    #[test]
    fn conversions() {
        assert_eq!(
            Value::Integer(5).convert(ResourceType::Float),
            Ok(Value::Float(5.0))
        );
        assert_eq!(
            Value::Float(5.0).convert(ResourceType::Integer),
            Ok(Value::Integer(5))
        );
        assert!(Value::Float(5.5).convert(ResourceType::Integer).is_err());
        assert!(
            Value::Integer(-1)
                .convert(ResourceType::UnsignedInteger)
                .is_err()
        );
        assert!(Value::Float(1e300).convert(ResourceType::Integer).is_err());
        assert_eq!(
            Value::String("3:1".into()).convert(ResourceType::Objlnk),
            Ok(Value::Objlnk(ObjectLink {
                object_id: 3,
                instance_id: 1
            }))
        );
    }

    proptest! {
        #[test]
        fn float_text_round_trips(v in proptest::num::f64::NORMAL | proptest::num::f64::ZERO) {
            prop_assert_eq!(Value::from_text(&Value::Float(v).to_text(), ResourceType::Float), Ok(Value::Float(v)));
        }

        #[test]
        fn from_text_never_panics(text in ".{0,30}") {
            for ty in [ResourceType::Integer, ResourceType::Float, ResourceType::Opaque, ResourceType::Objlnk, ResourceType::Boolean] {
                let _ = Value::from_text(&text, ty);
            }
        }
    }
}
