//! The Device object (3, OMA LwM2M Core 1.2 Appendix E.4): identity of the device, its
//! power and memory, error codes, clock, Reboot and Factory Reset.

use cairn_lwm2m::operations::ExecuteArgument;
use cairn_lwm2m::{LwM2mObjectInstance, LwM2mResource, Value, WriteMode};

use crate::object::{ClientAction, ObjectError, ObjectHandler};
use crate::objects::ids;

/// Resource ids of the Device object.
mod resource {
    pub const MANUFACTURER: u16 = 0;
    pub const MODEL_NUMBER: u16 = 1;
    pub const SERIAL_NUMBER: u16 = 2;
    pub const FIRMWARE_VERSION: u16 = 3;
    pub const REBOOT: u16 = 4;
    pub const FACTORY_RESET: u16 = 5;
    pub const POWER_SOURCES: u16 = 6;
    pub const BATTERY_LEVEL: u16 = 9;
    pub const MEMORY_FREE: u16 = 10;
    pub const ERROR_CODE: u16 = 11;
    pub const RESET_ERROR_CODE: u16 = 12;
    pub const CURRENT_TIME: u16 = 13;
    pub const UTC_OFFSET: u16 = 14;
    pub const TIMEZONE: u16 = 15;
    pub const SUPPORTED_BINDINGS: u16 = 16;
    pub const DEVICE_TYPE: u16 = 17;
    pub const MEMORY_TOTAL: u16 = 21;
}

/// What a device says about itself; the fixed part of the Device object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Manufacturer.
    pub manufacturer: String,
    /// Model Number.
    pub model_number: String,
    /// Serial Number.
    pub serial_number: String,
    /// Firmware Version.
    pub firmware_version: String,
    /// Device Type.
    pub device_type: String,
    /// Supported Binding and Modes (`U`, `UQ`, `UQS`, …).
    pub supported_bindings: String,
    /// Memory Total, KiB.
    pub memory_total_kib: i64,
}

impl Default for DeviceInfo {
    fn default() -> Self {
        DeviceInfo {
            manufacturer: "Cairn".into(),
            model_number: "cairn-client".into(),
            serial_number: "0".into(),
            firmware_version: env!("CARGO_PKG_VERSION").into(),
            device_type: "simulated".into(),
            supported_bindings: "UQ".into(),
            memory_total_kib: 1024,
        }
    }
}

/// The Device object with its single instance 0.
#[derive(Clone, Debug)]
pub struct DeviceObject {
    info: DeviceInfo,
    clock: fn() -> i64,
    clock_offset: i64,
    utc_offset: String,
    timezone: String,
    battery_level: i64,
    memory_free_kib: i64,
    error_codes: Vec<i64>,
}

/// The system clock, seconds since the Unix epoch.
pub fn system_time() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl DeviceObject {
    /// A device reading the current time from `clock` (Unix seconds; see [`system_time`]).
    pub fn new(info: DeviceInfo, clock: fn() -> i64) -> DeviceObject {
        DeviceObject {
            memory_free_kib: info.memory_total_kib / 2,
            info,
            clock,
            clock_offset: 0,
            utc_offset: "+00:00".into(),
            timezone: "Etc/UTC".into(),
            battery_level: 100,
            error_codes: Vec::new(),
        }
    }

    /// Sets the Firmware Version (/3/0/3), e.g. after a firmware update.
    pub fn set_firmware_version(&mut self, version: impl Into<String>) {
        self.info.firmware_version = version.into();
    }

    /// Sets the battery level, percent.
    pub fn set_battery_level(&mut self, percent: u8) {
        self.battery_level = i64::from(percent.min(100));
    }

    /// Sets the free memory, KiB.
    pub fn set_memory_free(&mut self, kib: i64) {
        self.memory_free_kib = kib;
    }

    /// Records an error code (1 low battery … 8 peripheral malfunction, Appendix E.4).
    pub fn add_error_code(&mut self, code: i64) {
        if !self.error_codes.contains(&code) {
            self.error_codes.push(code);
        }
    }

    fn now(&self) -> i64 {
        (self.clock)().saturating_add(self.clock_offset)
    }

    fn error_code_values(&self) -> Vec<(u16, Value)> {
        if self.error_codes.is_empty() {
            // "0 = No error" is the single value when nothing is wrong.
            return vec![(0, Value::Integer(0))];
        }
        (0u16..)
            .zip(self.error_codes.iter().map(|c| Value::Integer(*c)))
            .collect()
    }
}

impl ObjectHandler for DeviceObject {
    fn object_id(&self) -> u16 {
        ids::DEVICE
    }

    fn instance_ids(&self) -> Vec<u16> {
        vec![0]
    }

    fn read(&self, instance: u16) -> Result<LwM2mObjectInstance, ObjectError> {
        use resource::*;
        if instance != 0 {
            return Err(ObjectError::NotFound);
        }
        let text = |id, value: &str| LwM2mResource::single(id, Value::String(value.to_owned()));
        let info = &self.info;
        Ok(LwM2mObjectInstance::new(
            0,
            [
                text(MANUFACTURER, &info.manufacturer),
                text(MODEL_NUMBER, &info.model_number),
                text(SERIAL_NUMBER, &info.serial_number),
                text(FIRMWARE_VERSION, &info.firmware_version),
                // 1 = internal battery.
                LwM2mResource::multiple(POWER_SOURCES, [(0, Value::Integer(1))]),
                LwM2mResource::single(BATTERY_LEVEL, Value::Integer(self.battery_level)),
                LwM2mResource::single(MEMORY_FREE, Value::Integer(self.memory_free_kib)),
                LwM2mResource::multiple(ERROR_CODE, self.error_code_values()),
                LwM2mResource::single(CURRENT_TIME, Value::Time(self.now())),
                text(UTC_OFFSET, &self.utc_offset),
                text(TIMEZONE, &self.timezone),
                text(SUPPORTED_BINDINGS, &info.supported_bindings),
                text(DEVICE_TYPE, &info.device_type),
                LwM2mResource::single(MEMORY_TOTAL, Value::Integer(info.memory_total_kib)),
            ],
        ))
    }

    fn write(
        &mut self,
        instance: u16,
        _mode: WriteMode,
        resources: Vec<LwM2mResource>,
    ) -> Result<(), ObjectError> {
        use cairn_lwm2m::ResourceValue::Single;
        if instance != 0 {
            return Err(ObjectError::NotFound);
        }
        for written in resources {
            match (written.id, written.value) {
                (resource::CURRENT_TIME, Single(Value::Time(t) | Value::Integer(t))) => {
                    self.clock_offset = t.saturating_sub((self.clock)());
                }
                (resource::UTC_OFFSET, Single(Value::String(text))) => self.utc_offset = text,
                (resource::TIMEZONE, Single(Value::String(text))) => self.timezone = text,
                (id, _) => {
                    return Err(ObjectError::BadRequest(format!(
                        "resource {id} cannot take this value"
                    )));
                }
            }
        }
        Ok(())
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
        match resource {
            resource::REBOOT => Ok(Some(ClientAction::Reboot)),
            resource::FACTORY_RESET => Ok(Some(ClientAction::FactoryReset)),
            resource::RESET_ERROR_CODE => {
                self.error_codes.clear();
                Ok(None)
            }
            _ => Err(ObjectError::MethodNotAllowed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed_clock() -> i64 {
        1_700_000_000
    }

    #[test]
    fn reads_and_writes_the_clock() {
        let mut device = DeviceObject::new(DeviceInfo::default(), fixed_clock);
        let time = |d: &DeviceObject| d.read(0).unwrap().resources[&resource::CURRENT_TIME].clone();
        assert_eq!(
            time(&device),
            LwM2mResource::single(resource::CURRENT_TIME, Value::Time(1_700_000_000))
        );
        device
            .write(
                0,
                WriteMode::Replace,
                vec![LwM2mResource::single(
                    resource::CURRENT_TIME,
                    Value::Time(1_700_000_100),
                )],
            )
            .unwrap();
        assert_eq!(
            time(&device),
            LwM2mResource::single(resource::CURRENT_TIME, Value::Time(1_700_000_100))
        );
    }

    #[test]
    fn executes_reboot_and_resets_error_codes() {
        let mut device = DeviceObject::new(DeviceInfo::default(), fixed_clock);
        assert_eq!(
            device.execute(0, resource::REBOOT, &[]),
            Ok(Some(ClientAction::Reboot))
        );
        device.add_error_code(1);
        let codes = |d: &DeviceObject| d.read(0).unwrap().resources[&resource::ERROR_CODE].clone();
        assert_eq!(
            codes(&device),
            LwM2mResource::multiple(resource::ERROR_CODE, [(0, Value::Integer(1))])
        );
        device.execute(0, resource::RESET_ERROR_CODE, &[]).unwrap();
        assert_eq!(
            codes(&device),
            LwM2mResource::multiple(resource::ERROR_CODE, [(0, Value::Integer(0))])
        );
        assert_eq!(device.read(1), Err(ObjectError::NotFound));
    }
}
