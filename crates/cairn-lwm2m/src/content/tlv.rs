//! OMA-TLV (Content-Format 11542, legacy 1542; OMA LwM2M Core 1.2 §7.4, TLV).
//!
//! Each entry is a type byte (bits 7-6: object instance, resource instance, multiple
//! resource, resource with value; bit 5: 16-bit identifier; bits 4-3: length field size;
//! bits 2-0: short length), the identifier, the length and the value. The reader is a
//! zero-copy view that checks every length against the bytes left before slicing, and the
//! structure is at most three levels deep (instance, multiple resource, instance value).

use std::collections::BTreeMap;

use crate::content::{CodecError, MAX_RECORDS, model_type, too_many_records};
use crate::model::ModelLookup;
use crate::node::{
    LwM2mNode, LwM2mObject, LwM2mObjectInstance, LwM2mResource, LwM2mResourceInstance,
    ResourceValue,
};
use crate::path::LwM2mPath;
use crate::value::{ObjectLink, ResourceType, Value};

const FORMAT: &str = "TLV";

/// The identifier type of a TLV entry (bits 7-6 of the type byte).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum TlvKind {
    /// 00: object instance, containing resources.
    ObjectInstance,
    /// 01: resource instance, containing a value.
    ResourceInstance,
    /// 10: multiple resource, containing resource instances.
    MultipleResource,
    /// 11: resource with a value.
    ResourceValue,
}

/// One decoded TLV entry: its kind, identifier, value bytes and where the entry started.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Tlv<'a> {
    /// Identifier type.
    pub kind: TlvKind,
    /// Identifier.
    pub id: u16,
    /// Value bytes (nested entries for instances and multiple resources).
    pub value: &'a [u8],
    /// Offset of the type byte in the whole payload.
    pub offset: usize,
    /// Offset of the value bytes in the whole payload.
    pub value_offset: usize,
}

/// Splits `bytes` (found at `base` in the payload) into TLV entries.
pub fn parse_entries(bytes: &[u8], base: usize) -> Result<Vec<Tlv<'_>>, CodecError> {
    let mut entries = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let offset = base + pos;
        let byte = |at: usize| {
            bytes.get(at).copied().ok_or_else(|| {
                CodecError::malformed(FORMAT, "entry truncated in its header", offset)
            })
        };
        let type_byte = byte(pos)?;
        let kind = match type_byte >> 6 {
            0 => TlvKind::ObjectInstance,
            1 => TlvKind::ResourceInstance,
            2 => TlvKind::MultipleResource,
            _ => TlvKind::ResourceValue,
        };
        let mut cursor = pos + 1;
        let id = if type_byte & 0x20 != 0 {
            let id = u16::from_be_bytes([byte(cursor)?, byte(cursor + 1)?]);
            cursor += 2;
            id
        } else {
            let id = u16::from(byte(cursor)?);
            cursor += 1;
            id
        };
        let length_size = usize::from((type_byte >> 3) & 0x03);
        let length = if length_size == 0 {
            usize::from(type_byte & 0x07)
        } else {
            let mut length = 0usize;
            for i in 0..length_size {
                length = (length << 8) | usize::from(byte(cursor + i)?);
            }
            cursor += length_size;
            length
        };
        let value = cursor
            .checked_add(length)
            .and_then(|end| bytes.get(cursor..end))
            .ok_or_else(|| {
                CodecError::malformed(
                    FORMAT,
                    format!("length {length} runs past the end of the payload"),
                    offset,
                )
            })?;
        if entries.len() == MAX_RECORDS {
            return Err(too_many_records(FORMAT, offset));
        }
        entries.push(Tlv {
            kind,
            id,
            value,
            offset,
            value_offset: base + cursor,
        });
        pos = cursor + length;
    }
    Ok(entries)
}

/// Encodes a node in TLV. An object instance at `/o/i` is written as its resources; an
/// object as object-instance entries.
pub fn encode(node: &LwM2mNode) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::new();
    match node {
        LwM2mNode::Object(object) => {
            for instance in object.instances.values() {
                write_entry(
                    &mut out,
                    TlvKind::ObjectInstance,
                    instance.id,
                    &instance_bytes(instance)?,
                )?;
            }
        }
        LwM2mNode::ObjectInstance(instance) => out = instance_bytes(instance)?,
        LwM2mNode::Resource(resource) => write_resource(&mut out, resource)?,
        LwM2mNode::ResourceInstance(ri) => {
            write_entry(
                &mut out,
                TlvKind::ResourceInstance,
                ri.id,
                &value_bytes(&ri.value),
            )?;
        }
    }
    Ok(out)
}

fn instance_bytes(instance: &LwM2mObjectInstance) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::new();
    for resource in instance.resources.values() {
        write_resource(&mut out, resource)?;
    }
    Ok(out)
}

fn write_resource(out: &mut Vec<u8>, resource: &LwM2mResource) -> Result<(), CodecError> {
    match &resource.value {
        ResourceValue::Single(value) => {
            write_entry(
                out,
                TlvKind::ResourceValue,
                resource.id,
                &value_bytes(value),
            )?;
        }
        ResourceValue::Multiple(values) => {
            let mut inner = Vec::new();
            for (ri, value) in values {
                write_entry(
                    &mut inner,
                    TlvKind::ResourceInstance,
                    *ri,
                    &value_bytes(value),
                )?;
            }
            write_entry(out, TlvKind::MultipleResource, resource.id, &inner)?;
        }
    }
    Ok(())
}

/// Largest value a TLV entry can carry: its length field has at most 24 bits.
pub const MAX_TLV_VALUE_LEN: usize = 0xFF_FFFF;

fn write_entry(out: &mut Vec<u8>, kind: TlvKind, id: u16, value: &[u8]) -> Result<(), CodecError> {
    if value.len() > MAX_TLV_VALUE_LEN {
        return Err(CodecError::unsupported(
            FORMAT,
            format!(
                "an entry of {} bytes (the length field has 24 bits)",
                value.len()
            ),
        ));
    }
    let mut type_byte: u8 = match kind {
        TlvKind::ObjectInstance => 0x00,
        TlvKind::ResourceInstance => 0x40,
        TlvKind::MultipleResource => 0x80,
        TlvKind::ResourceValue => 0xc0,
    };
    if id > 0xff {
        type_byte |= 0x20;
    }
    let len = value.len();
    let length_bytes: &[u8] = &(len as u32).to_be_bytes();
    let length_field = match len {
        0..=7 => {
            type_byte |= len as u8;
            &[][..]
        }
        8..=0xff => {
            type_byte |= 0x08;
            &length_bytes[3..]
        }
        0x100..=0xffff => {
            type_byte |= 0x10;
            &length_bytes[2..]
        }
        _ => {
            type_byte |= 0x18;
            &length_bytes[1..]
        }
    };
    out.push(type_byte);
    if id > 0xff {
        out.extend_from_slice(&id.to_be_bytes());
    } else {
        out.push(id as u8);
    }
    out.extend_from_slice(length_field);
    out.extend_from_slice(value);
    Ok(())
}

/// The TLV value bytes of a value: integers in the fewest of 1, 2, 4 or 8 bytes, floats in
/// 4 bytes when lossless and 8 otherwise, object links as two 16-bit ids.
pub fn value_bytes(value: &Value) -> Vec<u8> {
    match value {
        Value::String(s) | Value::Corelnk(s) => s.as_bytes().to_vec(),
        Value::Integer(v) | Value::Time(v) => {
            if let Ok(v) = i8::try_from(*v) {
                v.to_be_bytes().to_vec()
            } else if let Ok(v) = i16::try_from(*v) {
                v.to_be_bytes().to_vec()
            } else if let Ok(v) = i32::try_from(*v) {
                v.to_be_bytes().to_vec()
            } else {
                v.to_be_bytes().to_vec()
            }
        }
        Value::UnsignedInteger(v) => {
            if let Ok(v) = u8::try_from(*v) {
                vec![v]
            } else if let Ok(v) = u16::try_from(*v) {
                v.to_be_bytes().to_vec()
            } else if let Ok(v) = u32::try_from(*v) {
                v.to_be_bytes().to_vec()
            } else {
                v.to_be_bytes().to_vec()
            }
        }
        Value::Float(v) => {
            let single = *v as f32;
            if f64::from(single) == *v {
                single.to_be_bytes().to_vec()
            } else {
                v.to_be_bytes().to_vec()
            }
        }
        Value::Boolean(v) => vec![u8::from(*v)],
        Value::Opaque(bytes) => bytes.clone(),
        Value::Objlnk(link) => {
            let mut out = link.object_id.to_be_bytes().to_vec();
            out.extend_from_slice(&link.instance_id.to_be_bytes());
            out
        }
    }
}

/// Reads TLV value bytes as a value of type `ty` (opaque when the type is unknown).
pub fn read_value(
    bytes: &[u8],
    ty: Option<ResourceType>,
    offset: usize,
) -> Result<Value, CodecError> {
    let bad = |what: &str| {
        CodecError::malformed(FORMAT, format!("{what} ({} bytes)", bytes.len()), offset)
    };
    Ok(match ty {
        None | Some(ResourceType::Opaque) | Some(ResourceType::None) => {
            Value::Opaque(bytes.to_vec())
        }
        Some(ResourceType::String) | Some(ResourceType::Corelnk) => {
            let text = core::str::from_utf8(bytes)
                .map_err(|_| bad("string is not UTF-8"))?
                .to_owned();
            if ty == Some(ResourceType::String) {
                Value::String(text)
            } else {
                Value::Corelnk(text)
            }
        }
        Some(ResourceType::Integer) | Some(ResourceType::Time) => {
            let v = match *bytes {
                [a] => i64::from(i8::from_be_bytes([a])),
                [a, b] => i64::from(i16::from_be_bytes([a, b])),
                [a, b, c, d] => i64::from(i32::from_be_bytes([a, b, c, d])),
                [a, b, c, d, e, f, g, h] => i64::from_be_bytes([a, b, c, d, e, f, g, h]),
                _ => return Err(bad("integer is not 1, 2, 4 or 8 bytes")),
            };
            if ty == Some(ResourceType::Time) {
                Value::Time(v)
            } else {
                Value::Integer(v)
            }
        }
        Some(ResourceType::UnsignedInteger) => {
            if !matches!(bytes.len(), 1 | 2 | 4 | 8) {
                return Err(bad("unsigned integer is not 1, 2, 4 or 8 bytes"));
            }
            Value::UnsignedInteger(bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
        }
        Some(ResourceType::Float) => match *bytes {
            [a, b, c, d] => Value::Float(f64::from(f32::from_be_bytes([a, b, c, d]))),
            [a, b, c, d, e, f, g, h] => Value::Float(f64::from_be_bytes([a, b, c, d, e, f, g, h])),
            _ => return Err(bad("float is not 4 or 8 bytes")),
        },
        Some(ResourceType::Boolean) => match bytes {
            [0] => Value::Boolean(false),
            [1] => Value::Boolean(true),
            _ => return Err(bad("boolean is not one byte 0 or 1")),
        },
        Some(ResourceType::Objlnk) => match *bytes {
            [a, b, c, d] => Value::Objlnk(ObjectLink {
                object_id: u16::from_be_bytes([a, b]),
                instance_id: u16::from_be_bytes([c, d]),
            }),
            _ => return Err(bad("object link is not 4 bytes")),
        },
    })
}

/// Decodes a TLV payload as the node at `path`.
pub fn decode(
    payload: &[u8],
    path: &LwM2mPath,
    models: &dyn ModelLookup,
) -> Result<LwM2mNode, CodecError> {
    let entries = parse_entries(payload, 0)?;
    match *path {
        LwM2mPath::Root => Err(CodecError::unsupported(FORMAT, "the root path")),
        LwM2mPath::Object(o) => {
            let mut object = LwM2mObject {
                id: o,
                ..Default::default()
            };
            if entries.iter().all(|e| e.kind == TlvKind::ObjectInstance) {
                for entry in entries {
                    let instance =
                        decode_instance(o, entry.id, entry.value, entry.value_offset, models)?;
                    if object.instances.insert(entry.id, instance).is_some() {
                        return Err(duplicate(&entry));
                    }
                }
            } else {
                let instance = decode_resources(o, 0, &entries, models)?;
                object.instances.insert(0, instance);
            }
            Ok(LwM2mNode::Object(object))
        }
        LwM2mPath::ObjectInstance(o, i) => match entries.as_slice() {
            [entry] if entry.kind == TlvKind::ObjectInstance => {
                if entry.id != i {
                    return Err(CodecError::malformed(
                        FORMAT,
                        format!("instance {} where {path} was expected", entry.id),
                        entry.offset,
                    ));
                }
                Ok(LwM2mNode::ObjectInstance(decode_instance(
                    o,
                    i,
                    entry.value,
                    entry.value_offset,
                    models,
                )?))
            }
            _ => Ok(LwM2mNode::ObjectInstance(decode_resources(
                o, i, &entries, models,
            )?)),
        },
        LwM2mPath::Resource(o, _, r)
            if !entries.is_empty()
                && entries.iter().all(|e| e.kind == TlvKind::ResourceInstance) =>
        {
            // Some clients send the instances of a multiple resource without the
            // enclosing multiple-resource entry.
            let ty = model_type(&LwM2mPath::Resource(o, 0, r), models);
            let mut values = BTreeMap::new();
            for entry in &entries {
                if values
                    .insert(entry.id, read_value(entry.value, ty, entry.offset)?)
                    .is_some()
                {
                    return Err(duplicate(entry));
                }
            }
            Ok(LwM2mNode::Resource(LwM2mResource {
                id: r,
                value: ResourceValue::Multiple(values),
            }))
        }
        LwM2mPath::Resource(o, i, r) => {
            let instance = decode_resources(o, i, &entries, models)?;
            let mut resources = instance.resources;
            let resource = resources.remove(&r).ok_or_else(|| {
                CodecError::malformed(FORMAT, format!("no entry for resource {r}"), 0)
            })?;
            if !resources.is_empty() {
                return Err(CodecError::malformed(
                    FORMAT,
                    format!("entries other than resource {r}"),
                    0,
                ));
            }
            Ok(LwM2mNode::Resource(resource))
        }
        LwM2mPath::ResourceInstance(o, _, r, ri) => match entries.as_slice() {
            [entry] if entry.kind == TlvKind::ResourceInstance && entry.id == ri => {
                let ty = model_type(&LwM2mPath::Resource(o, 0, r), models);
                let value = read_value(entry.value, ty, entry.offset)?;
                Ok(LwM2mNode::ResourceInstance(LwM2mResourceInstance {
                    id: ri,
                    value,
                }))
            }
            _ => Err(CodecError::malformed(
                FORMAT,
                format!("expected one resource instance entry {ri}"),
                0,
            )),
        },
    }
}

fn duplicate(entry: &Tlv) -> CodecError {
    CodecError::malformed(
        FORMAT,
        format!("identifier {} appears twice", entry.id),
        entry.offset,
    )
}

fn decode_instance(
    o: u16,
    i: u16,
    bytes: &[u8],
    base: usize,
    models: &dyn ModelLookup,
) -> Result<LwM2mObjectInstance, CodecError> {
    decode_resources(o, i, &parse_entries(bytes, base)?, models)
}

fn decode_resources(
    o: u16,
    i: u16,
    entries: &[Tlv],
    models: &dyn ModelLookup,
) -> Result<LwM2mObjectInstance, CodecError> {
    let mut resources = BTreeMap::new();
    for entry in entries {
        let ty = model_type(&LwM2mPath::Resource(o, i, entry.id), models);
        let value = match entry.kind {
            TlvKind::ResourceValue => {
                ResourceValue::Single(read_value(entry.value, ty, entry.offset)?)
            }
            TlvKind::MultipleResource => {
                let mut values = BTreeMap::new();
                for inner in parse_entries(entry.value, entry.value_offset)? {
                    if inner.kind != TlvKind::ResourceInstance {
                        return Err(CodecError::malformed(
                            FORMAT,
                            "a multiple resource holds a non resource-instance entry",
                            inner.offset,
                        ));
                    }
                    if values
                        .insert(inner.id, read_value(inner.value, ty, inner.offset)?)
                        .is_some()
                    {
                        return Err(duplicate(&inner));
                    }
                }
                ResourceValue::Multiple(values)
            }
            TlvKind::ObjectInstance | TlvKind::ResourceInstance => {
                return Err(CodecError::malformed(
                    FORMAT,
                    "expected a resource entry",
                    entry.offset,
                ));
            }
        };
        if resources
            .insert(
                entry.id,
                LwM2mResource {
                    id: entry.id,
                    value,
                },
            )
            .is_some()
        {
            return Err(duplicate(entry));
        }
    }
    Ok(LwM2mObjectInstance { id: i, resources })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::NoModels;
    use crate::registry::ModelRegistry;
    use proptest::prelude::*;

    /// The TLV example of Core §7.4: Read /3/0 of the example client's Device object.
    pub(crate) const DEVICE_TLV: &[u8] = &[
        0xC8, 0x00, 0x14, b'O', b'p', b'e', b'n', b' ', b'M', b'o', b'b', b'i', b'l', b'e', b' ',
        b'A', b'l', b'l', b'i', b'a', b'n', b'c', b'e', //
        0xC8, 0x01, 0x16, b'L', b'i', b'g', b'h', b't', b'w', b'e', b'i', b'g', b'h', b't', b' ',
        b'M', b'2', b'M', b' ', b'C', b'l', b'i', b'e', b'n', b't', //
        0xC8, 0x02, 0x09, b'3', b'4', b'5', b'0', b'0', b'0', b'1', b'2', b'3', //
        0xC3, 0x03, b'1', b'.', b'0', //
        0x86, 0x06, 0x41, 0x00, 0x01, 0x41, 0x01, 0x05, //
        0x88, 0x07, 0x08, 0x42, 0x00, 0x0E, 0xD8, 0x42, 0x01, 0x13, 0x88, //
        0x87, 0x08, 0x41, 0x00, 0x7D, 0x42, 0x01, 0x03, 0x84, //
        0xC1, 0x09, 0x64, //
        0xC1, 0x0A, 0x0F, //
        0x83, 0x0B, 0x41, 0x00, 0x00, //
        0xC4, 0x0D, 0x51, 0x82, 0x42, 0x8F, //
        0xC6, 0x0E, b'+', b'0', b'2', b':', b'0', b'0', //
        0xC1, 0x10, b'U',
    ];

    #[test]
    fn decodes_the_spec_device_example() {
        let models = ModelRegistry::with_core_models();
        let node =
            decode(DEVICE_TLV, &LwM2mPath::ObjectInstance(3, 0), &models).expect("valid TLV");
        let expected = crate::content::tests::device_instance();
        assert_eq!(node, LwM2mNode::ObjectInstance(expected.clone()));
        let encoded = encode(&node).expect("encodes");
        assert_eq!(encoded, DEVICE_TLV);
    }

    /// TLV example of the Core specification: Read /2 of an Access Control object with
    /// instances 0 and 2; instance 2's ACL has a 16-bit resource instance id (310).
    const ACCESS_CONTROL_TLV: &[u8] = &[
        0x08, 0x00, 0x0E, 0xC1, 0x00, 0x01, 0xC1, 0x01, 0x00, 0x83, 0x02, 0x41, 0x7F, 0x07, 0xC1,
        0x03, 0x7F, 0x08, 0x02, 0x12, 0xC1, 0x00, 0x03, 0xC1, 0x01, 0x00, 0x87, 0x02, 0x41, 0x7F,
        0x07, 0x61, 0x01, 0x36, 0x01, 0xC1, 0x03, 0x7F,
    ];

    #[test]
    fn decodes_the_spec_access_control_example() {
        let models = ModelRegistry::with_core_models();
        let node = decode(ACCESS_CONTROL_TLV, &LwM2mPath::Object(2), &models).expect("valid TLV");
        let instance = |id, object, acl: &[(u16, i64)]| {
            LwM2mObjectInstance::new(
                id,
                [
                    LwM2mResource::single(0, Value::Integer(object)),
                    LwM2mResource::single(1, Value::Integer(0)),
                    LwM2mResource::multiple(2, acl.iter().map(|(ri, v)| (*ri, Value::Integer(*v)))),
                    LwM2mResource::single(3, Value::Integer(127)),
                ],
            )
        };
        let expected = LwM2mObject::new(
            2,
            [
                instance(0, 1, &[(127, 7)]),
                instance(2, 3, &[(127, 7), (310, 1)]),
            ],
        );
        assert_eq!(node, LwM2mNode::Object(expected));
        assert_eq!(encode(&node).expect("encodes"), ACCESS_CONTROL_TLV);
    }

    #[test]
    fn object_links_and_wrapped_instances() {
        let link = Value::Objlnk(ObjectLink {
            object_id: 66,
            instance_id: 1,
        });
        assert_eq!(value_bytes(&link), [0x00, 0x42, 0x00, 0x01]);
        assert_eq!(
            read_value(&[0x00, 0x42, 0x00, 0x01], Some(ResourceType::Objlnk), 0),
            Ok(link)
        );
        let wrapped = [0x08, 0x00, 0x03, 0xC1, 0x09, 0x64];
        let node = decode(&wrapped, &LwM2mPath::ObjectInstance(3, 0), &NoModels).expect("valid");
        let LwM2mNode::ObjectInstance(instance) = node else {
            panic!("not an instance")
        };
        assert_eq!(
            instance.resources[&9].value,
            ResourceValue::Single(Value::Opaque(vec![0x64]))
        );
    }

    #[test]
    fn refuses_values_the_length_field_cannot_express() {
        let mut out = Vec::new();
        let too_long = vec![0u8; MAX_TLV_VALUE_LEN + 1];
        assert!(matches!(
            write_entry(&mut out, TlvKind::ResourceValue, 0, &too_long),
            Err(CodecError::Unsupported { .. })
        ));
        assert!(write_entry(&mut out, TlvKind::ResourceValue, 0, &too_long[1..]).is_ok());
        assert_eq!(&out[..5], &[0xD8, 0x00, 0xFF, 0xFF, 0xFF]);
    }

    #[test]
    fn entry_count_is_bounded() {
        let over: Vec<u8> = [0xC0, 0x00].repeat(MAX_RECORDS + 1);
        assert!(matches!(
            parse_entries(&over, 0),
            Err(CodecError::Malformed { .. })
        ));
        assert_eq!(
            parse_entries(&over[2..], 0).map(|e| e.len()),
            Ok(MAX_RECORDS)
        );
    }

    #[test]
    fn accepts_unwrapped_resource_instances() {
        let models = ModelRegistry::with_core_models();
        let unwrapped = [0x41, 0x00, 0x01, 0x41, 0x01, 0x05];
        let node = decode(&unwrapped, &LwM2mPath::Resource(3, 0, 6), &models).expect("valid");
        let expected = LwM2mResource::multiple(6, [(0, Value::Integer(1)), (1, Value::Integer(5))]);
        assert_eq!(node, LwM2mNode::Resource(expected));
    }

    #[test]
    fn errors_say_what_and_where() {
        let truncated = [0xC1, 0x09, 0x64, 0xC8, 0x00, 0x14, b'O'];
        assert!(matches!(
            decode(&truncated, &LwM2mPath::ObjectInstance(3, 0), &NoModels),
            Err(CodecError::Malformed { at: 3, .. })
        ));
        let models = ModelRegistry::with_core_models();
        let bad_int = [0xC3, 0x09, 0x01, 0x02, 0x03];
        assert!(matches!(
            decode(&bad_int, &LwM2mPath::ObjectInstance(3, 0), &models),
            Err(CodecError::Malformed { at: 0, .. })
        ));
        let huge = [0xD8, 0x01, 0xFF, 0xFF, 0xFF];
        assert!(decode(&huge, &LwM2mPath::ObjectInstance(3, 0), &NoModels).is_err());
        let duplicate = [0xC1, 0x09, 0x64, 0xC1, 0x09, 0x64];
        assert!(decode(&duplicate, &LwM2mPath::ObjectInstance(3, 0), &NoModels).is_err());
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..96)) {
            let models = ModelRegistry::with_core_models();
            for path in [LwM2mPath::Object(3), LwM2mPath::ObjectInstance(3, 0), LwM2mPath::Resource(3, 0, 7), LwM2mPath::ResourceInstance(3, 0, 7, 1)] {
                let _ = decode(&bytes, &path, &models);
            }
        }

        #[test]
        fn integers_round_trip(v in any::<i64>()) {
            let bytes = value_bytes(&Value::Integer(v));
            prop_assert_eq!(read_value(&bytes, Some(ResourceType::Integer), 0), Ok(Value::Integer(v)));
        }

        #[test]
        fn lengths_round_trip(len in 0usize..70_000, id in any::<u16>()) {
            let mut out = Vec::new();
            write_entry(&mut out, TlvKind::ResourceValue, id, &vec![7u8; len]).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let entries = parse_entries(&out, 0).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(entries.len(), 1);
            prop_assert_eq!(entries[0].id, id);
            prop_assert_eq!(entries[0].value.len(), len);
            prop_assert_eq!(entries[0].value_offset + len, out.len());
        }
    }
}
