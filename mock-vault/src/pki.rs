//! Key and certificate material for seeded keys and certificates: RSA (2048/3072/4096, the
//! `rsa` crate) and EC (P-256/P-384 with ring, P-521 with the `p521` crate) keys; certificates
//! made with rcgen, self-signed or signed by another seeded certificate; the backing secret as
//! PKCS#12 (p12-keystore) or PEM, the way Key Vault stores it.

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_RSA_SHA256,
};
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P384_SHA384_ASN1_SIGNING, EcdsaKeyPair, KeyPair as _,
};
use zeroize::Zeroizing;

/// A key type and size as the seed names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeySpec {
    /// RSA with this many bits (2048, 3072 or 4096).
    Rsa(usize),
    /// EC on this curve.
    Ec(Curve),
}

/// The NIST curves Key Vault offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Curve {
    /// `P-256`.
    P256,
    /// `P-384`.
    P384,
    /// `P-521`.
    P521,
}

impl KeySpec {
    /// Parses the seed's `kty` (`RSA`, `EC`, also `-HSM`), `size` and `curve`.
    pub fn parse(kty: &str, size: Option<usize>, curve: Option<&str>) -> Result<KeySpec, String> {
        let kty = kty.trim_end_matches("-HSM");
        match kty {
            "RSA" => {
                if curve.is_some() {
                    return Err("curve is only for kty EC".into());
                }
                match size.unwrap_or(2048) {
                    n @ (2048 | 3072 | 4096) => Ok(KeySpec::Rsa(n)),
                    n => Err(format!(
                        "RSA size {n} is not offered; accepted: 2048, 3072, 4096"
                    )),
                }
            }
            "EC" => {
                if size.is_some() {
                    return Err("size is only for kty RSA".into());
                }
                match curve.unwrap_or("P-256") {
                    "P-256" => Ok(KeySpec::Ec(Curve::P256)),
                    "P-384" => Ok(KeySpec::Ec(Curve::P384)),
                    "P-521" => Ok(KeySpec::Ec(Curve::P521)),
                    c => Err(format!(
                        "curve {c:?} is not offered; accepted: P-256, P-384, P-521"
                    )),
                }
            }
            other => Err(format!(
                "kty {other:?} is not offered; accepted: RSA, RSA-HSM, EC, EC-HSM"
            )),
        }
    }
}

/// The public half of a key, as a JWK holds it (big-endian bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PublicJwk {
    /// RSA modulus and exponent.
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// EC point coordinates (each padded to the curve size).
    Ec {
        crv: &'static str,
        x: Vec<u8>,
        y: Vec<u8>,
    },
}

/// A generated key: PKCS#8 private key (zeroed on drop) and the public JWK.
pub(crate) struct GeneratedKey {
    pub pkcs8: Zeroizing<Vec<u8>>,
    pub public: PublicJwk,
    pub spec: KeySpec,
}

fn ring_ec(
    alg: &'static ring::signature::EcdsaSigningAlgorithm,
    crv: &'static str,
) -> Result<(Zeroizing<Vec<u8>>, PublicJwk), String> {
    let rng = SystemRandom::new();
    let doc = EcdsaKeyPair::generate_pkcs8(alg, &rng).map_err(|e| e.to_string())?;
    let pkcs8 = Zeroizing::new(doc.as_ref().to_vec());
    let pair = EcdsaKeyPair::from_pkcs8(alg, &pkcs8, &rng).map_err(|e| e.to_string())?;
    let point = pair.public_key().as_ref();
    let half = (point.len() - 1) / 2;
    Ok((
        pkcs8,
        PublicJwk::Ec {
            crv,
            x: point[1..1 + half].to_vec(),
            y: point[1 + half..].to_vec(),
        },
    ))
}

/// Generates a key of `spec`.
pub(crate) fn generate(spec: KeySpec) -> Result<GeneratedKey, String> {
    let (pkcs8, public) = match spec {
        KeySpec::Rsa(bits) => {
            use rsa::pkcs8::EncodePrivateKey as _;
            use rsa::traits::PublicKeyParts as _;
            let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, bits)
                .map_err(|e| e.to_string())?;
            let der = key.to_pkcs8_der().map_err(|e| e.to_string())?;
            (
                Zeroizing::new(der.as_bytes().to_vec()),
                PublicJwk::Rsa {
                    n: key.n().to_bytes_be(),
                    e: key.e().to_bytes_be(),
                },
            )
        }
        KeySpec::Ec(Curve::P256) => ring_ec(&ECDSA_P256_SHA256_ASN1_SIGNING, "P-256")?,
        KeySpec::Ec(Curve::P384) => ring_ec(&ECDSA_P384_SHA384_ASN1_SIGNING, "P-384")?,
        KeySpec::Ec(Curve::P521) => {
            use p521::elliptic_curve::sec1::ToEncodedPoint as _;
            let secret = p521::SecretKey::random(&mut p521::elliptic_curve::rand_core::OsRng);
            let point = secret.public_key().to_encoded_point(false);
            let (Some(x), Some(y)) = (point.x(), point.y()) else {
                return Err("P-521 point has no coordinates".into());
            };
            // Key objects expose only the public key; the mock never signs with P-521.
            (
                Zeroizing::new(Vec::new()),
                PublicJwk::Ec {
                    crv: "P-521",
                    x: x.to_vec(),
                    y: y.to_vec(),
                },
            )
        }
    };
    Ok(GeneratedKey {
        pkcs8,
        public,
        spec,
    })
}

/// How the backing secret stores the certificate and its private key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Storage {
    /// `application/x-pkcs12`: base64 PFX without password.
    Pkcs12,
    /// `application/x-pem-file`: PKCS#8 key then the certificates.
    Pem,
}

impl Storage {
    pub fn content_type(self) -> &'static str {
        match self {
            Storage::Pkcs12 => "application/x-pkcs12",
            Storage::Pem => "application/x-pem-file",
        }
    }
}

/// One issued certificate version: its DER, its key, and the DER of its issuers (nearest first).
pub(crate) struct IssuedCert {
    pub der: Vec<u8>,
    pub key: GeneratedKey,
    pub params: CertificateParams,
    pub chain: Vec<Vec<u8>>,
}

/// What to issue.
pub(crate) struct CertRequest<'a> {
    pub subject: &'a str,
    pub dns_names: &'a [String],
    pub ca: bool,
    pub key: KeySpec,
    pub not_before: time::OffsetDateTime,
    pub not_after: time::OffsetDateTime,
}

fn signing_key(key: &GeneratedKey) -> Result<KeyPair, String> {
    let alg = match key.spec {
        KeySpec::Rsa(_) => &PKCS_RSA_SHA256,
        KeySpec::Ec(Curve::P256) => &PKCS_ECDSA_P256_SHA256,
        KeySpec::Ec(Curve::P384) => &PKCS_ECDSA_P384_SHA384,
        KeySpec::Ec(Curve::P521) => {
            return Err(
                "certificates with P-521 keys are not offered by the mock; use P-256, P-384 or RSA"
                    .into(),
            );
        }
    };
    let der = rustls::pki_types::PrivatePkcs8KeyDer::from(key.pkcs8.as_slice());
    KeyPair::from_pkcs8_der_and_sign_algo(&der, alg).map_err(|e| e.to_string())
}

/// Issues a certificate, self-signed when `issuer` is `None`.
pub(crate) fn issue(
    req: &CertRequest<'_>,
    issuer: Option<&IssuedCert>,
) -> Result<IssuedCert, String> {
    let key = generate(req.key)?;
    let pair = signing_key(&key)?;
    let mut params = CertificateParams::new(req.dns_names.to_vec()).map_err(|e| e.to_string())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, req.subject);
    params.distinguished_name = dn;
    params.not_before = req.not_before;
    params.not_after = req.not_after;
    params.use_authority_key_identifier_extension = issuer.is_some();
    let mut serial = [0u8; 16];
    ring::rand::SecureRandom::fill(&SystemRandom::new(), &mut serial).map_err(|e| e.to_string())?;
    serial[0] &= 0x7f;
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    if req.ca {
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    } else {
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
    }
    let (der, chain) = match issuer {
        None => {
            let cert = params.self_signed(&pair).map_err(|e| e.to_string())?;
            (cert.der().to_vec(), Vec::new())
        }
        Some(parent) => {
            let parent_key = signing_key(&parent.key)?;
            let issuer = Issuer::from_params(&parent.params, &parent_key);
            let cert = params
                .signed_by(&pair, &issuer)
                .map_err(|e| e.to_string())?;
            let mut chain = vec![parent.der.clone()];
            chain.extend(parent.chain.iter().cloned());
            (cert.der().to_vec(), chain)
        }
    };
    Ok(IssuedCert {
        der,
        key,
        params,
        chain,
    })
}

/// The PEM text of one block (`label` is one of the fixed labels the mock writes), by
/// `pem-rfc7468`, as kvmount's own writer does: 64 characters a line, `\n` line ends.
pub(crate) fn pem_block(label: &str, der: &[u8]) -> String {
    match pem_rfc7468::encode_string(label, pem_rfc7468::LineEnding::LF, der) {
        Ok(text) => text,
        Err(err) => unreachable!("PEM encoding of a {label} failed: {err}"),
    }
}

/// The backing secret's value: base64 PFX (no password) or PEM (key, then certificates in
/// `order`, leaf first unless `root_first`).
pub(crate) fn backing_secret(
    cert: &IssuedCert,
    storage: Storage,
    root_first: bool,
) -> Result<Zeroizing<String>, String> {
    let mut certs: Vec<&[u8]> = vec![&cert.der];
    certs.extend(cert.chain.iter().map(Vec::as_slice));
    if root_first {
        certs.reverse();
    }
    match storage {
        Storage::Pem => {
            let mut out = Zeroizing::new(pem_block("PRIVATE KEY", &cert.key.pkcs8));
            for der in certs {
                out.push_str(&pem_block("CERTIFICATE", der));
            }
            Ok(out)
        }
        Storage::Pkcs12 => {
            use p12_keystore::{Certificate, KeyStore, KeyStoreEntry, PrivateKey, PrivateKeyChain};
            let key = PrivateKey::from_der(&cert.key.pkcs8).map_err(|e| e.to_string())?;
            let x509 = |d: &[u8]| Certificate::from_der(d).map_err(|e| e.to_string());
            let local_key_id = ring::digest::digest(&ring::digest::SHA256, &cert.der)
                .as_ref()
                .to_vec();
            let mut store = KeyStore::new();
            // The key and the leaf carry the localKeyID, as in Key Vault's files. p12-keystore
            // gives it to the first certificate of a chain, and writes lone certificates
            // (sorted by name) ahead of the chains: a root-first file is the issuers as lone
            // certificates, root first, then a chain of the leaf alone. (p12-keystore marks
            // lone certificates with Java's trusted-certificate attribute, which Key Vault's
            // files do not have; readers that do not know it skip it.)
            let chain = if root_first {
                for (i, issuer) in certs[..certs.len() - 1].iter().enumerate() {
                    store.add_entry(
                        &format!("issuer-{i:02}"),
                        KeyStoreEntry::Certificate(x509(issuer)?),
                    );
                }
                vec![x509(&cert.der)?]
            } else {
                certs.iter().map(|d| x509(d)).collect::<Result<_, _>>()?
            };
            store.add_entry(
                "cert",
                KeyStoreEntry::PrivateKeyChain(PrivateKeyChain::new(local_key_id, key, chain)),
            );
            // SHA-1 MAC and 3DES, like the PFX Key Vault keeps for a certificate: clients with
            // the classic decoders (Go's x/crypto/pkcs12, which the Azure provider uses) read
            // only these, and every newer decoder reads them too.
            let pfx = Zeroizing::new(
                store
                    .writer("")
                    .encryption_algorithm(
                        p12_keystore::EncryptionAlgorithm::PbeWithShaAnd3KeyTripleDesCbc,
                    )
                    .mac_algorithm(p12_keystore::MacAlgorithm::HmacSha1)
                    .write()
                    .map_err(|e| e.to_string())?,
            );
            Ok(Zeroizing::new(
                base64::engine::general_purpose::STANDARD.encode(pfx.as_slice()),
            ))
        }
    }
}

/// `x5t`: base64url SHA-1 thumbprint of the DER.
pub(crate) fn thumbprint(der: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, der);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(d.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        assert_eq!(KeySpec::parse("RSA", None, None), Ok(KeySpec::Rsa(2048)));
        assert_eq!(
            KeySpec::parse("EC-HSM", None, Some("P-521")),
            Ok(KeySpec::Ec(Curve::P521))
        );
        assert!(KeySpec::parse("RSA", Some(1024), None).is_err());
        assert!(KeySpec::parse("oct", None, None).is_err());
        assert!(KeySpec::parse("EC", None, Some("P-192")).is_err());
    }

    #[test]
    fn ec_keys_have_full_size_coordinates() {
        for (curve, len) in [(Curve::P256, 32), (Curve::P384, 48), (Curve::P521, 66)] {
            let k = generate(KeySpec::Ec(curve)).expect("generate");
            match k.public {
                PublicJwk::Ec { x, y, .. } => {
                    assert_eq!(x.len(), len);
                    assert_eq!(y.len(), len);
                }
                PublicJwk::Rsa { .. } => panic!("not EC"),
            }
        }
    }

    /// A root, an intermediate it issued and a leaf the intermediate issued, all P-256.
    fn root_inter_leaf() -> (IssuedCert, IssuedCert, IssuedCert) {
        let now = time::OffsetDateTime::now_utc();
        let req = |subject, ca| CertRequest {
            subject,
            dns_names: &[],
            ca,
            key: KeySpec::Ec(Curve::P256),
            not_before: now - time::Duration::days(1),
            not_after: now + time::Duration::days(30),
        };
        let root = issue(&req("root", true), None).expect("root");
        let inter = issue(&req("inter", true), Some(&root)).expect("inter");
        let leaf = issue(&req("leaf", false), Some(&inter)).expect("leaf");
        (root, inter, leaf)
    }

    #[test]
    fn chain_and_pfx() {
        let (root, inter, leaf) = root_inter_leaf();
        assert_eq!(leaf.chain, vec![inter.der.clone(), root.der.clone()]);
        let pem = backing_secret(&leaf, Storage::Pem, true).expect("pem");
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert_eq!(pem.matches("BEGIN CERTIFICATE").count(), 3);
        let pfx = backing_secret(&leaf, Storage::Pkcs12, false).expect("pfx");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(pfx.as_bytes())
            .expect("b64");
        let store =
            p12_keystore::KeyStore::from_pkcs12(&bytes, "", Default::default()).expect("parse");
        let (_, chain) = store.private_key_chain().expect("chain");
        assert_eq!(chain.certs().len(), 3);
        assert_eq!(chain.key().as_der(), leaf.key.pkcs8.as_slice());
    }

    /// Key Vault's files pair the key with the leaf (the same `localKeyID` on both), whatever
    /// the order of the certificate bags.
    #[test]
    fn pfx_pairs_the_key_with_the_leaf_in_either_order() {
        let (root, inter, leaf) = root_inter_leaf();
        for (root_first, order) in [
            (false, [&leaf.der, &inter.der, &root.der]),
            (true, [&root.der, &inter.der, &leaf.der]),
        ] {
            let pfx = backing_secret(&leaf, Storage::Pkcs12, root_first).expect("pfx");
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(pfx.as_bytes())
                .expect("b64");
            let archive = p12_keystore::Pkcs12Archive::from_pkcs12(&bytes, "").expect("parse");
            let ders: Vec<&[u8]> = archive.certs.iter().map(|c| c.cert.as_der()).collect();
            assert_eq!(ders, order.map(Vec::as_slice), "root_first {root_first}");
            let key_id = archive.keys[0].local_key_id.clone().expect("key id");
            for bag in &archive.certs {
                let is_leaf = bag.cert.as_der() == leaf.der.as_slice();
                assert_eq!(
                    bag.local_key_id.as_deref() == Some(key_id.as_ref()),
                    is_leaf,
                    "root_first {root_first}: localKeyID on {}",
                    bag.cert.subject()
                );
            }
        }
    }
}
