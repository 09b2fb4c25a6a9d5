//! SenML CBOR (Content-Format 112; RFC 8428 §6, OMA LwM2M Core 1.2 §7.4, SenML CBOR): a CBOR array
//! of maps with the integer labels bn=-2, bt=-3, n=0, v=2, vs=3, vb=4, t=6, vd=8 and the
//! text label "vlo" for object links. Containers are definite or indefinite length; a
//! value field must be a scalar, so nesting is at most two levels.

use minicbor::data::Type;
use minicbor::{Decoder, Encoder};

use crate::content::cbor::{WriteError, encode_with, read_value, write_value};
use crate::content::senml::{RawRecord, SenmlRecord, resolve};
use crate::content::{CodecError, MAX_RECORDS, too_many_records};
use crate::value::{ObjectLink, Value};

const FORMAT: &str = "SenML CBOR";
const BASE_NAME: i64 = -2;
const BASE_TIME: i64 = -3;
const NAME: i64 = 0;
const VALUE: i64 = 2;
const STRING_VALUE: i64 = 3;
const BOOLEAN_VALUE: i64 = 4;
const TIME: i64 = 6;
const DATA_VALUE: i64 = 8;
const OBJLNK_LABEL: &str = "vlo";

/// Writes records as a SenML CBOR array.
pub fn encode(records: &[RawRecord]) -> Result<Vec<u8>, CodecError> {
    encode_with(records.len() * 16, |encoder| {
        encoder.array(records.len() as u64)?;
        records
            .iter()
            .try_for_each(|record| write_record(encoder, record))
    })
}

fn write_record(encoder: &mut Encoder<Vec<u8>>, record: &RawRecord) -> Result<(), WriteError> {
    let fields = [
        record.base_name.is_some(),
        record.base_time.is_some(),
        record.name.is_some(),
        record.time.is_some(),
        record.value.is_some(),
    ];
    encoder.map(fields.iter().filter(|f| **f).count() as u64)?;
    if let Some(bn) = &record.base_name {
        encoder.i64(BASE_NAME)?.str(bn)?;
    }
    if let Some(bt) = record.base_time {
        encoder.i64(BASE_TIME)?;
        write_value(encoder, &Value::Float(bt))?;
    }
    if let Some(n) = &record.name {
        encoder.i64(NAME)?.str(n)?;
    }
    if let Some(t) = record.time {
        encoder.i64(TIME)?;
        write_value(encoder, &Value::Float(t))?;
    }
    if let Some(value) = &record.value {
        match value {
            Value::Integer(_) | Value::Time(_) | Value::UnsignedInteger(_) | Value::Float(_) => {
                encoder.i64(VALUE)?
            }
            Value::String(_) | Value::Corelnk(_) => encoder.i64(STRING_VALUE)?,
            Value::Boolean(_) => encoder.i64(BOOLEAN_VALUE)?,
            Value::Opaque(_) => encoder.i64(DATA_VALUE)?,
            Value::Objlnk(_) => encoder.str(OBJLNK_LABEL)?,
        };
        write_value(encoder, value)?;
    }
    Ok(())
}

/// Parses and resolves a SenML CBOR payload.
pub fn decode(payload: &[u8]) -> Result<Vec<SenmlRecord>, CodecError> {
    resolve(decode_raw(payload)?, FORMAT)
}

fn cbor_error(at: usize) -> impl Fn(minicbor::decode::Error) -> CodecError {
    move |e| CodecError::malformed(FORMAT, e.to_string(), at)
}

/// Reads a container header; `None` for indefinite length.
fn container_len(decoder: &mut Decoder, map: bool) -> Result<Option<u64>, CodecError> {
    let at = decoder.position();
    if map { decoder.map() } else { decoder.array() }.map_err(cbor_error(at))
}

/// Is there another item in a container of `len` (indefinite: until a break)?
fn has_next(decoder: &mut Decoder, len: Option<u64>, read: u64) -> Result<bool, CodecError> {
    match len {
        Some(len) => Ok(read < len),
        None => {
            let at = decoder.position();
            if decoder.datatype().map_err(cbor_error(at))? == Type::Break {
                decoder.set_position(at + 1);
                Ok(false)
            } else {
                Ok(true)
            }
        }
    }
}

/// Parses a SenML CBOR payload without resolving names.
pub fn decode_raw(payload: &[u8]) -> Result<Vec<RawRecord>, CodecError> {
    let mut decoder = Decoder::new(payload);
    let len = container_len(&mut decoder, false)?;
    let mut records = Vec::new();
    let mut index = 0u64;
    while has_next(&mut decoder, len, index)? {
        if records.len() == MAX_RECORDS {
            return Err(too_many_records(FORMAT, decoder.position()));
        }
        records.push(record(&mut decoder, index as usize)?);
        index += 1;
    }
    if decoder.position() != payload.len() {
        return Err(CodecError::malformed(
            FORMAT,
            "trailing bytes after the array",
            decoder.position(),
        ));
    }
    Ok(records)
}

enum Label<'a> {
    Int(i64),
    Text(&'a str),
}

fn record(decoder: &mut Decoder, index: usize) -> Result<RawRecord, CodecError> {
    let bad = |what: String| CodecError::Record {
        format: FORMAT,
        index,
        what,
    };
    let len = container_len(decoder, true)?;
    let mut record = RawRecord::default();
    let mut read = 0u64;
    while has_next(decoder, len, read)? {
        read += 1;
        let at = decoder.position();
        let label = match decoder.datatype().map_err(cbor_error(at))? {
            Type::String => Label::Text(decoder.str().map_err(cbor_error(at))?),
            _ => Label::Int(decoder.int().map_err(cbor_error(at)).and_then(|i| {
                i64::try_from(i)
                    .map_err(|_| CodecError::malformed(FORMAT, "label out of range", at))
            })?),
        };
        let value_at = decoder.position();
        let value = read_value(decoder, FORMAT)?;
        let kind = |expected: &str| bad(format!("field at byte {value_at} is not {expected}"));
        let value = match (label, value) {
            (Label::Int(BASE_NAME), Value::String(s)) => {
                record.base_name = Some(s);
                continue;
            }
            (Label::Int(NAME), Value::String(s)) => {
                record.name = Some(s);
                continue;
            }
            (Label::Int(BASE_TIME), v) => {
                record.base_time = Some(as_f64(&v).ok_or_else(|| kind("a number"))?);
                continue;
            }
            (Label::Int(TIME), v) => {
                record.time = Some(as_f64(&v).ok_or_else(|| kind("a number"))?);
                continue;
            }
            (
                Label::Int(VALUE),
                v @ (Value::Integer(_)
                | Value::UnsignedInteger(_)
                | Value::Float(_)
                | Value::Time(_)),
            ) => v,
            (Label::Int(STRING_VALUE), v @ Value::String(_)) => v,
            (Label::Int(BOOLEAN_VALUE), v @ Value::Boolean(_)) => v,
            (Label::Int(DATA_VALUE), v @ Value::Opaque(_)) => v,
            (Label::Text(OBJLNK_LABEL), Value::String(s)) => {
                Value::Objlnk(ObjectLink::parse(&s).ok_or_else(|| kind("an object link"))?)
            }
            (
                Label::Int(BASE_NAME | NAME | VALUE | STRING_VALUE | BOOLEAN_VALUE | DATA_VALUE),
                _,
            )
            | (Label::Text(OBJLNK_LABEL), _) => return Err(kind("of the type its label requires")),
            _ => continue,
        };
        if record.value.replace(value).is_some() {
            return Err(bad("more than one value field".into()));
        }
    }
    Ok(record)
}

fn as_f64(value: &Value) -> Option<f64> {
    match value {
        Value::Integer(v) | Value::Time(v) => Some(*v as f64),
        Value::UnsignedInteger(v) => Some(*v as f64),
        Value::Float(v) => Some(*v),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::path::LwM2mPath;
    use proptest::prelude::*;

    #[test]
    fn decodes_indefinite_containers_and_unknown_labels() {
        let payload = [
            0x9f, // indefinite array
            0xbf, // indefinite map
            0x21, 0x66, b'/', b'3', b'/', b'0', b'/', b'0', // bn: "/3/0/0"
            0x02, 0x18, 0x64, // v: 100
            0x17, 0x00, // unknown label 23: 0
            0xff, 0xff,
        ];
        let records = decode(&payload).expect("valid");
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].path, LwM2mPath::Resource(3, 0, 0));
        assert_eq!(records[0].value, Some(Value::Integer(100)));
    }

    /// The shape small embedded clients emit: base name on the first record only, the
    /// name relative to it, floats always as 8-byte doubles, object links under "vlo".
    #[test]
    fn decodes_the_embedded_client_shape() {
        let mut payload = vec![0x82, 0xa3, 0x21, 0x68];
        payload.extend_from_slice(b"/3303/0/");
        payload.extend_from_slice(&[0x00, 0x64]);
        payload.extend_from_slice(b"5700");
        payload.extend_from_slice(&[0x02, 0xfb, 0x40, 0x35, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00]);
        payload.extend_from_slice(&[0xa2, 0x00, 0x64]);
        payload.extend_from_slice(b"5750");
        payload.extend_from_slice(&[0x63]);
        payload.extend_from_slice(b"vlo");
        payload.extend_from_slice(&[0x63]);
        payload.extend_from_slice(b"3:0");
        let records = decode(&payload).expect("valid");
        assert_eq!(records[0].path, LwM2mPath::Resource(3303, 0, 5700));
        assert_eq!(records[0].value, Some(Value::Float(21.5)));
        assert_eq!(records[1].path, LwM2mPath::Resource(3303, 0, 5750));
        assert_eq!(
            records[1].value,
            Some(Value::Objlnk(ObjectLink {
                object_id: 3,
                instance_id: 0
            }))
        );
    }

    #[test]
    fn rejects_mistyped_fields_and_nested_values() {
        let wrong_type = [
            0x81, 0xa2, 0x00, 0x66, b'/', b'3', b'/', b'0', b'/', b'0', 0x03, 0x01,
        ];
        assert!(matches!(
            decode(&wrong_type),
            Err(CodecError::Record { index: 0, .. })
        ));
        let nested = [0x81, 0xa1, 0x02, 0x81, 0x01];
        assert!(matches!(
            decode(&nested),
            Err(CodecError::Malformed { at: 3, .. })
        ));
        let huge = [0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        assert!(decode(&huge).is_err());
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = decode(&bytes);
        }
    }
}
