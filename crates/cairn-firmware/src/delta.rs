//! Binary deltas in the bsdiff 4 format (`BSDIFF40`), as made by `qbsdiff`.
//!
//! A patch is a 32-byte header (magic, compressed control length,
//! compressed diff length, new size) and three bzip2 streams: controls
//! `(add, copy, seek)`, diff bytes (added to old bytes) and extra bytes
//! (copied as they are). [`create_patch`] makes one with `qbsdiff`.
//!
//! [`PatchDecoder`] applies a patch as a stream: it hands out the new image
//! in pieces of the caller's choosing and asks an [`OldImage`] for the old
//! bytes it needs, so the old image can stay in flash, and a device can
//! apply a patch in place as long as every read lands where the old bytes
//! still are (see [`crate::device`]). Every length and offset in the patch
//! is untrusted and checked; nothing is allocated from a patch's numbers.

use bzip2::read::BzDecoder;
use std::io::Read;

const MAGIC: &[u8; 8] = b"BSDIFF40";
const HEADER: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    #[error("not a bsdiff 4 patch")]
    NotAPatch,
    #[error("patch is corrupt: {0}")]
    Corrupt(&'static str),
    #[error("patch makes a {found}-byte image, the manifest says {expected}")]
    WrongSize { expected: u64, found: u64 },
    #[error("patch reads old bytes outside the old image")]
    OldOutOfRange,
    #[error("patch reads old bytes that an in-place update has already overwritten")]
    NotInPlaceApplicable,
    #[error("reading the old image failed: {0}")]
    Flash(#[from] crate::flash::FlashError),
    #[error("creating the patch failed: {0}")]
    Create(String),
}

/// Where the decoder reads the old image from.
pub trait OldImage {
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Fills `buf` with old bytes at `offset` (the decoder has checked the
    /// range against `len`).
    fn read_old(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), DeltaError>;
}

impl OldImage for &[u8] {
    fn len(&self) -> u64 {
        <[u8]>::len(self) as u64
    }
    fn read_old(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), DeltaError> {
        let start = offset as usize;
        buf.copy_from_slice(&self[start..start + buf.len()]);
        Ok(())
    }
}

/// The size of the image a patch makes, from its header.
pub fn patch_target_size(patch: &[u8]) -> Result<u64, DeltaError> {
    let header = patch.get(..HEADER).ok_or(DeltaError::NotAPatch)?;
    if &header[..8] != MAGIC {
        return Err(DeltaError::NotAPatch);
    }
    offtin(&header[24..32]).ok_or(DeltaError::Corrupt("new size"))
}

/// bsdiff's sign-magnitude little-endian integer; `None` when negative.
fn offtin(bytes: &[u8]) -> Option<u64> {
    let raw = u64::from_le_bytes(bytes.try_into().ok()?);
    (raw >> 63 == 0).then_some(raw)
}

fn signed(bytes: &[u8]) -> i64 {
    let raw = u64::from_le_bytes(bytes.try_into().unwrap_or_default());
    let magnitude = (raw & !(1 << 63)) as i64;
    if raw >> 63 == 1 {
        -magnitude
    } else {
        magnitude
    }
}

/// A patch being applied, piece by piece.
pub struct PatchDecoder<'p> {
    controls: BzDecoder<&'p [u8]>,
    diff: BzDecoder<&'p [u8]>,
    extra: BzDecoder<&'p [u8]>,
    new_size: u64,
    produced: u64,
    old_position: i64,
    add_left: u64,
    copy_left: u64,
    seek_pending: Option<i64>,
    /// Controls in a row that produced nothing (bounded, so a patch cannot
    /// spin the decoder on an endless stream of empty controls).
    idle_controls: u32,
}

const MAX_IDLE_CONTROLS: u32 = 64;

impl<'p> PatchDecoder<'p> {
    pub fn new(patch: &'p [u8]) -> Result<Self, DeltaError> {
        let new_size = patch_target_size(patch)?;
        let control_len = offtin(&patch[8..16]).ok_or(DeltaError::Corrupt("control length"))?;
        let diff_len = offtin(&patch[16..24]).ok_or(DeltaError::Corrupt("diff length"))?;
        let body = &patch[HEADER..];
        let control_end = usize::try_from(control_len)
            .ok()
            .filter(|&n| n <= body.len())
            .ok_or(DeltaError::Corrupt("control length"))?;
        let diff_end = usize::try_from(diff_len)
            .ok()
            .and_then(|n| control_end.checked_add(n))
            .filter(|&n| n <= body.len())
            .ok_or(DeltaError::Corrupt("diff length"))?;
        Ok(Self {
            controls: BzDecoder::new(&body[..control_end]),
            diff: BzDecoder::new(&body[control_end..diff_end]),
            extra: BzDecoder::new(&body[diff_end..]),
            new_size,
            produced: 0,
            old_position: 0,
            add_left: 0,
            copy_left: 0,
            seek_pending: None,
            idle_controls: 0,
        })
    }

    /// Size of the image the patch makes.
    pub fn new_size(&self) -> u64 {
        self.new_size
    }

    /// Bytes handed out so far.
    pub fn produced(&self) -> u64 {
        self.produced
    }

    fn next_control(&mut self) -> Result<(), DeltaError> {
        let mut control = [0; 24];
        read_full(&mut self.controls, &mut control)?;
        let add = offtin(&control[0..8]).ok_or(DeltaError::Corrupt("control"))?;
        let copy = offtin(&control[8..16]).ok_or(DeltaError::Corrupt("control"))?;
        let remaining = self.new_size - self.produced;
        if add > remaining || copy > remaining - add {
            return Err(DeltaError::Corrupt("control runs past the new size"));
        }
        if add == 0 && copy == 0 {
            self.idle_controls += 1;
            if self.idle_controls > MAX_IDLE_CONTROLS {
                return Err(DeltaError::Corrupt("controls make no progress"));
            }
        } else {
            self.idle_controls = 0;
        }
        self.add_left = add;
        self.copy_left = copy;
        self.seek_pending = Some(signed(&control[16..24]));
        Ok(())
    }

    /// Fills `out` with the next `out.len()` bytes of the new image.
    pub fn fill(&mut self, out: &mut [u8], old: &mut dyn OldImage) -> Result<(), DeltaError> {
        if out.len() as u64 > self.new_size - self.produced {
            return Err(DeltaError::WrongSize {
                expected: self.produced + out.len() as u64,
                found: self.new_size,
            });
        }
        let mut done = 0;
        let mut scratch = [0u8; 512];
        while done < out.len() {
            if self.add_left == 0 && self.copy_left == 0 {
                if let Some(seek) = self.seek_pending.take() {
                    self.old_position = self
                        .old_position
                        .checked_add(seek)
                        .ok_or(DeltaError::Corrupt("seek"))?;
                }
                self.next_control()?;
                continue;
            }
            let want = out.len() - done;
            if self.add_left > 0 {
                let n = (self.add_left.min(want as u64) as usize).min(scratch.len());
                let start =
                    u64::try_from(self.old_position).map_err(|_| DeltaError::OldOutOfRange)?;
                if start
                    .checked_add(n as u64)
                    .is_none_or(|end| end > old.len())
                {
                    return Err(DeltaError::OldOutOfRange);
                }
                let target = &mut out[done..done + n];
                old.read_old(start, target)?;
                read_full(&mut self.diff, &mut scratch[..n])?;
                for (byte, delta) in target.iter_mut().zip(&scratch[..n]) {
                    *byte = byte.wrapping_add(*delta);
                }
                self.old_position += n as i64;
                self.add_left -= n as u64;
                self.produced += n as u64;
                done += n;
            } else {
                let n = self.copy_left.min(want as u64) as usize;
                read_full(&mut self.extra, &mut out[done..done + n])?;
                self.copy_left -= n as u64;
                self.produced += n as u64;
                done += n;
            }
        }
        Ok(())
    }
}

fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> Result<(), DeltaError> {
    reader
        .read_exact(buf)
        .map_err(|_| DeltaError::Corrupt("stream ends early or is not bzip2"))
}

/// Applies `patch` to `old` in memory (host side, and tests).
pub fn apply_patch(old: &[u8], patch: &[u8], max_size: u64) -> Result<Vec<u8>, DeltaError> {
    let mut decoder = PatchDecoder::new(patch)?;
    if decoder.new_size() > max_size {
        return Err(DeltaError::WrongSize {
            expected: max_size,
            found: decoder.new_size(),
        });
    }
    let mut out = vec![0; decoder.new_size() as usize];
    let mut source = old;
    decoder.fill(&mut out, &mut source)?;
    Ok(out)
}

/// Makes a bsdiff 4 patch from `old` to `new` with `qbsdiff`.
pub fn create_patch(old: &[u8], new: &[u8]) -> Result<Vec<u8>, DeltaError> {
    let mut patch = Vec::new();
    qbsdiff::Bsdiff::new(old, new)
        .compare(std::io::Cursor::new(&mut patch))
        .map_err(|e| DeltaError::Create(e.to_string()))?;
    Ok(patch)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn images() -> (Vec<u8>, Vec<u8>) {
        let old: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut new = old.clone();
        new[100..140].fill(3);
        new.extend_from_slice(b"appended tail");
        (old, new)
    }

    #[test]
    fn streaming_apply_matches_in_memory() {
        let (old, new) = images();
        let patch = create_patch(&old, &new).unwrap();
        assert_eq!(apply_patch(&old, &patch, 1 << 20).unwrap(), new);
        let mut decoder = PatchDecoder::new(&patch).unwrap();
        let mut out = Vec::new();
        let mut source: &[u8] = &old;
        while decoder.produced() < decoder.new_size() {
            let n = (decoder.new_size() - decoder.produced()).min(777) as usize;
            let mut piece = vec![0; n];
            decoder.fill(&mut piece, &mut source).unwrap();
            out.extend_from_slice(&piece);
        }
        assert_eq!(out, new);
    }

    #[test]
    fn wrong_base_is_out_of_range_or_different() {
        let (old, new) = images();
        let patch = create_patch(&old, &new).unwrap();
        let short = &old[..100];
        assert!(apply_patch(short, &patch, 1 << 20).is_err());
        assert!(apply_patch(&old, &patch[..40], 1 << 20).is_err());
        assert_eq!(patch_target_size(b"nope"), Err(DeltaError::NotAPatch));
    }
}
