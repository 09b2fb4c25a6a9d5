//! Built-in implementations of the core objects (OMA LwM2M Core 1.2 Appendix E): Security
//! (0), Server (1), Access Control (2), Device (3) and Connectivity Monitoring (4).

mod device;
pub mod firmware;
mod security;

pub use device::{DeviceInfo, DeviceObject, system_time};
pub use firmware::{FirmwareJob, FirmwareObject, UpdateOutcome};
pub use security::{SecurityMode, SecurityObject};

use std::sync::Arc;

use cairn_lwm2m::{LwM2mObjectInstance, LwM2mResource, ModelRegistry, Value, Version};

use crate::object::InstanceStore;
use crate::tree::ObjectTree;

/// Object ids of the core objects.
pub mod ids {
    /// LwM2M Security.
    pub const SECURITY: u16 = 0;
    /// LwM2M Server.
    pub const SERVER: u16 = 1;
    /// Access Control.
    pub const ACCESS_CONTROL: u16 = 2;
    /// Device.
    pub const DEVICE: u16 = 3;
    /// Connectivity Monitoring.
    pub const CONNECTIVITY_MONITORING: u16 = 4;
}

/// Resources of the Server object (1).
pub mod server_resources {
    /// Short Server ID.
    pub const SHORT_SERVER_ID: u16 = 0;
    /// Lifetime, seconds.
    pub const LIFETIME: u16 = 1;
    /// Default Minimum Period, seconds.
    pub const DEFAULT_PMIN: u16 = 2;
    /// Default Maximum Period, seconds.
    pub const DEFAULT_PMAX: u16 = 3;
    /// Disable (executable).
    pub const DISABLE: u16 = 4;
    /// Notification Storing When Disabled or Offline.
    pub const NOTIFICATION_STORING: u16 = 6;
    /// Binding.
    pub const BINDING: u16 = 7;
    /// Registration Update Trigger (executable).
    pub const REGISTRATION_UPDATE_TRIGGER: u16 = 8;
    /// Bootstrap-Request Trigger (executable, LwM2M 1.1).
    pub const BOOTSTRAP_REQUEST_TRIGGER: u16 = 9;
}

/// The settings of one Server object instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerInstance {
    /// Instance id.
    pub instance: u16,
    /// Short Server ID (1..=65534).
    pub short_server_id: u16,
    /// Registration lifetime, seconds.
    pub lifetime: u32,
    /// Binding (`U`, or `UQ` in LwM2M 1.0 queue mode).
    pub binding: String,
    /// Default pmin and pmax for observations without attributes.
    pub default_pmin: Option<u32>,
    /// See `default_pmin`.
    pub default_pmax: Option<u32>,
}

impl ServerInstance {
    fn to_instance(&self) -> LwM2mObjectInstance {
        use server_resources::*;
        let mut resources = vec![
            LwM2mResource::single(
                SHORT_SERVER_ID,
                Value::Integer(i64::from(self.short_server_id)),
            ),
            LwM2mResource::single(LIFETIME, Value::Integer(i64::from(self.lifetime))),
            LwM2mResource::single(NOTIFICATION_STORING, Value::Boolean(false)),
            LwM2mResource::single(BINDING, Value::String(self.binding.clone())),
        ];
        resources.extend(
            self.default_pmin
                .map(|p| LwM2mResource::single(DEFAULT_PMIN, Value::Integer(i64::from(p)))),
        );
        resources.extend(
            self.default_pmax
                .map(|p| LwM2mResource::single(DEFAULT_PMAX, Value::Integer(i64::from(p)))),
        );
        LwM2mObjectInstance::new(self.instance, resources)
    }
}

/// The Server object (1) with one instance per server. Its executables (Disable,
/// Registration Update Trigger) are handled by [`crate::ObjectTree`] since they act on
/// the registration.
pub fn server_object(servers: &[ServerInstance]) -> InstanceStore {
    InstanceStore::new(
        ids::SERVER,
        servers.iter().map(ServerInstance::to_instance),
        true,
    )
}

/// One Access Control object instance: who owns an object instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessControlEntry {
    /// Object the entry controls.
    pub object_id: u16,
    /// Instance it controls (65535 for the object itself, i.e. Create rights).
    pub instance_id: u16,
    /// Access rights per Short Server ID (bit 0 Read, 1 Write, 2 Execute, 3 Delete,
    /// 4 Create).
    pub acl: Vec<(u16, u8)>,
    /// Short Server ID of the owner.
    pub owner: u16,
}

/// The Access Control object (2).
pub fn access_control_object(entries: &[AccessControlEntry]) -> InstanceStore {
    let instances = entries.iter().zip(0u16..).map(|(entry, id)| {
        LwM2mObjectInstance::new(
            id,
            [
                LwM2mResource::single(0, Value::Integer(i64::from(entry.object_id))),
                LwM2mResource::single(1, Value::Integer(i64::from(entry.instance_id))),
                LwM2mResource::multiple(
                    2,
                    entry
                        .acl
                        .iter()
                        .map(|(server, rights)| (*server, Value::Integer(i64::from(*rights)))),
                ),
                LwM2mResource::single(3, Value::Integer(i64::from(entry.owner))),
            ],
        )
    });
    InstanceStore::new(ids::ACCESS_CONTROL, instances, true)
}

/// The state of a network connection, for the Connectivity Monitoring object (4).
#[derive(Clone, Debug, PartialEq)]
pub struct Connectivity {
    /// Network Bearer (0 GSM … 6 LTE-FDD, 21 WLAN, 41 Ethernet).
    pub network_bearer: i64,
    /// Available Network Bearers.
    pub available_bearers: Vec<i64>,
    /// Radio Signal Strength, dBm.
    pub radio_signal_strength: i64,
    /// Link Quality.
    pub link_quality: i64,
    /// IP addresses of the device.
    pub ip_addresses: Vec<String>,
}

impl Default for Connectivity {
    fn default() -> Self {
        Connectivity {
            network_bearer: 41,
            available_bearers: vec![41],
            radio_signal_strength: 0,
            link_quality: 100,
            ip_addresses: Vec::new(),
        }
    }
}

/// The Connectivity Monitoring object (4) with one instance.
pub fn connectivity_object(connectivity: &Connectivity) -> InstanceStore {
    let indexed = |values: Vec<Value>| (0u16..).zip(values).collect::<Vec<_>>();
    let instance = LwM2mObjectInstance::new(
        0,
        [
            LwM2mResource::single(0, Value::Integer(connectivity.network_bearer)),
            LwM2mResource::multiple(
                1,
                indexed(
                    connectivity
                        .available_bearers
                        .iter()
                        .map(|b| Value::Integer(*b))
                        .collect(),
                ),
            ),
            LwM2mResource::single(2, Value::Integer(connectivity.radio_signal_strength)),
            LwM2mResource::single(3, Value::Integer(connectivity.link_quality)),
            LwM2mResource::multiple(
                4,
                indexed(
                    connectivity
                        .ip_addresses
                        .iter()
                        .map(|a| Value::String(a.clone()))
                        .collect(),
                ),
            ),
        ],
    );
    InstanceStore::new(ids::CONNECTIVITY_MONITORING, [instance], false)
}

/// The standard objects of a device: Security, Server (one instance per server), Access
/// Control (no entries: with one server it owns everything), Device and Connectivity
/// Monitoring.
pub fn standard_tree(
    models: Arc<ModelRegistry>,
    lwm2m_version: Version,
    security: SecurityObject,
    servers: &[ServerInstance],
    device: DeviceObject,
    connectivity: &Connectivity,
) -> ObjectTree {
    let mut tree = ObjectTree::new(models, lwm2m_version);
    tree.add(security);
    tree.add(server_object(servers));
    tree.add(access_control_object(&[]));
    tree.add(device);
    tree.add(connectivity_object(connectivity));
    tree
}
