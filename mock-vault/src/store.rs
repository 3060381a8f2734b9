//! In-memory secrets of one vault: versions (oldest first) and soft-deleted secrets.

use std::collections::BTreeMap;

use zeroize::Zeroizing;

use crate::seed::{AccessEntry, VaultSeed};

/// Soft-deleted secrets are kept (and scheduled for purge) this many days, as Key Vault's default.
pub(crate) const RECOVERABLE_DAYS: i64 = 90;
pub(crate) const RECOVERY_LEVEL: &str = "Recoverable+Purgeable";

pub(crate) struct SecretVersion {
    pub version: String,
    pub value: Zeroizing<String>,
    pub content_type: Option<String>,
    pub tags: BTreeMap<String, String>,
    pub enabled: bool,
    pub nbf: Option<i64>,
    pub exp: Option<i64>,
    pub created: i64,
    pub updated: i64,
    /// Backs a certificate: answered with `kid` and `managed: true`.
    pub certificate_backed: bool,
}

#[derive(Default)]
pub(crate) struct SecretItem {
    /// Oldest first; the last one is the current version.
    pub versions: Vec<SecretVersion>,
}

impl SecretItem {
    pub fn latest(&self) -> Option<&SecretVersion> {
        self.versions.last()
    }

    pub fn version(&self, version: &str) -> Option<&SecretVersion> {
        self.versions
            .iter()
            .find(|v| v.version.eq_ignore_ascii_case(version))
    }
}

pub(crate) struct DeletedItem {
    pub item: SecretItem,
    pub deleted_date: i64,
    pub scheduled_purge_date: i64,
}

pub(crate) struct VaultState {
    pub name: String,
    pub access: Option<Vec<AccessEntry>>,
    /// Keyed by lowercase name (Key Vault names are case-insensitive); the value keeps the spelling.
    pub secrets: BTreeMap<String, (String, SecretItem)>,
    pub deleted: BTreeMap<String, (String, DeletedItem)>,
}

/// The seeded version id of `vault/name` at `index`: 32 lowercase hex, stable across runs.
pub fn seeded_version(vault: &str, name: &str, index: usize) -> String {
    let d = ring::digest::digest(
        &ring::digest::SHA256,
        format!("kvmount-mock/{vault}/{name}/{index}").as_bytes(),
    );
    hex::encode(&d.as_ref()[..16])
}

impl VaultState {
    pub fn from_seed(seed: &VaultSeed, now: i64) -> VaultState {
        let mut secrets = BTreeMap::new();
        for s in &seed.secrets {
            let n = s.versions.len() as i64;
            let versions = s
                .versions
                .iter()
                .enumerate()
                .map(|(i, value)| {
                    // Oldest first, one minute apart, the newest a minute before start.
                    let t = now - (n - i as i64) * 60;
                    SecretVersion {
                        version: seeded_version(&seed.name, &s.name, i),
                        value: value.clone(),
                        content_type: s.content_type.clone(),
                        tags: s.tags.clone(),
                        enabled: s.enabled,
                        nbf: s.nbf,
                        exp: s.exp,
                        created: t,
                        updated: t,
                        certificate_backed: s.certificate_backed,
                    }
                })
                .collect();
            secrets.insert(
                s.name.to_ascii_lowercase(),
                (s.name.clone(), SecretItem { versions }),
            );
        }
        VaultState {
            name: seed.name.clone(),
            access: seed.access.clone(),
            secrets,
            deleted: BTreeMap::new(),
        }
    }
}
