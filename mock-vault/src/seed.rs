//! The seed: tenant, identities, federated credentials, vaults, access lists and secrets.
//!
//! YAML is parsed once into plain serde structs that refuse unknown fields, then checked
//! and turned into the typed [`Seed`]. Every error names the field path (`vaults[0].secrets[1].name`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use zeroize::Zeroizing;

use crate::jwt::VerifyKey;
use crate::pki::{Curve, KeySpec, Storage};

/// The demo seed, documented in the file itself (`mock-vault/demo-seed.yaml`):
///
/// ```yaml
#[doc = include_str!("../demo-seed.yaml")]
/// ```
pub const DEMO_SEED_YAML: &str = include_str!("../demo-seed.yaml");

/// Issuer of the dev service-account tokens minted by [`crate::mint_service_account_token`].
pub const DEV_ISSUER: &str = "https://oidc.kvmount.local";

/// Audience Entra requires in a federated client assertion.
pub const FEDERATION_AUDIENCE: &str = "api://AzureADTokenExchange";

/// Key Vault's limit on a secret value (a seed's values and a PUT's alike).
pub(crate) const MAX_VALUE_BYTES: usize = 25 * 1024;

/// Why a seed was refused.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    /// The YAML did not parse, or a field was missing, unknown or of the wrong type.
    #[error("seed: {0}")]
    Yaml(String),
    /// A field parsed but holds a value the mock does not accept.
    #[error("seed: {field}: {message}")]
    Invalid {
        /// Path of the field, e.g. `vaults[0].secrets[1].name`.
        field: String,
        /// What was wrong and what is accepted.
        message: String,
    },
    /// A file named by the seed (or the seed file itself) could not be read.
    #[error("seed: cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> SeedError {
    SeedError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// A Key Vault secret permission, as granted in an access-policy entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Permission {
    /// Read a secret value (`GET /secrets/{name}[/{version}]`).
    Get,
    /// List secrets, versions and deleted secrets (also `GET /deletedsecrets/{name}`).
    List,
    /// Create a new version (`PUT`) or update attributes (`PATCH`).
    Set,
    /// Soft-delete a secret.
    Delete,
    /// Recover a soft-deleted secret.
    Recover,
    /// Purge a soft-deleted secret.
    Purge,
}

impl Permission {
    /// The name Key Vault uses (`get`, `list`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Get => "get",
            Permission::List => "list",
            Permission::Set => "set",
            Permission::Delete => "delete",
            Permission::Recover => "recover",
            Permission::Purge => "purge",
        }
    }

    const ALL: [Permission; 6] = [
        Permission::Get,
        Permission::List,
        Permission::Set,
        Permission::Delete,
        Permission::Recover,
        Permission::Purge,
    ];

    fn parse(s: &str) -> Option<Vec<Permission>> {
        if s.eq_ignore_ascii_case("all") {
            return Some(Self::ALL.to_vec());
        }
        Self::ALL
            .iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s))
            .map(|p| vec![*p])
    }
}

/// A parsed, checked seed. Build with [`Seed::from_yaml`], [`Seed::from_file`] or [`Seed::demo`].
#[derive(Clone)]
pub struct Seed {
    pub(crate) tenant_id: String,
    pub(crate) identities: Vec<Identity>,
    pub(crate) issuers: Vec<IssuerSeed>,
    pub(crate) vaults: Vec<VaultSeed>,
}

impl fmt::Debug for Seed {
    // Names only: the seed holds secret values and client secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Seed")
            .field("tenant_id", &self.tenant_id)
            .field(
                "identities",
                &self.identities.iter().map(|i| &i.name).collect::<Vec<_>>(),
            )
            .field(
                "vaults",
                &self.vaults.iter().map(|v| &v.name).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// An Entra application (service principal) the token endpoint knows.
#[derive(Clone)]
pub(crate) struct Identity {
    pub name: String,
    pub client_id: String,
    pub client_secret: Option<Zeroizing<String>>,
    pub federated: Vec<FederatedCredential>,
    /// A managed identity of the node, served by the IMDS listener.
    pub managed: Option<ManagedKind>,
}

/// How IMDS hands out a managed identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ManagedKind {
    /// The node's system-assigned identity: a token request without client_id gets it.
    System,
    /// A user-assigned identity: asked for by `client_id` or `object_id`.
    User,
}

impl Identity {
    /// A stable object id for the service principal, derived from the client id.
    pub fn object_id(&self) -> String {
        crate::derived_uuid(&format!("oid/{}", self.client_id))
    }
}

/// A federated identity credential: which issuer/subject may sign in as the identity.
#[derive(Clone, Debug)]
pub(crate) struct FederatedCredential {
    pub issuer: String,
    pub subject: String,
    pub audiences: Vec<String>,
}

/// An extra token issuer (e.g. a real cluster's service-account issuer) and its public key.
#[derive(Clone)]
pub(crate) struct IssuerSeed {
    pub issuer: String,
    pub key: VerifyKey,
}

#[derive(Clone)]
pub(crate) struct VaultSeed {
    pub name: String,
    /// `None`: every identity may get and list everything; nobody may write.
    pub access: Option<Vec<AccessEntry>>,
    pub secrets: Vec<SecretSeed>,
    pub keys: Vec<KeySeed>,
    pub certificates: Vec<CertSeed>,
}

/// A key object: one generated key per version (oldest first).
#[derive(Clone, Debug)]
pub(crate) struct KeySeed {
    pub name: String,
    pub versions: Vec<KeySpec>,
    pub enabled: bool,
    pub nbf: Option<i64>,
    pub exp: Option<i64>,
}

/// A certificate object: its versions, the key and backing secret Key Vault creates with it.
#[derive(Clone, Debug)]
pub(crate) struct CertSeed {
    pub name: String,
    /// Subject common name (default: the name).
    pub subject: String,
    pub dns_names: Vec<String>,
    /// A CA certificate (basicConstraints CA:TRUE, keyCertSign).
    pub ca: bool,
    /// Earlier certificate of the same vault whose newest version signs this one; `None`: self-signed.
    pub issuer: Option<String>,
    pub key: KeySpec,
    pub storage: Storage,
    /// The backing secret lists the chain root first (a PEM file as some tools write it).
    pub root_first: bool,
    pub versions: usize,
    pub enabled: bool,
    pub nbf: Option<i64>,
    pub exp: Option<i64>,
}

#[derive(Clone, Debug)]
pub(crate) struct AccessEntry {
    pub identity: String,
    /// Glob patterns over `secret/<name>`.
    pub objects: Vec<String>,
    pub permissions: BTreeSet<Permission>,
}

#[derive(Clone)]
pub(crate) struct SecretSeed {
    pub name: String,
    /// Oldest first.
    pub versions: Vec<Zeroizing<String>>,
    pub content_type: Option<String>,
    pub tags: BTreeMap<String, String>,
    pub enabled: bool,
    pub nbf: Option<i64>,
    pub exp: Option<i64>,
    /// Served like the secret behind a Key Vault certificate: with `kid` and `managed: true`.
    pub certificate_backed: bool,
}

// ---- raw YAML shapes ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawSeed {
    tenant_id: String,
    #[serde(default)]
    identities: Vec<RawIdentity>,
    #[serde(default)]
    issuers: Vec<RawIssuer>,
    #[serde(default)]
    vaults: Vec<RawVault>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawIdentity {
    name: String,
    client_id: String,
    client_secret: Option<String>,
    #[serde(default)]
    federated: Vec<RawFederated>,
    managed_identity: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawFederated {
    issuer: String,
    subject: String,
    audiences: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawIssuer {
    issuer: String,
    public_key_file: Option<PathBuf>,
    public_key_pem: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawVault {
    name: String,
    access: Option<Vec<RawAccess>>,
    #[serde(default)]
    secrets: Vec<RawSecret>,
    #[serde(default)]
    keys: Vec<RawKey>,
    #[serde(default)]
    certificates: Vec<RawCert>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawKeySpec {
    kty: String,
    size: Option<usize>,
    curve: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawKey {
    name: String,
    versions: Vec<RawKeySpec>,
    enabled: Option<bool>,
    nbf: Option<i64>,
    exp: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawCert {
    name: String,
    subject: Option<String>,
    #[serde(default)]
    dns_names: Vec<String>,
    ca: Option<bool>,
    issuer: Option<String>,
    key: Option<RawKeySpec>,
    content_type: Option<String>,
    chain_order: Option<String>,
    versions: Option<usize>,
    enabled: Option<bool>,
    nbf: Option<i64>,
    exp: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawAccess {
    identity: String,
    objects: Vec<String>,
    permissions: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawSecret {
    name: String,
    versions: Vec<String>,
    content_type: Option<String>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    enabled: Option<bool>,
    nbf: Option<i64>,
    exp: Option<i64>,
    certificate_backed: Option<bool>,
}

impl Seed {
    /// The built-in demo seed (see [`DEMO_SEED_YAML`] for its contents).
    pub fn demo() -> Seed {
        match Seed::from_yaml(DEMO_SEED_YAML) {
            Ok(seed) => seed,
            // The demo seed is a file in this crate, checked by the `demo_seed_parses` test.
            Err(e) => unreachable!("built-in demo seed is invalid: {e}"),
        }
    }

    /// Parses a seed; relative `publicKeyFile` paths are resolved against the current directory.
    pub fn from_yaml(yaml: &str) -> Result<Seed, SeedError> {
        Self::parse(yaml, None)
    }

    /// Reads and parses a seed file; relative `publicKeyFile` paths are resolved against its folder.
    pub fn from_file(path: &Path) -> Result<Seed, SeedError> {
        let text = std::fs::read_to_string(path).map_err(|source| SeedError::Read {
            path: path.to_owned(),
            source,
        })?;
        let text = Zeroizing::new(text);
        Self::parse(&text, path.parent())
    }

    /// The tenant id.
    pub fn tenant_id(&self) -> &str {
        &self.tenant_id
    }

    /// Vault names, in seed order (the first is the default vault).
    pub fn vault_names(&self) -> Vec<&str> {
        self.vaults.iter().map(|v| v.name.as_str()).collect()
    }

    /// `(name, client id)` of every identity.
    pub fn identities(&self) -> Vec<(&str, &str)> {
        self.identities
            .iter()
            .map(|i| (i.name.as_str(), i.client_id.as_str()))
            .collect()
    }

    /// The client id of the identity called `name`.
    pub fn client_id(&self, name: &str) -> Option<&str> {
        self.identities
            .iter()
            .find(|i| i.name == name)
            .map(|i| i.client_id.as_str())
    }

    fn parse(yaml: &str, base: Option<&Path>) -> Result<Seed, SeedError> {
        let raw: RawSeed =
            serde_norway::from_str(yaml).map_err(|e| SeedError::Yaml(e.to_string()))?;
        check_guid("tenantId", &raw.tenant_id)?;
        let identities = parse_identities(raw.identities)?;
        let names: BTreeSet<String> = identities.iter().map(|i| i.name.clone()).collect();
        let issuers = raw
            .issuers
            .into_iter()
            .enumerate()
            .map(|(i, iss)| parse_issuer(&format!("issuers[{i}]"), iss, base))
            .collect::<Result<Vec<_>, _>>()?;
        let mut vaults = Vec::new();
        let mut vault_names = BTreeSet::new();
        for (i, v) in raw.vaults.into_iter().enumerate() {
            let at = format!("vaults[{i}]");
            check_vault_name(&format!("{at}.name"), &v.name)?;
            if !vault_names.insert(v.name.to_ascii_lowercase()) {
                return Err(invalid(
                    format!("{at}.name"),
                    format!("duplicate vault name {:?}", v.name),
                ));
            }
            vaults.push(parse_vault(&at, v, &names)?);
        }
        if vaults.is_empty() {
            return Err(invalid(
                "vaults",
                "the seed must declare at least one vault",
            ));
        }
        Ok(Seed {
            tenant_id: raw.tenant_id.to_ascii_lowercase(),
            identities,
            issuers,
            vaults,
        })
    }
}

/// `identities`: names and client IDs each once, at most one system-assigned managed identity.
fn parse_identities(raw: Vec<RawIdentity>) -> Result<Vec<Identity>, SeedError> {
    let mut identities: Vec<Identity> = Vec::new();
    let mut names = BTreeSet::new();
    let mut client_ids = BTreeSet::new();
    for (i, id) in raw.into_iter().enumerate() {
        let at = format!("identities[{i}]");
        check_name(&format!("{at}.name"), &id.name)?;
        if !names.insert(id.name.clone()) {
            return Err(invalid(
                format!("{at}.name"),
                format!("duplicate identity name {:?}", id.name),
            ));
        }
        check_guid(&format!("{at}.clientId"), &id.client_id)?;
        if !client_ids.insert(id.client_id.to_ascii_lowercase()) {
            return Err(invalid(format!("{at}.clientId"), "duplicate clientId"));
        }
        if id.client_secret.as_deref() == Some("") {
            return Err(invalid(
                format!("{at}.clientSecret"),
                "must not be empty (leave it out instead)",
            ));
        }
        let federated = id
            .federated
            .into_iter()
            .enumerate()
            .map(|(j, f)| parse_federated(&format!("{at}.federated[{j}]"), f))
            .collect::<Result<Vec<_>, _>>()?;
        let managed = match id.managed_identity.as_deref() {
            None => None,
            Some("system") => {
                if identities
                    .iter()
                    .any(|i| i.managed == Some(ManagedKind::System))
                {
                    return Err(invalid(
                        format!("{at}.managedIdentity"),
                        "only one identity can be the node's system-assigned identity",
                    ));
                }
                Some(ManagedKind::System)
            }
            Some("user") => Some(ManagedKind::User),
            Some(other) => {
                return Err(invalid(
                    format!("{at}.managedIdentity"),
                    format!("{other:?}; accepted: system, user"),
                ));
            }
        };
        identities.push(Identity {
            name: id.name,
            client_id: id.client_id.to_ascii_lowercase(),
            client_secret: id.client_secret.map(Zeroizing::new),
            federated,
            managed,
        });
    }
    Ok(identities)
}

/// One federated credential (`at`) of an identity; the audience defaults to Entra's.
fn parse_federated(at: &str, f: RawFederated) -> Result<FederatedCredential, SeedError> {
    check_https_url(&format!("{at}.issuer"), &f.issuer)?;
    if f.subject.is_empty() {
        return Err(invalid(format!("{at}.subject"), "must not be empty"));
    }
    let audiences = f
        .audiences
        .unwrap_or_else(|| vec![FEDERATION_AUDIENCE.to_string()]);
    if audiences.is_empty() {
        return Err(invalid(
            format!("{at}.audiences"),
            "must list at least one audience",
        ));
    }
    Ok(FederatedCredential {
        issuer: f.issuer,
        subject: f.subject,
        audiences,
    })
}

/// One issuer (`at`) and its public key, from a file (relative to `base`) or inline.
fn parse_issuer(at: &str, iss: RawIssuer, base: Option<&Path>) -> Result<IssuerSeed, SeedError> {
    check_https_url(&format!("{at}.issuer"), &iss.issuer)?;
    let pem = match (iss.public_key_file, iss.public_key_pem) {
        (Some(file), None) => {
            let path = match base {
                Some(base) if file.is_relative() => base.join(&file),
                _ => file,
            };
            std::fs::read_to_string(&path).map_err(|source| SeedError::Read { path, source })?
        }
        (None, Some(pem)) => pem,
        _ => {
            return Err(invalid(
                at,
                "give exactly one of publicKeyFile or publicKeyPem",
            ));
        }
    };
    let key =
        VerifyKey::from_pem(&pem).map_err(|e| invalid(format!("{at}.publicKey"), e.to_string()))?;
    Ok(IssuerSeed {
        issuer: iss.issuer,
        key,
    })
}

/// One vault (`at`): its access list (naming identities of `names`) and its objects.
fn parse_vault(at: &str, v: RawVault, names: &BTreeSet<String>) -> Result<VaultSeed, SeedError> {
    let access = match v.access {
        None => None,
        Some(entries) => Some(
            entries
                .into_iter()
                .enumerate()
                .map(|(j, a)| parse_access(&format!("{at}.access[{j}]"), a, names))
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    let (secrets, mut secret_names) = parse_secrets(at, v.secrets)?;
    let keys = parse_keys(at, v.keys, &mut secret_names)?;
    let certificates = parse_certs(at, v.certificates, &secret_names, &keys)?;
    Ok(VaultSeed {
        name: v.name,
        access,
        secrets,
        keys,
        certificates,
    })
}

/// One access entry (`at`): an identity of `names`, object patterns, permissions (get and
/// list when left out).
fn parse_access(
    at: &str,
    a: RawAccess,
    names: &BTreeSet<String>,
) -> Result<AccessEntry, SeedError> {
    if !names.contains(&a.identity) {
        return Err(invalid(
            format!("{at}.identity"),
            format!("no identity named {:?} in identities", a.identity),
        ));
    }
    for (k, o) in a.objects.iter().enumerate() {
        check_object_pattern(&format!("{at}.objects[{k}]"), o)?;
    }
    let mut permissions = BTreeSet::new();
    match a.permissions {
        None => {
            permissions.insert(Permission::Get);
            permissions.insert(Permission::List);
        }
        Some(list) => {
            for (k, p) in list.iter().enumerate() {
                let parsed = Permission::parse(p).ok_or_else(|| {
                    invalid(
                        format!("{at}.permissions[{k}]"),
                        format!("unknown permission {p:?}; accepted: get, list, set, delete, recover, purge, all"),
                    )
                })?;
                permissions.extend(parsed);
            }
        }
    }
    Ok(AccessEntry {
        identity: a.identity,
        objects: a.objects,
        permissions,
    })
}

/// The secrets of vault `at`, and their names (lowercase), which keys and certificates check
/// theirs against.
fn parse_secrets(
    at: &str,
    raw: Vec<RawSecret>,
) -> Result<(Vec<SecretSeed>, BTreeSet<String>), SeedError> {
    let mut secrets = Vec::new();
    let mut secret_names = BTreeSet::new();
    for (j, s) in raw.into_iter().enumerate() {
        let sat = format!("{at}.secrets[{j}]");
        check_secret_name(&format!("{sat}.name"), &s.name)?;
        if !secret_names.insert(s.name.to_ascii_lowercase()) {
            return Err(invalid(
                format!("{sat}.name"),
                format!("duplicate secret name {:?}", s.name),
            ));
        }
        if s.versions.is_empty() {
            return Err(invalid(
                format!("{sat}.versions"),
                "must hold at least one value (oldest first)",
            ));
        }
        for (k, value) in s.versions.iter().enumerate() {
            if value.len() > MAX_VALUE_BYTES {
                return Err(invalid(
                    format!("{sat}.versions[{k}]"),
                    format!(
                        "value is longer than Key Vault's limit of {} bytes",
                        MAX_VALUE_BYTES
                    ),
                ));
            }
        }
        check_times(&sat, s.nbf, s.exp)?;
        secrets.push(SecretSeed {
            name: s.name,
            versions: s.versions.into_iter().map(Zeroizing::new).collect(),
            content_type: s.content_type,
            tags: s.tags,
            enabled: s.enabled.unwrap_or(true),
            nbf: s.nbf,
            exp: s.exp,
            certificate_backed: s.certificate_backed.unwrap_or(false),
        });
    }
    Ok((secrets, secret_names))
}

fn check_times(field: &str, nbf: Option<i64>, exp: Option<i64>) -> Result<(), SeedError> {
    if let (Some(nbf), Some(exp)) = (nbf, exp)
        && nbf >= exp
    {
        return Err(invalid(format!("{field}.exp"), "must be later than nbf"));
    }
    Ok(())
}

fn key_spec(field: &str, raw: &RawKeySpec) -> Result<KeySpec, SeedError> {
    KeySpec::parse(&raw.kty, raw.size, raw.curve.as_deref()).map_err(|m| invalid(field, m))
}

/// Keys; `taken` holds the secret names (lowercase), which keys may share (separate namespaces).
fn parse_keys(
    at: &str,
    raw: Vec<RawKey>,
    _taken: &mut BTreeSet<String>,
) -> Result<Vec<KeySeed>, SeedError> {
    let mut names = BTreeSet::new();
    let mut out = Vec::new();
    for (j, k) in raw.into_iter().enumerate() {
        let kat = format!("{at}.keys[{j}]");
        check_secret_name(&format!("{kat}.name"), &k.name)?;
        if !names.insert(k.name.to_ascii_lowercase()) {
            return Err(invalid(
                format!("{kat}.name"),
                format!("duplicate key name {:?}", k.name),
            ));
        }
        if k.versions.is_empty() {
            return Err(invalid(
                format!("{kat}.versions"),
                "must list at least one key (oldest first), e.g. [{kty: RSA, size: 2048}]",
            ));
        }
        let versions = k
            .versions
            .iter()
            .enumerate()
            .map(|(i, v)| key_spec(&format!("{kat}.versions[{i}]"), v))
            .collect::<Result<Vec<_>, _>>()?;
        check_times(&kat, k.nbf, k.exp)?;
        out.push(KeySeed {
            name: k.name,
            versions,
            enabled: k.enabled.unwrap_or(true),
            nbf: k.nbf,
            exp: k.exp,
        });
    }
    Ok(out)
}

/// Certificates: names must not clash with secrets or keys (a certificate creates both).
fn parse_certs(
    at: &str,
    raw: Vec<RawCert>,
    secrets: &BTreeSet<String>,
    keys: &[KeySeed],
) -> Result<Vec<CertSeed>, SeedError> {
    let mut out: Vec<CertSeed> = Vec::new();
    for (j, c) in raw.into_iter().enumerate() {
        let cat = format!("{at}.certificates[{j}]");
        check_secret_name(&format!("{cat}.name"), &c.name)?;
        let lower = c.name.to_ascii_lowercase();
        if secrets.contains(&lower)
            || keys.iter().any(|k| k.name.eq_ignore_ascii_case(&c.name))
            || out.iter().any(|o| o.name.eq_ignore_ascii_case(&c.name))
        {
            return Err(invalid(
                format!("{cat}.name"),
                format!(
                    "{:?} is already a secret, key or certificate; a certificate creates its own secret and key of the same name",
                    c.name
                ),
            ));
        }
        if let Some(issuer) = &c.issuer {
            match out.iter().find(|o| o.name.eq_ignore_ascii_case(issuer)) {
                Some(o) if o.ca => {}
                Some(_) => {
                    return Err(invalid(
                        format!("{cat}.issuer"),
                        format!("{issuer:?} is not a CA certificate (set ca: true on it)"),
                    ));
                }
                None => {
                    return Err(invalid(
                        format!("{cat}.issuer"),
                        format!("no certificate {issuer:?} declared before this one in the vault"),
                    ));
                }
            }
        }
        let key = match &c.key {
            None => KeySpec::Ec(Curve::P256),
            Some(raw) => key_spec(&format!("{cat}.key"), raw)?,
        };
        if key == KeySpec::Ec(Curve::P521) {
            return Err(invalid(
                format!("{cat}.key"),
                "certificates with P-521 keys are not offered by the mock; accepted: RSA, EC P-256, EC P-384",
            ));
        }
        let storage = match c.content_type.as_deref() {
            None | Some("application/x-pkcs12") => Storage::Pkcs12,
            Some("application/x-pem-file") => Storage::Pem,
            Some(other) => {
                return Err(invalid(
                    format!("{cat}.contentType"),
                    format!("{other:?}; accepted: application/x-pkcs12, application/x-pem-file"),
                ));
            }
        };
        let root_first = match c.chain_order.as_deref() {
            None | Some("leaf-first") => false,
            Some("root-first") => true,
            Some(other) => {
                return Err(invalid(
                    format!("{cat}.chainOrder"),
                    format!("{other:?}; accepted: leaf-first, root-first"),
                ));
            }
        };
        let versions = c.versions.unwrap_or(1);
        if !(1..=30).contains(&versions) {
            return Err(invalid(format!("{cat}.versions"), "accepted: 1 to 30"));
        }
        for (k, d) in c.dns_names.iter().enumerate() {
            if d.is_empty()
                || !d
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '.' || ch == '*')
            {
                return Err(invalid(format!("{cat}.dnsNames[{k}]"), "not a DNS name"));
            }
        }
        check_times(&cat, c.nbf, c.exp)?;
        out.push(CertSeed {
            subject: c.subject.unwrap_or_else(|| c.name.clone()),
            name: c.name,
            dns_names: c.dns_names,
            ca: c.ca.unwrap_or(false),
            issuer: c.issuer,
            key,
            storage,
            root_first,
            versions,
            enabled: c.enabled.unwrap_or(true),
            nbf: c.nbf,
            exp: c.exp,
        });
    }
    Ok(out)
}

fn check_guid(field: &str, value: &str) -> Result<(), SeedError> {
    let ok = value.len() == 36
        && value.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        });
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("{value:?} is not a GUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)"),
        ))
    }
}

fn check_name(field: &str, value: &str) -> Result<(), SeedError> {
    if value.is_empty()
        || value.len() > 64
        || !value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        return Err(invalid(
            field,
            format!("{value:?} must be 1-64 characters of [A-Za-z0-9._-]"),
        ));
    }
    Ok(())
}

fn check_vault_name(field: &str, value: &str) -> Result<(), SeedError> {
    let ok = (3..=24).contains(&value.len())
        && value.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && value.starts_with(|c: char| c.is_ascii_alphabetic())
        && !value.ends_with('-')
        && !value.contains("--");
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!(
                "{value:?} is not a Key Vault name: 3-24 characters of [A-Za-z0-9-], starting with a letter, no trailing or double hyphen"
            ),
        ))
    }
}

pub(crate) fn is_secret_name(value: &str) -> bool {
    (1..=127).contains(&value.len()) && value.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

fn check_secret_name(field: &str, value: &str) -> Result<(), SeedError> {
    if is_secret_name(value) {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("{value:?} is not a secret name: 1-127 characters of [A-Za-z0-9-]"),
        ))
    }
}

fn check_object_pattern(field: &str, value: &str) -> Result<(), SeedError> {
    let Some((kind, name)) = value.split_once('/') else {
        return Err(invalid(
            field,
            format!(
                "{value:?} must look like <type>/<name or glob>, e.g. secret/*, key/db-*, certificate/web"
            ),
        ));
    };
    if !matches!(kind, "secret" | "key" | "certificate" | "*") {
        return Err(invalid(
            field,
            format!(
                "object type {kind:?} is not served by the mock; accepted: secret/..., key/..., certificate/..., */..."
            ),
        ));
    }
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '*' || c == '?')
    {
        return Err(invalid(
            field,
            format!("{name:?} must be a secret name or a glob of [A-Za-z0-9-*?]"),
        ));
    }
    Ok(())
}

fn check_https_url(field: &str, value: &str) -> Result<(), SeedError> {
    match url::Url::parse(value) {
        Ok(u) if u.scheme() == "https" => Ok(()),
        _ => Err(invalid(field, format!("{value:?} must be an https:// URL"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_seed_parses() {
        let seed = Seed::from_yaml(DEMO_SEED_YAML).expect("demo seed");
        assert_eq!(seed.tenant_id(), "00000000-0000-0000-0000-000000000001");
        assert_eq!(seed.vault_names(), vec!["demo"]);
        assert_eq!(
            seed.client_id("app-b"),
            Some("00000000-0000-0000-0000-00000000000b")
        );
    }

    fn err(yaml: &str) -> String {
        match Seed::from_yaml(yaml) {
            Ok(_) => panic!("accepted: {yaml}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn unknown_field_is_named() {
        let e = err(
            "tenantId: 00000000-0000-0000-0000-000000000001\nvaults:\n  - name: demo\n    secrets:\n      - { name: a, versions: [x], colour: red }\n",
        );
        assert!(e.contains("colour"), "{e}");
        assert!(e.contains("vaults[0].secrets[0]"), "{e}");
    }

    #[test]
    fn bad_values_name_the_field() {
        let t = "tenantId: 00000000-0000-0000-0000-000000000001\n";
        assert!(err("tenantId: nope\nvaults: [{name: demo}]").contains("tenantId"));
        assert!(err(&format!("{t}vaults: [{{name: x}}]")).contains("vaults[0].name"));
        assert!(
            err(&format!(
                "{t}vaults: [{{name: demo, secrets: [{{name: a_b, versions: [v]}}]}}]"
            ))
            .contains("vaults[0].secrets[0].name")
        );
        assert!(
            err(&format!(
                "{t}vaults: [{{name: demo, secrets: [{{name: a, versions: []}}]}}]"
            ))
            .contains("vaults[0].secrets[0].versions")
        );
        assert!(
            err(&format!(
                "{t}vaults: [{{name: demo, access: [{{identity: ghost, objects: [secret/*]}}]}}]"
            ))
            .contains("vaults[0].access[0].identity")
        );
        assert!(err(&format!("{t}identities: [{{name: a, clientId: 00000000-0000-0000-0000-00000000000a}}]\nvaults: [{{name: demo, access: [{{identity: a, objects: [secret/*], permissions: [fly]}}]}}]")).contains("vaults[0].access[0].permissions[0]"));
        assert!(err(&format!("{t}identities: [{{name: a, clientId: 00000000-0000-0000-0000-00000000000a}}]\nvaults: [{{name: demo, access: [{{identity: a, objects: [blob/x]}}]}}]")).contains("vaults[0].access[0].objects[0]"));
        assert!(
            err(&format!(
                "{t}vaults: [{{name: demo, keys: [{{name: k, versions: [{{kty: RSA, size: 1024}}]}}]}}]"
            ))
            .contains("vaults[0].keys[0].versions[0]")
        );
        assert!(
            err(&format!(
                "{t}vaults: [{{name: demo, certificates: [{{name: c, issuer: ghost}}]}}]"
            ))
            .contains("vaults[0].certificates[0].issuer")
        );
        assert!(
            err(&format!(
                "{t}vaults: [{{name: demo, secrets: [{{name: c, versions: [x]}}], certificates: [{{name: c}}]}}]"
            ))
            .contains("vaults[0].certificates[0].name")
        );
        assert!(err(t).contains("vaults"));
        assert!(err("[1, 2").starts_with("seed:"));
    }
}
