//! Plain text (Content-Format 0, OMA LwM2M Core 1.2 §7.4, Plain Text) and opaque
//! (application/octet-stream, 42, §7.4, Opaque): a single resource or resource instance value.

use crate::content::CodecError;
use crate::model::ModelLookup;
use crate::path::LwM2mPath;
use crate::value::{ResourceType, Value, ValueError};

/// Encodes a value as UTF-8 text.
pub fn encode_text(value: &Value) -> Result<Vec<u8>, CodecError> {
    Ok(value.to_text().into_bytes())
}

/// Decodes UTF-8 text as a value of type `ty`.
pub fn decode_text(payload: &[u8], ty: ResourceType) -> Result<Value, ValueError> {
    let text = core::str::from_utf8(payload)
        .map_err(|e| ValueError::new(ty, &format!("<not UTF-8 at byte {}>", e.valid_up_to())))?;
    Value::from_text(text, ty)
}

/// Encodes an opaque value as raw bytes; only opaque values have this form.
pub fn encode_opaque(value: &Value) -> Result<Vec<u8>, CodecError> {
    match value {
        Value::Opaque(bytes) => Ok(bytes.clone()),
        other => Err(CodecError::unsupported(
            "application/octet-stream",
            format!("a {:?} value", other.resource_type()),
        )),
    }
}

/// Decodes raw bytes as an opaque value; refused when the model says the resource is
/// of another type.
pub fn decode_opaque(
    payload: &[u8],
    path: &LwM2mPath,
    models: &dyn ModelLookup,
) -> Result<Value, CodecError> {
    match crate::content::model_type(path, models) {
        None | Some(ResourceType::Opaque) => Ok(Value::Opaque(payload.to_vec())),
        Some(other) => Err(CodecError::unsupported(
            "application/octet-stream",
            format!("a {other:?} resource ({path})"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::ModelRegistry;
    use proptest::prelude::*;

    #[test]
    fn spec_example_manufacturer() {
        let value = Value::String("Open Mobile Alliance".into());
        assert_eq!(
            encode_text(&value).ok(),
            Some(b"Open Mobile Alliance".to_vec())
        );
        assert_eq!(
            decode_text(b"Open Mobile Alliance", ResourceType::String),
            Ok(value)
        );
        assert_eq!(
            decode_text(b"100", ResourceType::Integer),
            Ok(Value::Integer(100))
        );
        assert!(decode_text(&[0xff], ResourceType::String).is_err());
    }

    #[test]
    fn opaque_respects_the_model() {
        let models = ModelRegistry::with_core_models();
        let firmware = LwM2mPath::Resource(5, 0, 0);
        assert_eq!(
            decode_opaque(&[1, 2], &firmware, &models),
            Ok(Value::Opaque(vec![1, 2]))
        );
        assert!(decode_opaque(&[1], &LwM2mPath::Resource(3, 0, 9), &models).is_err());
        assert!(encode_opaque(&Value::Integer(1)).is_err());
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            for ty in [ResourceType::Integer, ResourceType::Float, ResourceType::Objlnk, ResourceType::Opaque] {
                let _ = decode_text(&bytes, ty);
            }
        }

        #[test]
        fn integer_round_trips(v in any::<i64>()) {
            let bytes = encode_text(&Value::Integer(v)).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(decode_text(&bytes, ResourceType::Integer), Ok(Value::Integer(v)));
        }
    }
}
