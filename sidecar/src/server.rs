//! The webhook's HTTPS server: `POST /mutate` (AdmissionReview v1), `GET /healthz`,
//! `GET /readyz` (200 only with a real certificate) and `GET /metrics` (Prometheus text).
//!
//! TLS only: the listener hands every connection to rustls first; a plain-HTTP client gets a
//! failed handshake, never an HTTP answer.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::tls::CertStore;
use crate::webhook::{self, Decision, Prepared, WebhookConfig};

/// Largest AdmissionReview accepted (the API server's request limit is 3 MiB).
pub const MAX_BODY_BYTES: usize = 3 << 20;
/// SecretProviderClass providers whose parameters the webhook reads.
pub const CLASS_PROVIDERS: &[&str] = &["kvmount", "azure"];

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    injected: AtomicU64,
    skipped: AtomicU64,
    denied: AtomicU64,
    malformed: AtomicU64,
    micros_sum: AtomicU64,
    micros_max: AtomicU64,
    reviews: AtomicU64,
}

impl Metrics {
    fn record(&self, decision: Option<&Decision>, took: Duration) {
        let counter = match decision {
            Some(Decision::Patch(_)) => &self.injected,
            Some(Decision::Skip(_)) => &self.skipped,
            Some(Decision::Deny(_)) => &self.denied,
            None => &self.malformed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let micros = took.as_micros() as u64;
        self.micros_sum.fetch_add(micros, Ordering::Relaxed);
        self.micros_max.fetch_max(micros, Ordering::Relaxed);
        self.reviews.fetch_add(1, Ordering::Relaxed);
    }

    /// Prometheus text exposition.
    pub fn render(&self, ready: bool) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP kvmount_webhook_admissions_total AdmissionReviews answered, by result.\n",
        );
        out.push_str("# TYPE kvmount_webhook_admissions_total counter\n");
        for (result, c) in [
            ("injected", &self.injected),
            ("skipped", &self.skipped),
            ("denied", &self.denied),
            ("malformed", &self.malformed),
        ] {
            out.push_str(&format!(
                "kvmount_webhook_admissions_total{{result=\"{result}\"}} {}\n",
                c.load(Ordering::Relaxed)
            ));
        }
        out.push_str("# HELP kvmount_webhook_admission_seconds Time to decide, from the body read to the answer.\n");
        out.push_str("# TYPE kvmount_webhook_admission_seconds summary\n");
        out.push_str(&format!(
            "kvmount_webhook_admission_seconds_sum {:.6}\nkvmount_webhook_admission_seconds_count {}\n",
            self.micros_sum.load(Ordering::Relaxed) as f64 / 1e6,
            self.reviews.load(Ordering::Relaxed)
        ));
        out.push_str("# HELP kvmount_webhook_admission_seconds_max Longest decision so far.\n# TYPE kvmount_webhook_admission_seconds_max gauge\n");
        out.push_str(&format!(
            "kvmount_webhook_admission_seconds_max {:.6}\n",
            self.micros_max.load(Ordering::Relaxed) as f64 / 1e6
        ));
        out.push_str("# HELP kvmount_webhook_ready 1 when a serving certificate is loaded.\n# TYPE kvmount_webhook_ready gauge\n");
        out.push_str(&format!("kvmount_webhook_ready {}\n", u8::from(ready)));
        out
    }
}

/// What every request handler shares.
pub struct State {
    /// How to mutate.
    pub config: WebhookConfig,
    /// SecretProviderClass lookups, when the webhook has API access.
    pub classes: Option<kvmount_k8s::ClassResolver>,
    /// The same API access for service-account lookups.
    pub kube: Option<kube::Client>,
    /// The serving certificate.
    pub certs: Arc<CertStore>,
    /// Counters.
    pub metrics: Metrics,
}

fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// Decides one review body; `None` for a body that is not an AdmissionReview.
pub async fn decide(state: &State, body: &[u8]) -> Result<(String, Decision), String> {
    let review = webhook::parse_review(body).map_err(|e| e.to_string())?;
    let decision = match webhook::prepare(&state.config, &review) {
        Prepared::Done(d) => d,
        Prepared::Inject(injection) => {
            let class = match (&injection.secret_provider_class, &state.classes) {
                (None, _) => Ok(None),
                (Some(name), None) => Err(webhook::no_api_denial(name)),
                (Some(name), Some(classes)) => match classes.get(&review.namespace, name).await {
                    Err(e) => Err(format!(
                        "kvmount: annotation kvmount.io/secret-provider-class: {e}"
                    )),
                    Ok(class) if !CLASS_PROVIDERS.contains(&class.provider.as_str()) => {
                        Err(format!(
                            "kvmount: annotation kvmount.io/secret-provider-class: SecretProviderClass {name:?} is for provider {:?}; accepted: provider {}",
                            class.provider,
                            CLASS_PROVIDERS.join(" or ")
                        ))
                    }
                    Ok(class) => Ok(Some((name.as_str(), class.parameters))),
                },
            };
            match class {
                Err(message) => Decision::Deny(message),
                Ok(class) => {
                    let mut sa_client_id = None;
                    if let Some(kube) = &state.kube
                        && let Some((ns, sa)) = webhook::client_id_lookup(
                            &review,
                            &injection,
                            class.as_ref().map(|c| &c.1),
                        )
                    {
                        match crate::kube_api::service_account_client_id(kube, ns, sa).await {
                            Ok(id) => sa_client_id = id,
                            // Without permission (or an answer) the pod may still name its
                            // client ID another way; the decision below says what is missing.
                            Err(e) => tracing::debug!(error = %e, "service account lookup failed"),
                        }
                    }
                    let lookups = webhook::Lookups {
                        class: class.as_ref().map(|(n, p)| (*n, p)),
                        service_account_client_id: sa_client_id.as_deref(),
                    };
                    webhook::mutate(&state.config, &review, &injection, lookups)
                }
            }
        }
    };
    Ok((review.uid, decision))
}

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    let resp = match (req.method(), path.as_str()) {
        (&Method::GET, "/healthz") => reply(StatusCode::OK, "text/plain", "ok\n"),
        (&Method::GET, "/readyz") if state.certs.is_ready() => {
            reply(StatusCode::OK, "text/plain", "ready\n")
        }
        (&Method::GET, "/readyz") => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "no serving certificate yet\n",
        ),
        (&Method::GET, "/metrics") => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            state.metrics.render(state.certs.is_ready()),
        ),
        (&Method::POST, "/mutate") => {
            let body = match Limited::new(req.into_body(), MAX_BODY_BYTES)
                .collect()
                .await
            {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return Ok(reply(
                        StatusCode::BAD_REQUEST,
                        "text/plain",
                        format!("cannot read the body (at most {MAX_BODY_BYTES} bytes): {e}\n"),
                    ));
                }
            };
            let started = Instant::now();
            match decide(&state, &body).await {
                Ok((uid, decision)) => {
                    let out = webhook::response(&uid, &decision);
                    let took = started.elapsed();
                    state.metrics.record(Some(&decision), took);
                    match &decision {
                        Decision::Patch(p) => {
                            tracing::info!(%uid, operations = p.operations().len(), micros = took.as_micros() as u64, "injected")
                        }
                        Decision::Skip(why) => tracing::debug!(%uid, reason = why, "skipped"),
                        Decision::Deny(message) => tracing::info!(%uid, %message, "denied"),
                    }
                    reply(StatusCode::OK, "application/json", out)
                }
                Err(message) => {
                    state.metrics.record(None, started.elapsed());
                    tracing::info!(%message, "malformed review");
                    reply(
                        StatusCode::BAD_REQUEST,
                        "text/plain",
                        format!("{message}\n"),
                    )
                }
            }
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; accepted: POST /mutate, GET /healthz, /readyz, /metrics\n",
        ),
    };
    Ok(resp)
}

/// Serves TLS connections on `listener` until `shutdown` completes, then lets open
/// connections finish (bounded).
pub async fn serve(
    listener: TcpListener,
    state: Arc<State>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), crate::tls::TlsError> {
    let acceptor = tokio_rustls::TlsAcceptor::from(state.certs.server_config()?);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
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
            _ = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let state = state.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp))
                .await
            {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed (plain HTTP is refused)");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let service = hyper::service::service_fn(move |req| handle(state.clone(), req));
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(Duration::from_secs(10), graceful.shutdown()).await;
    Ok(())
}
