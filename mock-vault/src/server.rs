//! The listener: TLS accept loop, HTTP/1.1 + h2, request dispatch, stats and logging.

use std::future::Future as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulShutdown;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admin::{FaultTable, StatsRecorder};
use crate::jwt::{Signer, VerifyKey};
use crate::seed::{Identity, Seed};
use crate::store::VaultState;

/// Largest request body read (Key Vault values are at most 25 KiB; JSON adds a little).
const MAX_BODY: usize = 256 * 1024;
const JSON: &str = "application/json; charset=utf-8";

/// Everything a request handler can see.
pub(crate) struct State {
    pub tenant_id: String,
    pub identities: Vec<Identity>,
    /// (issuer URL, public key): the dev issuer first, then seed-declared issuers.
    pub issuers: Vec<(String, VerifyKey)>,
    pub vault_names: Vec<String>,
    pub vaults: Vec<Mutex<VaultState>>,
    pub dns_suffix: String,
    pub base_url: String,
    pub token_signer: Signer,
    pub token_key: VerifyKey,
    pub stats: StatsRecorder,
    pub faults: FaultTable,
}

impl State {
    pub fn new(
        seed: &Seed,
        dns_suffix: String,
        base_url: String,
        token_signer: Signer,
        dev_issuer: VerifyKey,
    ) -> Result<State, String> {
        let now = crate::now();
        let mut issuers = vec![(crate::seed::DEV_ISSUER.to_string(), dev_issuer)];
        issuers.extend(
            seed.issuers
                .iter()
                .map(|i| (i.issuer.clone(), i.key.clone())),
        );
        let vaults = seed
            .vaults
            .iter()
            .map(|v| VaultState::from_seed(v, now).map(Mutex::new))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(State {
            tenant_id: seed.tenant_id.clone(),
            identities: seed.identities.clone(),
            issuers,
            vault_names: seed.vaults.iter().map(|v| v.name.clone()).collect(),
            vaults,
            dns_suffix,
            base_url,
            token_key: token_signer.verify_key(),
            token_signer,
            stats: StatsRecorder::default(),
            faults: FaultTable::default(),
        })
    }

    /// The resource (audience) of this mock's vaults: `https://<dns-suffix>`.
    pub fn resource(&self) -> String {
        format!("https://{}", self.dns_suffix)
    }

    /// Which vault a Host names.
    pub fn pick_vault(&self, host: &str) -> Result<usize, String> {
        let name = host_without_port(host).to_ascii_lowercase();
        let is_default = name.parse::<std::net::IpAddr>().is_ok()
            || name.starts_with('[')
            || name == "localhost"
            || name.is_empty()
            || name == self.dns_suffix;
        if is_default {
            return Ok(0);
        }
        let label = name.split('.').next().unwrap_or_default();
        self.vault_names
            .iter()
            .position(|v| v.eq_ignore_ascii_case(label))
            .ok_or_else(|| label.to_string())
    }
}

fn host_without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_once(']').map(|(h, _)| &h[1..]).unwrap_or(host);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    }
}

/// A request, read whole.
pub(crate) struct Req {
    pub method: Method,
    pub path: String,
    pub query: Vec<(String, String)>,
    /// The authority as the client addressed it (`demo.vault.localhost:8443`).
    pub host: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Set by a matching `reset` fault rule: the reply is cut off mid-body.
    pub cut: AtomicBool,
}

impl Req {
    /// Applies a `reset` fault to this request's reply.
    pub fn cut_if(&self, reset: bool) {
        if reset {
            self.cut.store(true, Ordering::Relaxed);
        }
    }

    pub fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A response before it becomes a hyper response.
pub(crate) struct Reply {
    pub status: StatusCode,
    pub body: Bytes,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl Reply {
    pub fn json(status: StatusCode, body: &impl Serialize) -> Reply {
        let body = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
        Reply {
            status,
            body: Bytes::from(body),
            headers: Vec::new(),
        }
    }

    pub fn empty(status: StatusCode) -> Reply {
        Reply {
            status,
            body: Bytes::new(),
            headers: Vec::new(),
        }
    }

    /// A Key Vault error body: `{"error":{"code","message"}}`.
    pub fn kv_error(status: StatusCode, code: &str, message: &str) -> Reply {
        Reply::json(
            status,
            &serde_json::json!({"error": {"code": code, "message": message}}),
        )
    }

    pub fn with_header(mut self, name: HeaderName, value: &str) -> Reply {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers.push((name, v));
        }
        self
    }
}

/// A reply plus what stats and logs record about it.
pub(crate) struct Outcome {
    pub reply: Reply,
    pub vault: String,
    pub route: &'static str,
    pub object: String,
}

async fn dispatch(state: &State, req: &Req) -> Option<Outcome> {
    if req.path.starts_with("/_mock/") || req.path == "/_mock" {
        return None;
    }
    let segs: Vec<&str> = req.path.trim_start_matches('/').split('/').collect();
    match (&req.method, segs.as_slice()) {
        (&Method::POST, [tenant, "oauth2", "v2.0", "token"]) => {
            Some(crate::entra::token(state, req, tenant).await)
        }
        (&Method::GET, [tenant, "v2.0", ".well-known", "openid-configuration"]) => {
            Some(crate::entra::openid_configuration(state, req, tenant).await)
        }
        (&Method::GET, ["common", "discovery", "instance"]) => {
            Some(crate::entra::instance_discovery(state, req).await)
        }
        (&Method::GET, [tenant, "discovery", "v2.0", "keys"]) => {
            Some(crate::entra::jwks(state, tenant).await)
        }
        _ => Some(crate::keyvault::handle(state, req).await),
    }
}

/// A response body: whole, or cut by a `reset` fault: its first half, a pause in which hyper
/// flushes the headers and that half to the client, then an error, on which hyper closes the
/// HTTP/1.1 connection (or resets the h2 stream). The client never gets the rest of the
/// `Content-Length` it was promised.
pub(crate) enum ReplyBody {
    /// The whole body (`None` once sent, or when empty).
    Whole(Option<Bytes>),
    /// A body cut mid-way.
    Cut {
        /// The part sent before the cut (`None` once sent).
        part: Option<Bytes>,
        /// The pause before the cut, once started.
        pause: Option<Pin<Box<tokio::time::Sleep>>>,
    },
}

/// How long a cut response stays open after its first half, so that half reaches the client.
const CUT_PAUSE: Duration = Duration::from_millis(50);

impl ReplyBody {
    pub(crate) fn whole(body: Bytes) -> Self {
        Self::Whole(Some(body).filter(|b| !b.is_empty()))
    }
}

impl Body for ReplyBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match self.get_mut() {
            Self::Whole(body) => Poll::Ready(body.take().map(|b| Ok(Frame::data(b)))),
            Self::Cut { part, pause } => {
                if let Some(b) = part.take().filter(|b| !b.is_empty()) {
                    return Poll::Ready(Some(Ok(Frame::data(b))));
                }
                let pause = pause.get_or_insert_with(|| Box::pin(tokio::time::sleep(CUT_PAUSE)));
                match pause.as_mut().poll(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(()) => Poll::Ready(Some(Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "connection cut by an injected reset fault",
                    )))),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Self::Whole(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Whole(body) => SizeHint::with_exact(body.as_ref().map_or(0, |b| b.len() as u64)),
            Self::Cut { .. } => SizeHint::default(),
        }
    }
}

async fn serve_request(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<ReplyBody>, std::convert::Infallible> {
    let request_id = uuid::Uuid::new_v4().to_string();
    let (parts, body) = req.into_parts();
    let host = parts
        .uri
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_default();
    let query = parts
        .uri
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            let reply = Reply::kv_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "BadParameter",
                "The request body is too large or could not be read.",
            );
            return Ok(finish(reply, &request_id));
        }
    };
    let req = Req {
        method: parts.method,
        path: parts.uri.path().to_string(),
        query,
        host,
        headers: parts.headers,
        body,
        cut: AtomicBool::new(false),
    };

    let reply = match dispatch(&state, &req).await {
        Some(out) => {
            state.stats.record(
                &out.vault,
                out.route,
                &out.object,
                out.reply.status.as_u16(),
            );
            tracing::info!(
                method = %req.method, route = out.route, vault = %out.vault, object = %out.object,
                status = out.reply.status.as_u16(), request_id = %request_id,
                cut = req.cut.load(Ordering::Relaxed), "request"
            );
            out.reply
        }
        None => {
            let reply = crate::admin_api(&state, &req);
            tracing::debug!(method = %req.method, path = %req.path, status = reply.status.as_u16(), "admin request");
            reply
        }
    };
    if req.cut.load(Ordering::Relaxed) {
        return Ok(finish_cut(reply, &request_id));
    }
    Ok(finish(reply, &request_id))
}

/// The reply of a `reset` fault: the headers promise the whole body, half of it is sent.
fn finish_cut(reply: Reply, request_id: &str) -> Response<ReplyBody> {
    cut(finish(reply, request_id))
}

/// Cuts a response for a `reset` fault: `Content-Length` of the whole body, half of it sent.
pub(crate) fn cut(mut resp: Response<ReplyBody>) -> Response<ReplyBody> {
    let body = match resp.body_mut() {
        ReplyBody::Whole(body) | ReplyBody::Cut { part: body, .. } => {
            body.take().unwrap_or_default()
        }
    };
    if let Ok(v) = HeaderValue::from_str(&body.len().to_string()) {
        resp.headers_mut().insert(header::CONTENT_LENGTH, v);
    }
    *resp.body_mut() = ReplyBody::Cut {
        part: Some(body.slice(..body.len() / 2)),
        pause: None,
    };
    resp
}

fn finish(reply: Reply, request_id: &str) -> Response<ReplyBody> {
    let mut resp = Response::new(ReplyBody::whole(reply.body));
    *resp.status_mut() = reply.status;
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert(HeaderName::from_static("x-ms-request-id"), v.clone());
        h.insert(HeaderName::from_static("client-request-id"), v);
    }
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-store"),
    );
    for (name, value) in reply.headers {
        h.insert(name, value);
    }
    resp
}

/// Accepts until `shutdown` turns true, then waits (bounded) for open connections to finish.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: Arc<State>,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let graceful = GracefulShutdown::new();
    loop {
        let (tcp, peer): (tokio::net::TcpStream, SocketAddr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        // Replies go out as written (status, headers, body), as a real service's do: with
        // Nagle's algorithm a client's delayed ACK adds ~40 ms to small answers.
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let state = state.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        state
                            .stats
                            .connected(tls.get_ref().1.server_name().unwrap_or_default());
                        tls
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
            let service = hyper::service::service_fn(move |req| serve_request(state.clone(), req));
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(tls), service);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(5), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after 5s; closing them");
    }
}
