//! Connection IDs (RFC 9146 §3): an inline, fixed-capacity byte string so that a session holds
//! its CIDs without a heap allocation.

use crate::Error;

/// Largest connection ID this engine issues or accepts.
pub const MAX_CID: usize = 32;

/// A connection ID of 0 to [`MAX_CID`] bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ConnectionId {
    len: u8,
    bytes: [u8; MAX_CID],
}

impl core::fmt::Debug for ConnectionId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("ConnectionId(")?;
        for byte in self.as_bytes() {
            write!(f, "{byte:02x}")?;
        }
        f.write_str(")")
    }
}

impl ConnectionId {
    /// The empty CID.
    pub const EMPTY: Self = Self {
        len: 0,
        bytes: [0; MAX_CID],
    };

    /// A CID from bytes; longer than [`MAX_CID`] is an error.
    pub fn new(bytes: &[u8]) -> Result<Self, Error> {
        let mut cid = Self::EMPTY;
        cid.bytes
            .get_mut(..bytes.len())
            .ok_or(Error::Invalid {
                what: "connection ID length",
            })?
            .copy_from_slice(bytes);
        cid.len = u8::try_from(bytes.len()).map_err(|_| Error::Invalid {
            what: "connection ID length",
        })?;
        Ok(cid)
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// Whether the CID is empty (no CID on the wire).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Bytes a [`StoredCid`] holds without a heap allocation.
const INLINE_CID: usize = 14;

/// A connection ID as an established session keeps it: 16 bytes, inline up to 14 bytes (a
/// server's own CIDs are short: it chooses their length), boxed beyond. A [`ConnectionId`]
/// is 33 bytes wherever it is.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum StoredCid {
    Inline { len: u8, bytes: [u8; INLINE_CID] },
    Boxed(Box<ConnectionId>),
}

impl StoredCid {
    pub(crate) fn new(cid: &ConnectionId) -> Self {
        let bytes = cid.as_bytes();
        match u8::try_from(bytes.len()) {
            Ok(len) if bytes.len() <= INLINE_CID => {
                let mut inline = [0; INLINE_CID];
                inline[..bytes.len()].copy_from_slice(bytes);
                Self::Inline { len, bytes: inline }
            }
            _ => Self::Boxed(Box::new(*cid)),
        }
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Self::Boxed(cid) => cid.as_bytes(),
        }
    }

    pub(crate) fn to_cid(&self) -> ConnectionId {
        match self {
            Self::Inline { .. } => ConnectionId::new(self.as_bytes()).unwrap_or_default(),
            Self::Boxed(cid) => **cid,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.as_bytes().is_empty()
    }

    /// Heap bytes (for memory accounting).
    pub(crate) fn heap_bytes(&self) -> usize {
        match self {
            Self::Inline { .. } => 0,
            Self::Boxed(_) => core::mem::size_of::<ConnectionId>(),
        }
    }
}

impl core::fmt::Debug for StoredCid {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        self.to_cid().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_cids_are_compact_and_keep_their_bytes() {
        assert_eq!(core::mem::size_of::<StoredCid>(), 16);
        for len in [0, 1, 8, INLINE_CID, INLINE_CID + 1, MAX_CID] {
            let bytes: Vec<u8> = (1..=len as u8).collect();
            let cid = ConnectionId::new(&bytes).unwrap();
            let stored = StoredCid::new(&cid);
            assert_eq!(stored.as_bytes(), &bytes[..]);
            assert_eq!(stored.to_cid(), cid);
            assert_eq!(stored.is_empty(), len == 0);
            assert_eq!(stored.heap_bytes() > 0, len > INLINE_CID);
        }
    }

    #[test]
    fn bounds_are_checked() {
        assert_eq!(ConnectionId::new(&[1, 2]).unwrap().as_bytes(), &[1, 2]);
        assert!(ConnectionId::new(&[0; MAX_CID + 1]).is_err());
        assert!(ConnectionId::EMPTY.is_empty());
        assert_eq!(
            format!("{:?}", ConnectionId::new(&[0xab]).unwrap()),
            "ConnectionId(ab)"
        );
    }
}
