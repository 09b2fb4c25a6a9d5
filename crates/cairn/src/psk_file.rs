//! Device credential files: one `endpoint,identity,hexkey` line per device, `#` comments.
//! `cairn device import` reads them into the server's store, `cairn fleet` into its
//! simulated devices. Errors name the file and line, never the key.

use std::path::Path;

use anyhow::{Context, bail};

use crate::client_cmd::PskKey;

/// One line of a credential file.
pub struct PskEntry {
    pub endpoint: String,
    pub identity: Vec<u8>,
    pub key: PskKey,
}

pub fn read(path: &Path) -> anyhow::Result<Vec<PskEntry>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut entries = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = || format!("{}:{}", path.display(), index + 1);
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let [endpoint, identity, key] = fields.as_slice() else {
            bail!("{}: expected endpoint,identity,hexkey", at());
        };
        anyhow::ensure!(
            !endpoint.is_empty() && !identity.is_empty(),
            "{}: empty endpoint or identity",
            at()
        );
        let key: PskKey = key
            .parse()
            .with_context(|| format!("{}: invalid key", at()))?;
        entries.push(PskEntry {
            endpoint: (*endpoint).to_owned(),
            identity: identity.as_bytes().to_vec(),
            key,
        });
    }
    Ok(entries)
}
