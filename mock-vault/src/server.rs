//! The listener: TLS accept loop, HTTP/1.1 + h2, request dispatch, stats and logging.

use std::future::Future as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::exchange::{Outcome, Reply, Req, State};

/// Largest request body read (Key Vault values are at most 25 KiB; JSON adds a little).
const MAX_BODY: usize = 256 * 1024;
const JSON: &str = "application/json; charset=utf-8";

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
