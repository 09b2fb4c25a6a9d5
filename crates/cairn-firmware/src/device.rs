//! The device side: slots in flash, the bootloader, and the update steps
//! that the LwM2M Firmware Update object (/5) drives.
//!
//! Two ways to lay out the flash ([`Strategy`]):
//!
//! * **A/B, "flash and switch"**: two executable slots. A full image is
//!   written straight into the inactive slot; a delta goes to the staging
//!   area and is applied, at install, from the active slot into the inactive
//!   one. The new slot is then booted once as a *trial*; the image confirms
//!   itself ([`Device::confirm`]), or the next boot reverts to the old slot.
//! * **In place, "reboot and patch"**: one slot, a staging area for the
//!   package and a small scratch ring. The bootloader rewrites the slot
//!   sector by sector; before a sector is overwritten its old contents go to
//!   the ring, and a journal in protected storage records each step, so a
//!   power cut at any point resumes where it stopped. A delta is accepted
//!   only if every old byte it reads is still in the slot or the ring
//!   (checked by a dry run before anything is written).
//!
//! Everything that must survive a restart is in [`BootState`], written to
//! [`ProtectedStorage`] in one atomic step. The rules that keep a device
//! bootable:
//!
//! * a manifest is verified (signature, key, vendor, class, rollback,
//!   expiry, compatibility) before the first byte of its package is written;
//! * a slot that receives data loses its manifest first, so a half-written
//!   slot is never bootable;
//! * a delta's base is checked (the installed image's digest against the
//!   manifest's precursor digest) and the whole result is computed and
//!   digested in a dry run before any slot is touched;
//! * the bootloader boots only an image whose SHA-256 matches its signed
//!   manifest, and the anti-rollback counter moves only when a new image
//!   confirms itself (A/B) or is completely in place (in place).

use crate::delta::{DeltaError, OldImage, PatchDecoder};
use crate::flash::{Flash, FlashError, Partition, digest_of, program_sector, read_stable};
use crate::manifest::{DeviceIdentity, Manifest, Payload, TrustedKeys, verify_manifest};
use crate::result::{UpdateError, UpdateResult, UpdateState, update_result};
use crate::state::{BootState, Download, InPlaceProgress, MAX_ETAG_LEN, Slot, Trial};
use crate::storage::ProtectedStorage;
use sha2::Digest as _;

/// How the device updates its firmware.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Two slots: flash the inactive one, test-boot it, switch.
    AB,
    /// One slot patched in place; `window` is how many sectors back a delta
    /// may read old bytes from (the scratch ring holds `window + 1`).
    InPlace { window: usize },
}

/// Where things are on the flash, in sectors from the start: slot A, then
/// slot B (A/B) or the scratch ring (in place), then the staging area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub slot_sectors: usize,
    pub staging_sectors: usize,
    pub strategy: Strategy,
}

impl Layout {
    fn slot_first(&self, slot: Slot) -> usize {
        slot.index() * self.slot_sectors
    }

    fn ring_first(&self) -> usize {
        self.slot_sectors
    }

    fn ring_len(&self) -> usize {
        match self.strategy {
            Strategy::AB => 0,
            Strategy::InPlace { window } => window + 1,
        }
    }

    fn staging_first(&self) -> usize {
        match self.strategy {
            Strategy::AB => 2 * self.slot_sectors,
            Strategy::InPlace { .. } => self.slot_sectors + self.ring_len(),
        }
    }

    /// Sectors the layout needs.
    pub fn sectors(&self) -> usize {
        self.staging_first() + self.staging_sectors
    }
}

/// What the bootloader started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Booted {
    pub slot: Slot,
    pub sequence: u64,
    /// The image runs on trial and must call [`Device::confirm`].
    pub trial: bool,
}

/// A device: its flash, its protected storage, its identity and the keys
/// it trusts.
#[derive(Debug)]
pub struct Device<F, S> {
    flash: F,
    storage: S,
    identity: DeviceIdentity,
    keys: TrustedKeys,
    layout: Layout,
    state: BootState,
    /// Received bytes not yet a whole sector, starting at `download.written`.
    pending: Vec<u8>,
    booted: Option<Booted>,
    /// Manifests whose signature was checked since the device came up.
    verified: Vec<(Vec<u8>, Manifest)>,
}

impl<F: Flash, S: ProtectedStorage> Device<F, S> {
    /// Opens the device from what its flash and protected storage hold (a
    /// fresh device starts empty; see [`Device::provision`]).
    pub fn open(
        flash: F,
        mut storage: S,
        identity: DeviceIdentity,
        keys: TrustedKeys,
        layout: Layout,
    ) -> Result<Self, UpdateError> {
        if layout.sectors() > flash.geometry().sector_count || layout.slot_sectors == 0 {
            return Err(UpdateError::TooLarge {
                needed: layout.sectors() as u64,
                available: flash.geometry().sector_count as u64,
            });
        }
        let state = match storage.load()? {
            Some(record) => BootState::decode(&record)?,
            None => BootState::default(),
        };
        Ok(Self {
            flash,
            storage,
            identity,
            keys,
            layout,
            state,
            pending: Vec::new(),
            booted: None,
            verified: Vec::new(),
        })
    }

    /// Gives back the flash and the storage (to reopen after a simulated
    /// restart, for instance).
    pub fn into_parts(self) -> (F, S) {
        (self.flash, self.storage)
    }

    pub fn flash(&self) -> &F {
        &self.flash
    }

    pub fn boot_state(&self) -> &BootState {
        &self.state
    }

    fn sector_size(&self) -> usize {
        self.flash.geometry().sector_size
    }

    fn slot_size(&self) -> u64 {
        (self.layout.slot_sectors * self.sector_size()) as u64
    }

    fn staging_size(&self) -> u64 {
        (self.layout.staging_sectors * self.sector_size()) as u64
    }

    fn area(&mut self, first: usize, count: usize) -> Result<Partition<&mut F>, FlashError> {
        Partition::new(&mut self.flash, first, count).ok_or(FlashError::OutOfBounds)
    }

    fn slot_area(&mut self, slot: Slot) -> Result<Partition<&mut F>, FlashError> {
        let first = self.layout.slot_first(slot);
        let count = self.layout.slot_sectors;
        self.area(first, count)
    }

    fn staging_area(&mut self) -> Result<Partition<&mut F>, FlashError> {
        let first = self.layout.staging_first();
        let count = self.layout.staging_sectors;
        self.area(first, count)
    }

    fn persist(&mut self) -> Result<(), UpdateError> {
        self.storage.store(&self.state.encode())?;
        Ok(())
    }

    /// Factory programming: writes `image` to slot A as the confirmed image.
    pub fn provision(&mut self, image: &[u8], signed_manifest: &[u8]) -> Result<(), UpdateError> {
        let manifest = verify_manifest(signed_manifest, &self.keys)?;
        manifest.check_applicable(&self.identity, 0, None)?;
        if crate::sha256(image) != manifest.image_digest
            || image.len() as u64 != manifest.image_size
        {
            return Err(UpdateError::ImageDigestMismatch);
        }
        if image.len() as u64 > self.slot_size() {
            return Err(UpdateError::TooLarge {
                needed: image.len() as u64,
                available: self.slot_size(),
            });
        }
        let sector_size = self.sector_size();
        let mut slot = self.slot_area(Slot::A)?;
        for (i, chunk) in image.chunks(sector_size).enumerate() {
            program_sector(&mut slot, i, chunk)?;
        }
        self.state = BootState {
            counter: manifest.sequence,
            active: Some(Slot::A),
            slots: [Some(signed_manifest.to_vec()), None],
            ..BootState::default()
        };
        self.persist()
    }

    /// The manifest of the confirmed image.
    pub fn installed_manifest(&mut self) -> Option<Manifest> {
        let slot = self.state.active?;
        let bytes = self.state.slots[slot.index()].clone()?;
        self.verified_manifest(&bytes)
    }

    /// Verifies a stored manifest's signature, once per power cycle.
    fn verified_manifest(&mut self, bytes: &[u8]) -> Option<Manifest> {
        if let Some((_, manifest)) = self.verified.iter().find(|(b, _)| b == bytes) {
            return Some(manifest.clone());
        }
        let manifest = verify_manifest(bytes, &self.keys).ok()?;
        if self.verified.len() >= 4 {
            self.verified.remove(0);
        }
        self.verified.push((bytes.to_vec(), manifest.clone()));
        Some(manifest)
    }

    /// The anti-rollback counter.
    pub fn installed_sequence(&self) -> u64 {
        self.state.counter
    }

    /// /5/0/3.
    pub fn update_state(&self) -> UpdateState {
        if self.state.in_place.is_some() || self.state.trial.is_some() {
            return UpdateState::Updating;
        }
        match &self.state.download {
            None => UpdateState::Idle,
            Some(d) if d.installing => UpdateState::Updating,
            Some(d) if d.complete => UpdateState::Downloaded,
            Some(_) => UpdateState::Downloading,
        }
    }

    /// /5/0/5.
    pub fn update_result(&self) -> UpdateResult {
        UpdateResult::from_code(self.state.last_result).unwrap_or(UpdateResult::Initial)
    }

    /// Where a download resumes: payload bytes already safe in flash.
    pub fn resume_offset(&self) -> Option<u64> {
        self.state
            .download
            .as_ref()
            .filter(|d| !d.complete)
            .map(|d| d.written + self.pending.len() as u64)
    }

    /// The manifest of the package being downloaded or installed.
    pub fn pending_manifest(&mut self) -> Option<Manifest> {
        let bytes = self.state.download.as_ref()?.manifest.clone();
        self.verified_manifest(&bytes)
    }

    /// Records `error` as the Update Result (unless the power went) and
    /// hands it back.
    fn refuse(&mut self, error: UpdateError, drop_download: bool) -> UpdateError {
        if error.is_power_loss() {
            return error;
        }
        self.state.last_result = update_result(&error).code();
        if drop_download {
            self.state.download = None;
            self.pending.clear();
        }
        match self.persist() {
            Ok(()) => error,
            Err(e) if e.is_power_loss() => e,
            Err(_) => error,
        }
    }

    // ----- the update steps (/5 Package, Package URI, Update) -----

    /// Starts (or resumes) receiving the package described by
    /// `signed_manifest`. `etag` identifies the package at its source; a
    /// download of the same manifest and etag resumes, anything else starts
    /// over. `now_unix` is the current time when the device knows it.
    /// Returns the payload offset to continue from.
    ///
    /// Nothing is written to a slot before the manifest has passed every
    /// check.
    pub fn begin(
        &mut self,
        signed_manifest: &[u8],
        etag: &[u8],
        now_unix: Option<u64>,
    ) -> Result<u64, UpdateError> {
        match self.update_state() {
            UpdateState::Idle | UpdateState::Downloading => {}
            other => return Err(UpdateError::WrongState(other)),
        }
        if let Some(d) = &self.state.download {
            if d.manifest == signed_manifest && d.etag == etag {
                return Ok(d.written + self.pending.len() as u64);
            }
        }
        match self.check_package(signed_manifest, etag, now_unix) {
            Ok(()) => {}
            Err(e) => return Err(self.refuse(e, true)),
        }
        let Some(active) = self.state.active else {
            return Err(UpdateError::NotProvisioned);
        };
        if self.layout.strategy == Strategy::AB {
            // The inactive slot may be written from now on: it stops being
            // bootable first.
            self.state.slots[active.other().index()] = None;
        }
        self.state.download = Some(Download {
            manifest: signed_manifest.to_vec(),
            etag: etag.to_vec(),
            written: 0,
            complete: false,
            installing: false,
        });
        self.state.last_result = UpdateResult::Initial.code();
        self.pending.clear();
        self.persist()?;
        Ok(0)
    }

    fn check_package(
        &mut self,
        signed_manifest: &[u8],
        etag: &[u8],
        now_unix: Option<u64>,
    ) -> Result<(), UpdateError> {
        let manifest = verify_manifest(signed_manifest, &self.keys)?;
        manifest.check_applicable(&self.identity, self.state.counter, now_unix)?;
        if etag.len() > MAX_ETAG_LEN {
            return Err(UpdateError::WrongState(UpdateState::Idle));
        }
        if manifest.image_size > self.slot_size() {
            return Err(UpdateError::TooLarge {
                needed: manifest.image_size,
                available: self.slot_size(),
            });
        }
        let (needed, available) = match (self.layout.strategy, manifest.payload) {
            (Strategy::AB, Payload::Full) => (manifest.image_size, self.slot_size()),
            _ => (manifest.payload_size(), self.staging_size()),
        };
        if needed > available {
            return Err(UpdateError::TooLarge { needed, available });
        }
        if let Payload::Delta {
            precursor_digest, ..
        } = manifest.payload
        {
            let installed = self
                .installed_manifest()
                .ok_or(UpdateError::NotProvisioned)?;
            if installed.image_digest != precursor_digest {
                return Err(UpdateError::WrongPrecursor);
            }
        }
        Ok(())
    }

    /// Where the payload goes.
    fn download_target(&self, manifest: &Manifest) -> Result<(usize, usize), UpdateError> {
        let active = self.state.active.ok_or(UpdateError::NotProvisioned)?;
        Ok(match (self.layout.strategy, manifest.payload) {
            (Strategy::AB, Payload::Full) => (
                self.layout.slot_first(active.other()),
                self.layout.slot_sectors,
            ),
            _ => (self.layout.staging_first(), self.layout.staging_sectors),
        })
    }

    /// Accepts payload bytes at `offset`. Bytes already received are
    /// skipped; a gap is refused. Whole sectors go to flash as they fill,
    /// and the resume offset is persisted only once a sector is written and
    /// read back.
    pub fn write_chunk(&mut self, offset: u64, data: &[u8]) -> Result<(), UpdateError> {
        let written = match &self.state.download {
            Some(d) if !d.complete => d.written,
            _ => return Err(UpdateError::WrongState(self.update_state())),
        };
        let manifest = self.pending_manifest();
        let manifest = manifest.ok_or(UpdateError::WrongState(UpdateState::Idle))?;
        let expected = written + self.pending.len() as u64;
        if offset > expected {
            return Err(UpdateError::OutOfOrder { offset, expected });
        }
        let end = offset.saturating_add(data.len() as u64);
        if end > manifest.payload_size() {
            let error = UpdateError::PayloadTooLong {
                received: end,
                expected: manifest.payload_size(),
            };
            return Err(self.refuse(error, true));
        }
        let skip = (expected - offset) as usize;
        if skip >= data.len() {
            return Ok(());
        }
        self.pending.extend_from_slice(&data[skip..]);
        let sector_size = self.sector_size();
        while self.pending.len() >= sector_size {
            if let Err(e) = self.flush_sector(&manifest, sector_size) {
                return Err(self.refuse(e, true));
            }
        }
        Ok(())
    }

    fn flush_sector(&mut self, manifest: &Manifest, len: usize) -> Result<(), UpdateError> {
        let (first, count) = self.download_target(manifest)?;
        let written = self.state.download.as_ref().map_or(0, |d| d.written);
        let sector = (written / self.sector_size() as u64) as usize;
        let data: Vec<u8> = self.pending.drain(..len).collect();
        let mut area = self.area(first, count)?;
        program_sector(&mut area, sector, &data)?;
        if let Some(d) = &mut self.state.download {
            d.written += len as u64;
        }
        self.persist()
    }

    /// Ends the download: writes what is left, checks the payload against
    /// the manifest, and for a delta checks the base and computes the whole
    /// new image in a dry run. Afterwards the state is Downloaded.
    pub fn finish(&mut self) -> Result<(), UpdateError> {
        let written = match &self.state.download {
            Some(d) if !d.complete => d.written,
            _ => return Err(UpdateError::WrongState(self.update_state())),
        };
        let manifest = self.pending_manifest();
        let manifest = manifest.ok_or(UpdateError::WrongState(UpdateState::Idle))?;
        let received = written + self.pending.len() as u64;
        if received != manifest.payload_size() {
            return Err(UpdateError::Incomplete {
                received,
                expected: manifest.payload_size(),
            });
        }
        if !self.pending.is_empty() {
            let len = self.pending.len();
            if let Err(e) = self.flush_sector(&manifest, len) {
                return Err(self.refuse(e, true));
            }
        }
        match self.verify_download(&manifest) {
            Ok(()) => {}
            Err(e) => return Err(self.refuse(e, true)),
        }
        if let Some(d) = &mut self.state.download {
            d.complete = true;
        }
        self.persist()
    }

    fn verify_download(&mut self, manifest: &Manifest) -> Result<(), UpdateError> {
        let (first, count) = self.download_target(manifest)?;
        let mut area = self.area(first, count)?;
        if digest_of(&mut area, manifest.payload_size())? != manifest.payload_digest() {
            return Err(UpdateError::PayloadDigestMismatch);
        }
        if let Payload::Delta {
            precursor_digest, ..
        } = manifest.payload
        {
            let installed = self
                .installed_manifest()
                .ok_or(UpdateError::NotProvisioned)?;
            let active = self.state.active.ok_or(UpdateError::NotProvisioned)?;
            let mut slot = self.slot_area(active)?;
            if digest_of(&mut slot, installed.image_size)? != precursor_digest {
                return Err(UpdateError::WrongPrecursor);
            }
            self.dry_run(manifest, installed.image_size)?;
        }
        Ok(())
    }

    fn read_staging(&mut self, len: u64) -> Result<Vec<u8>, UpdateError> {
        let mut out = vec![0; len as usize];
        let mut staging = self.staging_area()?;
        for (i, chunk) in out.chunks_mut(staging.geometry().sector_size).enumerate() {
            let offset = (i * staging.geometry().sector_size) as u64;
            read_stable(&mut staging, offset, chunk)?;
        }
        Ok(out)
    }

    /// Applies the staged patch without writing, and checks the result's
    /// size and digest (and, in place, that every old read stays in reach).
    fn dry_run(&mut self, manifest: &Manifest, old_len: u64) -> Result<(), UpdateError> {
        let patch = self.read_staging(manifest.payload_size())?;
        let mut decoder = PatchDecoder::new(&patch)?;
        if decoder.new_size() != manifest.image_size {
            return Err(UpdateError::ImageDigestMismatch);
        }
        let sector_size = self.sector_size();
        let active = self.state.active.ok_or(UpdateError::NotProvisioned)?;
        let window = match self.layout.strategy {
            Strategy::AB => None,
            Strategy::InPlace { window } => Some(window),
        };
        let mut hasher = sha2::Sha256::new();
        let mut buf = vec![0; sector_size];
        let sectors = manifest.image_size.div_ceil(sector_size as u64) as usize;
        for k in 0..sectors {
            let len =
                (manifest.image_size - (k * sector_size) as u64).min(sector_size as u64) as usize;
            let mut old = FlashOld {
                flash: &mut self.flash,
                slot_first: self.layout.slot_first(active),
                ring_first: self.layout.ring_first(),
                sector_size,
                len: old_len,
                mode: match window {
                    None => OldMode::Slot,
                    Some(window) => OldMode::WindowCheck {
                        output_sector: k,
                        window,
                    },
                },
            };
            decoder.fill(&mut buf[..len], &mut old)?;
            hasher.update(&buf[..len]);
        }
        if <[u8; 32]>::from(hasher.finalize()) != manifest.image_digest {
            return Err(UpdateError::ImageDigestMismatch);
        }
        Ok(())
    }

    /// Executes Update (/5/0/2). A/B: prepares the inactive slot and arms a
    /// trial boot. In place: arms the patch that the bootloader applies.
    /// Either way the caller restarts the device next.
    pub fn install(&mut self) -> Result<(), UpdateError> {
        if !self.state.download.as_ref().is_some_and(|d| d.complete) {
            return Err(UpdateError::WrongState(self.update_state()));
        }
        let manifest = self.pending_manifest();
        let manifest = manifest.ok_or(UpdateError::WrongState(UpdateState::Idle))?;
        if let Some(d) = &mut self.state.download {
            d.installing = true;
        }
        match self.layout.strategy {
            Strategy::AB => {
                self.persist()?;
                if let Err(e) = self.prepare_inactive_slot(&manifest) {
                    return Err(self.refuse(e, true));
                }
                let active = self.state.active.ok_or(UpdateError::NotProvisioned)?;
                let target = active.other();
                let download = self.state.download.take();
                self.state.slots[target.index()] = download.map(|d| d.manifest);
                self.state.trial = Some(Trial {
                    slot: target,
                    attempted: false,
                });
                self.persist()
            }
            Strategy::InPlace { .. } => {
                self.state.in_place = Some(InPlaceProgress {
                    sector: 0,
                    backed_up: false,
                });
                self.persist()
            }
        }
    }

    fn prepare_inactive_slot(&mut self, manifest: &Manifest) -> Result<(), UpdateError> {
        let active = self.state.active.ok_or(UpdateError::NotProvisioned)?;
        let target = active.other();
        if let Payload::Delta { .. } = manifest.payload {
            let old_len = self
                .installed_manifest()
                .ok_or(UpdateError::NotProvisioned)?
                .image_size;
            let patch = self.read_staging(manifest.payload_size())?;
            let mut decoder = PatchDecoder::new(&patch)?;
            let sector_size = self.sector_size();
            let mut buf = vec![0; sector_size];
            let sectors = manifest.image_size.div_ceil(sector_size as u64) as usize;
            for k in 0..sectors {
                let len = (manifest.image_size - (k * sector_size) as u64).min(sector_size as u64)
                    as usize;
                let mut old = FlashOld {
                    flash: &mut self.flash,
                    slot_first: self.layout.slot_first(active),
                    ring_first: 0,
                    sector_size,
                    len: old_len,
                    mode: OldMode::Slot,
                };
                decoder.fill(&mut buf[..len], &mut old)?;
                let mut slot = self.slot_area(target)?;
                program_sector(&mut slot, k, &buf[..len])?;
            }
        }
        let mut slot = self.slot_area(target)?;
        if digest_of(&mut slot, manifest.image_size)? != manifest.image_digest {
            return Err(UpdateError::ImageDigestMismatch);
        }
        Ok(())
    }

    /// Cancels a download or a downloaded package (/5 Cancel, or an empty
    /// Package URI): back to Idle.
    pub fn cancel(&mut self) -> Result<(), UpdateError> {
        match self.update_state() {
            UpdateState::Downloading | UpdateState::Downloaded => {}
            other => return Err(UpdateError::WrongState(other)),
        }
        self.state.download = None;
        self.pending.clear();
        self.state.last_result = UpdateResult::Cancelled.code();
        self.persist()
    }

    // ----- the bootloader -----

    /// Decides what to run after a restart, finishing an in-place patch or
    /// settling a trial first. Boots only an image whose digest matches its
    /// signed manifest; [`BootFailure::NoBootableImage`] when none does.
    pub fn boot(&mut self) -> Result<Booted, BootFailure> {
        self.pending.clear();
        self.booted = None;
        if let Some(progress) = self.state.in_place {
            self.run_in_place(progress)?;
        }
        if let Some(trial) = self.state.trial {
            if !trial.attempted {
                if let Some(sequence) = self.verify_slot(trial.slot)? {
                    self.state.trial = Some(Trial {
                        attempted: true,
                        ..trial
                    });
                    self.persist()?;
                    return Ok(self.started(trial.slot, sequence, true));
                }
            }
            // The trial image did not verify, or ran without confirming.
            self.state.trial = None;
            self.state.slots[trial.slot.index()] = None;
            self.state.last_result = UpdateResult::UpdateFailed.code();
            self.persist()?;
        }
        let active = self.state.active.ok_or(BootFailure::NoBootableImage)?;
        if let Some(sequence) = self.verify_slot(active)? {
            return Ok(self.started(active, sequence, false));
        }
        // The confirmed slot is damaged: the other one may run only if it
        // holds an image no older than the anti-rollback counter.
        if self.layout.strategy == Strategy::AB {
            let other = active.other();
            if let Some(sequence) = self.verify_slot(other)? {
                if sequence >= self.state.counter {
                    return Ok(self.started(other, sequence, false));
                }
            }
        }
        Err(BootFailure::NoBootableImage)
    }

    fn started(&mut self, slot: Slot, sequence: u64, trial: bool) -> Booted {
        let booted = Booted {
            slot,
            sequence,
            trial,
        };
        self.booted = Some(booted.clone());
        booted
    }

    /// The sequence number of the slot's image if it matches its manifest.
    fn verify_slot(&mut self, slot: Slot) -> Result<Option<u64>, UpdateError> {
        let Some(bytes) = self.state.slots[slot.index()].clone() else {
            return Ok(None);
        };
        let Some(manifest) = self.verified_manifest(&bytes) else {
            return Ok(None);
        };
        if manifest.vendor != self.identity.vendor || manifest.class != self.identity.class {
            return Ok(None);
        }
        if manifest.image_size > self.slot_size() {
            return Ok(None);
        }
        let mut area = self.slot_area(slot)?;
        match digest_of(&mut area, manifest.image_size) {
            Ok(digest) if digest == manifest.image_digest => Ok(Some(manifest.sequence)),
            Ok(_) | Err(FlashError::Unreliable) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The running trial image declares itself good: it becomes the
    /// confirmed image and the anti-rollback counter moves to it.
    pub fn confirm(&mut self) -> Result<(), UpdateError> {
        let Some(booted) = self.booted.clone().filter(|b| b.trial) else {
            return Ok(());
        };
        self.state.active = Some(booted.slot);
        self.state.counter = self.state.counter.max(booted.sequence);
        self.state.trial = None;
        self.state.last_result = UpdateResult::Success.code();
        self.persist()?;
        self.booted = Some(Booted {
            trial: false,
            ..booted
        });
        Ok(())
    }

    /// Applies the armed in-place update, resuming from the journal.
    fn run_in_place(&mut self, progress: InPlaceProgress) -> Result<(), UpdateError> {
        let Strategy::InPlace { window } = self.layout.strategy else {
            self.state.in_place = None;
            return self.persist();
        };
        let manifest = self
            .pending_manifest()
            .ok_or(UpdateError::WrongState(UpdateState::Updating))?;
        let old_len = self.installed_manifest().map_or(0, |m| m.image_size);
        let sector_size = self.sector_size();
        let staged = self.read_staging(manifest.payload_size())?;
        let mut decoder = match manifest.payload {
            Payload::Delta { .. } => Some(PatchDecoder::new(&staged)?),
            Payload::Full => None,
        };
        let start = progress.sector as usize;
        if let Some(decoder) = &mut decoder {
            skip(
                decoder,
                ((start * sector_size) as u64).min(manifest.image_size),
            )?;
        }
        let sectors = manifest.image_size.div_ceil(sector_size as u64) as usize;
        let old_sectors = old_len.div_ceil(sector_size as u64) as usize;
        let mut buf = vec![0; sector_size];
        for k in start..sectors {
            let backed_up = k == start && progress.backed_up;
            let len =
                (manifest.image_size - (k * sector_size) as u64).min(sector_size as u64) as usize;
            match &mut decoder {
                Some(decoder) => {
                    let mut old = FlashOld {
                        flash: &mut self.flash,
                        slot_first: 0,
                        ring_first: self.layout.ring_first(),
                        sector_size,
                        len: old_len,
                        mode: OldMode::InPlace {
                            output_sector: k,
                            backed_up,
                            window,
                        },
                    };
                    decoder.fill(&mut buf[..len], &mut old)?;
                }
                None => buf[..len].copy_from_slice(&staged[k * sector_size..k * sector_size + len]),
            }
            if !backed_up && k < old_sectors && decoder.is_some() {
                let mut old = vec![0; sector_size];
                read_stable(&mut self.flash, (k * sector_size) as u64, &mut old)?;
                let ring_sector = self.layout.ring_first() + k % (window + 1);
                program_sector(&mut self.flash, ring_sector, &old)?;
                self.state.in_place = Some(InPlaceProgress {
                    sector: k as u32,
                    backed_up: true,
                });
                self.persist()?;
            }
            program_sector(&mut self.flash, k, &buf[..len])?;
            self.state.in_place = Some(InPlaceProgress {
                sector: k as u32 + 1,
                backed_up: false,
            });
            self.persist()?;
        }
        let mut slot = self.slot_area(Slot::A)?;
        if digest_of(&mut slot, manifest.image_size)? != manifest.image_digest {
            // Only a flash that lost data since the dry run gets here.
            return Err(UpdateError::ImageDigestMismatch);
        }
        let download = self.state.download.take();
        self.state.slots[0] = download.map(|d| d.manifest);
        self.state.counter = manifest.sequence;
        self.state.in_place = None;
        self.state.last_result = UpdateResult::Success.code();
        self.persist()
    }
}

/// Why the bootloader did not start an image.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BootFailure {
    /// No slot holds an image that matches its manifest: the device is
    /// bricked.
    #[error("no slot holds a verified image")]
    NoBootableImage,
    /// A step failed (a power cut, typically); booting again retries.
    #[error(transparent)]
    Step(#[from] UpdateError),
}

impl From<crate::storage::StorageError> for BootFailure {
    fn from(e: crate::storage::StorageError) -> Self {
        BootFailure::Step(e.into())
    }
}

/// Advances `decoder` by `count` bytes without reading old bytes (the
/// values are thrown away, only the streams move).
fn skip(decoder: &mut PatchDecoder<'_>, count: u64) -> Result<(), DeltaError> {
    struct Zeros(u64);
    impl OldImage for Zeros {
        fn len(&self) -> u64 {
            self.0
        }
        fn read_old(&mut self, _offset: u64, buf: &mut [u8]) -> Result<(), DeltaError> {
            buf.fill(0);
            Ok(())
        }
    }
    let mut zeros = Zeros(u64::MAX);
    let mut buf = [0; 4096];
    let mut left = count;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        decoder.fill(&mut buf[..n], &mut zeros)?;
        left -= n as u64;
    }
    Ok(())
}

enum OldMode {
    /// The old image is whole in its slot.
    Slot,
    /// Dry run for an in-place update: reads go to the slot, but a read the
    /// in-place update could not serve is refused.
    WindowCheck { output_sector: usize, window: usize },
    /// During an in-place update: sectors before `output_sector` (and
    /// `output_sector` itself once backed up) come from the scratch ring.
    InPlace {
        output_sector: usize,
        backed_up: bool,
        window: usize,
    },
}

/// Old image bytes in flash, by absolute sector.
struct FlashOld<'a, F> {
    flash: &'a mut F,
    slot_first: usize,
    ring_first: usize,
    sector_size: usize,
    len: u64,
    mode: OldMode,
}

impl<F: Flash> OldImage for FlashOld<'_, F> {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_old(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), DeltaError> {
        let size = self.sector_size as u64;
        let mut done = 0;
        while done < buf.len() {
            let at = offset + done as u64;
            let sector = (at / size) as usize;
            let within = at % size;
            let n = ((size - within) as usize).min(buf.len() - done);
            let physical = match self.mode {
                OldMode::Slot => self.slot_first + sector,
                OldMode::WindowCheck {
                    output_sector,
                    window,
                } => {
                    if sector + window < output_sector {
                        return Err(DeltaError::NotInPlaceApplicable);
                    }
                    self.slot_first + sector
                }
                OldMode::InPlace {
                    output_sector,
                    backed_up,
                    window,
                } => {
                    if sector > output_sector || (sector == output_sector && !backed_up) {
                        self.slot_first + sector
                    } else if sector + window >= output_sector {
                        self.ring_first + sector % (window + 1)
                    } else {
                        return Err(DeltaError::NotInPlaceApplicable);
                    }
                }
            };
            let address = physical as u64 * size + within;
            read_stable(self.flash, address, &mut buf[done..done + n])?;
            done += n;
        }
        Ok(())
    }
}
