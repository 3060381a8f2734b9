//! Files in the TLS directory: the dev CA, the server certificate and the JWT signing keys.
//!
//! | file | what |
//! |---|---|
//! | `ca.pem`, `ca-key.pem` | dev CA (basicConstraints critical CA:TRUE, keyCertSign), reused across runs |
//! | `server.pem`, `server-key.pem` | server certificate for `*.<suffix>`, `<suffix>`, the Entra host names, `localhost`, `127.0.0.1`, `::1`; `server.pem` holds leaf then CA |
//! | `server-dns-suffix` | the suffix and Entra host names the server certificate was made for (regenerated when they change) |
//! | `token-signing-key.pem` | P-256 key that signs the Entra access tokens |
//! | `issuer-key.pem`, `issuer.pub.pem` | P-256 key of the dev service-account issuer (`https://oidc.kvmount.local`) |
//!
//! Key files are written with mode 0600, atomically (temp file + rename).

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use time::{Duration, OffsetDateTime};

use crate::Error;
use crate::jwt::Signer;

pub(crate) const CA_FILE: &str = "ca.pem";
const CA_KEY_FILE: &str = "ca-key.pem";
const SERVER_FILE: &str = "server.pem";
const SERVER_KEY_FILE: &str = "server-key.pem";
const SERVER_SUFFIX_FILE: &str = "server-dns-suffix";
const TOKEN_KEY_FILE: &str = "token-signing-key.pem";
const ISSUER_KEY_FILE: &str = "issuer-key.pem";
const ISSUER_PUB_FILE: &str = "issuer.pub.pem";

fn tls_err(dir: &Path, message: impl Into<String>) -> Error {
    Error::Tls {
        dir: dir.to_owned(),
        message: message.into(),
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}

/// Creates the folder (0700 when new).
pub(crate) fn ensure_dir(dir: &Path) -> Result<(), Error> {
    if !dir.exists() {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err(dir))?;
    }
    Ok(())
}

/// Writes `contents` to `dir/name` atomically with `mode`.
fn write_file(dir: &Path, name: &str, contents: &[u8], mode: u32) -> Result<(), Error> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.{}.tmp", uuid::Uuid::new_v4().simple()));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    f.write_all(contents).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    fs::rename(&tmp, &path).map_err(io_err(&path))?;
    Ok(())
}

fn read_opt(path: &Path) -> Result<Option<String>, Error> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "kvmount mock vault dev CA");
    dn.push(DnType::OrganizationName, "kvmount");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    p.not_before = now - Duration::days(1);
    p.not_after = now + Duration::days(3650);
    p
}

/// What [`ensure`] returns.
pub(crate) struct TlsMaterial {
    pub ca_path: PathBuf,
    pub server_config: Arc<rustls::ServerConfig>,
}

/// Creates or reuses the CA and the server certificate for `dns_suffix` and `entra_hosts`
/// (with any extra names: DNS names or IP addresses).
pub(crate) fn ensure(
    dir: &Path,
    dns_suffix: &str,
    entra_hosts: &[String],
) -> Result<TlsMaterial, Error> {
    ensure_dir(dir)?;
    let ca_path = dir.join(CA_FILE);
    let ca_key_path = dir.join(CA_KEY_FILE);
    let existing_ca = match (read_opt(&ca_path)?, read_opt(&ca_key_path)?) {
        (Some(_), Some(key_pem)) => Some(
            KeyPair::from_pem(&key_pem).map_err(|e| tls_err(dir, format!("{CA_KEY_FILE}: {e}")))?,
        ),
        _ => None,
    };
    let ca_is_new = existing_ca.is_none();
    let ca_key = match existing_ca {
        Some(key) => key,
        None => {
            let key = KeyPair::generate().map_err(|e| tls_err(dir, e.to_string()))?;
            let cert = ca_params()
                .self_signed(&key)
                .map_err(|e| tls_err(dir, e.to_string()))?;
            write_file(dir, CA_KEY_FILE, key.serialize_pem().as_bytes(), 0o600)?;
            write_file(dir, CA_FILE, cert.pem().as_bytes(), 0o644)?;
            tracing::info!(dir = %dir.display(), "created mock vault dev CA");
            key
        }
    };
    let ca_pem = fs::read_to_string(&ca_path).map_err(io_err(&ca_path))?;

    let suffix_path = dir.join(SERVER_SUFFIX_FILE);
    let made_for = std::iter::once(dns_suffix)
        .chain(entra_hosts.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(" ");
    let reuse_server = !ca_is_new
        && read_opt(&suffix_path)?.as_deref().map(str::trim) == Some(made_for.as_str())
        && dir.join(SERVER_FILE).exists()
        && dir.join(SERVER_KEY_FILE).exists();
    if !reuse_server {
        // The issuer is rebuilt from the same parameters and key; its subject and key
        // identifier are derived from those, so they match the CA certificate on disk.
        let issuer = Issuer::new(ca_params(), ca_key);
        let key = KeyPair::generate().map_err(|e| tls_err(dir, e.to_string()))?;
        let mut names = vec![format!("*.{dns_suffix}"), dns_suffix.to_string()];
        names.extend(entra_hosts.iter().cloned());
        names.extend(["localhost", "127.0.0.1", "::1"].map(String::from));
        let mut p = CertificateParams::new(names)
            .map_err(|e| tls_err(dir, format!("server names: {e}")))?;
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            format!("kvmount mock vault ({dns_suffix})"),
        );
        p.distinguished_name = dn;
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        p.not_before = now - Duration::days(1);
        p.not_after = now + Duration::days(825);
        let cert = p
            .signed_by(&key, &issuer)
            .map_err(|e| tls_err(dir, e.to_string()))?;
        write_file(dir, SERVER_KEY_FILE, key.serialize_pem().as_bytes(), 0o600)?;
        write_file(
            dir,
            SERVER_FILE,
            format!("{}{}", cert.pem(), ca_pem).as_bytes(),
            0o644,
        )?;
        write_file(
            dir,
            SERVER_SUFFIX_FILE,
            format!("{made_for}\n").as_bytes(),
            0o644,
        )?;
        tracing::info!(dir = %dir.display(), dns_suffix, "created mock vault server certificate");
    }

    let server_path = dir.join(SERVER_FILE);
    let chain_pem = fs::read(&server_path).map_err(io_err(&server_path))?;
    let chain = CertificateDer::pem_slice_iter(&chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_err(dir, format!("{SERVER_FILE}: {e}")))?;
    let key_path = dir.join(SERVER_KEY_FILE);
    let key_pem = zeroize::Zeroizing::new(fs::read(&key_path).map_err(io_err(&key_path))?);
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| tls_err(dir, format!("{SERVER_KEY_FILE}: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(dir, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| tls_err(dir, format!("server certificate: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsMaterial {
        ca_path,
        server_config: Arc::new(config),
    })
}

/// Loads or creates an ES256 signing key stored as PKCS#8 PEM in `dir/name`.
fn ensure_signer(dir: &Path, name: &str) -> Result<(Signer, bool), Error> {
    ensure_dir(dir)?;
    let path = dir.join(name);
    if let Some(pem) = read_opt(&path)?.map(zeroize::Zeroizing::new) {
        let key = PrivateKeyDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| tls_err(dir, format!("{name}: {e}")))?;
        let signer = Signer::from_pkcs8(key.secret_der())
            .map_err(|e| tls_err(dir, format!("{name}: {e}")))?;
        return Ok((signer, false));
    }
    let (signer, der) = Signer::generate().map_err(|e| tls_err(dir, e.to_string()))?;
    let pem = zeroize::Zeroizing::new(crate::pki::pem_block("PRIVATE KEY", &der));
    write_file(dir, name, pem.as_bytes(), 0o600)?;
    Ok((signer, true))
}

/// The key that signs access tokens.
pub(crate) fn token_signer(dir: &Path) -> Result<Signer, Error> {
    Ok(ensure_signer(dir, TOKEN_KEY_FILE)?.0)
}

/// The dev service-account issuer key; also writes `issuer.pub.pem` next to it.
pub(crate) fn issuer_signer(dir: &Path) -> Result<Signer, Error> {
    let (signer, created) = ensure_signer(dir, ISSUER_KEY_FILE)?;
    if created || !dir.join(ISSUER_PUB_FILE).exists() {
        write_file(
            dir,
            ISSUER_PUB_FILE,
            signer.public_key_pem().as_bytes(),
            0o644,
        )?;
    }
    Ok(signer)
}
