//! A simulated flash with fault injection, for tests and benchmarks.
//!
//! Several [`SimFlash`] chips can share one [`SimPower`] supply, which counts
//! every operation on every chip and can cut the power during the N-th one.
//! An interrupted operation is modelled honestly: an erase leaves the sector
//! as a mix of old bytes, erased bytes and noise; a write programs a prefix
//! and a garbage byte. After the cut every operation fails with
//! [`FlashError::PowerLoss`] until [`SimPower::restore`] (the reboot: the
//! caller then re-creates its manager from the flash contents).
//!
//! The supply also injects transient bit flips on reads, failed writes and
//! failed erases (which leave the area partially programmed or erased, like
//! a NAND error), at rates given in parts per million, from a seeded
//! generator: a run is reproducible from its seed. Each chip counts erases
//! per sector (wear).

use crate::flash::{Flash, FlashError, Geometry};
use std::sync::{Arc, Mutex, MutexGuard};

/// SplitMix64: a small deterministic generator for fault decisions.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `0..bound` (`bound` > 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }

    /// True with probability `ppm` parts per million.
    pub fn chance(&mut self, ppm: u32) -> bool {
        ppm > 0 && self.below(1_000_000) < u64::from(ppm)
    }
}

/// Fault rates, in parts per million of operations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultRates {
    pub bit_flip_per_read: u32,
    pub write_failure: u32,
    pub erase_failure: u32,
}

#[derive(Debug)]
struct PowerState {
    operations: u64,
    cut_at: Option<u64>,
    powered: bool,
    rates: FaultRates,
    rng: SplitMix64,
}

/// The power supply shared by a device's chips.
#[derive(Debug, Clone)]
pub struct SimPower(Arc<Mutex<PowerState>>);

enum Fate {
    Normal,
    Interrupted,
    Dead,
}

impl SimPower {
    pub fn new(seed: u64) -> Self {
        Self(Arc::new(Mutex::new(PowerState {
            operations: 0,
            cut_at: None,
            powered: true,
            rates: FaultRates::default(),
            rng: SplitMix64::new(seed),
        })))
    }

    fn state(&self) -> MutexGuard<'_, PowerState> {
        // A panic elsewhere while holding the lock leaves plain data behind.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Operations counted so far (erase, write and read, on every chip).
    pub fn operations(&self) -> u64 {
        self.state().operations
    }

    /// Cuts the power during the `n`-th operation from now (1 = the next).
    pub fn cut_after(&self, n: u64) {
        let mut s = self.state();
        s.cut_at = Some(s.operations + n.max(1));
    }

    pub fn clear_cut(&self) {
        self.state().cut_at = None;
    }

    pub fn is_powered(&self) -> bool {
        self.state().powered
    }

    /// Power comes back (the device reboots).
    pub fn restore(&self) {
        let mut s = self.state();
        s.powered = true;
        s.cut_at = None;
    }

    pub fn set_rates(&self, rates: FaultRates) {
        self.state().rates = rates;
    }

    fn begin(&self) -> Fate {
        let mut s = self.state();
        if !s.powered {
            return Fate::Dead;
        }
        s.operations += 1;
        if s.cut_at == Some(s.operations) {
            s.powered = false;
            return Fate::Interrupted;
        }
        Fate::Normal
    }

    fn with_rng<T>(&self, f: impl FnOnce(&mut SplitMix64, FaultRates) -> T) -> T {
        let mut s = self.state();
        let rates = s.rates;
        f(&mut s.rng, rates)
    }
}

#[derive(Debug)]
struct Chip {
    data: Vec<u8>,
    erases: Vec<u32>,
}

/// A simulated flash chip. Clones share the same contents.
#[derive(Debug, Clone)]
pub struct SimFlash {
    chip: Arc<Mutex<Chip>>,
    geometry: Geometry,
    power: SimPower,
}

impl SimFlash {
    /// An erased chip on `power`.
    pub fn new(geometry: Geometry, power: SimPower) -> Self {
        let size = geometry.sector_size * geometry.sector_count;
        Self {
            chip: Arc::new(Mutex::new(Chip {
                data: vec![0xFF; size],
                erases: vec![0; geometry.sector_count],
            })),
            geometry,
            power,
        }
    }

    fn chip(&self) -> MutexGuard<'_, Chip> {
        self.chip.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn power(&self) -> &SimPower {
        &self.power
    }

    /// The raw contents, bypassing faults and the operation count.
    pub fn contents(&self) -> Vec<u8> {
        self.chip().data.clone()
    }

    /// Erase counts per sector.
    pub fn wear(&self) -> Vec<u32> {
        self.chip().erases.clone()
    }

    fn check(&self, offset: u64, len: usize) -> Result<usize, FlashError> {
        let end = offset
            .checked_add(len as u64)
            .ok_or(FlashError::OutOfBounds)?;
        if end > self.geometry.size() {
            return Err(FlashError::OutOfBounds);
        }
        Ok(offset as usize)
    }

    /// Leaves `range` partly erased: each byte old, erased or noise.
    fn scramble_erase(&self, start: usize, len: usize) {
        let mut chip = self.chip();
        self.power.with_rng(|rng, _| {
            for byte in &mut chip.data[start..start + len] {
                match rng.below(3) {
                    0 => {}
                    1 => *byte = 0xFF,
                    _ => *byte = rng.next_u64() as u8,
                }
            }
        });
    }

    /// Programs a random prefix of `data` and one garbage byte.
    fn partial_write(&self, at: usize, data: &[u8]) {
        let mut chip = self.chip();
        let prefix = self
            .power
            .with_rng(|rng, _| rng.below(data.len() as u64 + 1) as usize);
        for (i, byte) in data[..prefix].iter().enumerate() {
            chip.data[at + i] &= byte;
        }
        if prefix < data.len() {
            let noise = self.power.with_rng(|rng, _| rng.next_u64() as u8);
            chip.data[at + prefix] &= noise;
        }
    }
}

impl Flash for SimFlash {
    fn geometry(&self) -> Geometry {
        self.geometry
    }

    fn erase(&mut self, sector: usize) -> Result<(), FlashError> {
        if sector >= self.geometry.sector_count {
            return Err(FlashError::OutOfBounds);
        }
        let start = sector * self.geometry.sector_size;
        match self.power.begin() {
            Fate::Dead => return Err(FlashError::PowerLoss),
            Fate::Interrupted => {
                self.chip().erases[sector] += 1;
                self.scramble_erase(start, self.geometry.sector_size);
                return Err(FlashError::PowerLoss);
            }
            Fate::Normal => {}
        }
        self.chip().erases[sector] += 1;
        if self
            .power
            .with_rng(|rng, rates| rng.chance(rates.erase_failure))
        {
            self.scramble_erase(start, self.geometry.sector_size);
            return Err(FlashError::EraseFailed);
        }
        let mut chip = self.chip();
        chip.data[start..start + self.geometry.sector_size].fill(0xFF);
        Ok(())
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), FlashError> {
        let at = self.check(offset, data.len())?;
        match self.power.begin() {
            Fate::Dead => return Err(FlashError::PowerLoss),
            Fate::Interrupted => {
                self.partial_write(at, data);
                return Err(FlashError::PowerLoss);
            }
            Fate::Normal => {}
        }
        if self
            .power
            .with_rng(|rng, rates| rng.chance(rates.write_failure))
        {
            self.partial_write(at, data);
            return Err(FlashError::WriteFailed);
        }
        let mut chip = self.chip();
        for (stored, byte) in chip.data[at..at + data.len()].iter_mut().zip(data) {
            *stored &= byte;
        }
        Ok(())
    }

    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), FlashError> {
        let at = self.check(offset, buf.len())?;
        match self.power.begin() {
            Fate::Dead | Fate::Interrupted => return Err(FlashError::PowerLoss),
            Fate::Normal => {}
        }
        buf.copy_from_slice(&self.chip().data[at..at + buf.len()]);
        if !buf.is_empty() {
            self.power.with_rng(|rng, rates| {
                if rng.chance(rates.bit_flip_per_read) {
                    let bit = rng.below(buf.len() as u64 * 8) as usize;
                    buf[bit / 8] ^= 1 << (bit % 8);
                }
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chip() -> SimFlash {
        SimFlash::new(
            Geometry {
                sector_size: 64,
                sector_count: 4,
            },
            SimPower::new(1),
        )
    }

    #[test]
    fn programming_only_clears_bits() {
        let mut flash = chip();
        flash.write(0, &[0x0F]).unwrap();
        flash.write(0, &[0xF1]).unwrap();
        let mut b = [0];
        flash.read(0, &mut b).unwrap();
        assert_eq!(b, [0x01]);
        flash.erase(0).unwrap();
        flash.read(0, &mut b).unwrap();
        assert_eq!(b, [0xFF]);
        assert_eq!(flash.wear()[0], 1);
    }

    #[test]
    fn power_cut_stops_everything_until_restored() {
        let mut flash = chip();
        flash.power().cut_after(2);
        flash.write(0, &[0]).unwrap();
        assert_eq!(flash.erase(1), Err(FlashError::PowerLoss));
        assert_eq!(flash.read(0, &mut [0]), Err(FlashError::PowerLoss));
        flash.power().restore();
        let mut b = [1];
        flash.read(0, &mut b).unwrap();
        assert_eq!(b, [0]);
    }
}
