//! What a request handler sees and answers: the server's [`State`], a request read whole
//! ([`Req`]), a reply before it becomes a hyper response ([`Reply`]) and what stats record of
//! it ([`Outcome`]). Below the handlers (`entra`, `keyvault`, `objects`, `imds`) and the server
//! that routes to them, so none of them imports the server.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, StatusCode};
use serde::Serialize;

use crate::admin::{FaultTable, StatsRecorder};
use crate::jwt::{Signer, VerifyKey};
use crate::seed::{Identity, Seed};
use crate::store::VaultState;

/// Everything a request handler can see.
pub(crate) struct State {
    pub tenant_id: String,
    pub identities: Vec<Identity>,
    /// (issuer URL, public key): the dev issuer first, then seed-declared issuers.
    pub issuers: Vec<(String, VerifyKey)>,
    pub vault_names: Vec<String>,
    pub vaults: Vec<Mutex<VaultState>>,
    pub dns_suffix: String,
    pub base_url: String,
    pub token_signer: Signer,
    pub token_key: VerifyKey,
    pub stats: StatsRecorder,
    pub faults: FaultTable,
}

impl State {
    pub fn new(
        seed: &Seed,
        dns_suffix: String,
        base_url: String,
        token_signer: Signer,
        dev_issuer: VerifyKey,
    ) -> Result<State, String> {
        let now = crate::now();
        let mut issuers = vec![(crate::seed::DEV_ISSUER.to_string(), dev_issuer)];
        issuers.extend(
            seed.issuers
                .iter()
                .map(|i| (i.issuer.clone(), i.key.clone())),
        );
        let vaults = seed
            .vaults
            .iter()
            .map(|v| VaultState::from_seed(v, now).map(Mutex::new))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(State {
            tenant_id: seed.tenant_id.clone(),
            identities: seed.identities.clone(),
            issuers,
            vault_names: seed.vaults.iter().map(|v| v.name.clone()).collect(),
            vaults,
            dns_suffix,
            base_url,
            token_key: token_signer.verify_key(),
            token_signer,
            stats: StatsRecorder::default(),
            faults: FaultTable::default(),
        })
    }

    /// The resource (audience) of this mock's vaults: `https://<dns-suffix>`.
    pub fn resource(&self) -> String {
        format!("https://{}", self.dns_suffix)
    }

    /// Which vault a Host names.
    pub fn pick_vault(&self, host: &str) -> Result<usize, String> {
        let name = host_without_port(host).to_ascii_lowercase();
        let is_default = name.parse::<std::net::IpAddr>().is_ok()
            || name.starts_with('[')
            || name == "localhost"
            || name.is_empty()
            || name == self.dns_suffix;
        if is_default {
            return Ok(0);
        }
        let label = name.split('.').next().unwrap_or_default();
        self.vault_names
            .iter()
            .position(|v| v.eq_ignore_ascii_case(label))
            .ok_or_else(|| label.to_string())
    }
}

fn host_without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_once(']').map(|(h, _)| &h[1..]).unwrap_or(host);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    }
}

/// A request, read whole.
pub(crate) struct Req {
    pub method: Method,
    pub path: String,
    pub query: Vec<(String, String)>,
    /// The authority as the client addressed it (`demo.vault.localhost:8443`).
    pub host: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Set by a matching `reset` fault rule: the reply is cut off mid-body.
    pub cut: AtomicBool,
}

impl Req {
    /// Applies a `reset` fault to this request's reply.
    pub fn cut_if(&self, reset: bool) {
        if reset {
            self.cut.store(true, Ordering::Relaxed);
        }
    }

    pub fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A response before it becomes a hyper response.
pub(crate) struct Reply {
    pub status: StatusCode,
    pub body: Bytes,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl Reply {
    pub fn json(status: StatusCode, body: &impl Serialize) -> Reply {
        let body = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
        Reply {
            status,
            body: Bytes::from(body),
            headers: Vec::new(),
        }
    }

    pub fn empty(status: StatusCode) -> Reply {
        Reply {
            status,
            body: Bytes::new(),
            headers: Vec::new(),
        }
    }

    /// A Key Vault error body: `{"error":{"code","message"}}`.
    pub fn kv_error(status: StatusCode, code: &str, message: &str) -> Reply {
        Reply::json(
            status,
            &serde_json::json!({"error": {"code": code, "message": message}}),
        )
    }

    pub fn with_header(mut self, name: HeaderName, value: &str) -> Reply {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers.push((name, v));
        }
        self
    }
}

/// A reply plus what stats and logs record about it.
pub(crate) struct Outcome {
    pub reply: Reply,
    pub vault: String,
    pub route: &'static str,
    pub object: String,
}
