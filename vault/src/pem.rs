//! Certificate and key formats: PEM blocks, certificate chain ordering (leaf first), PKCS#12 to
//! PEM, and a JWK public key as a PKIX `PUBLIC KEY`.
//!
//! Every function here takes untrusted bytes (from Key Vault) and never puts any of them in an
//! error message; each has a fuzz target.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use zeroize::Zeroizing;

use crate::secret::SecretBytes;

/// A format problem. Messages never contain the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// A `-----BEGIN` line without its `-----END`, or a body that is not base64.
    #[error("malformed PEM block #{0} (missing END line or bad base64)")]
    Pem(usize),
    /// The PEM text holds no certificate.
    #[error("no CERTIFICATE block")]
    NoCertificate,
    /// A certificate is not DER X.509.
    #[error("certificate #{0} is not a DER X.509 certificate")]
    Certificate(usize),
    /// The PFX could not be read (not PKCS#12, a password is set, or an unsupported cipher).
    #[error("not a readable PKCS#12 file without password")]
    Pkcs12,
    /// The PFX holds no private key.
    #[error("the PKCS#12 file holds no private key")]
    NoPrivateKey,
    /// The PFX holds more than one private key.
    #[error(
        "the PKCS#12 file holds {0} private keys; accepted: one key with its certificate chain"
    )]
    ManyPrivateKeys(usize),
    /// No certificate of the PFX has the private key's public key.
    #[error(
        "the PKCS#12 file's private key matches none of its {0} certificates; accepted: a key with its own certificate"
    )]
    NoMatchingCertificate(usize),
    /// The key has no public part we can express (symmetric, unknown curve, missing fields).
    #[error("{0}")]
    Key(String),
}

/// One PEM block: its label, DER bytes (zeroed on drop) and where it sits in the text.
pub struct PemBlock {
    /// The label, e.g. `CERTIFICATE` or `PRIVATE KEY`.
    pub label: String,
    /// The decoded body.
    pub der: Zeroizing<Vec<u8>>,
    /// Byte range of the block in the input, `-----BEGIN` to the end of the `-----END` line.
    pub range: std::ops::Range<usize>,
}

impl std::fmt::Debug for PemBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PemBlock({}, {} bytes)", self.label, self.der.len())
    }
}

/// Parses every `-----BEGIN X-----` ... `-----END X-----` block; text between blocks is ignored.
pub fn parse_pem(text: &[u8]) -> Result<Vec<PemBlock>, FormatError> {
    const BEGIN: &[u8] = b"-----BEGIN ";
    const END: &[u8] = b"-----END ";
    let mut blocks = Vec::new();
    let mut pos = 0;
    while let Some(start) = find(&text[pos..], BEGIN).map(|i| i + pos) {
        let n = blocks.len();
        let after_begin = start + BEGIN.len();
        let label_end = find(&text[after_begin..], b"-----")
            .map(|i| i + after_begin)
            .ok_or(FormatError::Pem(n))?;
        let label = std::str::from_utf8(&text[after_begin..label_end])
            .map_err(|_| FormatError::Pem(n))?
            .to_owned();
        if label.is_empty() || label.len() > 64 || label.contains('\n') {
            return Err(FormatError::Pem(n));
        }
        let body_start = label_end + 5;
        let end = find(&text[body_start..], END)
            .map(|i| i + body_start)
            .ok_or(FormatError::Pem(n))?;
        let end_label_start = end + END.len();
        let end_label_end = find(&text[end_label_start..], b"-----")
            .map(|i| i + end_label_start)
            .ok_or(FormatError::Pem(n))?;
        if text[end_label_start..end_label_end] != *label.as_bytes() {
            return Err(FormatError::Pem(n));
        }
        let mut block_end = end_label_end + 5;
        if text.get(block_end) == Some(&b'\r') {
            block_end += 1;
        }
        if text.get(block_end) == Some(&b'\n') {
            block_end += 1;
        }
        let body: Zeroizing<Vec<u8>> = Zeroizing::new(
            text[body_start..end]
                .iter()
                .copied()
                .filter(|b| !b.is_ascii_whitespace())
                .collect(),
        );
        let der = Zeroizing::new(STANDARD.decode(&*body).map_err(|_| FormatError::Pem(n))?);
        blocks.push(PemBlock {
            label,
            der,
            range: start..block_end,
        });
        pos = block_end;
    }
    Ok(blocks)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The PEM blocks kvmount writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PemLabel {
    /// PKCS#8 `PRIVATE KEY`.
    PrivateKey,
    /// X.509 `CERTIFICATE`.
    Certificate,
    /// PKIX `PUBLIC KEY`.
    PublicKey,
}

impl PemLabel {
    /// The label as the BEGIN and END lines spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PrivateKey => "PRIVATE KEY",
            Self::Certificate => "CERTIFICATE",
            Self::PublicKey => "PUBLIC KEY",
        }
    }
}

/// A PEM block as text, 64 characters a line with `\n` line ends (the layout OpenSSL and
/// Python `cryptography` write), by `pem-rfc7468`.
pub fn pem_encode(label: PemLabel, der: &[u8]) -> Zeroizing<String> {
    match pem_rfc7468::encode_string(label.as_str(), pem_rfc7468::LineEnding::LF, der) {
        Ok(text) => Zeroizing::new(text),
        // The encoder refuses only a label outside RFC 7468's grammar (these are in it) and a
        // length past `usize` (no DER held in memory is that long).
        Err(err) => unreachable!("PEM encoding of a {} failed: {err}", label.as_str()),
    }
}

/// A certificate's subject and issuer (raw DER names).
type Names = (Vec<u8>, Vec<u8>);

/// The subject and issuer of each certificate.
fn names_of(certs: &[&[u8]]) -> Result<Vec<Names>, FormatError> {
    certs
        .iter()
        .enumerate()
        .map(|(i, der)| {
            let (_, cert) = x509_parser::parse_x509_certificate(der)
                .map_err(|_| FormatError::Certificate(i))?;
            Ok((
                cert.subject().as_raw().to_vec(),
                cert.issuer().as_raw().to_vec(),
            ))
        })
        .collect()
}

/// The order of `certs` (DER) from leaf to root: the leaf is the certificate that issued no
/// other one in the set; each next one is the issuer of the previous. Certificates outside
/// that path keep their stored order at the end.
pub fn chain_order(certs: &[&[u8]]) -> Result<Vec<usize>, FormatError> {
    let names = names_of(certs)?;
    let issued_another = |i: usize| {
        names
            .iter()
            .enumerate()
            .any(|(j, (_, issuer))| j != i && *issuer == names[i].0 && names[j].0 != names[j].1)
    };
    let leaf = (0..certs.len()).find(|&i| !issued_another(i)).unwrap_or(0);
    Ok(issuer_path(&names, leaf))
}

/// The order of `certs` (DER) from the given leaf to its root by issuer links; certificates
/// outside that path keep their stored order at the end.
pub fn chain_order_from(certs: &[&[u8]], leaf: usize) -> Result<Vec<usize>, FormatError> {
    let names = names_of(certs)?;
    Ok(issuer_path(&names, leaf))
}

fn issuer_path(names: &[Names], leaf: usize) -> Vec<usize> {
    let mut order = Vec::with_capacity(names.len());
    let mut used = vec![false; names.len()];
    let mut current = (leaf < names.len()).then_some(leaf);
    while let Some(i) = current {
        order.push(i);
        used[i] = true;
        let issuer = &names[i].1;
        current = (0..names.len()).find(|&j| !used[j] && names[j].0 == *issuer);
    }
    order.extend((0..names.len()).filter(|&j| !used[j]));
    order
}

/// A PEM-stored certificate secret with its chain leaf first: the private key block(s) first,
/// then the certificates from leaf to root. Returned unchanged when already in that order.
pub fn normalize_pem_chain(value: &[u8]) -> Result<SecretBytes, FormatError> {
    let blocks = parse_pem(value)?;
    let certs: Vec<usize> = (0..blocks.len())
        .filter(|&i| blocks[i].label == "CERTIFICATE")
        .collect();
    if certs.is_empty() {
        return Err(FormatError::NoCertificate);
    }
    let ders: Vec<&[u8]> = certs.iter().map(|&i| blocks[i].der.as_slice()).collect();
    let order = chain_order(&ders)?;
    let mut wanted: Vec<usize> = (0..blocks.len())
        .filter(|&i| blocks[i].label != "CERTIFICATE")
        .collect();
    wanted.extend(order.iter().map(|&k| certs[k]));
    if wanted.iter().copied().eq(0..blocks.len()) {
        return Ok(SecretBytes::new(value.to_vec()));
    }
    let mut out = Vec::with_capacity(value.len());
    for i in wanted {
        let text = &value[blocks[i].range.clone()];
        out.extend_from_slice(text);
        if !text.ends_with(b"\n") {
            out.push(b'\n');
        }
    }
    Ok(SecretBytes::new(out))
}

/// A PKCS#12 file's private key (PKCS#8 DER) and certificates (DER, leaf to root).
pub struct Pkcs12Contents {
    /// PKCS#8 `PrivateKeyInfo`.
    pub key: SecretBytes,
    /// Leaf first.
    pub certs: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Pkcs12Contents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Pkcs12Contents(key: <redacted>, {} certs)",
            self.certs.len()
        )
    }
}

/// Reads a PFX with an empty password (as Key Vault stores them): every certificate and key
/// bag, whatever their attributes (`localKeyID` and `friendlyName` are optional and are not
/// used to pair them). The leaf is the certificate whose public key is the private key's; the
/// others follow it by issuer links, as for PEM. A key that carries no public part (an EC key
/// written without it) is paired by `localKeyID` instead.
///
/// p12-keystore keeps the decrypted key in a plain `Vec`; it is freed (and, in the daemon,
/// zeroed by the allocator) before this returns.
pub fn read_pkcs12(pfx: &[u8]) -> Result<Pkcs12Contents, FormatError> {
    let archive =
        p12_keystore::Pkcs12Archive::from_pkcs12(pfx, "").map_err(|_| FormatError::Pkcs12)?;
    let key_bag = match archive.keys.as_slice() {
        [] => return Err(FormatError::NoPrivateKey),
        [key] => key,
        keys => return Err(FormatError::ManyPrivateKeys(keys.len())),
    };
    let key = SecretBytes::new(key_bag.key.as_der().to_vec());
    let mut certs: Vec<&p12_keystore::CertificateBag> = Vec::new();
    for bag in &archive.certs {
        if !certs.iter().any(|c| c.cert.as_der() == bag.cert.as_der()) {
            certs.push(bag);
        }
    }
    let ders: Vec<&[u8]> = certs.iter().map(|c| c.cert.as_der()).collect();
    let leaf = match public_key_of(key.expose()) {
        Some(public) => ders.iter().position(|der| certifies(der, &public)),
        None => key_bag.local_key_id.as_ref().and_then(|id| {
            certs
                .iter()
                .position(|c| c.local_key_id.as_deref() == Some(id.as_ref()))
        }),
    }
    .ok_or(FormatError::NoMatchingCertificate(certs.len()))?;
    let order = chain_order_from(&ders, leaf)?;
    let certs = order.into_iter().map(|i| ders[i].to_vec()).collect();
    Ok(Pkcs12Contents { key, certs })
}

/// The public half of a PKCS#8 private key, as a certificate states it.
enum PublicPart<'a> {
    /// RSA: modulus and exponent (big-endian, no leading zeros).
    Rsa { n: &'a [u8], e: &'a [u8] },
    /// Anything else: the bytes of the certificate's `subjectPublicKey` (an EC point).
    Bits(&'a [u8]),
}

const RSA_OID: pkcs8::ObjectIdentifier =
    pkcs8::ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const RSA_PSS_OID: pkcs8::ObjectIdentifier =
    pkcs8::ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.10");
const EC_OID: pkcs8::ObjectIdentifier = pkcs8::ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");

/// The public part of a PKCS#8 key: from the RSA key itself, the EC key's `publicKey`, or a
/// PKCS#8 v2 `publicKey`; `None` when the key does not carry it.
fn public_key_of(pkcs8_der: &[u8]) -> Option<PublicPart<'_>> {
    let info = pkcs8::PrivateKeyInfo::try_from(pkcs8_der).ok()?;
    let oid = info.algorithm.oid;
    if oid == RSA_OID || oid == RSA_PSS_OID {
        let rsa = pkcs1::RsaPrivateKey::try_from(info.private_key).ok()?;
        return Some(PublicPart::Rsa {
            n: rsa.modulus.as_bytes(),
            e: rsa.public_exponent.as_bytes(),
        });
    }
    if oid == EC_OID
        && let Some(point) = sec1::EcPrivateKey::try_from(info.private_key)
            .ok()
            .and_then(|ec| ec.public_key)
    {
        return Some(PublicPart::Bits(point));
    }
    info.public_key.map(PublicPart::Bits)
}

/// True when the certificate `der` states `public` as its public key.
fn certifies(der: &[u8], public: &PublicPart<'_>) -> bool {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return false;
    };
    let bits = &cert.tbs_certificate.subject_pki.subject_public_key.data;
    match public {
        PublicPart::Rsa { n, e } => pkcs1::RsaPublicKey::try_from(bits.as_ref())
            .is_ok_and(|k| k.modulus.as_bytes() == *n && k.public_exponent.as_bytes() == *e),
        PublicPart::Bits(point) => bits.as_ref() == *point,
    }
}

/// The private key PEM (`PRIVATE KEY`, PKCS#8).
pub fn key_pem(contents: &Pkcs12Contents) -> SecretBytes {
    let pem = pem_encode(PemLabel::PrivateKey, contents.key.expose());
    SecretBytes::new(pem.as_bytes().to_vec())
}

/// The certificates as PEM, leaf first.
pub fn certs_pem(certs: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for der in certs {
        out.extend_from_slice(pem_encode(PemLabel::Certificate, der).as_bytes());
    }
    out
}

/// The PEM the Azure provider writes for a PKCS#12 certificate secret: the key, then the chain.
pub fn pkcs12_to_pem(pfx: &[u8]) -> Result<SecretBytes, FormatError> {
    let contents = read_pkcs12(pfx)?;
    let mut out = key_pem(&contents).expose().to_vec();
    out.extend_from_slice(&certs_pem(&contents.certs));
    Ok(SecretBytes::new(out))
}

/// The public half of a key as Key Vault returns it in a JWK.
#[derive(Debug, Clone, Copy)]
pub enum PublicKey<'a> {
    /// RSA: modulus and public exponent, big-endian.
    Rsa {
        /// Modulus.
        n: &'a [u8],
        /// Exponent.
        e: &'a [u8],
    },
    /// EC: curve name (`P-256`, `P-384`, `P-521`) and point coordinates.
    Ec {
        /// JWK `crv`.
        crv: &'a str,
        /// X coordinate.
        x: &'a [u8],
        /// Y coordinate.
        y: &'a [u8],
    },
}

fn oid(parts: &[u64]) -> yasna::models::ObjectIdentifier {
    yasna::models::ObjectIdentifier::from_slice(parts)
}

/// `SubjectPublicKeyInfo` DER of a JWK public key.
pub fn public_key_der(key: PublicKey<'_>) -> Result<Vec<u8>, FormatError> {
    match key {
        PublicKey::Rsa { n, e } => {
            let n = trim_zeros(n);
            let e = trim_zeros(e);
            if n.is_empty() || e.is_empty() {
                return Err(FormatError::Key(
                    "the RSA key has no modulus or exponent".into(),
                ));
            }
            let rsa = yasna::construct_der(|w| {
                w.write_sequence(|w| {
                    w.next().write_bigint_bytes(n, true);
                    w.next().write_bigint_bytes(e, true);
                })
            });
            Ok(yasna::construct_der(|w| {
                w.write_sequence(|w| {
                    w.next().write_sequence(|w| {
                        w.next().write_oid(&oid(&[1, 2, 840, 113549, 1, 1, 1]));
                        w.next().write_null();
                    });
                    w.next().write_bitvec_bytes(&rsa, rsa.len() * 8);
                })
            }))
        }
        PublicKey::Ec { crv, x, y } => {
            let (curve, size) = match crv {
                "P-256" => (oid(&[1, 2, 840, 10045, 3, 1, 7]), 32),
                "P-384" => (oid(&[1, 3, 132, 0, 34]), 48),
                "P-521" => (oid(&[1, 3, 132, 0, 35]), 66),
                other => {
                    return Err(FormatError::Key(format!(
                        "curve {other:?} is not supported; accepted: P-256, P-384, P-521"
                    )));
                }
            };
            let (x, y) = (trim_zeros(x), trim_zeros(y));
            if x.len() > size || y.len() > size || x.is_empty() || y.is_empty() {
                return Err(FormatError::Key(format!(
                    "the {crv} point coordinates are not {size} bytes"
                )));
            }
            let mut point = Vec::with_capacity(1 + 2 * size);
            point.push(4);
            point.resize(1 + size - x.len(), 0);
            point.extend_from_slice(x);
            point.resize(1 + 2 * size - y.len(), 0);
            point.extend_from_slice(y);
            Ok(yasna::construct_der(|w| {
                w.write_sequence(|w| {
                    w.next().write_sequence(|w| {
                        w.next().write_oid(&oid(&[1, 2, 840, 10045, 2, 1]));
                        w.next().write_oid(&curve);
                    });
                    w.next().write_bitvec_bytes(&point, point.len() * 8);
                })
            }))
        }
    }
}

fn trim_zeros(b: &[u8]) -> &[u8] {
    let first = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[first..]
}

/// `-----BEGIN PUBLIC KEY-----` PEM of a JWK public key.
pub fn public_key_pem(key: PublicKey<'_>) -> Result<Vec<u8>, FormatError> {
    let der = public_key_der(key)?;
    Ok(pem_encode(PemLabel::PublicKey, &der).as_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(
        cn: &str,
        issuer: Option<(&rcgen::CertificateParams, &rcgen::KeyPair)>,
        ca: bool,
    ) -> (rcgen::CertificateParams, rcgen::KeyPair, Vec<u8>) {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        if ca {
            p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        }
        let der = match issuer {
            None => p.self_signed(&key).expect("self").der().to_vec(),
            Some((ip, ik)) => {
                let issuer = rcgen::Issuer::from_params(ip, ik);
                p.signed_by(&key, &issuer).expect("signed").der().to_vec()
            }
        };
        (p, key, der)
    }

    #[test]
    fn blocks_are_written_as_openssl_writes_them() {
        let der: Vec<u8> = (0..=255u8).collect();
        let text = pem_encode(PemLabel::Certificate, &der);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "-----BEGIN CERTIFICATE-----");
        assert_eq!(*lines.last().expect("END"), "-----END CERTIFICATE-----");
        assert!(text.ends_with("-----\n") && !text.contains('\r'));
        let body = &lines[1..lines.len() - 1];
        assert!(body[..body.len() - 1].iter().all(|l| l.len() == 64));
        assert_eq!(STANDARD.decode(body.concat()).expect("base64"), der);
    }

    #[test]
    fn chains_are_ordered_leaf_first() {
        let (rp, rk, root) = cert("root", None, true);
        let (ip, ik, inter) = cert("inter", Some((&rp, &rk)), true);
        let (_, lk, leaf) = cert("leaf", Some((&ip, &ik)), false);
        let stored = [root.as_slice(), leaf.as_slice(), inter.as_slice()];
        assert_eq!(chain_order(&stored).expect("order"), vec![1, 2, 0]);
        let single = [leaf.as_slice()];
        assert_eq!(chain_order(&single).expect("order"), vec![0]);
        assert_eq!(
            chain_order(&[root.as_slice()]).expect("self-signed"),
            vec![0]
        );

        let key = pem_encode(PemLabel::PrivateKey, &lk.serialize_der());
        let mut text = String::new();
        text.push_str(&pem_encode(PemLabel::Certificate, &root));
        text.push_str(&key);
        text.push_str(&pem_encode(PemLabel::Certificate, &inter));
        text.push_str(&pem_encode(PemLabel::Certificate, &leaf));
        let out = normalize_pem_chain(text.as_bytes()).expect("normalize");
        let mut want = String::new();
        want.push_str(&key);
        want.push_str(&pem_encode(PemLabel::Certificate, &leaf));
        want.push_str(&pem_encode(PemLabel::Certificate, &inter));
        want.push_str(&pem_encode(PemLabel::Certificate, &root));
        assert_eq!(out.expose(), want.as_bytes());
        // Already in order: byte for byte as stored.
        let again = normalize_pem_chain(want.as_bytes()).expect("normalize");
        assert_eq!(again.expose(), want.as_bytes());
    }

    #[test]
    fn bad_input_is_refused_without_echo() {
        assert_eq!(
            normalize_pem_chain(b"-----BEGIN CERTIFICATE-----\ncanary").map(|_| ()),
            Err(FormatError::Pem(0))
        );
        assert_eq!(
            normalize_pem_chain(b"no pem here").map(|_| ()),
            Err(FormatError::NoCertificate)
        );
        assert!(read_pkcs12(b"canary").is_err());
        let err = public_key_der(PublicKey::Ec {
            crv: "P-192",
            x: &[1],
            y: &[1],
        })
        .expect_err("curve");
        assert!(err.to_string().contains("P-256"));
    }

    #[test]
    fn legacy_pkcs12_from_openssl_converts_to_the_same_pem() {
        let pfx = include_bytes!("../testdata/legacy-rc2-3des.pfx");
        let key = include_bytes!("../testdata/legacy-key.pem");
        let cert = include_bytes!("../testdata/legacy-cert.pem");
        let pem = pkcs12_to_pem(pfx).expect("legacy PFX");
        let mut want = key.to_vec();
        want.extend_from_slice(cert);
        assert_eq!(pem.expose(), want.as_slice());
    }

    #[test]
    fn ec_public_key_round_trips_through_x509_parser() {
        let key = rcgen::KeyPair::generate().expect("key");
        let raw = key.public_key_raw();
        let der = public_key_der(PublicKey::Ec {
            crv: "P-256",
            x: &raw[1..33],
            y: &raw[33..],
        })
        .expect("der");
        assert_eq!(der, rcgen::PublicKeyData::subject_public_key_info(&key));
    }
}
