//! What the operator side sees of the Bootstrap-Server's data: identities, key fingerprints,
//! server URIs and bootstrap history, never a key. The web console and REST API read the
//! bootstrap data only through these.

use cairn_store::{
    BootstrapSettings, BootstrapStatus, BootstrapTemplate, CredentialKind, DmCredentialSource,
    PskCredential, StoreError,
};

use super::BootstrapServer;

/// A PSK as the operator sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredentialSummary {
    /// The PSK identity (lossy UTF-8).
    pub identity: String,
    /// `sha256:` and 16 hex digits of the key's digest.
    pub fingerprint: String,
}

impl CredentialSummary {
    fn of(credential: &PskCredential) -> CredentialSummary {
        CredentialSummary {
            identity: String::from_utf8_lossy(&credential.identity).into_owned(),
            fingerprint: cairn_store::record::fingerprint(credential.key.expose()),
        }
    }
}

/// A device's bootstrap credentials and history, without keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceBootstrapSummary {
    pub endpoint: String,
    /// The bootstrap credential the device is given (the factory one at first).
    pub bootstrap: CredentialSummary,
    /// A new bootstrap credential is written and the previous one is still accepted.
    pub bootstrap_replacing: bool,
    /// The device-management credential, once generated.
    pub dm: Option<CredentialSummary>,
    /// The device registered with `dm`.
    pub dm_proven: bool,
    /// The previous device-management credential is still accepted.
    pub dm_replacing: bool,
    pub status: BootstrapStatus,
}

/// One LwM2M Server of a configuration or template, without credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerSummary {
    pub short_server_id: u16,
    pub uri: String,
    pub lifetime_s: u32,
    pub binding: String,
    /// `generated-psk`, `generated-rpk`, `generated-x509`, `explicit-psk` or `nosec`.
    pub credential: &'static str,
    pub oscore: bool,
}

/// Bootstrap settings without credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SettingsSummary {
    pub servers: Vec<ServerSummary>,
    pub bootstrap_uri: String,
    pub replace_bootstrap_credential: bool,
    pub allow_unsecured: bool,
    /// The objects Access Control instances are written for.
    pub acl_objects: Vec<u16>,
}

impl SettingsSummary {
    pub fn of(settings: &BootstrapSettings) -> SettingsSummary {
        SettingsSummary {
            servers: settings
                .servers
                .iter()
                .map(|server| ServerSummary {
                    short_server_id: server.short_server_id,
                    uri: server.uri.clone(),
                    lifetime_s: server.lifetime_s,
                    binding: server.binding.clone(),
                    credential: match &server.credential {
                        DmCredentialSource::Generate(CredentialKind::Psk) => "generated-psk",
                        DmCredentialSource::Generate(CredentialKind::Rpk) => "generated-rpk",
                        DmCredentialSource::Generate(CredentialKind::X509) => "generated-x509",
                        DmCredentialSource::ExplicitPsk(_) => "explicit-psk",
                        DmCredentialSource::NoSec => "nosec",
                    },
                    oscore: server.oscore,
                })
                .collect(),
            bootstrap_uri: settings.bootstrap_uri.clone(),
            replace_bootstrap_credential: settings.replace_bootstrap_credential,
            allow_unsecured: settings.allow_unsecured,
            acl_objects: settings.acl.iter().map(|acl| acl.object_id).collect(),
        }
    }
}

/// A template without credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplateSummary {
    pub name: String,
    pub endpoint_prefix: String,
    pub settings: SettingsSummary,
}

/// One endpoint's own configuration, without credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigSummary {
    pub endpoint: String,
    pub settings: SettingsSummary,
}

impl BootstrapServer {
    /// Every endpoint with bootstrap credentials, in name order.
    pub async fn device_endpoints(&self) -> Result<Vec<String>, StoreError> {
        let store = &self.inner.stores.bootstrap;
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = store.list_device_endpoints(after.as_deref(), 1000).await?;
            all.extend(page.items);
            match page.next_cursor {
                Some(cursor) => after = Some(cursor),
                None => return Ok(all),
            }
        }
    }

    /// The bootstrap state of up to `limit` devices after `after`, in name order, and the
    /// cursor of the next page.
    pub async fn device_summaries(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<DeviceBootstrapSummary>, Option<String>), StoreError> {
        let store = &self.inner.stores.bootstrap;
        let page = store.list_device_endpoints(after, limit).await?;
        let mut summaries = Vec::with_capacity(page.items.len());
        for endpoint in &page.items {
            if let Some(device) = self.device_summary(endpoint).await? {
                summaries.push(device);
            }
        }
        Ok((summaries, page.next_cursor))
    }

    /// One device's bootstrap state.
    pub async fn device_summary(
        &self,
        endpoint: &str,
    ) -> Result<Option<DeviceBootstrapSummary>, StoreError> {
        let Some(device) = self
            .inner
            .stores
            .bootstrap
            .get_device_credentials(endpoint)
            .await?
        else {
            return Ok(None);
        };
        Ok(Some(DeviceBootstrapSummary {
            endpoint: device.endpoint.clone(),
            bootstrap: CredentialSummary::of(&device.bootstrap),
            bootstrap_replacing: device.bootstrap_previous.is_some(),
            dm: device
                .dm
                .as_ref()
                .map(|dm| CredentialSummary::of(&dm.current)),
            dm_proven: device.dm.as_ref().is_some_and(|dm| dm.proven),
            dm_replacing: device.dm.as_ref().is_some_and(|dm| dm.previous.is_some()),
            status: device.status.clone(),
        }))
    }

    /// Every template.
    pub async fn template_summaries(&self) -> Result<Vec<TemplateSummary>, StoreError> {
        Ok(self
            .inner
            .stores
            .bootstrap
            .list_bootstrap_templates()
            .await?
            .iter()
            .map(|template| TemplateSummary {
                name: template.name.clone(),
                endpoint_prefix: template.endpoint_prefix.clone(),
                settings: SettingsSummary::of(&template.settings),
            })
            .collect())
    }

    /// Adds or replaces a template (the store refuses one with an explicit key).
    pub async fn put_template(&self, template: BootstrapTemplate) -> Result<(), StoreError> {
        self.inner
            .stores
            .bootstrap
            .put_bootstrap_template(template)
            .await
    }

    /// Removes a template; whether it existed.
    pub async fn remove_template(&self, name: &str) -> Result<bool, StoreError> {
        self.inner
            .stores
            .bootstrap
            .remove_bootstrap_template(name)
            .await
    }

    /// An endpoint's own configuration.
    pub async fn config_summary(
        &self,
        endpoint: &str,
    ) -> Result<Option<ConfigSummary>, StoreError> {
        Ok(self
            .inner
            .stores
            .bootstrap
            .get_bootstrap_config(endpoint)
            .await?
            .map(|config| ConfigSummary {
                endpoint: config.endpoint.clone(),
                settings: SettingsSummary::of(&config.settings),
            }))
    }
}
