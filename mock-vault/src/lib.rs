//! kvmount's local Azure Key Vault and Entra token endpoint, for dev mode and tests.
//!
//! One TLS listener (HTTP/1.1 and h2) serves:
//! - the Key Vault secrets data plane for every seeded vault, chosen by the first label of the
//!   Host (`demo.vault.localhost:PORT`; an IP or `localhost` means the first vault), with the
//!   bearer challenge, token verification and access lists;
//! - an Entra token endpoint `POST /{tenant}/oauth2/v2.0/token` (client secret or federated
//!   client assertion), `GET /{tenant}/v2.0/.well-known/openid-configuration`,
//!   `GET /common/discovery/instance`, `GET /{tenant}/discovery/v2.0/keys`;
//! - optionally, on a second plain-HTTP listener, IMDS (`GET /metadata/identity/oauth2/token`,
//!   `Metadata: true`) for the seed's managed identities (route `imds.token`);
//! - an admin API without auth: `GET|DELETE /_mock/stats`, `GET|PUT|DELETE /_mock/faults`.
//!
//! Route names in stats and fault rules: `key.get`, `key.list_versions`, `certificate.get`,
//! `certificate.list_versions`, `imds.token`, `secret.get`, `secret.list`, `secret.list_versions`,
//! `secret.set`, `secret.update`, `secret.delete`, `deleted_secret.get`, `deleted_secret.list`,
//! `deleted_secret.purge`, `deleted_secret.recover`, `unknown`, `token`, `openid`,
//! `instance_discovery`, `jwks`.
//!
//! Permissions: a vault without `access` lets every identity `get` and `list` everything and
//! write nothing; with `access`, an entry grants its `permissions` (default `[get, list]`;
//! writes need `set`, `delete`, `recover`, `purge` or `all`) on the objects matching its patterns.
//!
//! Faults apply to requests that passed authentication, to the token endpoint and to IMDS; a
//! challenge 401 only takes the matching rules' latency (a round trip costs the same whatever
//! it answers) and uses up none of their `times`. A rule answers with an error `status` (with
//! `retryAfter`; a Key Vault 401 carries the vault's challenge, as Key Vault's own do), adds
//! `latencyMs`, or (`reset: true`) cuts the connection mid-response: the
//! status line and headers (with the whole `Content-Length`) and half of the body go out, then
//! the HTTP/1.1 connection is closed (the h2 stream reset), as a dying proxy or a TCP reset
//! would.
//!
//! Never logged: secret values, tokens, client secrets, assertions.

#![forbid(unsafe_code)]

mod admin;
mod bodies;
mod cli;
mod entra;
mod exchange;
mod imds;
pub mod jwt;
mod keyvault;
mod objects;
mod pki;
mod seed;
mod server;
mod store;
mod tls;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hyper::{Method, StatusCode};
use serde_json::json;
use tokio::sync::watch;

pub use admin::{FaultRule, Faults, Stats, StatsEntry};
pub use cli::{MintTokenArgs, MockVaultArgs, MockVaultCommand, default_tls_dir, run_cli};
pub use seed::{DEMO_SEED_YAML, DEV_ISSUER, FEDERATION_AUDIENCE, Permission, Seed, SeedError};
pub use store::seeded_version;

use exchange::{Reply, Req, State};

/// Errors of starting the mock or minting tokens.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file (TLS directory, seed) failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A key or certificate in the TLS directory could not be made or read.
    #[error("TLS material in {}: {message}", dir.display())]
    Tls {
        /// The TLS directory.
        dir: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A token could not be signed, or a request for one was invalid.
    #[error("token: {0}")]
    Token(String),
    /// The seed was refused.
    #[error(transparent)]
    Seed(#[from] SeedError),
}

/// Where and what to serve.
#[derive(Debug, Clone)]
pub struct MockVaultConfig {
    /// Listen address; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Tenant, identities, vaults and secrets.
    pub seed: Seed,
    /// Folder of the CA, server certificate and signing keys (created if absent; see [`tls_files`]).
    pub tls_dir: PathBuf,
    /// Key Vault DNS suffix; vault URLs are `https://<vault>.<suffix>:PORT/`, the token resource `https://<suffix>`.
    pub dns_suffix: String,
    /// DNS names clients reach the Entra endpoints by, for clients that take no address
    /// mapping (a hosts file in a network namespace maps them here): added to the server
    /// certificate; the first is the authority in [`MockVault::base_url`] and the OpenID
    /// documents (`https://<name>` when listening on port 443). Empty: the listen address.
    /// MSAL asks `login.microsoftonline.com` for instance discovery of any authority it does
    /// not know, so a client with a custom authority needs that name here too.
    pub entra_hosts: Vec<String>,
    /// More names (DNS names, `*.` wildcards, IP addresses) for the server certificate, for
    /// clients that reach the mock by another address: pods in a cluster by the node's IP.
    pub tls_sans: Vec<String>,
}

impl MockVaultConfig {
    /// Demo seed, `127.0.0.1:0`, suffix `vault.localhost`.
    pub fn new(tls_dir: impl Into<PathBuf>) -> MockVaultConfig {
        MockVaultConfig {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            seed: Seed::demo(),
            tls_dir: tls_dir.into(),
            dns_suffix: "vault.localhost".to_string(),
            entra_hosts: Vec::new(),
            tls_sans: Vec::new(),
        }
    }
}

/// Names of the files kept in the TLS directory: CA, CA key, server chain, server key, and the
/// dev issuer's private and public key.
pub fn tls_files() -> [&'static str; 8] {
    [
        "ca.pem",
        "ca-key.pem",
        "server.pem",
        "server-key.pem",
        "server-dns-suffix",
        "token-signing-key.pem",
        "issuer-key.pem",
        "issuer.pub.pem",
    ]
}

/// A running mock; dropping it without [`MockVault::shutdown`] leaves the tasks running until the runtime ends.
pub struct MockVault {
    addr: SocketAddr,
    imds_addr: Option<SocketAddr>,
    base_url: String,
    ca_path: PathBuf,
    state: Arc<State>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for MockVault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockVault")
            .field("addr", &self.addr)
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

pub(crate) fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// A UUID-shaped id derived from `input` (stable across runs).
pub(crate) fn derived_uuid(input: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, input.as_bytes());
    let h = hex::encode(&d.as_ref()[..16]);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// `name` is a DNS name; else a seed error naming `field`.
fn check_dns_name(field: &str, name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if ok {
        Ok(())
    } else {
        Err(Error::Seed(SeedError::Invalid {
            field: field.into(),
            message: format!(
                "{name:?} is not a DNS name (labels of [A-Za-z0-9-] separated by dots)"
            ),
        }))
    }
}

/// Binds, prepares TLS material and serves in background tasks.
pub async fn start(config: MockVaultConfig) -> Result<MockVault, Error> {
    start_with_imds(config, None).await
}

/// [`start`], and also serves IMDS (plain HTTP) on `imds_listen` for the seed's managed
/// identities. The Azure SDKs only ask `169.254.169.254:80`: tests bind that inside a network
/// namespace of their own.
pub async fn start_with_imds(
    config: MockVaultConfig,
    imds_listen: Option<SocketAddr>,
) -> Result<MockVault, Error> {
    check_dns_name("dns_suffix", &config.dns_suffix)?;
    let dns_suffix = config.dns_suffix.to_ascii_lowercase();
    for name in &config.entra_hosts {
        check_dns_name("entra_hosts", name)?;
    }
    let entra_hosts: Vec<String> = config
        .entra_hosts
        .iter()
        .map(|h| h.to_ascii_lowercase())
        .collect();
    let tls_dir = std::path::absolute(&config.tls_dir).map_err(|source| Error::Io {
        path: config.tls_dir.clone(),
        source,
    })?;
    let mut cert_names = entra_hosts.clone();
    for name in &config.tls_sans {
        if name.parse::<IpAddr>().is_err() {
            check_dns_name("tls_sans", name.strip_prefix("*.").unwrap_or(name))?;
        }
        cert_names.push(name.to_ascii_lowercase());
    }
    let tls = tls::ensure(&tls_dir, &dns_suffix, &cert_names)?;
    let token_signer = tls::token_signer(&tls_dir)?;
    let dev_issuer = tls::issuer_signer(&tls_dir)?.verify_key();
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| Error::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| Error::Bind {
        addr: config.listen,
        source,
    })?;
    let host = match addr.ip() {
        _ if !entra_hosts.is_empty() => entra_hosts[0].clone(),
        ip if ip.is_unspecified() => "127.0.0.1".to_string(),
        IpAddr::V6(ip) => format!("[{ip}]"),
        IpAddr::V4(ip) => ip.to_string(),
    };
    let base_url = match addr.port() {
        443 if !entra_hosts.is_empty() => format!("https://{host}"),
        port => format!("https://{host}:{port}"),
    };
    let state = Arc::new(
        State::new(
            &config.seed,
            dns_suffix,
            base_url.clone(),
            token_signer,
            dev_issuer,
        )
        .map_err(|message| {
            Error::Seed(SeedError::Invalid {
                field: "vaults".into(),
                message,
            })
        })?,
    );
    let (shutdown, rx) = watch::channel(false);
    let imds_addr = match imds_listen {
        None => None,
        Some(at) => {
            let imds = tokio::net::TcpListener::bind(at)
                .await
                .map_err(|source| Error::Bind { addr: at, source })?;
            let bound = imds
                .local_addr()
                .map_err(|source| Error::Bind { addr: at, source })?;
            tokio::spawn(imds::accept_loop(imds, state.clone(), rx.clone()));
            tracing::info!(addr = %bound, "mock IMDS listening");
            Some(bound)
        }
    };
    let task = tokio::spawn(server::accept_loop(
        listener,
        tls.server_config,
        state.clone(),
        rx,
    ));
    tracing::info!(%addr, vaults = ?state.vault_names, "mock vault listening");
    Ok(MockVault {
        addr,
        imds_addr,
        base_url,
        ca_path: tls.ca_path,
        state,
        shutdown,
        task,
    })
}

impl MockVault {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The IMDS listener's address, when one was asked for.
    pub fn imds_addr(&self) -> Option<SocketAddr> {
        self.imds_addr
    }

    /// `https://127.0.0.1:PORT`; also the authority host for tokens.
    pub fn base_url(&self) -> String {
        self.base_url.clone()
    }

    /// `tls_dir/ca.pem`: the CA clients must trust.
    pub fn ca_path(&self) -> PathBuf {
        self.ca_path.clone()
    }

    /// The seed's tenant id.
    pub fn tenant_id(&self) -> &str {
        &self.state.tenant_id
    }

    /// The client id of the seed identity called `name`.
    pub fn client_id(&self, name: &str) -> Option<&str> {
        self.state
            .identities
            .iter()
            .find(|i| i.name == name)
            .map(|i| i.client_id.as_str())
    }

    /// The client secret of the seed identity called `name` (dev credentials, e.g. `app-a-password`).
    pub fn client_secret(&self, name: &str) -> Option<&str> {
        self.state
            .identities
            .iter()
            .find(|i| i.name == name)
            .and_then(|i| i.client_secret.as_deref())
            .map(String::as_str)
    }

    /// The DNS suffix (`vault.localhost`).
    pub fn dns_suffix(&self) -> &str {
        &self.state.dns_suffix
    }

    /// `https://<vault>.<dns_suffix>:PORT/`.
    pub fn vault_url(&self, vault: &str) -> String {
        format!(
            "https://{vault}.{}:{}/",
            self.state.dns_suffix,
            self.addr.port()
        )
    }

    /// The resource (token audience) of the vaults: `https://<dns_suffix>`.
    pub fn resource(&self) -> String {
        self.state.resource()
    }

    /// Request counts (the same as `GET /_mock/stats`).
    pub fn stats(&self) -> Stats {
        self.state.stats.snapshot()
    }

    /// Resets the counts (`DELETE /_mock/stats`).
    pub fn reset_stats(&self) {
        self.state.stats.reset();
    }

    /// Replaces the fault rules (`PUT /_mock/faults`).
    pub fn set_faults(&self, rules: Vec<FaultRule>) -> Result<(), String> {
        for (i, r) in rules.iter().enumerate() {
            r.check().map_err(|e| format!("rules[{i}]: {e}"))?;
        }
        self.state.faults.set(rules);
        Ok(())
    }

    /// Removes all fault rules (`DELETE /_mock/faults`).
    pub fn clear_faults(&self) {
        self.state.faults.set(Vec::new());
    }

    /// Stops accepting, lets open requests finish (at most 5 s), and returns.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        if let Err(e) = self.task.await {
            tracing::warn!(error = %e, "mock vault task ended abnormally");
        }
    }
}

/// The admin API (`/_mock/...`), served on any Host without auth.
pub(crate) fn admin_api(state: &State, req: &Req) -> Reply {
    match (&req.method, req.path.trim_end_matches('/')) {
        (&Method::GET, "/_mock/stats") => Reply::json(StatusCode::OK, &state.stats.snapshot()),
        (&Method::DELETE, "/_mock/stats") => {
            state.stats.reset();
            Reply::empty(StatusCode::NO_CONTENT)
        }
        (&Method::GET, "/_mock/faults") => Reply::json(
            StatusCode::OK,
            &Faults {
                rules: state.faults.get(),
            },
        ),
        (&Method::PUT, "/_mock/faults") => {
            let faults: Faults = match serde_json::from_slice(&req.body) {
                Ok(f) => f,
                Err(e) => {
                    return Reply::kv_error(
                        StatusCode::BAD_REQUEST,
                        "BadParameter",
                        &format!("faults: {e}"),
                    );
                }
            };
            for (i, r) in faults.rules.iter().enumerate() {
                if let Err(e) = r.check() {
                    return Reply::kv_error(
                        StatusCode::BAD_REQUEST,
                        "BadParameter",
                        &format!("faults: rules[{i}]: {e}"),
                    );
                }
            }
            let n = faults.rules.len();
            state.faults.set(faults.rules);
            Reply::json(StatusCode::OK, &json!({"rules": n}))
        }
        (&Method::DELETE, "/_mock/faults") => {
            state.faults.set(Vec::new());
            Reply::empty(StatusCode::NO_CONTENT)
        }
        (&Method::GET, "/_mock/health") => Reply::json(StatusCode::OK, &json!({"status": "ok"})),
        _ => Reply::kv_error(
            StatusCode::NOT_FOUND,
            "NotFound",
            "Admin API: GET|DELETE /_mock/stats, GET|PUT|DELETE /_mock/faults, GET /_mock/health.",
        ),
    }
}

/// What [`mint_service_account_token`] signs.
#[derive(Debug, Clone)]
pub struct ServiceAccountTokenRequest {
    /// Pod namespace.
    pub namespace: String,
    /// Service account name.
    pub service_account: String,
    /// `aud` (one value); default `api://AzureADTokenExchange`.
    pub audience: String,
    /// Lifetime from `issued_at`.
    pub ttl: Duration,
    /// `iss`; default [`DEV_ISSUER`]. The token is always signed with the dev issuer key.
    pub issuer: Option<String>,
    /// Pod name for the `kubernetes.io.pod` claim.
    pub pod_name: Option<String>,
    /// Pod UID; derived from namespace/pod name when absent.
    pub pod_uid: Option<String>,
}

impl ServiceAccountTokenRequest {
    /// A one-hour token for `system:serviceaccount:<namespace>:<service_account>`, audience `api://AzureADTokenExchange`.
    pub fn new(namespace: impl Into<String>, service_account: impl Into<String>) -> Self {
        ServiceAccountTokenRequest {
            namespace: namespace.into(),
            service_account: service_account.into(),
            audience: FEDERATION_AUDIENCE.to_string(),
            ttl: Duration::from_secs(3600),
            issuer: None,
            pod_name: None,
            pod_uid: None,
        }
    }
}

fn unix(t: Option<SystemTime>) -> i64 {
    match t {
        Some(t) => match t.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(d) => d.as_secs() as i64,
            Err(e) => -(e.duration().as_secs() as i64),
        },
        None => now(),
    }
}

/// Signs a Kubernetes-shaped projected service-account token with the dev issuer key in `tls_dir`
/// (created if absent), for use as a federated client assertion.
pub fn mint_service_account_token(
    tls_dir: &Path,
    req: &ServiceAccountTokenRequest,
) -> Result<String, Error> {
    mint_service_account_token_at(tls_dir, req, SystemTime::now())
}

/// [`mint_service_account_token`] issued at `issued_at` (in the past for expired tokens).
pub fn mint_service_account_token_at(
    tls_dir: &Path,
    req: &ServiceAccountTokenRequest,
    issued_at: SystemTime,
) -> Result<String, Error> {
    if req.namespace.is_empty() || req.service_account.is_empty() {
        return Err(Error::Token(
            "namespace and service account must not be empty".into(),
        ));
    }
    let signer = tls::issuer_signer(tls_dir)?;
    let iat = unix(Some(issued_at));
    let exp = iat + req.ttl.as_secs() as i64;
    let (ns, sa) = (&req.namespace, &req.service_account);
    let sa_uid = derived_uuid(&format!("sa/{ns}/{sa}"));
    let mut k8s = json!({"namespace": ns, "serviceaccount": {"name": sa, "uid": sa_uid}});
    if let Some(pod) = &req.pod_name {
        let uid = req
            .pod_uid
            .clone()
            .unwrap_or_else(|| derived_uuid(&format!("pod/{ns}/{pod}")));
        k8s["pod"] = json!({"name": pod, "uid": uid});
    }
    let claims = json!({
        "aud": [req.audience],
        "exp": exp,
        "iat": iat,
        "nbf": iat,
        "iss": req.issuer.clone().unwrap_or_else(|| DEV_ISSUER.to_string()),
        "jti": uuid::Uuid::new_v4().to_string(),
        "kubernetes.io": k8s,
        "sub": format!("system:serviceaccount:{ns}:{sa}"),
    });
    signer
        .sign(&claims)
        .map_err(|e| Error::Token(e.to_string()))
}

/// What [`mint_access_token`] signs (for tests of expired or foreign tokens).
#[derive(Debug, Clone)]
pub struct AccessTokenRequest {
    /// `tid`, and part of `iss`.
    pub tenant_id: String,
    /// `appid`/`azp`.
    pub client_id: String,
    /// `aud`, e.g. `https://vault.localhost`.
    pub audience: String,
    /// Lifetime from `issued_at`.
    pub ttl: Duration,
    /// Issue time; default now.
    pub issued_at: Option<SystemTime>,
}

/// Signs an access token exactly as the token endpoint would, with the key in `tls_dir`.
pub fn mint_access_token(tls_dir: &Path, req: &AccessTokenRequest) -> Result<String, Error> {
    let signer = tls::token_signer(tls_dir)?;
    let iat = unix(req.issued_at);
    let oid = derived_uuid(&format!("oid/{}", req.client_id.to_ascii_lowercase()));
    let claims = json!({
        "aud": req.audience, "iss": format!("https://sts.windows.net/{}/", req.tenant_id),
        "iat": iat, "nbf": iat, "exp": iat + req.ttl.as_secs() as i64,
        "appid": req.client_id, "azp": req.client_id, "appidacr": "1", "idtyp": "app",
        "oid": oid, "sub": oid, "tid": req.tenant_id, "ver": "1.0",
    });
    signer
        .sign(&claims)
        .map_err(|e| Error::Token(e.to_string()))
}

/// Entry points for the fuzz targets; not a stable API.
#[doc(hidden)]
pub mod fuzzing {
    /// Parses a seed from arbitrary bytes.
    pub fn seed(data: &[u8]) {
        if let Ok(s) = std::str::from_utf8(data) {
            let _ = crate::Seed::from_yaml(s);
        }
    }

    /// Decodes arbitrary text as a JWT and tries to verify it with a fixed key.
    pub fn jwt(data: &[u8]) {
        if let Ok(s) = std::str::from_utf8(data) {
            if let Ok(jwt) = crate::jwt::decode(s) {
                let _ = jwt.audiences();
                let _ = jwt.verify(&crate::jwt::VerifyKey::Es256(vec![4; 65]));
                let _ = jwt.verify(&crate::jwt::VerifyKey::Rs256(vec![0x30, 0]));
            }
            let _ = crate::jwt::VerifyKey::from_pem(s);
        }
        let _ = crate::jwt::VerifyKey::from_spki_der(data);
    }

    /// Parses arbitrary bytes as a token-endpoint form.
    pub fn token_form(data: &[u8]) {
        let _ = crate::entra::parse_form(data);
    }
}
