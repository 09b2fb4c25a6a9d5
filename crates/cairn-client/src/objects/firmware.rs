//! The Firmware Update object (5, OMA LwM2M object 5 versions 1.0 to 1.2) over a
//! `cairn-firmware` [`Device`]: push (a Write of Package, Block1 reassembled by the CoAP
//! endpoint), pull (a Write of Package URI; the download itself runs outside the object,
//! see [`FirmwareObject::take_job`] and the runtime's firmware agent), Update, Cancel,
//! State and Update Result.
//!
//! The object never performs I/O. Work that needs the network or a restart is queued as a
//! [`FirmwareJob`]; the optional waker tells the application that a job is waiting.
//! Every manifest is verified by [`Device::begin`] before the first byte reaches a slot.

use std::collections::VecDeque;

use cairn_firmware::package::PackageStream;
use cairn_firmware::{
    BootFailure, Booted, Device, DeviceIdentity, Flash, Layout, Manifest, ProtectedStorage,
    TrustedKeys, UpdateError, UpdateResult, UpdateState, update_result,
};
use cairn_lwm2m::operations::ExecuteArgument;
use cairn_lwm2m::{LwM2mObjectInstance, LwM2mResource, ResourceValue, Value, WriteMode};

use crate::object::{ClientAction, ObjectError, ObjectHandler};

/// Object id of Firmware Update.
pub const FIRMWARE_UPDATE: u16 = 5;

/// Resource ids of the Firmware Update object.
pub mod resource {
    /// Package (W, opaque).
    pub const PACKAGE: u16 = 0;
    /// Package URI (RW, string).
    pub const PACKAGE_URI: u16 = 1;
    /// Update (E).
    pub const UPDATE: u16 = 2;
    /// State (R).
    pub const STATE: u16 = 3;
    /// Update Result (R).
    pub const UPDATE_RESULT: u16 = 5;
    /// PkgName (R).
    pub const PKG_NAME: u16 = 6;
    /// PkgVersion (R).
    pub const PKG_VERSION: u16 = 7;
    /// Firmware Update Protocol Support (R, multiple).
    pub const PROTOCOL_SUPPORT: u16 = 8;
    /// Firmware Update Delivery Method (R).
    pub const DELIVERY_METHOD: u16 = 9;
    /// Cancel (E, object version 1.1 and later).
    pub const CANCEL: u16 = 10;
}

/// Pieces a pushed package is fed to the device in.
const PUSH_PIECE: usize = 1024;
/// Restarts tried in a row when the power keeps failing during one.
const MAX_RESTARTS: usize = 1000;

/// Work the object asks the application to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FirmwareJob {
    /// Fetch the package at `uri`; `generation` tells a stale download from the current one.
    Download {
        /// The Package URI written.
        uri: String,
        /// Changes whenever a download is cancelled or replaced.
        generation: u64,
    },
    /// Update was executed: install, restart, boot and report.
    Update,
}

/// What became of an Update.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpdateOutcome {
    /// The new image runs and is confirmed.
    Updated {
        /// Its firmware version.
        version: String,
    },
    /// The device runs its previous image; Update Result says why.
    Reverted(UpdateResult),
    /// No image boots any more.
    Bricked,
}

/// The Firmware Update object with its single instance 0.
pub struct FirmwareObject<F, S> {
    device: Option<Device<F, S>>,
    identity: DeviceIdentity,
    keys: TrustedKeys,
    layout: Layout,
    stream: PackageStream,
    package_uri: String,
    /// A result the device itself does not record (invalid URI, connection lost, …).
    result_override: Option<UpdateResult>,
    generation: u64,
    jobs: VecDeque<FirmwareJob>,
    waker: Option<Box<dyn Fn() + Send>>,
    /// Gives the flash and storage back after a restart (a simulator restores power).
    reopen: Option<Box<dyn FnMut() -> (F, S) + Send>>,
    /// PkgName and PkgVersion of the package received.
    pkg: Option<(String, String)>,
    /// Set when no image booted after a restart.
    bricked: bool,
    version_of: fn(&Manifest) -> String,
}

impl<F, S> std::fmt::Debug for FirmwareObject<F, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FirmwareObject")
            .field("package_uri", &self.package_uri)
            .field("generation", &self.generation)
            .field("bricked", &self.bricked)
            .finish_non_exhaustive()
    }
}

/// The firmware version a manifest stands for: its sequence number.
pub fn sequence_version(manifest: &Manifest) -> String {
    manifest.sequence.to_string()
}

fn internal(error: impl std::fmt::Display) -> ObjectError {
    ObjectError::Internal(error.to_string())
}

impl<F: Flash + Send + 'static, S: ProtectedStorage + Send + 'static> FirmwareObject<F, S> {
    /// Opens the device from its flash and protected storage, runs its bootloader and
    /// confirms a trial image (the restart after an Update).
    pub fn open(
        flash: F,
        storage: S,
        identity: DeviceIdentity,
        keys: TrustedKeys,
        layout: Layout,
    ) -> Result<Self, UpdateError> {
        let device = Device::open(flash, storage, identity.clone(), keys.clone(), layout)?;
        let mut object = FirmwareObject {
            device: Some(device),
            identity,
            keys,
            layout,
            stream: PackageStream::new(),
            package_uri: String::new(),
            result_override: None,
            generation: 0,
            jobs: VecDeque::new(),
            waker: None,
            reopen: None,
            pkg: None,
            bricked: false,
            version_of: sequence_version,
        };
        let _ = object.boot_and_confirm();
        Ok(object)
    }

    /// Called whenever a job is queued (e.g. to wake the task running the jobs).
    pub fn set_waker(&mut self, waker: impl Fn() + Send + 'static) {
        self.waker = Some(Box::new(waker));
    }

    /// How the device gets its flash and protected storage back at a restart (a simulator
    /// restores the power there). Without it the device keeps the ones it had.
    pub fn set_reopen(&mut self, reopen: impl FnMut() -> (F, S) + Send + 'static) {
        self.reopen = Some(Box::new(reopen));
    }

    /// How a manifest's firmware version is shown (default: its sequence number).
    pub fn set_version_of(&mut self, version_of: fn(&Manifest) -> String) {
        self.version_of = version_of;
    }

    /// The next job, if any.
    pub fn take_job(&mut self) -> Option<FirmwareJob> {
        self.jobs.pop_front()
    }

    fn queue(&mut self, job: FirmwareJob) {
        self.jobs.push_back(job);
        self.poke();
    }

    /// Wakes the application (a job waits, or State or Update Result may have changed).
    fn poke(&self) {
        if let Some(waker) = &self.waker {
            waker();
        }
    }

    /// The device (for the application), `None` once a restart could not reopen it.
    pub fn device_mut(&mut self) -> Option<&mut Device<F, S>> {
        self.device.as_mut()
    }

    /// Only called where `self.device` is known to be there (see [`Self::usable`]).
    fn device(&mut self) -> &mut Device<F, S> {
        self.device.as_mut().expect("checked by usable()")
    }

    fn usable(&self) -> Result<(), UpdateError> {
        match self.device {
            Some(_) => Ok(()),
            None => Err(UpdateError::NotProvisioned),
        }
    }

    /// True when the last restart found no bootable image.
    pub fn is_bricked(&self) -> bool {
        self.bricked
    }

    /// State (/5/0/3).
    pub fn state(&self) -> UpdateState {
        self.device
            .as_ref()
            .map_or(UpdateState::Idle, Device::update_state)
    }

    /// Update Result (/5/0/5).
    pub fn result(&self) -> UpdateResult {
        self.result_override.unwrap_or_else(|| {
            self.device
                .as_ref()
                .map_or(UpdateResult::Initial, Device::update_result)
        })
    }

    /// The version of the running image.
    pub fn firmware_version(&mut self) -> Option<String> {
        let version_of = self.version_of;
        self.device
            .as_mut()?
            .installed_manifest()
            .map(|m| version_of(&m))
    }

    /// The current download generation (see [`FirmwareJob::Download`]).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The Package URI the current download came from.
    pub fn package_uri(&self) -> &str {
        &self.package_uri
    }

    /// Restarts the device: reopens it from flash, runs the bootloader and confirms a
    /// trial image. Power cuts during the restart restart it again.
    pub fn restart(&mut self) -> Result<Booted, BootFailure> {
        self.stream = PackageStream::new();
        for _ in 0..MAX_RESTARTS {
            let parts = match (&mut self.reopen, self.device.take()) {
                (Some(reopen), old) => {
                    drop(old);
                    reopen()
                }
                (None, Some(device)) => device.into_parts(),
                (None, None) => return Err(BootFailure::NoBootableImage),
            };
            match Device::open(
                parts.0,
                parts.1,
                self.identity.clone(),
                self.keys.clone(),
                self.layout,
            ) {
                Ok(device) => self.device = Some(device),
                Err(error) if error.is_power_loss() && self.reopen.is_some() => continue,
                Err(error) => {
                    self.bricked = true;
                    return Err(BootFailure::Step(error));
                }
            }
            match self.boot_and_confirm() {
                Ok(booted) => {
                    // A package Downloaded before the restart is still named by its manifest.
                    self.note_package();
                    return Ok(booted);
                }
                Err(failure) if is_power_loss(&failure) => continue,
                Err(failure) => return Err(failure),
            }
        }
        Err(BootFailure::NoBootableImage)
    }

    fn boot_and_confirm(&mut self) -> Result<Booted, BootFailure> {
        let device = self.device();
        let result = device.boot().and_then(|booted| {
            if booted.trial {
                device.confirm().map_err(BootFailure::from)?;
            }
            Ok(booted)
        });
        self.bricked = matches!(result, Err(BootFailure::NoBootableImage));
        result
    }

    /// A step failed: a power loss restarts the device, anything else is reported.
    fn fail(&mut self, error: &UpdateError) {
        if error.is_power_loss() {
            let _ = self.restart();
        } else if !matches!(error, UpdateError::WrongState(_)) {
            self.result_override = None;
            // The device recorded the result when it refused; make sure it is reported
            // even when it could not store it.
            if self.result() == UpdateResult::Initial {
                self.result_override = Some(update_result(error));
            }
        }
    }

    /// Feeds pulled bytes found at `offset` of the package. `etag` names the package at
    /// its source. A power loss restarts the device and is returned.
    pub fn write_pulled(
        &mut self,
        generation: u64,
        offset: u64,
        bytes: &[u8],
        etag: &[u8],
    ) -> Result<(), UpdateError> {
        if generation != self.generation {
            return Err(UpdateError::WrongState(self.state()));
        }
        let Some(device) = self.device.as_mut() else {
            return Err(UpdateError::NotProvisioned);
        };
        let result = self.stream.write(device, offset, bytes, etag, None);
        if let Err(error) = &result {
            self.fail(error);
        }
        result
    }

    /// The package offset a pull continues from (0 until the manifest is in).
    pub fn pull_resume_offset(&self) -> u64 {
        self.device
            .as_ref()
            .map_or(0, |d| self.stream.resume_offset(d))
    }

    /// Forgets the manifest held in RAM (a new connection fetches it again).
    pub fn reset_stream(&mut self) {
        self.stream = PackageStream::new();
    }

    /// The pull reached the end of the package: check it and report Downloaded.
    pub fn finish_pulled(&mut self, generation: u64) -> Result<(), UpdateError> {
        if generation != self.generation {
            return Err(UpdateError::WrongState(self.state()));
        }
        self.usable()?;
        let result = self.device().finish();
        match &result {
            Ok(()) => self.note_package(),
            Err(error) => self.fail(error),
        }
        result
    }

    fn note_package(&mut self) {
        let version_of = self.version_of;
        self.pkg = self
            .device()
            .pending_manifest()
            .map(|m| (format!("{}/{}", m.vendor, m.class), version_of(&m)));
    }

    /// The pull gave up: report `result` (connection lost, invalid URI, unsupported
    /// protocol) and go back to Idle.
    pub fn abort_pull(&mut self, generation: u64, result: UpdateResult) {
        if generation != self.generation || self.device.is_none() {
            return;
        }
        if matches!(
            self.state(),
            UpdateState::Downloading | UpdateState::Downloaded
        ) {
            let _ = self.cancel_download();
        }
        self.generation += 1;
        self.stream = PackageStream::new();
        self.result_override = Some(result);
    }

    /// Cancels the download (back to Idle, Update Result 10), through power cuts.
    fn cancel_download(&mut self) -> Result<(), UpdateError> {
        loop {
            match self.device().cancel() {
                Err(error) if error.is_power_loss() => {
                    if self.restart().is_err() {
                        return Err(error);
                    }
                    if !matches!(
                        self.state(),
                        UpdateState::Downloading | UpdateState::Downloaded
                    ) {
                        return Ok(());
                    }
                }
                other => return other,
            }
        }
    }

    /// True when a complete download waits for (or was interrupted in) its install.
    fn install_pending(&self) -> bool {
        self.device.as_ref().is_some_and(|d| {
            d.boot_state().trial.is_none()
                && d.boot_state().in_place.is_none()
                && d.boot_state().download.as_ref().is_some_and(|d| d.complete)
        })
    }

    /// Update executed: prepares the new image (State becomes Updating). Returns false
    /// when the device refused it (Update Result says why).
    fn install(&mut self) -> bool {
        loop {
            match self.device().install() {
                Ok(()) => return true,
                Err(error) if error.is_power_loss() => {
                    if self.restart().is_err() {
                        return true;
                    }
                    // The power went before the install was armed: it starts again.
                    if !self.install_pending() {
                        return true;
                    }
                }
                Err(error) => {
                    self.fail(&error);
                    return false;
                }
            }
        }
    }

    /// The restart after Update: boots the new image (or the previous one) and confirms
    /// it. Returns what became of the update.
    pub fn run_update(&mut self) -> UpdateOutcome {
        if self.bricked || self.device.is_none() {
            return UpdateOutcome::Bricked;
        }
        match self.restart() {
            Err(_) => UpdateOutcome::Bricked,
            Ok(_) if self.result() == UpdateResult::Success => UpdateOutcome::Updated {
                version: self.firmware_version().unwrap_or_default(),
            },
            Ok(_) => UpdateOutcome::Reverted(self.result()),
        }
    }

    fn push(&mut self, package: &[u8]) -> Result<(), ObjectError> {
        match self.state() {
            UpdateState::Idle => {}
            UpdateState::Downloading => {
                // A pull or an interrupted push is replaced.
                let _ = self.cancel_download();
            }
            _ => return Err(ObjectError::MethodNotAllowed),
        }
        self.generation += 1;
        self.result_override = None;
        self.package_uri.clear();
        let mut stream = PackageStream::new();
        let etag = cairn_firmware::sha256(package);
        let mut outcome = Ok(());
        for (n, piece) in package.chunks(PUSH_PIECE).enumerate() {
            let device = self.device();
            outcome = stream.write(device, (n * PUSH_PIECE) as u64, piece, &etag[..8], None);
            if outcome.is_err() {
                break;
            }
        }
        if outcome.is_ok() {
            outcome = self.device().finish();
        }
        match outcome {
            Ok(()) => {
                self.note_package();
                Ok(())
            }
            Err(error) if error.is_power_loss() => {
                let _ = self.restart();
                if self.state() == UpdateState::Downloaded {
                    // The power went after the package was complete and checked (its
                    // last state record was written): the push took effect.
                    self.note_package();
                    return Ok(());
                }
                // A pushed package cannot be resumed: the partial one is dropped.
                if self.state() == UpdateState::Downloading {
                    let _ = self.cancel_download();
                }
                self.result_override = Some(UpdateResult::ConnectionLost);
                Err(ObjectError::Internal(
                    "power lost during the download".into(),
                ))
            }
            Err(error) => {
                // The package was received; why it is refused is in Update Result.
                if self.state() == UpdateState::Downloading {
                    let _ = self.cancel_download();
                }
                self.result_override = Some(update_result(&error));
                Ok(())
            }
        }
    }

    fn set_uri(&mut self, uri: String) -> Result<(), ObjectError> {
        if uri.is_empty() {
            return self.reset();
        }
        match self.state() {
            UpdateState::Idle => {}
            UpdateState::Downloading if uri == self.package_uri => return Ok(()),
            UpdateState::Downloading => {
                let _ = self.cancel_download();
            }
            _ => return Err(ObjectError::MethodNotAllowed),
        }
        self.generation += 1;
        self.result_override = None;
        self.package_uri = uri.clone();
        self.stream = PackageStream::new();
        let supported = uri.starts_with("coap://") || uri.starts_with("coaps://");
        if !supported {
            // Update Result 9: the device speaks CoAP and CoAPS only.
            self.result_override = Some(UpdateResult::UnsupportedProtocol);
            return Ok(());
        }
        self.queue(FirmwareJob::Download {
            uri,
            generation: self.generation,
        });
        Ok(())
    }

    /// An empty Package or Package URI: back to Idle with Update Result 0.
    fn reset(&mut self) -> Result<(), ObjectError> {
        match self.state() {
            UpdateState::Updating => return Err(ObjectError::MethodNotAllowed),
            UpdateState::Downloading | UpdateState::Downloaded => {
                self.cancel_download().map_err(internal)?;
            }
            UpdateState::Idle => {}
        }
        self.generation += 1;
        self.package_uri.clear();
        self.stream = PackageStream::new();
        self.pkg = None;
        self.result_override = Some(UpdateResult::Initial);
        Ok(())
    }
}

fn is_power_loss(failure: &BootFailure) -> bool {
    match failure {
        BootFailure::Step(error) => error.is_power_loss(),
        BootFailure::NoBootableImage => false,
    }
}

impl<F: Flash + Send + 'static, S: ProtectedStorage + Send + 'static> ObjectHandler
    for FirmwareObject<F, S>
{
    fn object_id(&self) -> u16 {
        FIRMWARE_UPDATE
    }

    fn instance_ids(&self) -> Vec<u16> {
        vec![0]
    }

    fn read(&self, instance: u16) -> Result<LwM2mObjectInstance, ObjectError> {
        use resource::*;
        if instance != 0 {
            return Err(ObjectError::NotFound);
        }
        let (name, version) = match (&self.pkg, self.state()) {
            (Some(pkg), UpdateState::Downloaded | UpdateState::Updating) => pkg.clone(),
            _ => (String::new(), String::new()),
        };
        Ok(LwM2mObjectInstance::new(
            0,
            [
                LwM2mResource::single(PACKAGE_URI, Value::String(self.package_uri.clone())),
                LwM2mResource::single(STATE, Value::Integer(self.state() as i64)),
                LwM2mResource::single(
                    UPDATE_RESULT,
                    Value::Integer(i64::from(self.result().code())),
                ),
                LwM2mResource::single(PKG_NAME, Value::String(name)),
                LwM2mResource::single(PKG_VERSION, Value::String(version)),
                // 0 CoAP, 1 CoAPS (both block-wise).
                LwM2mResource::multiple(
                    PROTOCOL_SUPPORT,
                    [(0, Value::Integer(0)), (1, Value::Integer(1))],
                ),
                // 2 = pull and push.
                LwM2mResource::single(DELIVERY_METHOD, Value::Integer(2)),
            ],
        ))
    }

    fn write(
        &mut self,
        instance: u16,
        _mode: WriteMode,
        resources: Vec<LwM2mResource>,
    ) -> Result<(), ObjectError> {
        if instance != 0 {
            return Err(ObjectError::NotFound);
        }
        self.usable().map_err(internal)?;
        let mut outcome = Ok(());
        for written in resources {
            outcome = match (written.id, written.value) {
                (resource::PACKAGE, ResourceValue::Single(Value::Opaque(bytes))) => {
                    if bytes.is_empty() || bytes == [0] {
                        self.reset()
                    } else {
                        self.push(&bytes)
                    }
                }
                (resource::PACKAGE_URI, ResourceValue::Single(Value::String(uri))) => {
                    self.set_uri(uri)
                }
                (id, _) => Err(ObjectError::BadRequest(format!(
                    "resource {id} cannot take this value"
                ))),
            };
            if outcome.is_err() {
                break;
            }
        }
        self.poke();
        outcome
    }

    fn execute(
        &mut self,
        instance: u16,
        resource: u16,
        _arguments: &[ExecuteArgument],
    ) -> Result<Option<ClientAction>, ObjectError> {
        if instance != 0 {
            return Err(ObjectError::NotFound);
        }
        self.usable().map_err(internal)?;
        let outcome = self.execute_resource(resource);
        self.poke();
        outcome
    }
}

impl<F: Flash + Send + 'static, S: ProtectedStorage + Send + 'static> FirmwareObject<F, S> {
    fn execute_resource(&mut self, resource: u16) -> Result<Option<ClientAction>, ObjectError> {
        match resource {
            resource::UPDATE => {
                if self.state() != UpdateState::Downloaded {
                    return Err(ObjectError::MethodNotAllowed);
                }
                self.result_override = None;
                // The download is over: a late block of it changes nothing.
                self.generation += 1;
                if self.install() {
                    self.queue(FirmwareJob::Update);
                }
                Ok(None)
            }
            resource::CANCEL => {
                if !matches!(
                    self.state(),
                    UpdateState::Downloading | UpdateState::Downloaded
                ) {
                    return Err(ObjectError::MethodNotAllowed);
                }
                self.cancel_download().map_err(internal)?;
                self.generation += 1;
                self.stream = PackageStream::new();
                self.result_override = None;
                Ok(None)
            }
            _ => Err(ObjectError::MethodNotAllowed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_firmware::package::encode_package;
    use cairn_firmware::sim::{SimFlash, SimPower};
    use cairn_firmware::{
        Algorithm, Geometry, Payload, RecordStore, SigningKey, Strategy, sha256, sign_manifest,
    };

    type Firmware = FirmwareObject<SimFlash, RecordStore<SimFlash>>;

    const SECTOR: usize = 1024;
    const LAYOUT: Layout = Layout {
        slot_sectors: 10,
        staging_sectors: 2,
        strategy: Strategy::AB,
    };

    fn key() -> SigningKey {
        SigningKey::from_random(Algorithm::Ed25519, &[7; 32]).unwrap()
    }

    fn identity() -> DeviceIdentity {
        DeviceIdentity {
            vendor: "acme".into(),
            class: "meter".into(),
            hardware_version: 1,
            bootloader_version: 1,
        }
    }

    fn image(len: usize, seed: u32) -> Vec<u8> {
        (0..len as u32)
            .map(|i| (i.wrapping_add(seed).wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect()
    }

    fn signed(image: &[u8], sequence: u64) -> Vec<u8> {
        sign_manifest(
            &Manifest {
                vendor: "acme".into(),
                class: "meter".into(),
                sequence,
                image_digest: sha256(image),
                image_size: image.len() as u64,
                payload: Payload::Full,
                expires_at: None,
                min_hardware_version: None,
                min_bootloader_version: None,
            },
            &key(),
        )
    }

    fn package(image: &[u8], sequence: u64) -> Vec<u8> {
        encode_package(&signed(image, sequence), image)
    }

    /// A device provisioned with version 1, whose restarts bring the power back.
    fn device() -> (Firmware, SimPower) {
        let power = SimPower::new(1);
        let flash = SimFlash::new(
            Geometry {
                sector_size: SECTOR,
                sector_count: LAYOUT.sectors(),
            },
            power.clone(),
        );
        let meta = SimFlash::new(
            Geometry {
                sector_size: SECTOR,
                sector_count: 4,
            },
            power.clone(),
        );
        let keys = TrustedKeys::new().with(key().public_key());
        let v1 = image(6000, 1);
        Device::open(
            flash.clone(),
            RecordStore::new(meta.clone()),
            identity(),
            keys.clone(),
            LAYOUT,
        )
        .unwrap()
        .provision(&v1, &signed(&v1, 1))
        .unwrap();
        let mut firmware = Firmware::open(
            flash.clone(),
            RecordStore::new(meta.clone()),
            identity(),
            keys,
            LAYOUT,
        )
        .unwrap();
        let restored = power.clone();
        firmware.set_reopen(move || {
            restored.restore();
            (flash.clone(), RecordStore::new(meta.clone()))
        });
        (firmware, power)
    }

    fn write_package(firmware: &mut Firmware, bytes: Vec<u8>) -> Result<(), ObjectError> {
        firmware.write(
            0,
            WriteMode::Replace,
            vec![LwM2mResource::single(
                resource::PACKAGE,
                Value::Opaque(bytes),
            )],
        )
    }

    fn update(firmware: &mut Firmware) -> UpdateOutcome {
        firmware.execute(0, resource::UPDATE, &[]).unwrap();
        assert_eq!(firmware.take_job(), Some(FirmwareJob::Update));
        firmware.run_update()
    }

    /// A power cut at every flash operation of a push: the device comes back either Idle
    /// with Update Result 4 (connection lost: a push cannot resume) or, when the cut came
    /// after the package was complete and checked, Downloaded. From Idle a fresh push and
    /// Update succeed; from Downloaded, Update does. Nothing is half-done.
    #[test]
    fn a_power_cut_during_a_push_leaves_idle_with_a_result_and_a_new_push_succeeds() {
        let v2 = package(&image(7000, 2), 2);
        let operations = {
            let (mut firmware, power) = device();
            let before = power.operations();
            write_package(&mut firmware, v2.clone()).unwrap();
            assert_eq!(firmware.state(), UpdateState::Downloaded);
            power.operations() - before
        };
        assert!(operations > 20, "{operations} flash operations");
        let (mut idle, mut downloaded) = (0, 0);
        for cut in 1..=operations {
            let (mut firmware, power) = device();
            power.cut_after(cut);
            let written = write_package(&mut firmware, v2.clone());
            power.clear_cut();
            match (firmware.state(), firmware.result()) {
                (UpdateState::Idle, UpdateResult::ConnectionLost) => {
                    assert!(written.is_err(), "cut {cut}: a lost push is refused");
                    idle += 1;
                    write_package(&mut firmware, v2.clone()).unwrap();
                    assert_eq!(firmware.state(), UpdateState::Downloaded, "cut {cut}");
                    assert_eq!(firmware.result(), UpdateResult::Initial, "cut {cut}");
                }
                (UpdateState::Downloaded, UpdateResult::Initial) => {
                    assert!(written.is_ok(), "cut {cut}: {written:?}");
                    downloaded += 1;
                    // The restart kept the package's name and version.
                    let shown = crate::object::ObjectHandler::read(&firmware, 0).unwrap();
                    let text = |id| match &shown.resources[&id].value {
                        cairn_lwm2m::ResourceValue::Single(Value::String(text)) => text.clone(),
                        other => panic!("{other:?}"),
                    };
                    assert!(!text(resource::PKG_NAME).is_empty(), "cut {cut}");
                    assert_eq!(text(resource::PKG_VERSION), "2", "cut {cut}");
                }
                other => panic!("cut {cut}: the device is at {other:?} ({written:?})"),
            }
            assert_eq!(
                update(&mut firmware),
                UpdateOutcome::Updated {
                    version: "2".into()
                },
                "cut {cut}"
            );
            assert_eq!(
                (firmware.state(), firmware.result()),
                (UpdateState::Idle, UpdateResult::Success)
            );
        }
        assert!(
            idle > 0 && downloaded > 0,
            "{idle} idle, {downloaded} downloaded"
        );
    }
}
