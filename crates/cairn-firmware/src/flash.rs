//! The flash the firmware lives in, as a small trait: erase a sector, program
//! bytes, read bytes. Erased flash reads as `0xFF`; programming can only clear
//! bits, so a sector is erased before it is written again.
//!
//! [`Partition`] is a window of whole sectors over a larger flash, so one chip
//! can hold the slots, the staging area, the journal and the protected
//! storage. The helpers [`read_stable`] and [`program_sector`] are the
//! manager's defences against transient read errors and failed writes.

/// The shape of a flash device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub sector_size: usize,
    pub sector_count: usize,
}

impl Geometry {
    pub fn size(&self) -> u64 {
        self.sector_size as u64 * self.sector_count as u64
    }
}

/// What a flash operation can report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FlashError {
    /// The power went: nothing more happens until the device restarts.
    #[error("power lost")]
    PowerLoss,
    #[error("flash write failed")]
    WriteFailed,
    #[error("flash erase failed")]
    EraseFailed,
    #[error("flash access out of bounds")]
    OutOfBounds,
    /// Programming, erasing or reading kept failing after the retries.
    #[error("flash area stays unreliable after retries")]
    Unreliable,
}

/// A flash device (or a part of one).
pub trait Flash {
    fn geometry(&self) -> Geometry;
    /// Sets every byte of `sector` to `0xFF`.
    fn erase(&mut self, sector: usize) -> Result<(), FlashError>;
    /// Programs `data` at `offset` (bits can only go from 1 to 0).
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), FlashError>;
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), FlashError>;
}

impl<F: Flash + ?Sized> Flash for &mut F {
    fn geometry(&self) -> Geometry {
        (**self).geometry()
    }
    fn erase(&mut self, sector: usize) -> Result<(), FlashError> {
        (**self).erase(sector)
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), FlashError> {
        (**self).write(offset, data)
    }
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), FlashError> {
        (**self).read(offset, buf)
    }
}

/// Sectors `first .. first + count` of `inner`, seen as a flash of their own.
#[derive(Debug, Clone)]
pub struct Partition<F> {
    inner: F,
    first: usize,
    count: usize,
}

impl<F: Flash> Partition<F> {
    /// `None` when the range does not fit inside `inner`.
    pub fn new(inner: F, first: usize, count: usize) -> Option<Self> {
        let end = first.checked_add(count)?;
        (end <= inner.geometry().sector_count).then_some(Self {
            inner,
            first,
            count,
        })
    }

    fn translate(&self, offset: u64, len: usize) -> Result<u64, FlashError> {
        let size = self.geometry().size();
        let end = offset
            .checked_add(len as u64)
            .ok_or(FlashError::OutOfBounds)?;
        if end > size {
            return Err(FlashError::OutOfBounds);
        }
        Ok(offset + self.first as u64 * self.geometry().sector_size as u64)
    }
}

impl<F: Flash> Flash for Partition<F> {
    fn geometry(&self) -> Geometry {
        Geometry {
            sector_size: self.inner.geometry().sector_size,
            sector_count: self.count,
        }
    }
    fn erase(&mut self, sector: usize) -> Result<(), FlashError> {
        if sector >= self.count {
            return Err(FlashError::OutOfBounds);
        }
        self.inner.erase(self.first + sector)
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), FlashError> {
        let at = self.translate(offset, data.len())?;
        self.inner.write(at, data)
    }
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), FlashError> {
        let at = self.translate(offset, buf.len())?;
        self.inner.read(at, buf)
    }
}

/// How often a failing operation is tried again before giving up.
pub const RETRIES: usize = 8;

/// Reads until two reads in a row agree, so a transient bit flip on the bus
/// is not taken for the content. Power loss ends the attempt at once.
pub fn read_stable<F: Flash + ?Sized>(
    flash: &mut F,
    offset: u64,
    buf: &mut [u8],
) -> Result<(), FlashError> {
    let mut check = vec![0; buf.len()];
    flash.read(offset, buf)?;
    for _ in 0..RETRIES {
        flash.read(offset, &mut check)?;
        if check == buf {
            return Ok(());
        }
        buf.copy_from_slice(&check);
    }
    Err(FlashError::Unreliable)
}

/// Erases `sector`, programs `data` at its start and reads it back; a failed
/// erase, a failed write or a read-back that differs starts over, up to
/// [`RETRIES`] times. `data` may be shorter than the sector.
pub fn program_sector<F: Flash + ?Sized>(
    flash: &mut F,
    sector: usize,
    data: &[u8],
) -> Result<(), FlashError> {
    let offset = sector as u64 * flash.geometry().sector_size as u64;
    let mut check = vec![0; data.len()];
    for _ in 0..RETRIES {
        match flash.erase(sector) {
            Ok(()) => {}
            Err(FlashError::PowerLoss) => return Err(FlashError::PowerLoss),
            Err(_) => continue,
        }
        match flash.write(offset, data) {
            Ok(()) => {}
            Err(FlashError::PowerLoss) => return Err(FlashError::PowerLoss),
            Err(_) => continue,
        }
        match read_stable(flash, offset, &mut check) {
            Ok(()) if check == data => return Ok(()),
            Ok(()) | Err(FlashError::Unreliable) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(FlashError::Unreliable)
}

/// SHA-256 over the first `len` bytes of `flash`, read one sector at a time
/// with [`read_stable`].
pub fn digest_of<F: Flash + ?Sized>(flash: &mut F, len: u64) -> Result<crate::Digest, FlashError> {
    use sha2::Digest as _;
    if len > flash.geometry().size() {
        return Err(FlashError::OutOfBounds);
    }
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0; flash.geometry().sector_size];
    let mut offset = 0;
    while offset < len {
        let n = (len - offset).min(buf.len() as u64) as usize;
        read_stable(flash, offset, &mut buf[..n])?;
        hasher.update(&buf[..n]);
        offset += n as u64;
    }
    Ok(hasher.finalize().into())
}
