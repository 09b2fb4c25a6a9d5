//! Byte readers and writers for the TLS presentation language (RFC 5246 §4).
//!
//! [`Reader`] never panics: every accessor checks the remaining length first and returns
//! [`Error::Truncated`] naming the structure being read.

use crate::Error;

/// A cursor over untrusted bytes.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Starts reading `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.bytes.len()
    }

    /// Whether everything has been read.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Takes `len` bytes.
    pub fn take(&mut self, len: usize, what: &'static str) -> Result<&'a [u8], Error> {
        if len > self.bytes.len() {
            return Err(Error::Truncated { what });
        }
        let (head, tail) = self.bytes.split_at(len);
        self.bytes = tail;
        Ok(head)
    }

    /// Takes everything that is left.
    pub fn rest(&mut self) -> &'a [u8] {
        let rest = self.bytes;
        self.bytes = &[];
        rest
    }

    /// Reads a fixed-size array.
    pub fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], Error> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    /// Reads one byte.
    pub fn u8(&mut self, what: &'static str) -> Result<u8, Error> {
        Ok(self.array::<1>(what)?[0])
    }

    /// Reads a big-endian `uint16`.
    pub fn u16(&mut self, what: &'static str) -> Result<u16, Error> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    /// Reads a big-endian `uint24`.
    pub fn u24(&mut self, what: &'static str) -> Result<u32, Error> {
        let [a, b, c] = self.array(what)?;
        Ok(u32::from_be_bytes([0, a, b, c]))
    }

    /// Reads a big-endian `uint48`.
    pub fn u48(&mut self, what: &'static str) -> Result<u64, Error> {
        let [a, b, c, d, e, f] = self.array(what)?;
        Ok(u64::from_be_bytes([0, 0, a, b, c, d, e, f]))
    }

    /// Reads a vector with a one-byte length prefix.
    pub fn vec8(&mut self, what: &'static str) -> Result<&'a [u8], Error> {
        let len = self.u8(what)?;
        self.take(usize::from(len), what)
    }

    /// Reads a vector with a two-byte length prefix.
    pub fn vec16(&mut self, what: &'static str) -> Result<&'a [u8], Error> {
        let len = self.u16(what)?;
        self.take(usize::from(len), what)
    }
}

/// Appends a big-endian `uint24`.
pub fn put_u24(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_be_bytes()[1..]);
}

/// Appends a big-endian `uint48`.
pub fn put_u48(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(&value.to_be_bytes()[2..]);
}

/// Appends a vector with a one-byte length prefix; `bytes` must be shorter than 256 bytes.
pub fn put_vec8(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(u8::try_from(bytes.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(&bytes[..bytes.len().min(usize::from(u8::MAX))]);
}

/// Appends a vector with a two-byte length prefix; `bytes` must be shorter than 64 KiB.
pub fn put_vec16(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&u16::try_from(bytes.len()).unwrap_or(u16::MAX).to_be_bytes());
    out.extend_from_slice(&bytes[..bytes.len().min(usize::from(u16::MAX))]);
}

/// Writes a two-byte length prefix in front of what `body` appends.
pub fn with_len16(out: &mut Vec<u8>, body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0, 0]);
    body(out);
    let len = u16::try_from(out.len() - start - 2).unwrap_or(u16::MAX);
    out[start..start + 2].copy_from_slice(&len.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_integers_and_vectors() {
        let bytes = [1, 0, 2, 0, 0, 3, 0, 0, 0, 0, 0, 4, 2, 9, 9, 0, 1, 7];
        let mut reader = Reader::new(&bytes);
        assert_eq!(reader.u8("a").unwrap(), 1);
        assert_eq!(reader.u16("b").unwrap(), 2);
        assert_eq!(reader.u24("c").unwrap(), 3);
        assert_eq!(reader.u48("d").unwrap(), 4);
        assert_eq!(reader.vec8("e").unwrap(), &[9, 9]);
        assert_eq!(reader.vec16("f").unwrap(), &[7]);
        assert!(reader.is_empty());
        assert_eq!(reader.u8("g"), Err(Error::Truncated { what: "g" }));
    }

    #[test]
    fn truncated_vector_is_an_error() {
        let mut reader = Reader::new(&[5, 1, 2]);
        assert_eq!(reader.vec8("v"), Err(Error::Truncated { what: "v" }));
    }

    #[test]
    fn writes_length_prefixes() {
        let mut out = Vec::new();
        put_u24(&mut out, 0x010203);
        put_u48(&mut out, 0x0a0b0c0d0e0f);
        put_vec8(&mut out, &[1]);
        with_len16(&mut out, |out| out.extend_from_slice(&[4, 5, 6]));
        assert_eq!(out, [1, 2, 3, 10, 11, 12, 13, 14, 15, 1, 1, 0, 3, 4, 5, 6]);
    }
}
