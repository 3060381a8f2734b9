//! Clouds: `cloudName` (AzurePublicCloud, AzureUSGovernmentCloud, AzureChinaCloud) and
//! `cloudEnvFileName` for custom clouds (AzureStackCloud), whose file has the JSON fields of
//! the Azure SDK environment files (`activeDirectoryEndpoint`, `keyVaultDNSSuffix`, ...).

use std::collections::HashMap;
use std::io::Read as _;

use serde::Deserialize;

use crate::params::{ParamError, shown};

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
struct EnvFile {
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
    let env: EnvFile = serde_json::from_slice(json).map_err(|e| {
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

fn read_env_file(path: &str) -> Result<Cloud, ParamError> {
    let field = "cloudEnvFileName";
    let quoted = shown(path);
    if !path.starts_with('/') {
        return Err(ParamError::new(
            field,
            format!("{quoted} is not an absolute path on the node"),
        ));
    }
    let file = std::fs::File::open(path)
        .map_err(|e| ParamError::new(field, format!("cannot open {quoted}: {}", e.kind())))?;
    let mut bytes = Vec::new();
    file.take(MAX_ENV_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ParamError::new(field, format!("cannot read {quoted}: {}", e.kind())))?;
    if bytes.len() as u64 > MAX_ENV_FILE_BYTES {
        return Err(ParamError::new(
            field,
            format!("{quoted} is larger than {MAX_ENV_FILE_BYTES} bytes"),
        ));
    }
    parse_env_file(&bytes).map_err(|m| ParamError::new(field, format!("{quoted} {m}")))
}

/// The cloud a class selects. `None`: no `cloudName` (or AzurePublicCloud without a file),
/// i.e. the daemon's own authority and Key Vault suffix.
pub fn from_attributes(attributes: &HashMap<String, String>) -> Result<Option<Cloud>, ParamError> {
    let get = |k: &str| {
        attributes
            .get(k)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    };
    let name = get("cloudName");
    let file = get("cloudEnvFileName");
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
            read_env_file(path).map(Some)
        }
    }
}

#[cfg(test)]
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
        let gov = from_attributes(&attrs(&[("cloudName", "azureusgovernmentcloud")]))
            .expect("gov")
            .expect("some");
        assert_eq!(gov.authority_host, "https://login.microsoftonline.us");
        assert_eq!(gov.keyvault_dns_suffix, "vault.usgovcloudapi.net");
        let cn = from_attributes(&attrs(&[("cloudName", "AzureChinaCloud")]))
            .expect("cn")
            .expect("some");
        assert_eq!(cn.keyvault_dns_suffix, "vault.azure.cn");
        assert_eq!(cn.authority_host, "https://login.chinacloudapi.cn");
        assert_eq!(
            from_attributes(&attrs(&[("cloudName", "AzurePublicCloud")])).expect("public"),
            None
        );
        let err = from_attributes(&attrs(&[("cloudName", "AzureGermanCloud")])).expect_err("x");
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
    fn env_file_paths() {
        let dir = std::env::temp_dir().join(format!("kvmount-cloud-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("cloud.json");
        std::fs::write(
            &path,
            r#"{"name":"AzureStackCloud","activeDirectoryEndpoint":"https://login.stack.local/","keyVaultDNSSuffix":"vault.stack.local"}"#,
        )
        .expect("write");
        let p = path.display().to_string();
        let c = from_attributes(&attrs(&[
            ("cloudName", "AzureStackCloud"),
            ("cloudEnvFileName", &p),
        ]))
        .expect("ok")
        .expect("some");
        assert_eq!(c.keyvault_dns_suffix, "vault.stack.local");
        let e = from_attributes(&attrs(&[("cloudEnvFileName", "relative.json")])).expect_err("rel");
        assert_eq!(e.field, "cloudEnvFileName");
        let e = from_attributes(&attrs(&[("cloudEnvFileName", "/nonexistent/x.json")]))
            .expect_err("missing");
        assert!(e.problem.contains("cannot open"));
        std::fs::write(&path, "canary-not-json").expect("write");
        let e = from_attributes(&attrs(&[("cloudEnvFileName", &p)])).expect_err("bad");
        assert!(!e.to_string().contains("canary"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
