//! SenML JSON (Content-Format 110; RFC 8428 §5, OMA LwM2M Core 1.2 §7.4, SenML JSON): a JSON array
//! of records; LwM2M adds `vlo` for object links, opaque values are base64url in `vd`.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use std::borrow::Cow;

use core::fmt;
use core::marker::PhantomData;

use serde::de::{Error as _, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::Number;

use crate::content::senml::{RawRecord, SenmlRecord, resolve};
use crate::content::{CodecError, MAX_RECORDS};
use crate::value::{ObjectLink, Value, format_float};

const FORMAT: &str = "SenML JSON";

/// Writes records as a SenML JSON array.
pub fn encode(records: &[RawRecord]) -> Result<Vec<u8>, CodecError> {
    let mut out = String::with_capacity(records.len() * 32);
    out.push('[');
    for (index, record) in records.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        out.push('{');
        let mut fields = Fields {
            out: &mut out,
            first: true,
        };
        if let Some(bn) = &record.base_name {
            fields.string("bn", bn);
        }
        if let Some(bt) = record.base_time {
            fields.raw("bt", &number(bt)?);
        }
        if let Some(n) = &record.name {
            fields.string("n", n);
        }
        if let Some(t) = record.time {
            fields.raw("t", &number(t)?);
        }
        match &record.value {
            None => {}
            Some(Value::Integer(v) | Value::Time(v)) => fields.raw("v", &v.to_string()),
            Some(Value::UnsignedInteger(v)) => fields.raw("v", &v.to_string()),
            Some(Value::Float(v)) => fields.raw("v", &number(*v)?),
            Some(Value::Boolean(v)) => fields.raw("vb", if *v { "true" } else { "false" }),
            Some(Value::String(s) | Value::Corelnk(s)) => fields.string("vs", s),
            Some(Value::Opaque(bytes)) => fields.string("vd", &URL_SAFE_NO_PAD.encode(bytes)),
            Some(Value::Objlnk(link)) => fields.string("vlo", &link.to_string()),
        }
        out.push('}');
    }
    out.push(']');
    Ok(out.into_bytes())
}

struct Fields<'a> {
    out: &'a mut String,
    first: bool,
}

impl Fields<'_> {
    fn key(&mut self, key: &str) {
        if !self.first {
            self.out.push(',');
        }
        self.first = false;
        self.out.push('"');
        self.out.push_str(key);
        self.out.push_str("\":");
    }

    fn raw(&mut self, key: &str, value: &str) {
        self.key(key);
        self.out.push_str(value);
    }

    fn string(&mut self, key: &str, value: &str) {
        self.key(key);
        write_json_string(self.out, value);
    }
}

/// A finite float as a JSON number.
pub(crate) fn number(v: f64) -> Result<String, CodecError> {
    if v.is_finite() {
        Ok(format_float(v))
    } else {
        Err(CodecError::unsupported(
            "JSON",
            format!("the non-finite number {v}"),
        ))
    }
}

/// Appends `value` as a JSON string literal.
pub(crate) fn write_json_string(out: &mut String, value: &str) {
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Parses JSON into `T`, turning serde_json's line and column into a byte offset.
pub(crate) fn parse_json<'a, T: Deserialize<'a>>(
    payload: &'a [u8],
    format: &'static str,
) -> Result<T, CodecError> {
    serde_json::from_slice(payload).map_err(|e| {
        let offset: usize = payload
            .split(|b| *b == b'\n')
            .take(e.line().saturating_sub(1))
            .map(|line| line.len() + 1)
            .sum::<usize>()
            + e.column().saturating_sub(1);
        CodecError::malformed(format, e.to_string(), offset)
    })
}

/// Parses and resolves a SenML JSON payload.
pub fn decode(payload: &[u8]) -> Result<Vec<SenmlRecord>, CodecError> {
    resolve(decode_raw(payload)?, FORMAT)
}

/// A JSON array of at most [`MAX_RECORDS`] elements; deserialization stops at the first
/// element past the limit.
pub(crate) struct BoundedVec<T>(pub Vec<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for BoundedVec<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Elements<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for Elements<T> {
            type Value = BoundedVec<T>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "an array of at most {MAX_RECORDS} records")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<BoundedVec<T>, A::Error> {
                let mut elements = Vec::new();
                while let Some(element) = seq.next_element()? {
                    if elements.len() == MAX_RECORDS {
                        return Err(A::Error::custom(format!("more than {MAX_RECORDS} records")));
                    }
                    elements.push(element);
                }
                Ok(BoundedVec(elements))
            }
        }

        deserializer.deserialize_seq(Elements(PhantomData))
    }
}

/// One record as it appears in the JSON array; strings are borrowed unless escaped.
#[derive(Deserialize)]
struct JsonRecord<'a> {
    #[serde(borrow, default)]
    bn: Option<Cow<'a, str>>,
    #[serde(default)]
    bt: Option<f64>,
    #[serde(borrow, default)]
    n: Option<Cow<'a, str>>,
    #[serde(default)]
    t: Option<f64>,
    #[serde(default)]
    v: Option<Number>,
    #[serde(borrow, default)]
    vs: Option<Cow<'a, str>>,
    #[serde(default)]
    vb: Option<bool>,
    #[serde(borrow, default)]
    vd: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    vlo: Option<Cow<'a, str>>,
}

/// Parses a SenML JSON payload without resolving names.
pub fn decode_raw(payload: &[u8]) -> Result<Vec<RawRecord>, CodecError> {
    let BoundedVec(records): BoundedVec<JsonRecord> = parse_json(payload, FORMAT)?;
    records
        .into_iter()
        .enumerate()
        .map(|(index, record)| raw_record(index, record))
        .collect()
}

fn raw_record(index: usize, record: JsonRecord) -> Result<RawRecord, CodecError> {
    let bad = |what: &str| CodecError::Record {
        format: FORMAT,
        index,
        what: what.to_owned(),
    };
    let mut values = Vec::with_capacity(1);
    values.extend(record.v.as_ref().map(json_number));
    values.extend(record.vs.map(|s| Value::String(s.into_owned())));
    values.extend(record.vb.map(Value::Boolean));
    if let Some(text) = record.vd {
        values.push(Value::Opaque(
            decode_base64(&text).ok_or_else(|| bad("field \"vd\" is not base64"))?,
        ));
    }
    if let Some(text) = record.vlo {
        let link =
            ObjectLink::parse(&text).ok_or_else(|| bad("field \"vlo\" is not an object link"))?;
        values.push(Value::Objlnk(link));
    }
    if values.len() > 1 {
        return Err(bad("more than one value field"));
    }
    Ok(RawRecord {
        base_name: record.bn.map(Cow::into_owned),
        base_time: record.bt,
        name: record.n.map(Cow::into_owned),
        time: record.t,
        value: values.pop(),
    })
}

/// A JSON number as Integer, UnsignedInteger (above i64::MAX) or Float.
pub(crate) fn json_number(number: &Number) -> Value {
    if let Some(v) = number.as_i64() {
        Value::Integer(v)
    } else if let Some(v) = number.as_u64() {
        Value::UnsignedInteger(v)
    } else {
        Value::Float(number.as_f64().unwrap_or(f64::NAN))
    }
}

/// base64url without padding (RFC 8428 §4.3), also accepting padded and standard
/// alphabets as some clients send them.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let trimmed = text.trim_end_matches('=');
    URL_SAFE_NO_PAD
        .decode(trimmed)
        .ok()
        .or_else(|| STANDARD.decode(text).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::path::LwM2mPath;
    use proptest::prelude::*;

    #[test]
    fn parses_third_party_forms() {
        let payload = br#"[{"bn":"/3/0","n":"/0","vs":"ACME"},{"n":"6/0","v":1},
            {"bn":"/","n":"1/0/1","v":18446744073709551615},{"n":"/5/0/0","vd":"AQID"},
            {"n":"/5/0/9","vlo":"3:0"},{"n":"/3/0/4"},
            {"bn":"/3303/0/5700","bt":1.6e9,"v":21.5},{"n":"","t":10,"v":22}]"#;
        let records = decode(payload).expect("valid");
        assert_eq!(records[0].path, LwM2mPath::Resource(3, 0, 0));
        assert_eq!(records[1].path, LwM2mPath::ResourceInstance(3, 0, 6, 0));
        assert_eq!(records[2].value, Some(Value::UnsignedInteger(u64::MAX)));
        assert_eq!(records[2].path, LwM2mPath::Resource(1, 0, 1));
        assert_eq!(records[3].value, Some(Value::Opaque(vec![1, 2, 3])));
        assert_eq!(
            records[4].value,
            Some(Value::Objlnk(ObjectLink {
                object_id: 3,
                instance_id: 0
            }))
        );
        assert_eq!(records[5].value, None);
        assert_eq!(records[6].time, Some(1.6e9));
        assert_eq!(records[7].time, Some(1.6e9 + 10.0));
        assert_eq!(records[7].path, LwM2mPath::Resource(3303, 0, 5700));
    }

    #[test]
    fn errors_say_where() {
        assert!(matches!(
            decode(b"[{\"n\":\"/3/0/0\",}]"),
            Err(CodecError::Malformed { at: 15, .. })
        ));
        assert!(matches!(
            decode(br#"[{"n":"/3/0/0","v":1},{"n":"/3/0/1","v":"x"}]"#),
            Err(CodecError::Malformed { at: 40..=44, .. })
        ));
        assert!(matches!(
            decode(br#"[{"n":"/3/0/0","v":1},{"n":"/3/0/1","vd":"*"}]"#),
            Err(CodecError::Record { index: 1, .. })
        ));
        assert!(matches!(
            decode(br#"[{"n":"/3/0/0","v":1,"vs":"x"}]"#),
            Err(CodecError::Record { index: 0, .. })
        ));
        assert!(decode(b"{}").is_err());
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(decode(deep.as_bytes()).is_err());
    }

    #[test]
    fn record_count_is_bounded() {
        let at_limit = format!("[{}{{}}]", "{},".repeat(MAX_RECORDS - 1));
        assert_eq!(
            decode_raw(at_limit.as_bytes()).map(|r| r.len()),
            Ok(MAX_RECORDS)
        );
        let over = format!("[{}{{}}]", "{},".repeat(MAX_RECORDS));
        assert!(matches!(
            decode_raw(over.as_bytes()),
            Err(CodecError::Malformed { .. })
        ));
    }

    #[test]
    fn strings_are_escaped() {
        let record = RawRecord {
            name: Some("/3/0/0".into()),
            value: Some(Value::String("a\"b\\c\n\u{1}".into())),
            ..Default::default()
        };
        let bytes = encode(std::slice::from_ref(&record)).expect("encodes");
        assert_eq!(decode_raw(&bytes), Ok(vec![record]));
        assert!(
            encode(&[RawRecord {
                value: Some(Value::Float(f64::NAN)),
                ..Default::default()
            }])
            .is_err()
        );
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn never_panics_on_json_like_text(text in r#"[\[\]{}":,0-9a-z/ .-]{0,80}"#) {
            let _ = decode(text.as_bytes());
        }
    }
}
