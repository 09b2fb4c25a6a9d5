//! The boot state kept in protected storage: which slot is confirmed, the
//! anti-rollback counter, each slot's signed manifest, a pending test boot,
//! the download in progress (with its resume offset), the in-place patch
//! journal and the last LwM2M Update Result.
//!
//! The encoding is a versioned, length-prefixed binary form. The record is
//! protected by the storage's checksum, and its decoder still checks every
//! length, so a damaged record is an error, not a panic.

use crate::manifest::MAX_MANIFEST_LEN;

const VERSION: u8 = 1;
/// Longest download identity (ETag) kept.
pub const MAX_ETAG_LEN: usize = 255;

/// One of the two A/B slots (an in-place device only has [`Slot::A`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub fn index(self) -> usize {
        match self {
            Slot::A => 0,
            Slot::B => 1,
        }
    }

    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    fn from_index(i: u8) -> Option<Slot> {
        match i {
            0 => Some(Slot::A),
            1 => Some(Slot::B),
            _ => None,
        }
    }
}

/// A first boot of a new image that has not confirmed itself yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trial {
    pub slot: Slot,
    /// Set before the trial image is started: finding it set at the next
    /// boot means the image never confirmed, and the bootloader reverts.
    pub attempted: bool,
}

/// A package being received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Download {
    pub manifest: Vec<u8>,
    pub etag: Vec<u8>,
    /// Payload bytes known to be in flash (a sector boundary, or the end).
    pub written: u64,
    /// The whole payload is in flash and verified.
    pub complete: bool,
    /// The install was started (A/B: the new slot is being prepared).
    pub installing: bool,
}

/// Where an in-place patch stands (the journal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InPlaceProgress {
    /// The sector being produced.
    pub sector: u32,
    /// The old contents of `sector` are saved in the scratch ring.
    pub backed_up: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BootState {
    /// The anti-rollback counter: the sequence number of the confirmed image.
    pub counter: u64,
    pub active: Option<Slot>,
    pub slots: [Option<Vec<u8>>; 2],
    pub trial: Option<Trial>,
    pub download: Option<Download>,
    pub in_place: Option<InPlaceProgress>,
    pub last_result: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("boot state record is damaged at byte {0}")]
pub struct StateError(pub usize);

impl BootState {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![VERSION];
        out.extend_from_slice(&self.counter.to_be_bytes());
        out.push(self.active.map_or(0xFF, |s| s.index() as u8));
        for slot in &self.slots {
            put_optional_bytes(&mut out, slot.as_deref());
        }
        match self.trial {
            None => out.push(0),
            Some(t) => out.extend_from_slice(&[1, t.slot.index() as u8, t.attempted as u8]),
        }
        match &self.download {
            None => out.push(0),
            Some(d) => {
                out.push(1);
                put_bytes(&mut out, &d.manifest);
                put_bytes(&mut out, &d.etag);
                out.extend_from_slice(&d.written.to_be_bytes());
                out.push(d.complete as u8 | (d.installing as u8) << 1);
            }
        }
        match self.in_place {
            None => out.push(0),
            Some(p) => {
                out.push(1);
                out.extend_from_slice(&p.sector.to_be_bytes());
                out.push(p.backed_up as u8);
            }
        }
        out.push(self.last_result);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, StateError> {
        let mut r = Reader { bytes, at: 0 };
        if r.u8()? != VERSION {
            return Err(StateError(0));
        }
        let counter = r.u64()?;
        let active = match r.u8()? {
            0xFF => None,
            i => Some(Slot::from_index(i).ok_or(r.error())?),
        };
        let slots = [r.optional_bytes()?, r.optional_bytes()?];
        let trial = match r.u8()? {
            0 => None,
            1 => Some(Trial {
                slot: Slot::from_index(r.u8()?).ok_or(r.error())?,
                attempted: r.flag()?,
            }),
            _ => return Err(r.error()),
        };
        let download = match r.u8()? {
            0 => None,
            1 => {
                let manifest = r.bytes()?;
                let etag = r.bytes()?;
                let written = r.u64()?;
                let flags = r.u8()?;
                if flags > 3 || etag.len() > MAX_ETAG_LEN {
                    return Err(r.error());
                }
                Some(Download {
                    manifest,
                    etag,
                    written,
                    complete: flags & 1 != 0,
                    installing: flags & 2 != 0,
                })
            }
            _ => return Err(r.error()),
        };
        let in_place = match r.u8()? {
            0 => None,
            1 => Some(InPlaceProgress {
                sector: r.u32()?,
                backed_up: r.flag()?,
            }),
            _ => return Err(r.error()),
        };
        let last_result = r.u8()?;
        if r.at != bytes.len() {
            return Err(r.error());
        }
        Ok(BootState {
            counter,
            active,
            slots,
            trial,
            download,
            in_place,
            last_result,
        })
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    out.extend_from_slice(bytes);
}

fn put_optional_bytes(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        None => out.push(0),
        Some(b) => {
            out.push(1);
            put_bytes(out, b);
        }
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn error(&self) -> StateError {
        StateError(self.at)
    }

    fn take(&mut self, n: usize) -> Result<&[u8], StateError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or(self.error())?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, StateError> {
        Ok(self.take(1)?[0])
    }

    fn flag(&mut self) -> Result<bool, StateError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(self.error()),
        }
    }

    fn u32(&mut self) -> Result<u32, StateError> {
        let mut b = [0; 4];
        b.copy_from_slice(self.take(4)?);
        Ok(u32::from_be_bytes(b))
    }

    fn u64(&mut self) -> Result<u64, StateError> {
        let mut b = [0; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(b))
    }

    fn bytes(&mut self) -> Result<Vec<u8>, StateError> {
        let mut b = [0; 2];
        b.copy_from_slice(self.take(2)?);
        let len = usize::from(u16::from_be_bytes(b));
        if len > MAX_MANIFEST_LEN {
            return Err(self.error());
        }
        Ok(self.take(len)?.to_vec())
    }

    fn optional_bytes(&mut self) -> Result<Option<Vec<u8>>, StateError> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.bytes()?)),
            _ => Err(self.error()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trips() {
        let state = BootState {
            counter: 9,
            active: Some(Slot::B),
            slots: [Some(vec![1, 2]), None],
            trial: Some(Trial {
                slot: Slot::A,
                attempted: true,
            }),
            download: Some(Download {
                manifest: vec![3; 40],
                etag: b"v2".to_vec(),
                written: 4096,
                complete: false,
                installing: true,
            }),
            in_place: Some(InPlaceProgress {
                sector: 3,
                backed_up: true,
            }),
            last_result: 8,
        };
        assert_eq!(BootState::decode(&state.encode()), Ok(state));
        assert_eq!(
            BootState::decode(&BootState::default().encode()),
            Ok(BootState::default())
        );
    }

    proptest! {
        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = BootState::decode(&bytes);
        }
    }
}
