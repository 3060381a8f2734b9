//! Clouds: `cloudName` (AzurePublicCloud, AzureUSGovernmentCloud, AzureChinaCloud) and
//! `cloudEnvFileName` for custom clouds (AzureStackCloud), whose file has the JSON fields of
//! the Azure SDK environment files (`activeDirectoryEndpoint`, `keyVaultDNSSuffix`, ...).

use std::collections::HashMap;
use std::io::Read as _;
use std::path::{Component, Path};

use rustix::fs::{Mode, OFlags, ResolveFlags};

use serde::Deserialize;

use crate::error::{ParamError, shown};

/// Largest environment file read.
const MAX_ENV_FILE_BYTES: u64 = 64 * 1024;

/// Where Entra ID and Key Vault are for one cloud.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Cloud {
    /// The cloud's name, as the class or the environment file spells it.
    pub name: String,
    /// Entra authority, an https URL without trailing slash.
    pub authority_host: String,
    /// Key Vault DNS suffix: vault `NAME` is `https://NAME.<suffix>/`.
    pub keyvault_dns_suffix: String,
}

/// The clouds `cloudName` knows without an environment file: (name, authority, Key Vault suffix).
pub const WELL_KNOWN: [(&str, &str, &str); 3] = [
    (
        "AzurePublicCloud",
        "https://login.microsoftonline.com",
        "vault.azure.net",
    ),
    (
        "AzureUSGovernmentCloud",
        "https://login.microsoftonline.us",
        "vault.usgovcloudapi.net",
    ),
    (
        "AzureChinaCloud",
        "https://login.chinacloudapi.cn",
        "vault.azure.cn",
    ),
];

/// The cloud named `name` (case-insensitive), if it is a well-known one.
pub fn well_known(name: &str) -> Option<Cloud> {
    WELL_KNOWN
        .iter()
        .find(|(n, _, _)| n.eq_ignore_ascii_case(name))
        .map(|(n, a, s)| Cloud {
            name: (*n).to_owned(),
            authority_host: (*a).to_owned(),
            keyvault_dns_suffix: (*s).to_owned(),
        })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EnvFileJson {
    name: Option<String>,
    active_directory_endpoint: Option<String>,
    #[serde(rename = "keyVaultDNSSuffix")]
    key_vault_dns_suffix: Option<String>,
    /// Every other field of the SDK environment files is accepted and ignored.
    #[serde(flatten)]
    _other: HashMap<String, serde_json::Value>,
}

/// Parses an environment file. The error says what is missing or wrong, never repeats the file.
pub fn parse_env_file(json: &[u8]) -> Result<Cloud, String> {
    let env: EnvFileJson = serde_json::from_slice(json).map_err(|e| {
        format!(
            "is not a JSON environment file ({} at line {} column {}); expected fields activeDirectoryEndpoint and keyVaultDNSSuffix",
            match e.classify() {
                serde_json::error::Category::Data => "a field has the wrong type",
                serde_json::error::Category::Eof => "unexpected end",
                _ => "syntax error",
            },
            e.line(),
            e.column()
        )
    })?;
    let authority = env
        .active_directory_endpoint
        .map(|a| a.trim().trim_end_matches('/').to_owned())
        .filter(|a| !a.is_empty())
        .ok_or("has no activeDirectoryEndpoint (the Entra authority, e.g. https://login.microsoftonline.com/)")?;
    match url::Url::parse(&authority) {
        Ok(u) if u.scheme() == "https" && u.host_str().is_some() && u.query().is_none() => {}
        _ => return Err("activeDirectoryEndpoint is not an https URL".into()),
    }
    let suffix = env
        .key_vault_dns_suffix
        .map(|s| s.trim().trim_start_matches('.').to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .ok_or("has no keyVaultDNSSuffix (e.g. vault.azure.net)")?;
    let ok = suffix.len() <= 200
        && suffix.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !ok {
        return Err("keyVaultDNSSuffix is not a DNS name".into());
    }
    Ok(Cloud {
        name: env
            .name
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(|| "AzureStackCloud".into()),
        authority_host: authority,
        keyvault_dns_suffix: suffix,
    })
}

const ENV_FILE_FIELD: &str = "cloudEnvFileName";

/// The file on the node a class names (`cloudEnvFileName`), if any: [`read_env_file`] reads it.
pub fn node_file(attributes: &HashMap<String, String>) -> Option<&str> {
    attributes
        .get(ENV_FILE_FIELD)
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
}

/// How [`from_attributes`] gets a class's environment file.
#[derive(Debug)]
pub enum EnvFile<'a> {
    /// Reads it now, beneath this directory (the daemon's `--cloud-env-dir`; `None` refuses
    /// every file). Reading may block on the file system.
    Beneath(Option<&'a Path>),
    /// The caller read it already ([`read_env_file`] on a blocking thread, or a copy it keeps).
    Read(Result<Cloud, ParamError>),
}

/// Reads the environment file `path` names, which must be a regular file under `dir` (the
/// daemon's `--cloud-env-dir`) reached without a symlink. A class author controls `path`, so
/// every file that cannot be used gets the same answer, naming the field only: the answer
/// tells nothing about which node paths exist or what they hold. The reason goes to the
/// daemon's log for the node's operator.
pub fn read_env_file(path: &str, dir: Option<&Path>) -> Result<Cloud, ParamError> {
    let Some(dir) = dir else {
        return Err(ParamError::new(
            ENV_FILE_FIELD,
            "custom cloud files are not enabled on this node; its operator names their directory with the daemon's --cloud-env-dir (chart value cloudEnvDir)",
        ));
    };
    load_env_file(path, dir).map_err(|reason| {
        tracing::warn!(reason, "{ENV_FILE_FIELD}: a class names a file that cannot be used");
        ParamError::new(
            ENV_FILE_FIELD,
            format!(
                "cannot be used; accepted: the absolute path of a regular file under {} holding an Azure environment JSON (activeDirectoryEndpoint, keyVaultDNSSuffix) of at most {MAX_ENV_FILE_BYTES} bytes",
                dir.display()
            ),
        )
    })
}

/// [`read_env_file`]'s work: opened beneath `dir` with no symlink, no other mount and without
/// blocking (a FIFO or a terminal device opens at once, then is refused as not a regular
/// file); at most [`MAX_ENV_FILE_BYTES`] read.
fn load_env_file(path: &str, dir: &Path) -> Result<Cloud, &'static str> {
    let relative = Path::new(path)
        .strip_prefix(dir)
        .map_err(|_| "not under --cloud-env-dir")?;
    if relative.as_os_str().is_empty()
        || !relative
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
    {
        return Err("not a plain path under --cloud-env-dir");
    }
    let dir_fd = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|_| "--cloud-env-dir cannot be opened")?;
    let fd = rustix::fs::openat2(
        &dir_fd,
        relative,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOFOLLOW | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH
            | ResolveFlags::NO_SYMLINKS
            | ResolveFlags::NO_MAGICLINKS
            | ResolveFlags::NO_XDEV,
    )
    .map_err(|_| "cannot be opened beneath --cloud-env-dir without a symlink")?;
    let stat = rustix::fs::fstat(&fd).map_err(|_| "cannot be inspected")?;
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::RegularFile {
        return Err("not a regular file");
    }
    if u64::try_from(stat.st_size).unwrap_or(u64::MAX) > MAX_ENV_FILE_BYTES {
        return Err("larger than the limit");
    }
    let mut bytes = Vec::new();
    std::fs::File::from(fd)
        .take(MAX_ENV_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|_| "cannot be read")?;
    if bytes.len() as u64 > MAX_ENV_FILE_BYTES {
        return Err("larger than the limit");
    }
    parse_env_file(&bytes).map_err(|_| "not a valid environment file")
}

/// The cloud a class selects. `None`: no `cloudName` (or AzurePublicCloud without a file),
/// i.e. the daemon's own authority and Key Vault suffix. A `cloudEnvFileName` comes from
/// `env_file`: async callers read it first on a blocking thread (see [`node_file`]).
pub fn from_attributes(
    attributes: &HashMap<String, String>,
    env_file: EnvFile<'_>,
) -> Result<Option<Cloud>, ParamError> {
    let get = |k: &str| {
        attributes
            .get(k)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    };
    let name = get("cloudName");
    let file = node_file(attributes);
    match (name, file) {
        (None, None) => Ok(None),
        (Some(n), None) if n.eq_ignore_ascii_case("AzurePublicCloud") => Ok(None),
        (Some(n), None) => well_known(n).map(Some).ok_or_else(|| {
            ParamError::new(
                "cloudName",
                format!(
                    "{} is not a known cloud; accepted: AzurePublicCloud, AzureUSGovernmentCloud, AzureChinaCloud, or AzureStackCloud with cloudEnvFileName",
                    shown(n)
                ),
            )
        }),
        (n, Some(path)) => {
            if let Some(n) = n
                && well_known(n).is_some()
            {
                return Err(ParamError::new(
                    "cloudEnvFileName",
                    format!(
                        "is only read for custom clouds; cloudName {} is a well-known cloud (set cloudName: AzureStackCloud, or leave cloudEnvFileName out)",
                        shown(n)
                    ),
                ));
            }
            match env_file {
                EnvFile::Beneath(dir) => read_env_file(path, dir).map(Some),
                EnvFile::Read(read) => read.map(Some),
            }
        }
    }
}

#[cfg(test)]
#[allow(
    clippy::disallowed_methods,
    reason = "a test writes its own fixtures (test directories, never secrets)"
)]
mod tests {
    use super::*;

    fn attrs(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn well_known_clouds() {
        let gov = from_attributes(
            &attrs(&[("cloudName", "azureusgovernmentcloud")]),
            EnvFile::Beneath(None),
        )
        .expect("gov")
        .expect("some");
        assert_eq!(gov.authority_host, "https://login.microsoftonline.us");
        assert_eq!(gov.keyvault_dns_suffix, "vault.usgovcloudapi.net");
        let cn = from_attributes(
            &attrs(&[("cloudName", "AzureChinaCloud")]),
            EnvFile::Beneath(None),
        )
        .expect("cn")
        .expect("some");
        assert_eq!(cn.keyvault_dns_suffix, "vault.azure.cn");
        assert_eq!(cn.authority_host, "https://login.chinacloudapi.cn");
        assert_eq!(
            from_attributes(
                &attrs(&[("cloudName", "AzurePublicCloud")]),
                EnvFile::Beneath(None)
            )
            .expect("public"),
            None
        );
        let err = from_attributes(
            &attrs(&[("cloudName", "AzureGermanCloud")]),
            EnvFile::Beneath(None),
        )
        .expect_err("x");
        assert_eq!(err.field, "cloudName");
        assert!(err.problem.contains("AzureChinaCloud"));
    }

    #[test]
    fn env_files() {
        let c = parse_env_file(
            br#"{"name":"AzureStackCloud","activeDirectoryEndpoint":"https://login.stack.local/","keyVaultDNSSuffix":"vault.stack.local","resourceManagerEndpoint":"https://management.stack.local/","resourceIdentifiers":{"keyVault":"https://vault.stack.local"}}"#,
        )
        .expect("valid");
        assert_eq!(c.authority_host, "https://login.stack.local");
        assert_eq!(c.keyvault_dns_suffix, "vault.stack.local");
        for bad in [
            &br#"{"activeDirectoryEndpoint":"http://x/","keyVaultDNSSuffix":"v.x"}"#[..],
            br#"{"keyVaultDNSSuffix":"v.x"}"#,
            br#"{"activeDirectoryEndpoint":"https://x/"}"#,
            br#"{"activeDirectoryEndpoint":"https://x/","keyVaultDNSSuffix":"a/b"}"#,
            br#"canary-secret"#,
        ] {
            let e = parse_env_file(bad).expect_err("bad");
            assert!(!e.contains("canary"));
        }
    }

    #[test]
    fn env_files_are_read_only_beneath_the_configured_dir() {
        let root = tempfile::tempdir().expect("dir");
        let dir = root.path().join("clouds");
        std::fs::create_dir_all(dir.join("sub")).expect("dir");
        let good = r#"{"name":"AzureStackCloud","activeDirectoryEndpoint":"https://login.stack.local/","keyVaultDNSSuffix":"vault.stack.local"}"#;
        std::fs::write(dir.join("cloud.json"), good).expect("write");
        std::fs::write(dir.join("sub/cloud.json"), good).expect("write");
        std::fs::write(root.path().join("outside.json"), good).expect("write");
        std::fs::write(dir.join("canary.json"), "canary-not-json").expect("write");
        std::fs::write(
            dir.join("big.json"),
            vec![b' '; MAX_ENV_FILE_BYTES as usize + 1],
        )
        .expect("write");
        std::os::unix::fs::symlink(root.path().join("outside.json"), dir.join("link.json"))
            .expect("link");
        std::os::unix::fs::symlink(root.path(), dir.join("up")).expect("link");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            dir.join("fifo"),
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .expect("fifo");
        let at = |name: &str| dir.join(name).display().to_string();
        let read = |path: &str, env_dir: Option<&Path>| {
            from_attributes(
                &attrs(&[("cloudName", "AzureStackCloud"), ("cloudEnvFileName", path)]),
                EnvFile::Beneath(env_dir),
            )
        };
        for name in ["cloud.json", "sub/cloud.json"] {
            let cloud = read(&at(name), Some(&dir)).expect("ok").expect("some");
            assert_eq!(cloud.keyvault_dns_suffix, "vault.stack.local");
        }
        // Not enabled on this node: said so, whatever the path.
        let off = read(&at("cloud.json"), None).expect_err("no dir");
        assert!(off.problem.contains("--cloud-env-dir"), "{off}");
        // Every file that cannot be used gets one answer, which names no path but the dir.
        let outside = root.path().join("outside.json").display().to_string();
        let dotdot = format!("{}/../outside.json", dir.display());
        let answers: Vec<String> = [
            outside.as_str(),
            &dotdot,
            &at("link.json"),
            &at("up/outside.json"),
            &at("missing.json"),
            &at("sub"),
            &at("fifo"),
            &at("big.json"),
            &at("canary.json"),
            "relative.json",
            "/dev/ptmx",
            "/proc/self/environ",
        ]
        .iter()
        .map(|path| {
            let err = read(path, Some(&dir)).expect_err(path);
            assert_eq!(err.field, "cloudEnvFileName");
            err.problem
        })
        .collect();
        assert!(answers.iter().all(|a| a == &answers[0]), "{answers:#?}");
        assert!(!answers[0].contains("canary") && !answers[0].contains("outside"));
    }
}
