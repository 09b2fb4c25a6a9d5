//! Protected storage: one small record (the boot state, the anti-rollback
//! counter, the in-place patch journal) that must survive a power cut.
//!
//! [`ProtectedStorage`] promises atomic replacement: after a cut, `load`
//! returns either the old record or the new one, never a mix.
//! [`RecordStore`] keeps that promise on plain flash with two banks written
//! in turn, each record carrying a generation number and a SHA-256; a torn
//! write leaves a bank that fails its check, and the other bank still holds
//! the previous record.

use crate::flash::{Flash, FlashError, RETRIES, program_sector, read_stable};
use sha2::{Digest as _, Sha256};

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    #[error("protected storage flash: {0}")]
    Flash(#[from] FlashError),
    #[error("record of {0} bytes does not fit the protected storage")]
    TooLarge(usize),
}

/// A store for one record, replaced atomically.
pub trait ProtectedStorage {
    /// The last record stored, `None` on a fresh device.
    fn load(&mut self) -> Result<Option<Vec<u8>>, StorageError>;
    /// Replaces the record; a power cut leaves the old or the new one.
    fn store(&mut self, record: &[u8]) -> Result<(), StorageError>;
}

const MAGIC: &[u8; 4] = b"CRS1";
const HEADER: usize = 4 + 8 + 4;
const TRAILER: usize = 32;

/// [`ProtectedStorage`] on a flash of at least two sectors, split in two
/// banks.
#[derive(Debug)]
pub struct RecordStore<F> {
    flash: F,
    /// Bank and generation of the newest valid record, once known.
    current: Option<(usize, u64)>,
}

impl<F: Flash> RecordStore<F> {
    pub fn new(flash: F) -> Self {
        Self {
            flash,
            current: None,
        }
    }

    pub fn flash(&self) -> &F {
        &self.flash
    }

    fn bank_sectors(&self) -> usize {
        self.flash.geometry().sector_count / 2
    }

    fn bank_size(&self) -> usize {
        self.bank_sectors() * self.flash.geometry().sector_size
    }

    /// The largest record this store holds.
    pub fn capacity(&self) -> usize {
        self.bank_size().saturating_sub(HEADER + TRAILER)
    }

    fn read_bank(&mut self, bank: usize) -> Result<Option<(u64, Vec<u8>)>, FlashError> {
        let base = (bank * self.bank_size()) as u64;
        for _ in 0..RETRIES {
            let mut header = [0; HEADER];
            match read_stable(&mut self.flash, base, &mut header) {
                Ok(()) => {}
                Err(FlashError::Unreliable) => continue,
                Err(e) => return Err(e),
            }
            if &header[..4] != MAGIC {
                return Ok(None);
            }
            let generation = u64::from_be_bytes(header[4..12].try_into().unwrap_or_default());
            let len = u32::from_be_bytes(header[12..16].try_into().unwrap_or_default()) as usize;
            if len > self.capacity() {
                return Ok(None);
            }
            let mut body = vec![0; len + TRAILER];
            match read_stable(&mut self.flash, base + HEADER as u64, &mut body) {
                Ok(()) => {}
                Err(FlashError::Unreliable) => continue,
                Err(e) => return Err(e),
            }
            let mut hasher = Sha256::new();
            hasher.update(header);
            hasher.update(&body[..len]);
            if hasher.finalize().as_slice() == &body[len..] {
                body.truncate(len);
                return Ok(Some((generation, body)));
            }
        }
        Ok(None)
    }
}

impl<F: Flash> ProtectedStorage for RecordStore<F> {
    fn load(&mut self) -> Result<Option<Vec<u8>>, StorageError> {
        let first = self.read_bank(0)?;
        let second = self.read_bank(1)?;
        let newest = match (first, second) {
            (Some(a), Some(b)) if b.0 > a.0 => Some((1, b)),
            (Some(a), _) => Some((0, a)),
            (None, Some(b)) => Some((1, b)),
            (None, None) => None,
        };
        Ok(match newest {
            Some((bank, (generation, record))) => {
                self.current = Some((bank, generation));
                Some(record)
            }
            None => {
                self.current = None;
                None
            }
        })
    }

    fn store(&mut self, record: &[u8]) -> Result<(), StorageError> {
        if record.len() > self.capacity() {
            return Err(StorageError::TooLarge(record.len()));
        }
        if self.current.is_none() {
            self.load()?;
        }
        let (bank, generation) = match self.current {
            Some((bank, generation)) => (1 - bank, generation + 1),
            None => (0, 1),
        };
        let mut bytes = Vec::with_capacity(HEADER + record.len() + TRAILER);
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&generation.to_be_bytes());
        bytes.extend_from_slice(&(record.len() as u32).to_be_bytes());
        bytes.extend_from_slice(record);
        let digest = Sha256::digest(&bytes);
        bytes.extend_from_slice(&digest);
        let sector_size = self.flash.geometry().sector_size;
        let first_sector = bank * self.bank_sectors();
        // The header goes last: a bank whose body is torn never shows a
        // valid header over stale bytes of an older record.
        let chunks: Vec<&[u8]> = bytes.chunks(sector_size).collect();
        for (i, chunk) in chunks.iter().enumerate().rev() {
            program_sector(&mut self.flash, first_sector + i, chunk)?;
        }
        self.current = Some((bank, generation));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flash::Geometry;
    use crate::sim::{SimFlash, SimPower};

    #[test]
    fn every_cut_leaves_old_or_new() {
        let geometry = Geometry {
            sector_size: 64,
            sector_count: 4,
        };
        for cut in 1..40 {
            let power = SimPower::new(cut);
            let flash = SimFlash::new(geometry, power.clone());
            let mut store = RecordStore::new(flash.clone());
            store.store(&[1; 70]).unwrap();
            power.cut_after(cut);
            let outcome = store.store(&[2; 90]);
            power.restore();
            let mut store = RecordStore::new(flash);
            let loaded = store.load().unwrap().unwrap();
            match outcome {
                Ok(()) => assert_eq!(loaded, vec![2; 90]),
                Err(_) => assert!(loaded == vec![1; 70] || loaded == vec![2; 90]),
            }
        }
    }

    #[test]
    fn refuses_records_larger_than_a_bank() {
        let flash = SimFlash::new(
            Geometry {
                sector_size: 64,
                sector_count: 2,
            },
            SimPower::new(0),
        );
        let mut store = RecordStore::new(flash);
        assert_eq!(store.store(&[0; 64]), Err(StorageError::TooLarge(64)));
        store.store(&[0; 16]).unwrap();
        assert_eq!(store.load().unwrap(), Some(vec![0; 16]));
    }
}
