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
//! no connection ([`Opening`]), one GET opens it and the others wait until it is up (its
//! connector reports it) or that GET has failed; then they go out on it:
//! - when the token is not at hand yet (a new identity, whose token exchange is under way), the
//!   opening GET sends a copy of itself without a token first. Key Vault answers it with its
//!   challenge, as it answers the SDK's own first request, and it opens the connection
//!   alongside the token exchange. A new client's reads cost one round trip after the
//!   connection and the token, not two;
//! - when the token is at hand (a connection closed after [`POOL_IDLE`] without requests), the
//!   opening GET itself goes first, with its token: no extra request.
//!
//! A vault that wants another scope answers the token with its challenge; the SDK then
//! authorizes the retry from it (checking the challenge's resource against the vault host), and
//! its later requests carry its own token, which this policy leaves alone. Only GETs: before it
//! knows the challenge the SDK takes the body off a request (to send it only once authorized),
//! so a write keeps the SDK's own flow.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use azure_core::credentials::{AccessToken, TokenCredential};
use azure_core::http::headers::AUTHORIZATION;
use azure_core::http::policies::{Policy, PolicyResult};
use azure_core::http::{Context, Method, Request};
use futures::future::Either;

use crate::pipeline::next_policy;
use tokio::sync::watch;

/// How long a vault's HTTP client keeps a connection that has no requests.
pub(crate) const POOL_IDLE: Duration = Duration::from_secs(90);

/// Where a vault's HTTP client is in opening a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// No connection, and no request opening one.
    Closed,
    /// A request is opening the connection.
    Opening,
    /// A connection is up (as far as anyone knows: see [`Opening::expire_idle`]).
    Open,
}

/// Whether a vault's HTTP client has a connection: set by its connector ([`NoteOpen`]) and by
/// the requests that open one, read by the [`Preauthorize`] policy of every SDK client built on
/// it.
#[derive(Debug)]
pub(crate) struct Opening {
    stage: watch::Sender<Stage>,
    activity: Mutex<Activity>,
    /// [`POOL_IDLE`], shorter in tests.
    idle: Duration,
}

/// The requests of a vault's HTTP client.
#[derive(Debug)]
struct Activity {
    in_flight: usize,
    /// When the last one ended.
    last: Instant,
}

impl Opening {
    pub(crate) fn new() -> Arc<Self> {
        Self::with_idle(POOL_IDLE)
    }

    fn with_idle(idle: Duration) -> Arc<Self> {
        Arc::new(Self {
            stage: watch::Sender::new(Stage::Closed),
            activity: Mutex::new(Activity {
                in_flight: 0,
                last: Instant::now(),
            }),
            idle,
        })
    }

    #[cfg(test)]
    fn stage(&self) -> Stage {
        *self.stage.borrow()
    }

    fn activity(&self) -> std::sync::MutexGuard<'_, Activity> {
        self.activity
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Moves the stage from `from` to `to`, waking the waiters; false if it was not at `from`.
    fn shift(&self, from: Stage, to: Stage) -> bool {
        self.stage.send_if_modified(|stage| {
            let moved = *stage == from;
            if moved {
                *stage = to;
            }
            moved
        })
    }

    /// A connection is up.
    fn opened(&self) {
        self.stage
            .send_if_modified(|stage| std::mem::replace(stage, Stage::Open) != Stage::Open);
    }

    /// After [`POOL_IDLE`] with no request, the pool has closed its connection: the next GET
    /// opens one again.
    fn expire_idle(&self) {
        let activity = self.activity();
        if activity.in_flight == 0 && activity.last.elapsed() >= self.idle {
            self.shift(Stage::Open, Stage::Closed);
        }
    }

    /// A request failed without an answer: the connection may be gone, the next GET opens
    /// one.
    fn lost(&self) {
        self.shift(Stage::Open, Stage::Closed);
    }

    /// Counts a request in flight until the guard drops.
    fn begin(&self) -> InFlight<'_> {
        self.activity().in_flight += 1;
        InFlight(self)
    }

    /// The caller's claim to open the connection, if it was closed.
    fn claim(&self) -> Option<Claim<'_>> {
        // Built only when claimed: dropping a claim ends the opening.
        self.shift(Stage::Closed, Stage::Opening).then(|| Claim {
            opening: self,
            answered: false,
        })
    }

    /// Waits while a request is opening the connection.
    async fn settled(&self) {
        let mut stage = self.stage.subscribe();
        // The sender lives as long as `self`.
        let _ = stage.wait_for(|stage| *stage != Stage::Opening).await;
    }
}

/// A request in flight (see [`Opening::begin`]).
struct InFlight<'a>(&'a Opening);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut activity = self.0.activity();
        activity.in_flight -= 1;
        activity.last = Instant::now();
    }
}

/// The claim of the request that opens the connection. When it ends (answered, failed, or
/// dropped unfinished), the waiters go: on the connection if the vault answered, else each on
/// its own, and a later GET opens again.
struct Claim<'a> {
    opening: &'a Opening,
    answered: bool,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let next = if self.answered {
            Stage::Open
        } else {
            Stage::Closed
        };
        self.opening.shift(Stage::Opening, next);
    }
}

/// A connector layer for a vault's HTTP client that marks its [`Opening`] open once a
/// connection (TCP and TLS) is established. hyper-util puts the connection in its pool right
/// after the connector returns, in the same poll of the same task (its HTTP/2 handshake does
/// not wait for the server): on the current-thread runtime of the daemon and the agent the
/// waiters it wakes run only after that. On a multi-thread runtime one may run in between and
/// open a second connection, which costs a handshake, nothing else.
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
/// scope, one connection per vault host (see the module).
pub(crate) struct Preauthorize {
    credential: Arc<dyn TokenCredential>,
    /// `https://<host>/.default`.
    scope: String,
    /// `.` and the scope's host, lowercase: what a request's host must end with.
    host_suffix: Option<String>,
    opening: Arc<Opening>,
}

impl std::fmt::Debug for Preauthorize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Preauthorize")
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl Preauthorize {
    /// The policy for the clients of one vault host, with tokens for `scope` from
    /// `credential`.
    pub(crate) fn new(
        credential: Arc<dyn TokenCredential>,
        scope: String,
        opening: Arc<Opening>,
    ) -> Self {
        let host_suffix = url::Url::parse(&scope)
            .ok()
            .and_then(|u| u.host_str().map(|h| format!(".{}", h.to_ascii_lowercase())));
        Self {
            credential,
            scope,
            host_suffix,
            opening,
        }
    }

    /// Whether a token for the scope may go to `request`'s host: the check the SDK makes of a
    /// challenge's resource (the host ends with `.` and the scope's host).
    fn covers(&self, request: &Request) -> bool {
        match (&self.host_suffix, request.url().host_str()) {
            (Some(suffix), Some(host)) => host.to_ascii_lowercase().ends_with(suffix.as_str()),
            _ => false,
        }
    }
}

fn authorize(request: &mut Request, token: &AccessToken) {
    request.insert_header(AUTHORIZATION, format!("Bearer {}", token.token.secret()));
}

#[async_trait::async_trait]
impl Policy for Preauthorize {
    async fn send(
        &self,
        ctx: &Context,
        request: &mut Request,
        next: &[Arc<dyn Policy>],
    ) -> PolicyResult {
        let (first, rest) = next_policy("preauthorize", next)?;
        if request.method() != Method::Get
            || request.headers().get_optional_str(&AUTHORIZATION).is_some()
            || !self.covers(request)
        {
            let _in_flight = self.opening.begin();
            return first.send(ctx, request, rest).await;
        }
        self.opening.expire_idle();
        let _in_flight = self.opening.begin();
        let scopes = [self.scope.as_str()];
        let mut token = std::pin::pin!(self.credential.get_token(&scopes, None));
        let at_hand = futures::poll!(token.as_mut());
        let response = match (self.opening.claim(), at_hand) {
            // The token is at hand: this GET opens the connection itself.
            (Some(mut claim), Poll::Ready(token)) => {
                authorize(request, &token?);
                let response = first.send(ctx, request, rest).await;
                claim.answered = response.is_ok();
                response
            }
            // The token is on its way: a copy without one opens the connection meanwhile.
            (Some(claim), Poll::Pending) => {
                let mut copy = request.clone();
                let open = std::pin::pin!(async move {
                    let mut claim = claim;
                    // Its answer (the challenge) is not needed: the connection it opens is.
                    claim.answered = first.send(ctx, &mut copy, rest).await.is_ok();
                });
                let authorized = std::pin::pin!(async {
                    let (token, ()) = futures::join!(token, self.opening.settled());
                    authorize(request, &token?);
                    first.send(ctx, request, rest).await
                });
                match futures::future::select(authorized, open).await {
                    // Done first (a token refused at once, say): the copy is dropped unanswered.
                    Either::Left((response, _copy)) => response,
                    Either::Right(((), authorized)) => authorized.await,
                }
            }
            (None, Poll::Ready(token)) => {
                let token = token?;
                self.opening.settled().await;
                authorize(request, &token);
                first.send(ctx, request, rest).await
            }
            (None, Poll::Pending) => {
                let (token, ()) = futures::join!(token, self.opening.settled());
                authorize(request, &token?);
                first.send(ctx, request, rest).await
            }
        };
        if response.as_ref().is_err_and(|e| {
            matches!(
                e.kind(),
                azure_core::error::ErrorKind::Io | azure_core::error::ErrorKind::Connection
            )
        }) {
            // A connection that failed (one the vault closed, say) may be the one everybody
            // counted on: the next GET opens again.
            self.opening.lost();
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_request_opens_and_the_others_wait_for_it() {
        let opening = Opening::new();
        let claim = opening.claim().expect("closed: the first claims");
        assert!(opening.claim().is_none(), "only one opens");
        let waiter = opening.settled();
        tokio::pin!(waiter);
        assert!(futures::poll!(waiter.as_mut()).is_pending());
        opening.opened();
        assert!(
            futures::poll!(waiter.as_mut()).is_ready(),
            "the connection is up"
        );
        drop(claim);
        assert_eq!(opening.stage(), Stage::Open);
        assert!(opening.claim().is_none(), "open: nobody opens again");
    }

    #[tokio::test]
    async fn an_opening_that_fails_or_is_dropped_lets_the_others_go_and_the_next_open() {
        let opening = Opening::new();
        let claim = opening.claim().expect("claim");
        let waiter = opening.settled();
        tokio::pin!(waiter);
        assert!(futures::poll!(waiter.as_mut()).is_pending());
        drop(claim); // not answered: a failure, or a caller that gave up
        assert!(futures::poll!(waiter.as_mut()).is_ready());
        assert_eq!(opening.stage(), Stage::Closed);
        let mut claim = opening.claim().expect("the next request opens again");
        claim.answered = true; // it reused a connection the connector never reported
        drop(claim);
        assert_eq!(opening.stage(), Stage::Open);
    }

    #[test]
    fn an_idle_client_opens_again_but_not_while_a_request_is_in_flight() {
        let opening = Opening::with_idle(Duration::ZERO);
        opening.opened();
        let in_flight = opening.begin();
        opening.expire_idle();
        assert_eq!(opening.stage(), Stage::Open, "a request in flight keeps it");
        drop(in_flight);
        opening.expire_idle();
        assert_eq!(opening.stage(), Stage::Closed);

        let opening = Opening::new();
        opening.opened();
        drop(opening.begin());
        opening.expire_idle();
        assert_eq!(opening.stage(), Stage::Open, "not idle for long");
    }

    /// A credential whose tokens come after `delay` (never, for `None`).
    #[derive(Debug)]
    struct Tokens(Option<Duration>);

    #[async_trait::async_trait]
    impl TokenCredential for Tokens {
        async fn get_token(
            &self,
            _: &[&str],
            _: Option<azure_core::credentials::TokenRequestOptions<'_>>,
        ) -> azure_core::Result<AccessToken> {
            match self.0 {
                Some(delay) => tokio::time::sleep(delay).await,
                None => std::future::pending().await,
            }
            Ok(AccessToken::new(
                azure_core::credentials::Secret::new("token"),
                azure_core::time::OffsetDateTime::now_utc() + azure_core::time::Duration::hours(1),
            ))
        }
    }

    /// A vault behind the policy: the first request connects (after `connect`; never, for
    /// `None`) and marks the client open, as the connector does. Each request is recorded
    /// (with a token or not, the client open or not when it arrived) and answered after
    /// `delay`: 401 without a token, 200 with one.
    #[derive(Debug)]
    struct FakeVault {
        opening: Arc<Opening>,
        connect: Option<Duration>,
        delay: Duration,
        connecting: std::sync::atomic::AtomicBool,
        sent: Mutex<Vec<(bool, bool)>>,
    }

    #[async_trait::async_trait]
    impl Policy for FakeVault {
        async fn send(
            &self,
            _: &Context,
            request: &mut Request,
            _: &[Arc<dyn Policy>],
        ) -> PolicyResult {
            use std::sync::atomic::Ordering;
            if !self.connecting.swap(true, Ordering::SeqCst) {
                match self.connect {
                    Some(connect) => tokio::time::sleep(connect).await,
                    None => std::future::pending().await,
                }
                self.opening.opened();
            }
            let authorized = request.headers().get_optional_str(&AUTHORIZATION).is_some();
            let open = *self.opening.stage.borrow() == Stage::Open;
            self.sent.lock().expect("sent").push((authorized, open));
            tokio::time::sleep(self.delay).await;
            let status = if authorized { 200 } else { 401 };
            Ok(azure_core::http::AsyncRawResponse::from_bytes(
                azure_core::http::StatusCode::from(status),
                azure_core::http::headers::Headers::new(),
                Vec::<u8>::new(),
            ))
        }
    }

    fn setup(
        tokens: Option<Duration>,
        connect: Option<Duration>,
    ) -> (Preauthorize, Arc<FakeVault>) {
        let opening = Opening::new();
        let vault = Arc::new(FakeVault {
            opening: Arc::clone(&opening),
            connect,
            delay: Duration::from_millis(50),
            connecting: Default::default(),
            sent: Mutex::default(),
        });
        let policy = Preauthorize::new(
            Arc::new(Tokens(tokens)),
            "https://vault.azure.net/.default".into(),
            opening,
        );
        (policy, vault)
    }

    async fn get(policy: &Preauthorize, vault: &Arc<FakeVault>, method: Method, url: &str) -> u16 {
        let next: Vec<Arc<dyn Policy>> = vec![Arc::clone(vault) as Arc<dyn Policy>];
        let mut request = Request::new(url.parse().expect("url"), method);
        let response = policy
            .send(&Context::new(), &mut request, &next)
            .await
            .expect("answer");
        u16::from(response.status())
    }

    const URL: &str = "https://demo.vault.azure.net/secrets/a";

    #[tokio::test(start_paused = true)]
    async fn with_the_token_on_its_way_a_copy_opens_and_the_reads_go_once_it_is_open() {
        // Token in 10 ms, connection in 30 ms, answers in 50 ms.
        let (policy, vault) = setup(
            Some(Duration::from_millis(10)),
            Some(Duration::from_millis(30)),
        );
        let started = tokio::time::Instant::now();
        let statuses = futures::join!(
            get(&policy, &vault, Method::Get, URL),
            get(&policy, &vault, Method::Get, URL),
            get(&policy, &vault, Method::Get, URL)
        );
        assert_eq!(statuses, (200, 200, 200));
        let sent = vault.sent.lock().expect("sent").clone();
        assert_eq!(
            sent,
            [(false, true), (true, true), (true, true), (true, true)],
            "the copy without a token first, then the three reads, each on the open connection"
        );
        assert_eq!(
            started.elapsed(),
            Duration::from_millis(80),
            "connection, then one answer: the reads did not wait for the copy's"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_opener_lets_the_waiting_reads_go() {
        // The token is at hand; the first request's connection never comes.
        let (policy, vault) = setup(Some(Duration::ZERO), None);
        let mut opener = Box::pin(get(&policy, &vault, Method::Get, URL));
        assert!(futures::poll!(opener.as_mut()).is_pending());
        let waiter = get(&policy, &vault, Method::Get, URL);
        tokio::pin!(waiter);
        assert!(
            futures::poll!(waiter.as_mut()).is_pending(),
            "waits for the opener"
        );
        drop(opener); // kubelet gave up on that publish
        let status = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the waiter goes once the opener is dropped");
        assert_eq!(status, 200);
        assert_eq!(*vault.sent.lock().expect("sent"), [(true, false)]);
    }

    #[tokio::test(start_paused = true)]
    async fn writes_and_other_hosts_get_no_token_and_open_nothing() {
        let (policy, vault) = setup(Some(Duration::ZERO), Some(Duration::ZERO));
        assert_eq!(get(&policy, &vault, Method::Put, URL).await, 401);
        assert_eq!(
            get(
                &policy,
                &vault,
                Method::Get,
                "https://demo.vault.azure.net.evil.example/s"
            )
            .await,
            401
        );
        assert_eq!(
            policy.opening.stage(),
            Stage::Open,
            "the connector saw a connection"
        );
        assert_eq!(
            *vault.sent.lock().expect("sent"),
            [(false, true), (false, true)]
        );
    }

    #[test]
    fn a_token_goes_only_to_hosts_under_the_scopes_host() {
        let (policy, _) = setup(None, None);
        let request = |url: &str| Request::new(url.parse().expect("url"), Method::Get);
        assert!(policy.covers(&request("https://demo.vault.azure.net/secrets/a")));
        assert!(policy.covers(&request("https://DEMO.Vault.Azure.Net/secrets/a")));
        assert!(!policy.covers(&request("https://vault.azure.net/secrets/a")));
        assert!(!policy.covers(&request(
            "https://demo.vault.azure.net.evil.example/secrets/a"
        )));
        assert!(!policy.covers(&request("https://demovault.azure.net/secrets/a")));
    }
}
