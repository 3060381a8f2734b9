//! The webhook's serving certificate: from files (cert-manager; re-read when they change) or
//! self-managed (a generated CA and a short-lived leaf, renewed when 10% of its life is left).
//!
//! Until a real certificate is loaded, handshakes get a throwaway self-signed one and
//! `/readyz` answers 503, so `/healthz` works while the API server is not sent here yet.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// A certificate problem.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The PEM does not hold a usable certificate chain or key.
    #[error("{0}")]
    Pem(String),
    /// Generating a certificate failed.
    #[error("generating a certificate: {0}")]
    Generate(String),
}

/// The certificate handshakes use, swapped in place on reload.
#[derive(Debug)]
pub struct CertStore {
    current: RwLock<Option<Arc<CertifiedKey>>>,
    placeholder: Arc<CertifiedKey>,
    ready: AtomicBool,
    /// The `notAfter` of the installed leaf, seconds since the Unix epoch (0: none yet).
    expiry: AtomicI64,
}

impl CertStore {
    /// A store with only the placeholder certificate.
    pub fn new() -> Result<Arc<Self>, TlsError> {
        let key = KeyPair::generate().map_err(|e| TlsError::Generate(e.to_string()))?;
        let mut params = CertificateParams::new(vec!["kvmount-webhook-not-ready".to_owned()])
            .map_err(|e| TlsError::Generate(e.to_string()))?;
        params
            .distinguished_name
            .push(DnType::CommonName, "kvmount webhook (no certificate yet)");
        let cert = params
            .self_signed(&key)
            .map_err(|e| TlsError::Generate(e.to_string()))?;
        let placeholder = certified_key(cert.pem().as_bytes(), key.serialize_pem().as_bytes())?;
        Ok(Arc::new(Self {
            current: RwLock::new(None),
            placeholder: Arc::new(placeholder),
            ready: AtomicBool::new(false),
            expiry: AtomicI64::new(0),
        }))
    }

    /// Installs a real certificate; the store is ready from now on.
    pub fn set(&self, key: CertifiedKey) {
        let expiry = key
            .end_entity_cert()
            .ok()
            .and_then(|der| x509_parser::parse_x509_certificate(der).ok())
            .map_or(0, |(_, cert)| cert.validity().not_after.timestamp());
        self.expiry.store(expiry, Ordering::SeqCst);
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::new(key));
        self.ready.store(true, Ordering::SeqCst);
    }

    /// True once a real certificate is installed.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// When the installed certificate (the leaf) expires, in seconds since the Unix epoch;
    /// `None` before one is installed.
    pub fn expiry(&self) -> Option<i64> {
        Some(self.expiry.load(Ordering::SeqCst)).filter(|&t| t != 0)
    }

    /// A rustls server configuration that takes its certificate from this store.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Pem(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let current = self
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        Some(current.unwrap_or_else(|| self.placeholder.clone()))
    }
}

/// A rustls certified key from a PEM chain and a PEM private key.
pub fn certified_key(chain_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem(format!("certificate: {e}")))?;
    if chain.is_empty() {
        return Err(TlsError::Pem(
            "certificate: no PEM certificate found".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsError::Pem("key: no PEM private key found".into()),
        e => TlsError::Pem(format!("key: {e}")),
    })?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| TlsError::Pem(format!("key: {e}")))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|e| TlsError::Pem(format!("the key does not belong to the certificate: {e}")))?;
    Ok(certified)
}

fn read(path: &Path) -> Result<zeroize::Zeroizing<Vec<u8>>, TlsError> {
    std::fs::read(path)
        .map(zeroize::Zeroizing::new)
        .map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })
}

/// Certificate files, polled for changes.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// PEM chain.
    pub cert: PathBuf,
    /// PEM key.
    pub key: PathBuf,
    /// How often to look for changes.
    pub interval: Duration,
}

impl CertFiles {
    fn stamp(&self) -> Option<(SystemTime, SystemTime, u64, u64)> {
        let c = std::fs::metadata(&self.cert).ok()?;
        let k = std::fs::metadata(&self.key).ok()?;
        Some((c.modified().ok()?, k.modified().ok()?, c.len(), k.len()))
    }

    /// Loads the pair once.
    pub fn load(&self) -> Result<CertifiedKey, TlsError> {
        let cert = read(&self.cert)?;
        let key = read(&self.key)?;
        certified_key(&cert, &key)
    }

    /// Loads now and whenever the files change; a bad new pair keeps the old one (logged).
    pub async fn watch(self, store: Arc<CertStore>) {
        let mut last = None;
        loop {
            let stamp = self.stamp();
            if stamp.is_some() && stamp != last {
                match self.load() {
                    Ok(key) => {
                        store.set(key);
                        tracing::info!(cert = %self.cert.display(), "serving certificate loaded");
                        last = stamp;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "serving certificate not loaded; keeping the previous one")
                    }
                }
            } else if stamp.is_none() && !store.is_ready() {
                tracing::warn!(cert = %self.cert.display(), key = %self.key.display(), "waiting for the certificate files");
            }
            tokio::time::sleep(self.interval).await;
        }
    }
}

/// A self-managed CA that issues short-lived serving certificates.
pub struct SelfManaged {
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
    dns_names: Vec<String>,
    validity: Duration,
}

impl std::fmt::Debug for SelfManaged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SelfManaged")
            .field("dns_names", &self.dns_names)
            .field("validity", &self.validity)
            .finish_non_exhaustive()
    }
}

fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name
        .push(DnType::CommonName, "kvmount webhook CA");
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::minutes(5);
    p.not_after = now + time::Duration::days(365);
    p
}

impl SelfManaged {
    /// A new CA (ECDSA P-256, one year) for leaf certificates valid for `dns_names`.
    pub fn new(dns_names: Vec<String>, validity: Duration) -> Result<Self, TlsError> {
        let gen_err = |e: rcgen::Error| TlsError::Generate(e.to_string());
        let key = KeyPair::generate().map_err(gen_err)?;
        let cert = ca_params().self_signed(&key).map_err(gen_err)?;
        Ok(Self {
            ca_pem: cert.pem(),
            issuer: Issuer::new(ca_params(), key),
            dns_names,
            validity,
        })
    }

    /// The CA certificate, PEM (the `caBundle` of the MutatingWebhookConfiguration).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A fresh leaf certificate.
    pub fn issue(&self) -> Result<CertifiedKey, TlsError> {
        let gen_err = |e: rcgen::Error| TlsError::Generate(e.to_string());
        let key = KeyPair::generate().map_err(gen_err)?;
        let mut p = CertificateParams::new(self.dns_names.clone()).map_err(gen_err)?;
        p.distinguished_name
            .push(DnType::CommonName, "kvmount webhook");
        p.is_ca = IsCa::ExplicitNoCa;
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.use_authority_key_identifier_extension = true;
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::minutes(5);
        p.not_after = now + time::Duration::seconds(self.validity.as_secs() as i64);
        let cert = p.signed_by(&key, &self.issuer).map_err(gen_err)?;
        let chain = format!("{}{}", cert.pem(), self.ca_pem);
        let key_pem = zeroize::Zeroizing::new(key.serialize_pem());
        certified_key(chain.as_bytes(), key_pem.as_bytes())
    }

    /// Issues now, then again whenever 10% of the leaf's life is left.
    pub async fn maintain(self, store: Arc<CertStore>) {
        let renew_after = self.validity.mul_f64(0.9).max(Duration::from_secs(1));
        loop {
            let wait = match self.issue() {
                Ok(key) => {
                    store.set(key);
                    tracing::info!(valid_for = ?self.validity, renew_in = ?renew_after, "issued a serving certificate");
                    renew_after
                }
                Err(e) => {
                    tracing::warn!(error = %e, "issuing a serving certificate failed; retrying in 10s");
                    Duration::from_secs(10)
                }
            };
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn expiry_is_the_installed_leafs() {
        let store = CertStore::new().unwrap();
        assert_eq!(store.expiry(), None, "the placeholder has none");
        let ca = SelfManaged::new(vec!["hook.example".into()], Duration::from_secs(3600)).unwrap();
        store.set(ca.issue().unwrap());
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let expiry = store.expiry().unwrap();
        assert!(
            (now + 3590..=now + 3610).contains(&expiry),
            "{expiry} vs {now}"
        );
    }
}
