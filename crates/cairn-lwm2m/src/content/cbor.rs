//! CBOR single values (Content-Format 60, OMA LwM2M Core 1.2 §7.4, CBOR) and the
//! value mapping shared by SenML CBOR and LwM2M CBOR: integers as CBOR integers, floats
//! as the shortest lossless float, booleans, strings as text, opaque as byte strings,
//! time as an integer (tag 1 accepted on input), object links as `"o:i"` text.

use core::convert::Infallible;

use minicbor::data::{Tag, Type};
use minicbor::{Decoder, Encoder};

use crate::content::CodecError;
use crate::value::Value;

const FORMAT: &str = "CBOR";
/// RFC 8949 tag 1: epoch-based date/time.
const EPOCH_TIME: u64 = 1;

/// The error type of an encoder writing to a `Vec`, which cannot fail.
pub(crate) type WriteError = minicbor::encode::Error<Infallible>;

/// Runs `write` on an encoder over a fresh buffer and returns the bytes.
pub(crate) fn encode_with(
    capacity: usize,
    write: impl FnOnce(&mut Encoder<Vec<u8>>) -> Result<(), WriteError>,
) -> Result<Vec<u8>, CodecError> {
    let mut encoder = Encoder::new(Vec::with_capacity(capacity));
    write(&mut encoder).map_err(|e| CodecError::unsupported(FORMAT, e.to_string()))?;
    Ok(encoder.into_writer())
}

/// Encodes one value as a CBOR data item.
pub fn encode_value(value: &Value) -> Result<Vec<u8>, CodecError> {
    encode_with(16, |encoder| write_value(encoder, value))
}

/// Decodes exactly one CBOR data item as a value.
pub fn decode_value(payload: &[u8]) -> Result<Value, CodecError> {
    let mut decoder = Decoder::new(payload);
    let value = read_value(&mut decoder, FORMAT)?;
    if decoder.position() != payload.len() {
        return Err(CodecError::malformed(
            FORMAT,
            "trailing bytes after the value",
            decoder.position(),
        ));
    }
    Ok(value)
}

/// Writes a value.
pub(crate) fn write_value(encoder: &mut Encoder<Vec<u8>>, value: &Value) -> Result<(), WriteError> {
    match value {
        Value::String(s) | Value::Corelnk(s) => encoder.str(s)?,
        Value::Integer(v) | Value::Time(v) => encoder.i64(*v)?,
        Value::UnsignedInteger(v) => encoder.u64(*v)?,
        Value::Float(v) => write_float(encoder, *v)?,
        Value::Boolean(v) => encoder.bool(*v)?,
        Value::Opaque(bytes) => encoder.bytes(bytes)?,
        Value::Objlnk(link) => encoder.str(&link.to_string())?,
    };
    Ok(())
}

/// A float in 4 bytes when that is lossless, in 8 otherwise.
fn write_float(
    encoder: &mut Encoder<Vec<u8>>,
    v: f64,
) -> Result<&mut Encoder<Vec<u8>>, WriteError> {
    let single = v as f32;
    if f64::from(single) == v || v.is_nan() {
        encoder.f32(single)
    } else {
        encoder.f64(v)
    }
}

/// Reads a scalar value: integers become Integer (UnsignedInteger above i64::MAX),
/// tag 1 integers become Time, text becomes String, bytes Opaque.
pub(crate) fn read_value(decoder: &mut Decoder, format: &'static str) -> Result<Value, CodecError> {
    let at = decoder.position();
    let err = |e: minicbor::decode::Error| CodecError::malformed(format, e.to_string(), at);
    let datatype = decoder.datatype().map_err(err)?;
    Ok(match datatype {
        Type::U8
        | Type::U16
        | Type::U32
        | Type::U64
        | Type::I8
        | Type::I16
        | Type::I32
        | Type::I64
        | Type::Int => {
            let int = decoder.int().map_err(err)?;
            match i64::try_from(int) {
                Ok(v) => Value::Integer(v),
                Err(_) => match u64::try_from(int) {
                    Ok(v) => Value::UnsignedInteger(v),
                    Err(_) => {
                        return Err(CodecError::malformed(
                            format,
                            "integer out of 64-bit range",
                            at,
                        ));
                    }
                },
            }
        }
        Type::F16 | Type::F32 | Type::F64 => Value::Float(decoder.f64().map_err(err)?),
        Type::Bool => Value::Boolean(decoder.bool().map_err(err)?),
        Type::String => Value::String(decoder.str().map_err(err)?.to_owned()),
        Type::Bytes => Value::Opaque(decoder.bytes().map_err(err)?.to_vec()),
        Type::Tag => {
            let tag = decoder.tag().map_err(err)?;
            if tag != Tag::new(EPOCH_TIME) {
                return Err(CodecError::malformed(
                    format,
                    format!("unsupported tag {}", tag.as_u64()),
                    at,
                ));
            }
            match read_value(decoder, format)? {
                Value::Integer(v) => Value::Time(v),
                Value::Float(v) if v.fract() == 0.0 && v.abs() < 9.0e18 => Value::Time(v as i64),
                _ => {
                    return Err(CodecError::malformed(
                        format,
                        "tag 1 on a non-numeric value",
                        at,
                    ));
                }
            }
        }
        other => {
            return Err(CodecError::malformed(
                format,
                format!("expected a scalar value, found {other}"),
                at,
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rfc8949_vectors() {
        let cases: [(&[u8], Value); 7] = [
            (&[0x18, 0x64], Value::Integer(100)),
            (&[0x38, 0x63], Value::Integer(-100)),
            (
                &[0x1b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
                Value::UnsignedInteger(u64::MAX),
            ),
            (&[0xf9, 0x3e, 0x00], Value::Float(1.5)),
            (&[0xf5], Value::Boolean(true)),
            (
                &[0x64, 0x49, 0x45, 0x54, 0x46],
                Value::String("IETF".into()),
            ),
            (
                &[0xc1, 0x1a, 0x51, 0x4b, 0x67, 0xb0],
                Value::Time(1_363_896_240),
            ),
        ];
        for (bytes, value) in cases {
            assert_eq!(decode_value(bytes), Ok(value), "{bytes:02x?}");
        }
    }

    #[test]
    fn rejects_trailing_bytes_and_containers() {
        assert!(matches!(
            decode_value(&[0x01, 0x02]),
            Err(CodecError::Malformed { at: 1, .. })
        ));
        assert!(decode_value(&[0x80]).is_err());
        assert!(decode_value(&[0xc2, 0x41, 0x00]).is_err());
        assert!(decode_value(&[0x5a, 0xff, 0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn floats_use_the_shortest_lossless_width() {
        assert_eq!(encode_value(&Value::Float(1.5)).map(|b| b.len()), Ok(5));
        assert_eq!(encode_value(&Value::Float(0.1)).map(|b| b.len()), Ok(9));
    }

    fn value_strategy() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<i64>().prop_map(Value::Integer),
            any::<bool>().prop_map(Value::Boolean),
            proptest::num::f64::NORMAL.prop_map(Value::Float),
            ".{0,20}".prop_map(Value::String),
            proptest::collection::vec(any::<u8>(), 0..20).prop_map(Value::Opaque),
        ]
    }

    proptest! {
        #[test]
        fn round_trips(value in value_strategy()) {
            let bytes = encode_value(&value).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(decode_value(&bytes), Ok(value));
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_value(&bytes);
        }
    }
}
