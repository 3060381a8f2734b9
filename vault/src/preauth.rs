//! A vault client's first requests: authorized from the start, and on one connection.
//!
//! The SDK's Key Vault clients learn the token scope from Key Vault's 401 challenge, so each new
//! client (one per identity, vault and object type) would first spend a round trip on a request
//! without a token and send its reads only after it. kvmount knows the scope from the cloud: it
//! is the one the challenge names and the one a pod's proof asks for. [`Preauthorize`] puts a
//! token for it on every GET the SDK sends without one.
//!
//! The challenge did one more thing: it opened the vault's connection while the token exchange
//! ran, and the reads then shared that connection (HTTP/2). Reads that all start at once on an
//! HTTP client with no connection would each open their own. So while a vault's HTTP client has
//! never connected ([`Opening`]), the first GET also sends a copy of itself without a token:
//! Key Vault answers it with its challenge, as it answers the SDK's own first request, and it
//! opens the connection alongside the token exchange. Every GET, the first one's too, waits
//! until that connection is up (or the copy has failed), then goes out with its token. A new
//! client's reads cost one round trip after the connection and the token, not two.
//!
//! A vault that wants another scope answers the token with its challenge; the SDK then
//! authorizes the retry from it (checking the challenge's resource against the vault host), and
//! its later requests carry its own token, which this policy leaves alone. Only GETs: before it
//! knows the challenge the SDK takes the body off a request (to send it only once authorized),
//! so a write keeps the SDK's own flow.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use azure_core::credentials::TokenCredential;
use azure_core::http::headers::AUTHORIZATION;
use azure_core::http::policies::{Policy, PolicyResult};
use azure_core::http::{Context, Method, Request};
use tokio::sync::watch;

/// Where a vault's HTTP client is in opening its first connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// No connection yet, and no request opening one.
    Closed,
    /// A request's unauthorized copy is opening the first connection.
    Opening,
    /// A connection has been established.
    Open,
}

/// Whether a vault's HTTP client has connected: set by its connector ([`NoteOpen`]), read by
/// the [`Preauthorize`] policy of every SDK client built on it.
#[derive(Debug)]
pub(crate) struct Opening(watch::Sender<Stage>);

impl Opening {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self(watch::Sender::new(Stage::Closed)))
    }

    /// A connection is up.
    fn opened(&self) {
        self.0
            .send_if_modified(|stage| std::mem::replace(stage, Stage::Open) != Stage::Open);
    }

    /// Whether this caller is the one to open the first connection (it was closed).
    fn claim(&self) -> bool {
        self.0.send_if_modified(|stage| {
            let claimed = *stage == Stage::Closed;
            if claimed {
                *stage = Stage::Opening;
            }
            claimed
        })
    }

    /// The claimed opening has ended: if it connected nothing, the waiters go on their own, and
    /// a later request opens again.
    fn ended(&self) {
        self.0.send_if_modified(|stage| {
            let failed = *stage == Stage::Opening;
            if failed {
                *stage = Stage::Closed;
            }
            failed
        });
    }

    /// Waits while a request is opening the first connection.
    async fn settled(&self) {
        let mut stage = self.0.subscribe();
        // The sender lives as long as `self`.
        let _ = stage.wait_for(|stage| *stage != Stage::Opening).await;
    }
}

/// A connector layer for a vault's HTTP client that marks its [`Opening`] open once a
/// connection (TCP and TLS) is established.
#[derive(Debug, Clone)]
pub(crate) struct NoteOpen(pub(crate) Arc<Opening>);

impl<S> tower_layer::Layer<S> for NoteOpen {
    type Service = NoteOpenService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        NoteOpenService {
            inner,
            opening: Arc::clone(&self.0),
        }
    }
}

/// The service of [`NoteOpen`].
#[derive(Debug, Clone)]
pub(crate) struct NoteOpenService<S> {
    inner: S,
    opening: Arc<Opening>,
}

impl<S, R> tower_service::Service<R> for NoteOpenService<S>
where
    S: tower_service::Service<R>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let opening = Arc::clone(&self.opening);
        let connect = self.inner.call(request);
        Box::pin(async move {
            let connection = connect.await?;
            opening.opened();
            Ok(connection)
        })
    }
}

/// Authorizes the GETs the SDK sends without a token, with a token for the cloud's Key Vault
/// scope, once the vault's HTTP client has a connection (see the module).
pub(crate) struct Preauthorize {
    pub(crate) credential: Arc<dyn TokenCredential>,
    /// `https://<host>/.default`.
    pub(crate) scope: String,
    pub(crate) opening: Arc<Opening>,
}

impl std::fmt::Debug for Preauthorize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Preauthorize")
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl Preauthorize {
    /// Whether a token for the scope may go to `request`'s host: the check the SDK makes of a
    /// challenge's resource (the host ends with `.` and the scope's host).
    fn covers(&self, request: &Request) -> bool {
        let scope_host = url::Url::parse(&self.scope)
            .ok()
            .and_then(|u| u.host_str().map(str::to_ascii_lowercase));
        match (scope_host, request.url().host_str()) {
            (Some(scope_host), Some(host)) => host
                .to_ascii_lowercase()
                .ends_with(&format!(".{scope_host}")),
            _ => false,
        }
    }
}

#[async_trait::async_trait]
impl Policy for Preauthorize {
    async fn send(
        &self,
        ctx: &Context,
        request: &mut Request,
        next: &[Arc<dyn Policy>],
    ) -> PolicyResult {
        let Some((first, rest)) = next.split_first() else {
            return Err(azure_core::Error::with_message(
                azure_core::error::ErrorKind::Other,
                "kvmount preauthorize policy: no transport after it",
            ));
        };
        if request.method() != Method::Get
            || request.headers().get_optional_str(&AUTHORIZATION).is_some()
            || !self.covers(request)
        {
            return first.send(ctx, request, rest).await;
        }
        let opener = self.opening.claim().then(|| request.clone());
        let open = async {
            if let Some(mut copy) = opener {
                // Its answer (the challenge) is not needed: the connection it opens is.
                let _ = first.send(ctx, &mut copy, rest).await;
                self.opening.ended();
            }
        };
        let authorized = async {
            let scopes = [self.scope.as_str()];
            let (token, ()) = futures::join!(
                self.credential.get_token(&scopes, None),
                self.opening.settled()
            );
            let token = token?;
            request.insert_header(AUTHORIZATION, format!("Bearer {}", token.token.secret()));
            first.send(ctx, request, rest).await
        };
        let ((), response) = futures::join!(open, authorized);
        response
    }
}
