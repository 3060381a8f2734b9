//! Shared helpers: start a mock on 127.0.0.1:0 with a temp TLS dir, build clients that trust only its CA.

#![allow(dead_code)]

use std::sync::Arc;

use azure_core::cloud::{CloudConfiguration, CustomConfiguration};
use azure_core::http::{ClientOptions, Transport};
use azure_identity::{ClientSecretCredential, ClientSecretCredentialOptions};
use azure_security_keyvault_secrets::{SecretClient, SecretClientOptions};
use kvmount_mock_vault::{MockVault, MockVaultConfig, Seed};

pub const TENANT: &str = "00000000-0000-0000-0000-000000000001";
pub const APP_A: &str = "00000000-0000-0000-0000-00000000000a";
pub const APP_B: &str = "00000000-0000-0000-0000-00000000000b";

pub struct Mock {
    pub vault: MockVault,
    pub dir: tempfile::TempDir,
}

pub async fn start(seed: Seed) -> Mock {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = MockVaultConfig::new(dir.path().join("tls"));
    config.seed = seed;
    let vault = kvmount_mock_vault::start(config).await.expect("start mock");
    Mock { vault, dir }
}

pub async fn start_demo() -> Mock {
    start(Seed::demo()).await
}

impl Mock {
    pub fn tls_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("tls")
    }

    /// A reqwest client trusting only the mock CA, resolving `<vault>.vault.localhost` to the mock.
    pub fn http(&self, vaults: &[&str]) -> reqwest::Client {
        let pem = std::fs::read(self.vault.ca_path()).expect("ca");
        let ca = reqwest::Certificate::from_pem(&pem).expect("ca pem");
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut b = reqwest::Client::builder().tls_certs_only([ca]);
        for v in vaults {
            b = b.resolve(
                &format!("{v}.{}", self.vault.dns_suffix()),
                self.vault.addr(),
            );
        }
        b.build().expect("client")
    }

    pub fn client_options(&self) -> ClientOptions {
        let mut custom = CustomConfiguration::default();
        custom.authority_host = self.vault.base_url();
        ClientOptions {
            transport: Some(Transport::new(Arc::new(
                self.http(&["demo", "other", "ghost"]),
            ))),
            cloud: Some(Arc::new(CloudConfiguration::Custom(custom))),
            ..Default::default()
        }
    }

    /// The official SDK client for `vault`, signing in as `client_id` with `secret`.
    pub fn secret_client(&self, vault: &str, client_id: &str, secret: &str) -> SecretClient {
        let credential = ClientSecretCredential::new(
            self.vault.tenant_id(),
            client_id.to_string(),
            secret.to_string().into(),
            Some(ClientSecretCredentialOptions {
                client_options: self.client_options(),
            }),
        )
        .expect("credential");
        SecretClient::new(
            &self.vault.vault_url(vault),
            credential,
            Some(SecretClientOptions {
                client_options: self.client_options(),
                ..Default::default()
            }),
        )
        .expect("secret client")
    }

    /// POSTs a form to the token endpoint; returns status and JSON.
    pub async fn token_request(&self, form: &[(&str, &str)]) -> (u16, serde_json::Value) {
        let url = format!(
            "{}/{}/oauth2/v2.0/token",
            self.vault.base_url(),
            self.vault.tenant_id()
        );
        let mut body = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in form {
            body.append_pair(k, v);
        }
        let resp = self
            .http(&[])
            .post(url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.finish())
            .send()
            .await
            .expect("token request");
        let status = resp.status().as_u16();
        (status, resp.json().await.expect("json"))
    }

    pub async fn access_token(&self, client_id: &str, secret: &str) -> String {
        let scope = format!("{}/.default", self.vault.resource());
        let (status, body) = self
            .token_request(&[
                ("grant_type", "client_credentials"),
                ("client_id", client_id),
                ("client_secret", secret),
                ("scope", &scope),
            ])
            .await;
        assert_eq!(status, 200, "{body}");
        body["access_token"]
            .as_str()
            .expect("access_token")
            .to_string()
    }

    /// GET on the data plane of `vault` with an optional bearer token.
    pub async fn kv_get(
        &self,
        vault: &str,
        path_and_query: &str,
        token: Option<&str>,
    ) -> reqwest::Response {
        let url = format!(
            "{}{}",
            self.vault.vault_url(vault).trim_end_matches('/'),
            path_and_query
        );
        let mut req = self.http(&[vault]).get(url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.expect("request")
    }
}
