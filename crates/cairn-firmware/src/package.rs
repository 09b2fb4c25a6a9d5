//! The package file: one blob that carries the signed manifest and the
//! payload, for the /5 Package resource (push, Block1) and the Package URI
//! (pull, Block2 or HTTP ranges).
//!
//! ```text
//! "CFW1" | manifest length (u16, big-endian) | signed manifest | payload
//! ```
//!
//! [`PackageStream`] takes the blob in pieces at package offsets, holds
//! the header and manifest in RAM, calls [`Device::begin`] as soon as the
//! manifest is complete (so it is verified before the first payload byte
//! reaches flash) and forwards the payload to [`Device::write_chunk`].

use crate::device::Device;
use crate::flash::Flash;
use crate::manifest::MAX_MANIFEST_LEN;
use crate::result::UpdateError;
use crate::storage::ProtectedStorage;

const MAGIC: &[u8; 4] = b"CFW1";
const FIXED: usize = 6;

/// Builds a package file.
pub fn encode_package(signed_manifest: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FIXED + signed_manifest.len() + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(signed_manifest.len().min(u16::MAX as usize) as u16).to_be_bytes());
    out.extend_from_slice(signed_manifest);
    out.extend_from_slice(payload);
    out
}

/// Splits a whole package file into manifest and payload.
pub fn split_package(package: &[u8]) -> Result<(&[u8], &[u8]), UpdateError> {
    let len = header_len(package)?.ok_or(UpdateError::Incomplete {
        received: package.len() as u64,
        expected: FIXED as u64,
    })?;
    if package.len() < len {
        return Err(UpdateError::Incomplete {
            received: package.len() as u64,
            expected: len as u64,
        });
    }
    Ok((&package[FIXED..len], &package[len..]))
}

/// Header plus manifest length, once the fixed part is there.
fn header_len(bytes: &[u8]) -> Result<Option<usize>, UpdateError> {
    if bytes.len() < FIXED {
        return Ok(None);
    }
    if &bytes[..4] != MAGIC {
        return Err(UpdateError::Manifest(crate::ManifestError::Envelope(
            "not a Cairn firmware package".into(),
        )));
    }
    let len = usize::from(u16::from_be_bytes([bytes[4], bytes[5]]));
    if len > MAX_MANIFEST_LEN {
        return Err(UpdateError::Manifest(crate::ManifestError::TooLong(len)));
    }
    Ok(Some(FIXED + len))
}

/// A package arriving in pieces.
#[derive(Debug, Default)]
pub struct PackageStream {
    header: Vec<u8>,
    payload_start: Option<u64>,
}

impl PackageStream {
    pub fn new() -> Self {
        Self::default()
    }

    /// Package bytes the device has safely: where a pull resumes (0 until
    /// the manifest has been accepted).
    pub fn resume_offset<F: Flash, S: ProtectedStorage>(&self, device: &Device<F, S>) -> u64 {
        match (self.payload_start, device.resume_offset()) {
            (Some(start), Some(offset)) => start + offset,
            _ => 0,
        }
    }

    /// Feeds `bytes` found at `offset` of the package. `etag` names the
    /// package at its source; `now_unix` is the time if the device knows it.
    pub fn write<F: Flash, S: ProtectedStorage>(
        &mut self,
        device: &mut Device<F, S>,
        offset: u64,
        bytes: &[u8],
        etag: &[u8],
        now_unix: Option<u64>,
    ) -> Result<(), UpdateError> {
        let Some(start) = self.payload_start else {
            let expected = self.header.len() as u64;
            if offset != expected {
                return Err(UpdateError::OutOfOrder { offset, expected });
            }
            let mut rest = bytes;
            loop {
                let want = match header_len(&self.header)? {
                    None => FIXED,
                    Some(len) => len,
                };
                let take = (want - self.header.len()).min(rest.len());
                self.header.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                if self.header.len() < want {
                    return Ok(());
                }
                if let Some(len) = header_len(&self.header)? {
                    if self.header.len() == len {
                        break;
                    }
                }
            }
            device.begin(&self.header[FIXED..], etag, now_unix)?;
            let start = self.header.len() as u64;
            self.payload_start = Some(start);
            return if rest.is_empty() {
                Ok(())
            } else {
                device.write_chunk(0, rest)
            };
        };
        if offset < start {
            let skip = (start - offset) as usize;
            if skip >= bytes.len() {
                return Ok(());
            }
            return device.write_chunk(0, &bytes[skip..]);
        }
        device.write_chunk(offset - start, bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_what_it_encodes() {
        let package = encode_package(b"manifest", b"payload");
        assert_eq!(
            split_package(&package).unwrap(),
            (&b"manifest"[..], &b"payload"[..])
        );
        assert!(split_package(b"XXXX\0\0").is_err());
        assert!(split_package(&package[..8]).is_err());
    }
}
