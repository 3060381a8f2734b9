//! The webhook's HTTPS server: `POST /mutate` (AdmissionReview v1), `GET /healthz`,
//! `GET /readyz` (200 only with a real certificate) and `GET /metrics` (Prometheus text).
//!
//! TLS only: the listener hands every connection to rustls first; a plain-HTTP client gets a
//! failed handshake, never an HTTP answer.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use kvmount_telemetry::metrics::{self, Counter, Exposition, Family, Histogram, Registry};
use tokio::net::TcpListener;

use crate::tls::CertStore;
use crate::webhook::{self, Decision, Prepared, WebhookConfig};

/// Largest AdmissionReview accepted (the API server's request limit is 3 MiB).
pub const MAX_BODY_BYTES: usize = 3 << 20;
/// SecretProviderClass providers whose parameters the webhook reads.
pub const CLASS_PROVIDERS: &[&str] = &["kvmount", "azure"];

/// Every value of the `decision` label of `kvmount_webhook_admissions_total`.
const DECISIONS: [&str; 4] = ["inject", "skip", "deny", "malformed"];

/// The webhook's metrics, served on `/metrics` by `kvmount_telemetry::metrics`.
#[derive(Debug)]
pub struct Metrics {
    admissions: Family<[(&'static str, &'static str); 1], Counter>,
    admission_seconds: Histogram,
    exposition: Arc<Exposition>,
}

impl Metrics {
    /// Registers the webhook's metrics; readiness and the certificate's expiry are read from
    /// `certs` at each scrape.
    pub fn new(certs: Arc<CertStore>) -> Self {
        let mut registry = Registry::default();
        let admissions = Family::default();
        let admission_seconds = metrics::histogram(metrics::buckets::ADMISSION);
        registry.register(
            "kvmount_webhook_admissions",
            "AdmissionReviews answered, by decision: inject, skip, deny, or malformed (a body that is not an AdmissionReview, answered 400)",
            admissions.clone(),
        );
        registry.register(
            "kvmount_webhook_admission_seconds",
            "Time to decide an AdmissionReview, from the body read to the answer (lookups included)",
            admission_seconds.clone(),
        );
        // Every decision's series exists from the start (at 0), so rate() works at once.
        for decision in DECISIONS {
            admissions.get_or_create_owned(&[("decision", decision)]);
        }
        registry.register_collector(metrics::collector(move |scrape| {
            scrape.gauge(
                "kvmount_webhook_ready",
                "1 when a serving certificate is loaded.",
                i64::from(certs.is_ready()),
            );
            if let Some(expiry) = certs.expiry() {
                scrape.gauge(
                    "kvmount_webhook_certificate_expiry_timestamp_seconds",
                    "When the serving certificate (the leaf) expires, in seconds since the Unix epoch.",
                    expiry,
                );
            }
        }));
        Self {
            admissions,
            admission_seconds,
            exposition: Exposition::new(registry),
        }
    }

    fn record(&self, decision: Option<&Decision>, took: Duration) {
        let decision = match decision {
            Some(Decision::Patch(_)) => "inject",
            Some(Decision::Skip(_)) => "skip",
            Some(Decision::Deny(_)) => "deny",
            None => "malformed",
        };
        self.admissions
            .get_or_create(&[("decision", decision)])
            .inc();
        self.admission_seconds.observe(took.as_secs_f64());
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
    /// The webhook's metrics.
    pub metrics: Metrics,
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
    if req.method() == Method::GET {
        let ready = if state.certs.is_ready() {
            Ok(())
        } else {
            Err("no serving certificate yet")
        };
        if let Some(resp) = metrics::respond(&path, &state.metrics.exposition, ready) {
            return Ok(resp);
        }
    }
    let resp = match (req.method(), path.as_str()) {
        (&Method::POST, "/mutate") => {
            let body = match Limited::new(req.into_body(), MAX_BODY_BYTES)
                .collect()
                .await
            {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return Ok(metrics::response(
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
                    metrics::response(StatusCode::OK, "application/json", out)
                }
                Err(message) => {
                    state.metrics.record(None, started.elapsed());
                    tracing::info!(%message, "malformed review");
                    metrics::response(
                        StatusCode::BAD_REQUEST,
                        "text/plain",
                        format!("{message}\n"),
                    )
                }
            }
        }
        _ => metrics::response(
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
