//! LwM2M CBOR (Content-Format 11544, OMA LwM2M Core 1.2 §7.4, LwM2M CBOR): nested CBOR maps keyed by
//! path identifiers from the root, `{3: {0: {0: "Open Mobile Alliance", 6: {0: 1}}}}`; a
//! key may also be an array of identifiers standing for several levels (`{[3, 0]: {...}}`).
//! A null leaf names a path without a value (composite requests).
//!
//! Decoding is recursive but bounded: a path has at most four identifiers, so at most four
//! levels of maps are followed before the input is refused.

use std::collections::BTreeMap;

use minicbor::data::Type;
use minicbor::{Decoder, Encoder};

use crate::content::cbor::{WriteError, encode_with, read_value, write_value};
use crate::content::{CodecError, MAX_RECORDS, too_many_records};
use crate::path::LwM2mPath;
use crate::value::Value;

const FORMAT: &str = "LwM2M CBOR";

enum Tree<'a> {
    Leaf(Option<&'a Value>),
    Branch(BTreeMap<u16, Tree<'a>>),
}

fn insert<'a>(
    tree: &mut BTreeMap<u16, Tree<'a>>,
    ids: &[u16],
    value: Option<&'a Value>,
) -> Result<(), CodecError> {
    let conflict =
        || CodecError::unsupported(FORMAT, "a path and a path below it in the same payload");
    match ids {
        [] => Err(CodecError::unsupported(FORMAT, "the root path")),
        [last] => match tree.insert(*last, Tree::Leaf(value)) {
            Some(_) => Err(conflict()),
            None => Ok(()),
        },
        [first, rest @ ..] => match tree
            .entry(*first)
            .or_insert_with(|| Tree::Branch(BTreeMap::new()))
        {
            Tree::Branch(children) => insert(children, rest, value),
            Tree::Leaf(_) => Err(conflict()),
        },
    }
}

fn write_tree(
    encoder: &mut Encoder<Vec<u8>>,
    tree: &BTreeMap<u16, Tree>,
) -> Result<(), WriteError> {
    encoder.map(tree.len() as u64)?;
    for (id, child) in tree {
        encoder.u16(*id)?;
        match child {
            Tree::Leaf(Some(value)) => write_value(encoder, value)?,
            Tree::Leaf(None) => {
                encoder.null()?;
            }
            Tree::Branch(children) => write_tree(encoder, children)?,
        }
    }
    Ok(())
}

/// Encodes (path, value) records as nested maps from the root.
pub fn encode(records: &[(LwM2mPath, Value)]) -> Result<Vec<u8>, CodecError> {
    let mut tree = BTreeMap::new();
    for (path, value) in records {
        insert(&mut tree, &path.ids(), Some(value))?;
    }
    encode_with(records.len() * 12, |encoder| write_tree(encoder, &tree))
}

/// Encodes paths with null leaves (Read-Composite and Observe-Composite requests).
pub fn encode_paths(paths: &[LwM2mPath]) -> Result<Vec<u8>, CodecError> {
    let mut tree = BTreeMap::new();
    for path in paths {
        insert(&mut tree, &path.ids(), None)?;
    }
    encode_with(paths.len() * 8, |encoder| write_tree(encoder, &tree))
}

/// Decodes a payload as (path, value) records; null leaves are refused.
pub fn decode(payload: &[u8]) -> Result<Vec<(LwM2mPath, Value)>, CodecError> {
    decode_leaves(payload)?
        .into_iter()
        .map(|(path, value, at)| {
            value
                .map(|v| (path, v))
                .ok_or_else(|| CodecError::malformed(FORMAT, format!("null value for {path}"), at))
        })
        .collect()
}

/// Decodes the paths of a payload (values, if any, are ignored).
pub fn decode_paths(payload: &[u8]) -> Result<Vec<LwM2mPath>, CodecError> {
    Ok(decode_leaves(payload)?
        .into_iter()
        .map(|(path, _, _)| path)
        .collect())
}

type Leaf = (LwM2mPath, Option<Value>, usize);

fn decode_leaves(payload: &[u8]) -> Result<Vec<Leaf>, CodecError> {
    let mut decoder = Decoder::new(payload);
    let mut leaves = Vec::new();
    read_map(&mut decoder, &mut Vec::with_capacity(4), &mut leaves)?;
    if decoder.position() != payload.len() {
        return Err(CodecError::malformed(
            FORMAT,
            "trailing bytes after the map",
            decoder.position(),
        ));
    }
    Ok(leaves)
}

fn cbor_error(at: usize) -> impl Fn(minicbor::decode::Error) -> CodecError {
    move |e| CodecError::malformed(FORMAT, e.to_string(), at)
}

fn read_map(
    decoder: &mut Decoder,
    prefix: &mut Vec<u16>,
    leaves: &mut Vec<Leaf>,
) -> Result<(), CodecError> {
    let at = decoder.position();
    let len = decoder.map().map_err(cbor_error(at))?;
    let mut read = 0u64;
    loop {
        match len {
            Some(len) if read >= len => return Ok(()),
            None if decoder.datatype().map_err(cbor_error(decoder.position()))? == Type::Break => {
                decoder.set_position(decoder.position() + 1);
                return Ok(());
            }
            _ => {}
        }
        read += 1;
        if leaves.len() == MAX_RECORDS {
            return Err(too_many_records(FORMAT, decoder.position()));
        }
        let depth = prefix.len();
        read_key(decoder, prefix)?;
        let value_at = decoder.position();
        match decoder.datatype().map_err(cbor_error(value_at))? {
            Type::Map | Type::MapIndef => read_map(decoder, prefix, leaves)?,
            Type::Null => {
                decoder.set_position(value_at + 1);
                leaves.push((leaf_path(prefix, value_at)?, None, value_at));
            }
            _ => {
                let path = leaf_path(prefix, value_at)?;
                let value = read_value(decoder, FORMAT)?;
                leaves.push((path, Some(value), value_at));
            }
        }
        prefix.truncate(depth);
    }
}

fn read_key(decoder: &mut Decoder, prefix: &mut Vec<u16>) -> Result<(), CodecError> {
    let at = decoder.position();
    let too_deep =
        || CodecError::malformed(FORMAT, "a key goes deeper than a resource instance", at);
    let id = |decoder: &mut Decoder| -> Result<u16, CodecError> {
        let at = decoder.position();
        let value = decoder.u64().map_err(cbor_error(at))?;
        u16::try_from(value)
            .ok()
            .filter(|id| *id <= crate::path::MAX_ID)
            .ok_or_else(|| {
                CodecError::malformed(FORMAT, format!("identifier {value} out of range"), at)
            })
    };
    if decoder.datatype().map_err(cbor_error(at))? == Type::Array {
        let len = decoder.array().map_err(cbor_error(at))?.unwrap_or(0);
        if len == 0 || prefix.len() as u64 + len > 4 {
            return Err(too_deep());
        }
        for _ in 0..len {
            prefix.push(id(decoder)?);
        }
    } else {
        if prefix.len() == 4 {
            return Err(too_deep());
        }
        prefix.push(id(decoder)?);
    }
    Ok(())
}

fn leaf_path(ids: &[u16], at: usize) -> Result<LwM2mPath, CodecError> {
    LwM2mPath::from_ids(ids).map_err(|e| CodecError::malformed(FORMAT, e.to_string(), at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn nested_maps_and_array_keys() {
        let records = vec![
            (LwM2mPath::Resource(3, 0, 0), Value::String("ACME".into())),
            (LwM2mPath::ResourceInstance(3, 0, 6, 0), Value::Integer(1)),
        ];
        let bytes = encode(&records).expect("encodes");
        assert_eq!(&bytes[..4], &[0xa1, 0x03, 0xa1, 0x00]);
        assert_eq!(decode(&bytes), Ok(records));
        let array_key = [0xa1, 0x83, 0x03, 0x00, 0x09, 0x18, 0x64];
        assert_eq!(
            decode(&array_key),
            Ok(vec![(LwM2mPath::Resource(3, 0, 9), Value::Integer(100))])
        );
    }

    #[test]
    fn paths_with_null_leaves() {
        let paths = vec![
            LwM2mPath::Resource(3, 0, 9),
            LwM2mPath::ObjectInstance(1, 0),
        ];
        let bytes = encode_paths(&paths).expect("encodes");
        let mut decoded = decode_paths(&bytes).expect("decodes");
        decoded.sort();
        let mut expected = paths.clone();
        expected.sort();
        assert_eq!(decoded, expected);
        assert!(decode(&bytes).is_err());
    }

    #[test]
    fn depth_is_bounded() {
        let deep = [
            0xa1, 0x01, 0xa1, 0x01, 0xa1, 0x01, 0xa1, 0x01, 0xa1, 0x01, 0x01,
        ];
        assert!(matches!(
            decode(&deep),
            Err(CodecError::Malformed { at: 9, .. })
        ));
        let mut bomb = Vec::new();
        for _ in 0..100_000 {
            bomb.extend_from_slice(&[0xa1, 0x01]);
        }
        assert!(decode(&bomb).is_err());
        let wide_key = [0xa1, 0x85, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01];
        assert!(decode(&wide_key).is_err());
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = decode(&bytes);
            let _ = decode_paths(&bytes);
        }
    }
}
