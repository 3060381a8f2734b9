//! Every cargo-fuzz target of `fuzz/`, run briefly on the stable toolchain as part of
//! `cargo test` (the fuzz smoke run of issue 8, without a nightly toolchain or an ASAN build).
//!
//! Each target's own harness file (`fuzz/fuzz_targets/<target>.rs`, the code cargo-fuzz builds)
//! is compiled here as a module, with a stand-in for `libfuzzer_sys::fuzz_target!` that turns
//! the harness body into `fn run(&[u8])`. Each target gets its seeds (the hostile-input corpus
//! split per target as `tests/fuzz.sh` does, a few well-formed inputs written here, and
//! `fuzz/corpus/<target>/` when a longer run left one), then random mutations of them (bit
//! flips, byte changes, inserted tokens, deletions, duplications, splices, truncations) and
//! random bytes, up to `KVMOUNT_FUZZ_SMOKE_RUNS` inputs (default 5000) or
//! `KVMOUNT_FUZZ_SMOKE_SECONDS` (default 6) per target. A panic (a crash, or a harness
//! assertion: an error that echoes its input, a round trip that does not hold) fails the test
//! with the input saved under `target/tmp/fuzz-smoke/<target>/` and the random seed to replay
//! it (`KVMOUNT_FUZZ_SMOKE_SEED`).
//!
//! No coverage guidance and no sanitizer: this catches shallow bugs on every run. The
//! coverage-guided run is `tests/fuzz.sh` (nightly, cargo-fuzz; `fuzz/README.md`).

// The harness files say `use libfuzzer_sys::fuzz_target;`: this crate stands in for it.
extern crate self as libfuzzer_sys;

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The stand-in for `libfuzzer_sys::fuzz_target!`: the harness body becomes `pub fn run`.
#[macro_export]
macro_rules! fuzz_target {
    (|$data:ident: &[u8]| $body:block) => {
        pub fn run($data: &[u8]) $body
    };
}

// One module per harness file (`#[path]` takes only a literal, so the list is spelled out; a
// target missing here fails `every_fuzz_target_has_a_smoke_test`). The files are crate roots
// for cargo-fuzz (`#![no_main]`) and are linted by that build, not by this one.
#[allow(unused_attributes, unused_imports, clippy::all)]
#[path = "../../fuzz/fuzz_targets/alloc_stack_maps.rs"]
mod alloc_stack_maps;
#[allow(unused_attributes, unused_imports, clippy::all)]
#[path = "../../fuzz/fuzz_targets/mock_jwt.rs"]
mod mock_jwt;
#[allow(unused_attributes, unused_imports, clippy::all)]
#[path = "../../fuzz/fuzz_targets/mock_seed.rs"]
mod mock_seed;
#[allow(unused_attributes, unused_imports, clippy::all)]
#[path = "../../fuzz/fuzz_targets/mock_token_form.rs"]
mod mock_token_form;
#[allow(unused_attributes, unused_imports, clippy::all)]
#[path = "../../fuzz/fuzz_targets/provider_attributes.rs"]
mod provider_attributes;
#[allow(unused_attributes, unused_imports, clippy::all)]
#[path = "../../fuzz/fuzz_targets/provider_objects.rs"]
mod provider_objects;
#[allow(unused_attributes, unused_imports, clippy::all)]
#[path = "../../fuzz/fuzz_targets/provider_permission.rs"]
mod provider_permission;
#[allow(unused_attributes, unused_imports, clippy::all)]
#[path = "../../fuzz/fuzz_targets/sidecar_admission_review.rs"]
mod sidecar_admission_review;
#[allow(unused_attributes, unused_imports, clippy::all)]
#[path = "../../fuzz/fuzz_targets/sidecar_agent_config.rs"]
mod sidecar_agent_config;
#[allow(unused_attributes, unused_imports, clippy::all)]
#[path = "../../fuzz/fuzz_targets/sidecar_annotations.rs"]
mod sidecar_annotations;
#[allow(unused_attributes, unused_imports, clippy::all)]
#[path = "../../fuzz/fuzz_targets/sidecar_template.rs"]
mod sidecar_template;
#[allow(unused_attributes, unused_imports, clippy::all)]
#[path = "../../fuzz/fuzz_targets/unix_h2_rewrite.rs"]
mod unix_h2_rewrite;
#[allow(unused_attributes, unused_imports, clippy::all)]
#[path = "../../fuzz/fuzz_targets/vault_cloud_env.rs"]
mod vault_cloud_env;
#[allow(unused_attributes, unused_imports, clippy::all)]
#[path = "../../fuzz/fuzz_targets/vault_duration.rs"]
mod vault_duration;
#[allow(unused_attributes, unused_imports, clippy::all)]
#[path = "../../fuzz/fuzz_targets/vault_pem_chain.rs"]
mod vault_pem_chain;
#[allow(unused_attributes, unused_imports, clippy::all)]
#[path = "../../fuzz/fuzz_targets/vault_pkcs12.rs"]
mod vault_pkcs12;
#[allow(unused_attributes, unused_imports, clippy::all)]
#[path = "../../fuzz/fuzz_targets/vault_public_key.rs"]
mod vault_public_key;
#[allow(unused_attributes, unused_imports, clippy::all)]
#[path = "../../fuzz/fuzz_targets/volume_paths.rs"]
mod volume_paths;
#[allow(unused_attributes, unused_imports, clippy::all)]
#[path = "../../fuzz/fuzz_targets/volume_writer.rs"]
mod volume_writer;

/// xorshift64*: small, seedable, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// Fragments that matter to the parsers: JSON, YAML, PEM, paths, templates, forms, separators.
const TOKENS: &[&[u8]] = &[
    b"\"",
    b"{",
    b"}",
    b"[",
    b"]",
    b":",
    b",",
    b"\n",
    b"\n  - |\n    ",
    b"- ",
    b"|",
    b"'",
    b"#",
    b"\\u0000",
    b"..",
    b"/",
    b"../",
    b"..data",
    b"\\",
    b"\0",
    b"{{",
    b"}}",
    b"{{ secret/a }}",
    b"&",
    b"=",
    b"%00",
    b"%2e%2e",
    b"-----BEGIN CERTIFICATE-----\n",
    b"-----END CERTIFICATE-----\n",
    b"\xff",
    b"\xc3\x28",
    b"\xf0\x9f\x92\xa9",
    b"null",
    b"true",
    b"0777",
    b"4294967296",
    b"-1",
    b"1e999",
    b"AAAA",
    b"objectName: ",
    b"objectType: ",
    b"objectAlias: ",
    b"&a [*a]",
    b"!!binary",
    b"<<: *a",
];

/// A mutation of `input` (1 to 4 edits), sometimes spliced with `other`.
fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..=rng.below(4) {
        let len = out.len();
        match rng.below(8) {
            0 if len > 0 => {
                let i = rng.below(len);
                out[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                out[i] = rng.next() as u8;
            }
            2 => {
                let token = TOKENS[rng.below(TOKENS.len())];
                let i = rng.below(len + 1);
                out.splice(i..i, token.iter().copied());
            }
            3 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(16));
                out.drain(i..i + n);
            }
            4 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(64));
                let copy: Vec<u8> = out[i..i + n].to_vec();
                let at = rng.below(len + 1);
                out.splice(at..at, copy);
            }
            5 if !other.is_empty() => {
                let cut = rng.below(len + 1);
                let from = rng.below(other.len());
                out.truncate(cut);
                out.extend_from_slice(&other[from..]);
            }
            6 if len > 0 => out.truncate(rng.below(len)),
            _ => {
                let i = rng.below(len + 1);
                let n = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                out.splice(i..i, bytes);
            }
        }
    }
    out.truncate(1 << 16);
    out
}

/// Seeds from the hostile-input corpus, as `tests/fuzz.sh` splits them per target.
fn corpus_seeds(target: &str) -> Vec<Vec<u8>> {
    let corpus = include_str!("../corpus/inputs.jsonl");
    let mut seeds = Vec::new();
    for line in corpus.lines().filter(|l| !l.trim().is_empty()) {
        let case: serde_json::Value = serde_json::from_str(line).expect("corpus line is JSON");
        let text = |key: &str| {
            case.get(key)
                .and_then(|v| v.as_str())
                .map(kvmount_tests::expand_repeats)
        };
        let seed = match target {
            "provider_attributes" => text("attributes_raw"),
            "provider_objects" => text("objects").or_else(|| {
                text("object").map(|o| {
                    let body: String = o.lines().map(|l| format!("    {l}\n")).collect();
                    format!("array:\n  - |\n{body}")
                })
            }),
            "provider_permission" => text("permission"),
            _ => None,
        };
        seeds.extend(seed.map(String::into_bytes));
    }
    seeds
}

/// A cargo-fuzz run's corpus for `target`, when a longer run left one (git-ignored).
fn saved_corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus")).join(target);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    files.sort();
    files
        .iter()
        .take(500)
        .filter_map(|p| std::fs::read(p).ok())
        .collect()
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `harness` on the seeds, then on mutations and random inputs, within the budget.
fn smoke(target: &str, harness: fn(&[u8]), extra_seeds: &[&[u8]]) {
    let runs = env_number("KVMOUNT_FUZZ_SMOKE_RUNS", 5000);
    let budget = Duration::from_secs(env_number("KVMOUNT_FUZZ_SMOKE_SECONDS", 6));
    let seed = env_number(
        "KVMOUNT_FUZZ_SMOKE_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
    ) | 1;
    let mut rng = Rng(seed);
    let mut seeds: Vec<Vec<u8>> = extra_seeds.iter().map(|s| s.to_vec()).collect();
    seeds.extend(corpus_seeds(target));
    seeds.extend(saved_corpus(target));
    seeds.push(Vec::new());
    let started = Instant::now();
    let mut executed = 0u64;
    let run_one = |input: &[u8], executed: &mut u64| {
        *executed += 1;
        if std::panic::catch_unwind(AssertUnwindSafe(|| harness(input))).is_err() {
            let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
                .join("fuzz-smoke")
                .join(target);
            let _ = std::fs::create_dir_all(&dir);
            let file = dir.join(format!("crash-seed{seed}-input{executed}"));
            let _ = std::fs::write(&file, input);
            panic!(
                "fuzz target {target} panicked on input {} ({} bytes, saved to {}); replay the run with KVMOUNT_FUZZ_SMOKE_SEED={seed}",
                String::from_utf8_lossy(&input[..input.len().min(200)]).escape_debug(),
                input.len(),
                file.display()
            );
        }
    };
    for input in &seeds {
        run_one(input, &mut executed);
    }
    while executed < runs.max(seeds.len() as u64) && started.elapsed() < budget {
        let input = if rng.below(10) == 0 {
            let n = rng.below(256);
            (0..n).map(|_| rng.next() as u8).collect()
        } else {
            // Mostly small seeds: the corpus's megabyte inputs are slow to mutate and parse.
            let mut a = &seeds[rng.below(seeds.len())];
            for _ in 0..3 {
                if a.len() <= 4096 {
                    break;
                }
                a = &seeds[rng.below(seeds.len())];
            }
            let b = &seeds[rng.below(seeds.len())];
            let out = mutate(&mut rng, a, b);
            // Most parsers take text and return early on invalid UTF-8: keep half the inputs
            // text so they reach the parser.
            if rng.below(2) == 0 {
                String::from_utf8_lossy(&out).into_owned().into_bytes()
            } else {
                out
            }
        };
        run_one(&input, &mut executed);
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "fuzz smoke {target}: {executed} inputs ({} seeds) in {seconds:.1}s, seed {seed}",
        seeds.len()
    );
    kvmount_tests::record_summary(
        &format!("fuzz-smoke-{target}"),
        &[("executions", executed), ("seeds", seeds.len() as u64)],
    );
}

/// Every `[[bin]]` of `fuzz/Cargo.toml` has a smoke test here.
#[test]
fn every_fuzz_target_has_a_smoke_test() {
    let manifest = include_str!("../../fuzz/Cargo.toml");
    let this = include_str!("fuzz_smoke.rs");
    for line in manifest.lines() {
        if let Some(name) = line
            .strip_prefix("name = \"")
            .and_then(|l| l.strip_suffix('"'))
        {
            if name == "kvmount-fuzz" {
                continue;
            }
            assert!(
                this.contains(&format!("fn {name}() {{")),
                "fuzz target {name} has no smoke test in tests/tests/fuzz_smoke.rs"
            );
        }
    }
}

const OBJECTS: &[u8] = b"array:\n  - |\n    objectName: a\n    objectType: secret\n    objectAlias: b/c\n    filePermission: \"0640\"\n  - |\n    objectName: k\n    objectType: key\n    objectVersionHistory: 2\n";

#[test]
fn alloc_stack_maps() {
    // The stack pointer (little-endian) inside the `[stack]` mapping, then the maps text.
    let mut seed = 0x7ffc_8a40_0000u64.to_le_bytes().to_vec();
    seed.extend_from_slice(
        b"55d0c0a00000-55d0c0a21000 rw-p 00000000 00:00 0 [heap]\n\
          7ffc8a3bf000-7ffc8a406000 rw-p 00000000 00:00 0 [stack]\n\
          7ffc8a4f5000-7ffc8a4f7000 r-xp 00000000 00:00 0 [vdso]\n",
    );
    smoke("alloc_stack_maps", alloc_stack_maps::run, &[&seed]);
}

#[test]
fn mock_jwt() {
    smoke("mock_jwt", mock_jwt::run, &[
        b"eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCJ9.eyJhdWQiOiJhcGk6Ly9BenVyZUFEVG9rZW5FeGNoYW5nZSIsInN1YiI6InN5c3RlbTpzZXJ2aWNlYWNjb3VudDphOmIiLCJleHAiOjQxMDI0NDQ4MDB9.c2ln",
        b"-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----\n",
    ]);
}

#[test]
fn mock_seed() {
    smoke("mock_seed", mock_seed::run, &[
        b"tenantId: 00000000-0000-0000-0000-000000000001\nidentities:\n  - { name: app, clientId: 00000000-0000-0000-0000-00000000000a, clientSecret: s }\nvaults:\n  - name: demo\n    access:\n      - { identity: app, objects: [\"secret/*\"], permissions: [get] }\n    secrets:\n      - { name: a, versions: [\"x\", \"y\"] }\n",
    ]);
}

#[test]
fn mock_token_form() {
    smoke("mock_token_form", mock_token_form::run, &[
        b"grant_type=client_credentials&client_id=00000000-0000-0000-0000-00000000000a&client_secret=s&scope=https%3A%2F%2Fvault.azure.net%2F.default",
        b"client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion=a.b.c",
    ]);
}

#[test]
fn provider_attributes() {
    smoke("provider_attributes", provider_attributes::run, &[
        b"{\"keyvaultName\":\"demo\",\"tenantID\":\"t\",\"objects\":\"array:\\n  - |\\n    objectName: a\\n    objectType: secret\\n\"}\0{\"clientid\":\"c\",\"clientsecret\":\"s\"}",
    ]);
}

#[test]
fn provider_objects() {
    smoke("provider_objects", provider_objects::run, &[OBJECTS]);
}

#[test]
fn provider_permission() {
    smoke(
        "provider_permission",
        provider_permission::run,
        &[b"0644", b"420", b"0o600"],
    );
}

#[test]
fn sidecar_admission_review() {
    smoke("sidecar_admission_review", sidecar_admission_review::run, &[
        b"{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"AdmissionReview\",\"request\":{\"uid\":\"u\",\"namespace\":\"a\",\"operation\":\"CREATE\",\"object\":{\"metadata\":{\"annotations\":{\"kvmount.io/inject\":\"true\",\"kvmount.io/keyvault\":\"demo\",\"kvmount.io/secret-db\":\"secret/db\"}},\"spec\":{\"containers\":[{\"name\":\"app\",\"image\":\"x\"}]}}}}",
    ]);
}

#[test]
fn sidecar_agent_config() {
    smoke("sidecar_agent_config", sidecar_agent_config::run, &[
        b"{\"keyvaultName\":\"demo\",\"tenantId\":\"t\",\"clientId\":\"c\",\"mountPath\":\"/mnt/secrets\",\"refreshSeconds\":60,\"templates\":[{\"path\":\"conn\",\"template\":\"p={{ secret/db }}\"}]}",
    ]);
}

#[test]
fn sidecar_annotations() {
    smoke("sidecar_annotations", sidecar_annotations::run, &[
        b"keyvault=demo\ntenant-id=00000000-0000-0000-0000-000000000001\nclient-id=00000000-0000-0000-0000-00000000000a\nsecret-db=secret/db-password\nperms-db=0440\ntemplate-conn=p={{ secret/db-password }}\nenv-API_KEY=secret/api-key\nmode=sidecar\nrefresh-interval=30s",
    ]);
}

#[test]
fn sidecar_template() {
    smoke("sidecar_template", sidecar_template::run, &[
        b"host=db;password={{ secret/db-password }};v={{ secret/x/0123456789abcdef }};lit={{ \"{{\" }}",
    ]);
}

/// Seeds after the preface the harness adds: a chunk size, then SETTINGS and a request whose
/// `:authority` is a socket path (indexed, so later blocks can refer to it), its DATA, and a
/// second request split over HEADERS (padded, with priority) and CONTINUATION.
#[test]
fn unix_h2_rewrite() {
    let mut request = vec![0x83, 0x86, 0x44, 5];
    request.extend_from_slice(b"/v1/x");
    request.extend_from_slice(&[0x41, 9]);
    request.extend_from_slice(b"/run/x.s\xff");
    let mut seed = vec![7, 0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100];
    seed.extend_from_slice(&[0, 0, request.len() as u8, 1, 4, 0, 0, 0, 1]);
    seed.extend_from_slice(&request);
    seed.extend_from_slice(&[0, 0, 5, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0]);
    seed.extend_from_slice(&[
        0, 0, 10, 1, 0x28, 0, 0, 0, 3, 2, 0, 0, 0, 0, 16, 0x83, 0xbf, 0, 0,
    ]);
    seed.extend_from_slice(&[0, 0, 2, 9, 4, 0, 0, 0, 3, 0xbe, 0x86]);
    smoke(
        "unix_h2_rewrite",
        unix_h2_rewrite::run,
        &[&seed, &[0], &[1, 0, 0, 0, 1, 4, 0, 0, 0, 1]],
    );
}

#[test]
fn vault_duration() {
    smoke(
        "vault_duration",
        vault_duration::run,
        &[b"90s", b"1m30s", b"2h", b"500ms", b"1h 30m", b"45", b"1day"],
    );
}

#[test]
fn vault_cloud_env() {
    smoke("vault_cloud_env", vault_cloud_env::run, &[
        b"{\"name\":\"AzureStackCloud\",\"activeDirectoryEndpoint\":\"https://login.example.com/\",\"keyVaultDNSSuffix\":\"vault.example.com\"}",
    ]);
}

fn certificate_chain() -> Vec<u8> {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let ca = rcgen::CertificateParams::new(vec!["ca.example".into()])
        .expect("params")
        .self_signed(&ca_key)
        .expect("ca");
    let leaf_key = rcgen::KeyPair::generate().expect("key");
    let issuer = rcgen::Issuer::new(
        rcgen::CertificateParams::new(vec!["ca.example".into()]).expect("params"),
        ca_key,
    );
    let leaf = rcgen::CertificateParams::new(vec!["leaf.example".into()])
        .expect("params")
        .signed_by(&leaf_key, &issuer)
        .expect("leaf");
    format!("{}{}{}", leaf_key.serialize_pem(), ca.pem(), leaf.pem()).into_bytes()
}

#[test]
fn vault_pem_chain() {
    let chain = certificate_chain();
    smoke("vault_pem_chain", vault_pem_chain::run, &[&chain]);
}

#[test]
fn vault_pkcs12() {
    // DER, the outer shape of a PFX; the harness only needs no panic.
    let chain = certificate_chain();
    let der: Vec<u8> = kvmount_vault::pem::parse_pem(&chain)
        .map(|blocks| blocks.last().map(|b| b.der.to_vec()).unwrap_or_default())
        .unwrap_or_default();
    smoke(
        "vault_pkcs12",
        vault_pkcs12::run,
        &[&der, b"0\x82\x01\x00\x02\x01\x03"],
    );
}

#[test]
fn vault_public_key() {
    let mut rsa = vec![0u8];
    rsa.extend(std::iter::repeat_n(0xc5, 256));
    rsa.extend([0, 1, 0, 1]);
    let mut ec = vec![1u8];
    ec.extend(std::iter::repeat_n(0x42, 64));
    smoke("vault_public_key", vault_public_key::run, &[&rsa, &ec]);
}

#[test]
fn volume_paths() {
    smoke(
        "volume_paths",
        volume_paths::run,
        &[b"a/b/c", b"..data", b"a/../b", b"alias/0", b"tls.crt"],
    );
}

/// Unmounts and removes the tmpfs the `volume_writer` harness mounts (it never does: libFuzzer
/// exits without cleanup), also when the run fails.
struct WriterTmpfs(PathBuf);

impl Drop for WriterTmpfs {
    fn drop(&mut self) {
        let _ = kvmount_volume::teardown(&self.0);
    }
}

#[test]
fn volume_writer() {
    let _tmpfs =
        WriterTmpfs(std::env::temp_dir().join(format!("kvmount-fuzz-{}", std::process::id())));
    smoke(
        "volume_writer",
        volume_writer::run,
        &[
            b"\x1aa\0hello\xff\x20b/c\0x\xff\x10..data\0no",
            b"\x40db-password\0v1\xff\x40api-key\0v2",
        ],
    );
}
