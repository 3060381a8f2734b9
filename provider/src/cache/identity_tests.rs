//! Credential proofs and per-identity clients with a [`Connect`] that issues tokens itself
//! (no Entra ID) and paused time: what is proved, when it is proved again, what is shared and
//! what is kept after a failed proof.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use azure_core::credentials::{AccessToken, Secret, TokenCredential, TokenRequestOptions};
use base64::Engine as _;
use kvmount_vault::client::VaultClient;
use kvmount_vault::cloud::Cloud;
use kvmount_vault::params::Auth;
use kvmount_vault::{Connector, ConnectorConfig, ErrorKind, MountParams, VaultError};

use super::config::lock;
use super::connect::Connect;
use super::identity::{Access, Identities};
use super::key::IdentityKey;
use super::tests::mount;

const HOUR: Duration = Duration::from_secs(3600);
/// `identity::PROOF_MARGIN`: a proof stops counting this long before its token expires.
const MARGIN: Duration = Duration::from_secs(120);

/// How the fake Entra ID answers one credential: a token valid this long, or a refusal.
type Answer = Result<Duration, ()>;

/// Builds real clients (no request is made in these tests) and credentials whose tokens come
/// from `answers`, by the credential's secret material; counts token requests per material.
struct FakeConnect {
    connector: Connector,
    answers: Mutex<HashMap<String, Answer>>,
    token_requests: Arc<Mutex<HashMap<String, usize>>>,
    clients_made: AtomicUsize,
    forgotten: Mutex<Vec<String>>,
}

impl FakeConnect {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            connector: Connector::new(ConnectorConfig::default()).expect("connector"),
            answers: Mutex::default(),
            token_requests: Arc::default(),
            clients_made: AtomicUsize::new(0),
            forgotten: Mutex::default(),
        })
    }

    fn answer(&self, material: &str, answer: Answer) {
        lock(&self.answers).insert(material.to_owned(), answer);
    }

    fn token_requests(&self, material: &str) -> usize {
        lock(&self.token_requests)
            .get(material)
            .copied()
            .unwrap_or(0)
    }

    fn clients_made(&self) -> usize {
        self.clients_made.load(Ordering::SeqCst)
    }
}

/// `Identities` owns its `Connect`; the tests keep a handle to the same fake.
struct Shared(Arc<FakeConnect>);

impl Connect for Shared {
    fn credential(&self, params: &MountParams) -> Result<Arc<dyn TokenCredential>, VaultError> {
        let material = match &params.auth {
            Auth::WorkloadIdentity { token, .. } => token.expose(),
            Auth::ServicePrincipal { client_secret, .. } => client_secret.expose(),
            Auth::ManagedIdentity { .. } => "",
        }
        .to_owned();
        let answer = lock(&self.0.answers)
            .get(&material)
            .cloned()
            .unwrap_or(Ok(HOUR));
        Ok(Arc::new(FakeCredential {
            material,
            answer,
            requests: Arc::clone(&self.0.token_requests),
        }))
    }

    fn token_scope(&self, _params: &MountParams) -> String {
        "https://vault.azure.net/.default".to_owned()
    }

    fn client(
        &self,
        cloud: Option<&Cloud>,
        vault: &str,
        credential: Arc<dyn TokenCredential>,
    ) -> Result<VaultClient, VaultError> {
        self.0.clients_made.fetch_add(1, Ordering::SeqCst);
        self.0
            .connector
            .vault_client_in(cloud, vault, credential, None)
    }

    fn forget_vault(&self, vault: &str) {
        lock(&self.0.forgotten).push(vault.to_owned());
    }
}

/// A credential of the fake Entra ID: each token request is counted and answered from its
/// [`Answer`].
#[derive(Debug)]
struct FakeCredential {
    material: String,
    answer: Answer,
    requests: Arc<Mutex<HashMap<String, usize>>>,
}

#[async_trait::async_trait]
impl TokenCredential for FakeCredential {
    async fn get_token(
        &self,
        _scopes: &[&str],
        _options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        *lock(&self.requests)
            .entry(self.material.clone())
            .or_default() += 1;
        match self.answer {
            Ok(lifetime) => Ok(AccessToken::new(
                Secret::new("entra-token"),
                time::OffsetDateTime::now_utc() + lifetime,
            )),
            Err(()) => Err(azure_core::Error::with_message(
                azure_core::error::ErrorKind::Credential,
                "AADSTS7000215: invalid client secret",
            )),
        }
    }
}

fn identities() -> (Identities, Arc<FakeConnect>) {
    let fake = FakeConnect::new();
    (Identities::new(Box::new(Shared(Arc::clone(&fake)))), fake)
}

/// A service principal `app` whose client secret is `secret`.
fn service_principal(secret: &str) -> MountParams {
    mount(
        "demo",
        &[],
        &[("clientid", "app"), ("clientsecret", secret)],
    )
}

/// A workload identity `app` whose service-account token (an unsigned JWT, as the fake
/// Entra ID does not check it) expires at `exp` (seconds since the epoch).
fn workload_identity(exp: u64) -> (MountParams, String) {
    let part = |json: String| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json);
    let jwt = format!(
        "{}.{}.signature",
        part(r#"{"alg":"RS256"}"#.to_owned()),
        part(format!(
            r#"{{"sub":"system:serviceaccount:ns:app","exp":{exp}}}"#
        ))
    );
    let tokens = format!(r#"{{"api://AzureADTokenExchange":{{"token":"{jwt}"}}}}"#);
    let params = mount(
        "demo",
        &[
            ("clientID", "app"),
            ("csi.storage.k8s.io/serviceAccount.tokens", &tokens),
        ],
        &[],
    );
    (params, jwt)
}

/// The first pod of an identity: new clients, the proof, and the clients kept.
async fn first_pod(identities: &Identities, params: &MountParams) -> Arc<VaultClient> {
    let Access::New(new) = identities.access(params, &[]).await.expect("access") else {
        panic!("a new identity gets new clients");
    };
    let client = Arc::clone(&new.client);
    let valid_until = identities
        .prove_new(params, &new, &[])
        .await
        .expect("proved");
    identities.keep_new(params, new, valid_until);
    client
}

/// A later pod: the identity's clients, once its credentials are proved.
async fn known(
    identities: &Identities,
    params: &MountParams,
) -> Result<Arc<VaultClient>, VaultError> {
    match identities.access(params, &[]).await? {
        Access::Known(client) => Ok(client),
        Access::New(_) => panic!("a known identity gets its clients"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_proof_holds_until_shortly_before_its_token_expires() {
    let (identities, fake) = identities();
    let pod = service_principal("s1");
    let client = first_pod(&identities, &pod).await;
    assert_eq!(fake.token_requests("s1"), 1);

    // Until two minutes before the token's expiry the proof stands: no token request.
    tokio::time::advance(HOUR - MARGIN - Duration::from_secs(5)).await;
    assert!(Arc::ptr_eq(
        &known(&identities, &pod).await.expect("known"),
        &client
    ));
    assert_eq!(fake.token_requests("s1"), 1, "still proved");

    // Then the same credentials are proved again; the identity keeps its clients.
    tokio::time::advance(Duration::from_secs(10)).await;
    assert!(Arc::ptr_eq(
        &known(&identities, &pod).await.expect("known"),
        &client
    ));
    assert_eq!(fake.token_requests("s1"), 2, "proved again");
    assert_eq!(fake.clients_made(), 1);
}

#[tokio::test(start_paused = true)]
async fn every_credential_is_proved_before_it_shares_an_identitys_clients() {
    let (identities, fake) = identities();
    let client = first_pod(&identities, &service_principal("s1")).await;

    // Another secret of the same identity is proved once, then shares the clients.
    let other = service_principal("s2");
    for _ in 0..3 {
        let shared = known(&identities, &other).await.expect("proved");
        assert!(Arc::ptr_eq(&shared, &client));
    }
    assert_eq!(fake.token_requests("s2"), 1);

    // A refused secret gets nothing, and no proof is recorded for it: the next pod with it is
    // refused by Entra ID again, not served from a remembered answer.
    fake.answer("wrong", Err(()));
    let wrong = service_principal("wrong");
    for round in 1..=2 {
        let error = known(&identities, &wrong).await.expect_err("refused");
        assert_ne!(error.kind, ErrorKind::Internal, "{error}");
        assert_eq!(fake.token_requests("wrong"), round);
    }
    assert_eq!(
        fake.clients_made(),
        1,
        "one set of clients for the identity"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_first_proof_keeps_no_clients() {
    let (identities, fake) = identities();
    fake.answer("wrong", Err(()));
    let wrong = service_principal("wrong");
    let Access::New(new) = identities.access(&wrong, &[]).await.expect("access") else {
        panic!("a new identity gets new clients");
    };
    assert!(identities.prove_new(&wrong, &new, &[]).await.is_err());
    drop(new);
    let key = IdentityKey::of_mount(&wrong);
    assert!(identities.client_of(&key).is_none(), "not kept");

    // The next pod of the identity starts over, with its own credentials.
    let client = first_pod(&identities, &service_principal("s1")).await;
    assert!(Arc::ptr_eq(
        &identities.client_of(&key).expect("kept"),
        &client
    ));
    assert_eq!(fake.clients_made(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_proof_lasts_no_longer_than_the_service_account_token() {
    let (identities, fake) = identities();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    // Entra's token lasts an hour, the pod's own token five minutes.
    let (pod, jwt) = workload_identity(now + 300);
    first_pod(&identities, &pod).await;
    tokio::time::advance(Duration::from_secs(290)).await;
    known(&identities, &pod).await.expect("still proved");
    assert_eq!(fake.token_requests(&jwt), 1);
    tokio::time::advance(Duration::from_secs(20)).await;
    known(&identities, &pod).await.expect("proved again");
    assert_eq!(
        fake.token_requests(&jwt),
        2,
        "the expired token was proved again"
    );
}

#[tokio::test(start_paused = true)]
async fn proofs_idle_longer_than_the_ttl_are_swept() {
    let (identities, fake) = identities();
    let pod = service_principal("s1");
    first_pod(&identities, &pod).await;
    let ttl = Duration::from_secs(60);
    tokio::time::advance(Duration::from_secs(30)).await;
    identities.sweep(ttl);
    known(&identities, &pod).await.expect("known");
    assert_eq!(fake.token_requests("s1"), 1, "used within the ttl: kept");
    tokio::time::advance(Duration::from_secs(61)).await;
    identities.sweep(ttl);
    known(&identities, &pod).await.expect("known");
    assert_eq!(
        fake.token_requests("s1"),
        2,
        "idle past the ttl: proved again"
    );
}

#[tokio::test(start_paused = true)]
async fn erasing_a_vault_reconnects_live_identities_and_forgets_the_rest() {
    let (identities, fake) = identities();
    let pod = service_principal("s1");
    let key = IdentityKey::of_mount(&pod);
    let client = first_pod(&identities, &pod).await;

    // Still used: new connections (new clients), the same identity.
    identities.close_vaults(
        HashSet::from(["demo".to_owned()]),
        &HashSet::from([key.clone()]),
    );
    let reconnected = identities.client_of(&key).expect("kept");
    assert!(!Arc::ptr_eq(&reconnected, &client));
    assert_eq!(*lock(&fake.forgotten), ["demo"]);
    assert_eq!(fake.clients_made(), 2);

    // No entry left: the identity's clients and credential go.
    identities.close_vaults(HashSet::from(["demo".to_owned()]), &HashSet::new());
    assert!(identities.client_of(&key).is_none());
    // Its proof stays (it holds no credential): the next pod is not proved again, and gets
    // new clients.
    let again = known(&identities, &pod).await.expect("known");
    assert!(!Arc::ptr_eq(&again, &reconnected));
    assert_eq!(fake.token_requests("s1"), 1);
}
