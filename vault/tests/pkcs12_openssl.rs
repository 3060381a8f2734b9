//! PKCS#12 files that no one here wrote: made by the `openssl` CLI at test time (`openssl
//! pkcs12 -export`), with the bags in several orders, with and without `-name` and
//! `localKeyID`, with OpenSSL's default ciphers and with Key Vault's (3DES, SHA-1 MAC); plus the
//! layout p12-keystore writes for a root-first chain (the `localKeyID` on the root). Each one
//! must render as the key, then the leaf, the intermediates and the root by issuer links, and
//! any certificate outside the chain after them; a file whose key matches no certificate is
//! refused, naming the object.
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(
    clippy::disallowed_methods,
    reason = "a test writes its own fixtures (test directories, never secrets)"
)]

use std::path::Path;
use std::process::Command;

use base64::Engine as _;
use kvmount_vault::pem::{parse_pem, pkcs12_to_pem};
use kvmount_vault::read::FetchedSecret;
use kvmount_vault::render::render_secret;
use kvmount_vault::{ObjectError, SecretString};

/// Runs `openssl ARGS` in `dir`; panics with its stderr on failure.
fn openssl(dir: &Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl CLI is needed for these tests (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap()
}

/// A root CA, two intermediates under it, a leaf under the second, an unrelated self-signed
/// certificate and a key that belongs to none of them.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// `leaf_key`: `rsa` or `ec` (P-384).
    fn new(leaf_key: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("ca.ext"), "basicConstraints=critical,CA:TRUE\n").unwrap();
        let rsa = ["-newkey", "rsa:2048"];
        let p256 = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"];
        let p384 = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"];
        let self_signed = |name: &str, key: &[&str]| {
            let mut args = vec!["req", "-x509", "-nodes", "-days", "30"];
            args.extend_from_slice(key);
            let (keyout, out, subj) = (
                format!("{name}.key"),
                format!("{name}.crt"),
                format!("/CN=kvmount test {name}"),
            );
            args.extend_from_slice(&["-keyout", &keyout, "-out", &out, "-subj", &subj]);
            args.extend_from_slice(&["-addext", "basicConstraints=critical,CA:TRUE"]);
            openssl(d, &args);
        };
        let issued = |name: &str, key: &[&str], issuer: &str, ca: bool| {
            let (keyout, csr, out, subj) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.crt"),
                format!("/CN=kvmount test {name}"),
            );
            let mut args = vec!["req", "-nodes"];
            args.extend_from_slice(key);
            args.extend_from_slice(&["-keyout", &keyout, "-out", &csr, "-subj", &subj]);
            openssl(d, &args);
            let (ca_crt, ca_key) = (format!("{issuer}.crt"), format!("{issuer}.key"));
            let mut args = vec![
                "x509",
                "-req",
                "-days",
                "30",
                "-in",
                &csr,
                "-CA",
                &ca_crt,
                "-CAkey",
                &ca_key,
                "-set_serial",
                "7",
                "-out",
                &out,
            ];
            if ca {
                args.extend_from_slice(&["-extfile", "ca.ext"]);
            }
            openssl(d, &args);
        };
        self_signed("root", &rsa);
        issued("ca1", &p256, "root", true);
        issued("ca2", &rsa, "ca1", true);
        issued(
            "leaf",
            if leaf_key == "ec" { &p384 } else { &rsa },
            "ca2",
            false,
        );
        self_signed("other", &p256);
        // The keys as PKCS#8 PEM, the way a PKCS#12 file holds them.
        for name in ["leaf", "other"] {
            let pem = openssl(d, &["pkey", "-in", &format!("{name}.key")]);
            std::fs::write(d.join(format!("{name}.pkcs8")), pem).unwrap();
        }
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Concatenates the certificates `names` (without `.crt`) into `file`.
    fn bundle(&self, file: &str, names: &[&str]) -> String {
        let text: String = names
            .iter()
            .map(|n| read(self.path(), &format!("{n}.crt")))
            .collect();
        std::fs::write(self.path().join(file), text).unwrap();
        file.to_owned()
    }

    /// `openssl pkcs12 -export ARGS -out NAME.pfx` with an empty password; the file's bytes.
    fn export(&self, name: &str, args: &[&str]) -> Vec<u8> {
        let out = format!("{name}.pfx");
        let mut all = vec!["pkcs12", "-export", "-passout", "pass:", "-out", &out];
        all.extend_from_slice(args);
        openssl(self.path(), &all);
        std::fs::read(self.path().join(out)).unwrap()
    }

    /// The bag attributes `openssl pkcs12 -info` shows, for the test's own messages.
    fn info(&self, name: &str) -> String {
        let out = openssl(
            self.path(),
            &[
                "pkcs12",
                "-in",
                &format!("{name}.pfx"),
                "-passin",
                "pass:",
                "-nodes",
                "-info",
            ],
        );
        String::from_utf8_lossy(&out)
            .lines()
            .filter(|l| {
                l.contains("localKeyID") || l.contains("friendlyName") || l.starts_with("subject")
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// What kvmount must write: the key (PKCS#8), then the leaf, ca2, ca1, root, then `extra`.
    fn expected(&self, key: &str, extra: &[&str]) -> String {
        let mut out = read(self.path(), &format!("{key}.pkcs8"));
        for name in ["leaf", "ca2", "ca1", "root"].iter().chain(extra) {
            out.push_str(&read(self.path(), &format!("{name}.crt")));
        }
        out
    }

    fn der(&self, name: &str) -> Vec<u8> {
        let blocks = parse_pem(read(self.path(), name).as_bytes()).unwrap();
        blocks[0].der.to_vec()
    }
}

/// The PEM blocks of `text` by label, certificates by subject (no key material, for messages).
fn describe(text: &str) -> Vec<String> {
    parse_pem(text.as_bytes())
        .unwrap()
        .iter()
        .map(|b| match x509_parser::parse_x509_certificate(&b.der) {
            Ok((_, cert)) if b.label == "CERTIFICATE" => cert.subject().to_string(),
            _ => b.label.clone(),
        })
        .collect()
}

fn assert_renders(rendered: &str, expected: &str, label: &str) {
    assert!(
        rendered == expected,
        "{label}\nrendered {:?}\nexpected {:?}",
        describe(rendered),
        describe(expected)
    );
}

fn render(pfx: &[u8]) -> Result<String, String> {
    pkcs12_to_pem(pfx)
        .map(|pem| String::from_utf8(pem.expose().to_vec()).unwrap())
        .map_err(|e| e.to_string())
}

/// Every way `openssl pkcs12 -export` can order and label the bags renders the same file.
#[test]
fn openssl_files_in_any_order_with_or_without_local_key_id_render_the_whole_chain() {
    for leaf_key in ["rsa", "ec"] {
        let pki = Pki::new(leaf_key);
        let cases: Vec<(&str, Vec<String>, &[&str])> = vec![
            // openssl writes the certificate that matches the key first, with the localKeyID.
            (
                "leaf-first-named",
                vec![
                    "-inkey".into(),
                    "leaf.key".into(),
                    "-in".into(),
                    "leaf.crt".into(),
                    "-certfile".into(),
                    pki.bundle("cas-root-first.pem", &["root", "ca1", "ca2"]),
                    "-name".into(),
                    "web".into(),
                ],
                &[],
            ),
            (
                "leaf-first-unnamed",
                vec![
                    "-inkey".into(),
                    "leaf.key".into(),
                    "-in".into(),
                    pki.bundle("all-mixed.pem", &["ca1", "leaf", "root", "ca2"]),
                ],
                &[],
            ),
            // Key Vault's ciphers: 3DES bags, SHA-1 MAC.
            (
                "key-vault-ciphers",
                vec![
                    "-inkey".into(),
                    "leaf.key".into(),
                    "-in".into(),
                    pki.bundle("leaf-first.pem", &["leaf", "ca2", "ca1", "root"]),
                    "-keypbe".into(),
                    "PBE-SHA1-3DES".into(),
                    "-certpbe".into(),
                    "PBE-SHA1-3DES".into(),
                    "-macalg".into(),
                    "sha1".into(),
                ],
                &[],
            ),
            // -nocerts -certfile: every certificate in the order given, no localKeyID at all.
            (
                "no-local-key-id-root-first",
                vec![
                    "-inkey".into(),
                    "leaf.key".into(),
                    "-nocerts".into(),
                    "-certfile".into(),
                    pki.bundle("root-first.pem", &["root", "ca1", "ca2", "leaf"]),
                ],
                &[],
            ),
            (
                "no-local-key-id-named-leaf-in-the-middle",
                vec![
                    "-inkey".into(),
                    "leaf.key".into(),
                    "-nocerts".into(),
                    "-name".into(),
                    "web".into(),
                    "-certfile".into(),
                    pki.bundle("middle.pem", &["ca2", "other", "leaf", "root", "ca1"]),
                ],
                &["other"],
            ),
        ];
        for (name, args, extra) in cases {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let pfx = pki.export(name, &args);
            let label = format!("{leaf_key} {name}:\n{}", pki.info(name));
            let rendered = render(&pfx).unwrap_or_else(|e| panic!("{label}\nrefused: {e}"));
            assert_renders(&rendered, &pki.expected("leaf", extra), &label);
        }
    }
}

/// The layout p12-keystore (and so kvmount's mock vault before it was fixed) writes for a
/// root-first chain: the bags root first, the localKeyID on the root, not on the leaf.
#[test]
fn a_local_key_id_on_another_certificate_keeps_the_whole_chain() {
    use p12_keystore::{Certificate, KeyStore, KeyStoreEntry, PrivateKey, PrivateKeyChain};
    let pki = Pki::new("rsa");
    let chain: Vec<Certificate> = ["root.crt", "ca1.crt", "ca2.crt", "leaf.crt"]
        .iter()
        .map(|n| Certificate::from_der(&pki.der(n)).unwrap())
        .collect();
    let key = PrivateKey::from_der(&pki.der("leaf.pkcs8")).unwrap();
    let mut store = KeyStore::new();
    store.add_entry(
        "web",
        KeyStoreEntry::PrivateKeyChain(PrivateKeyChain::new(b"root-id".to_vec(), key, chain)),
    );
    let pfx = store.writer("").write().unwrap();
    assert_renders(
        &render(&pfx).unwrap(),
        &pki.expected("leaf", &[]),
        "root first",
    );
}

/// A key that belongs to none of the certificates, or no key at all: refused, naming the
/// object once, quoting nothing of the file.
#[test]
fn a_file_whose_key_matches_no_certificate_is_refused_naming_the_object() {
    let pki = Pki::new("ec");
    let foreign = pki.export(
        "foreign",
        &[
            "-inkey",
            "other.key",
            "-nocerts",
            "-certfile",
            &pki.bundle("chain.pem", &["leaf", "ca2", "ca1", "root"]),
        ],
    );
    let err = render(&foreign).expect_err("the key is not the leaf's");
    assert!(err.contains("matches none"), "{err}");
    let no_key = pki.export("no-key", &["-nokeys", "-in", "chain.pem"]);
    let err = render(&no_key).expect_err("no key");
    assert!(err.contains("no private key"), "{err}");

    let spec = kvmount_vault::params::parse_objects(
        "array:\n  - |\n    objectName: web\n    objectType: secret\n",
    )
    .unwrap()
    .remove(0);
    let secret = FetchedSecret {
        value: SecretString::new(base64::engine::general_purpose::STANDARD.encode(&foreign)),
        version: "v1".into(),
        content_type: Some("application/x-pkcs12".into()),
        backs_certificate: true,
        validity: Default::default(),
    };
    let error = render_secret(&spec, secret).expect_err("refused");
    let message = ObjectError {
        object: spec.id(),
        error,
    }
    .to_string();
    assert!(message.starts_with("secret/web: "), "{message}");
    assert_eq!(message.matches("secret/web").count(), 1, "{message}");
    assert!(message.contains("matches none"), "{message}");
    assert!(!message.contains("BEGIN"), "{message}");
}
