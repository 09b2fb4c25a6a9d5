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

#[cfg(test)]
mod tests {
    use super::*;

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
