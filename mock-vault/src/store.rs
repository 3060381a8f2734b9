//! In-memory secrets of one vault: versions (oldest first) and soft-deleted secrets.

use std::collections::BTreeMap;

use zeroize::Zeroizing;

use crate::pki::{CertRequest, IssuedCert, PublicJwk, issue};
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

/// One version of a key: only the public half is kept (the mock never signs with it).
pub(crate) struct KeyVersion {
    pub version: String,
    pub public: PublicJwk,
    /// `RSA` or `EC`.
    pub kty: &'static str,
    pub enabled: bool,
    pub nbf: Option<i64>,
    pub exp: Option<i64>,
    pub created: i64,
    pub updated: i64,
    /// The key behind a certificate.
    pub managed: bool,
}

/// One version of a certificate.
pub(crate) struct CertVersion {
    pub version: String,
    pub der: Vec<u8>,
    pub x5t: String,
    pub content_type: &'static str,
    pub enabled: bool,
    pub nbf: Option<i64>,
    pub exp: Option<i64>,
    pub created: i64,
    pub updated: i64,
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
    /// Keys, oldest version first; keyed by lowercase name.
    pub keys: BTreeMap<String, (String, Vec<KeyVersion>)>,
    /// Certificates, oldest version first; keyed by lowercase name.
    pub certs: BTreeMap<String, (String, Vec<CertVersion>)>,
}

fn kty(public: &PublicJwk) -> &'static str {
    match public {
        PublicJwk::Rsa { .. } => "RSA",
        PublicJwk::Ec { .. } => "EC",
    }
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
    /// The vault as seeded: secrets, generated keys, and certificates with their backing
    /// secrets and keys (same name and version, as Key Vault creates them).
    pub fn from_seed(seed: &VaultSeed, now: i64) -> Result<VaultState, String> {
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
        let mut keys = BTreeMap::new();
        for k in &seed.keys {
            let n = k.versions.len() as i64;
            let mut versions = Vec::new();
            for (i, spec) in k.versions.iter().enumerate() {
                let t = now - (n - i as i64) * 60;
                let generated = crate::pki::generate(*spec)
                    .map_err(|e| format!("vault {}: key {}: {e}", seed.name, k.name))?;
                versions.push(KeyVersion {
                    version: seeded_version(&seed.name, &format!("key/{}", k.name), i),
                    kty: kty(&generated.public),
                    public: generated.public,
                    enabled: k.enabled,
                    nbf: k.nbf,
                    exp: k.exp,
                    created: t,
                    updated: t,
                    managed: false,
                });
            }
            keys.insert(k.name.to_ascii_lowercase(), (k.name.clone(), versions));
        }
        let mut certs = BTreeMap::new();
        let mut issued: BTreeMap<String, IssuedCert> = BTreeMap::new();
        let start =
            time::OffsetDateTime::from_unix_timestamp(now - 86_400).map_err(|e| e.to_string())?;
        for c in &seed.certificates {
            let n = c.versions as i64;
            let mut cert_versions = Vec::new();
            let mut secret_versions = Vec::new();
            let mut key_versions = Vec::new();
            for i in 0..c.versions {
                let t = now - (n - i as i64) * 60;
                let not_after = match c.exp {
                    Some(exp) => time::OffsetDateTime::from_unix_timestamp(exp),
                    None => time::OffsetDateTime::from_unix_timestamp(now + 365 * 86_400),
                }
                .map_err(|e| e.to_string())?;
                let not_before = match c.nbf {
                    Some(nbf) => {
                        time::OffsetDateTime::from_unix_timestamp(nbf).map_err(|e| e.to_string())?
                    }
                    None => start,
                };
                let req = CertRequest {
                    subject: &c.subject,
                    dns_names: &c.dns_names,
                    ca: c.ca,
                    key: c.key,
                    not_before,
                    not_after,
                };
                let parent = c
                    .issuer
                    .as_ref()
                    .and_then(|p| issued.get(&p.to_ascii_lowercase()));
                let cert = issue(&req, parent)
                    .map_err(|e| format!("vault {}: certificate {}: {e}", seed.name, c.name))?;
                let version = seeded_version(&seed.name, &c.name, i);
                let value = crate::pki::backing_secret(&cert, c.storage, c.root_first)
                    .map_err(|e| format!("vault {}: certificate {}: {e}", seed.name, c.name))?;
                secret_versions.push(SecretVersion {
                    version: version.clone(),
                    value,
                    content_type: Some(c.storage.content_type().to_owned()),
                    tags: BTreeMap::new(),
                    enabled: c.enabled,
                    nbf: c.nbf,
                    exp: c.exp,
                    created: t,
                    updated: t,
                    certificate_backed: true,
                });
                key_versions.push(KeyVersion {
                    version: version.clone(),
                    kty: kty(&cert.key.public),
                    public: cert.key.public.clone(),
                    enabled: c.enabled,
                    nbf: c.nbf,
                    exp: c.exp,
                    created: t,
                    updated: t,
                    managed: true,
                });
                cert_versions.push(CertVersion {
                    version,
                    x5t: crate::pki::thumbprint(&cert.der),
                    der: cert.der.clone(),
                    content_type: c.storage.content_type(),
                    enabled: c.enabled,
                    nbf: c.nbf,
                    exp: c.exp,
                    created: t,
                    updated: t,
                });
                issued.insert(c.name.to_ascii_lowercase(), cert);
            }
            let lower = c.name.to_ascii_lowercase();
            secrets.insert(
                lower.clone(),
                (
                    c.name.clone(),
                    SecretItem {
                        versions: secret_versions,
                    },
                ),
            );
            keys.insert(lower.clone(), (c.name.clone(), key_versions));
            certs.insert(lower, (c.name.clone(), cert_versions));
        }
        Ok(VaultState {
            name: seed.name.clone(),
            access: seed.access.clone(),
            secrets,
            deleted: BTreeMap::new(),
            keys,
            certs,
        })
    }
}
