//! Prometheus metrics for the binaries that serve them (the node daemon on `--metrics-addr`,
//! the webhook on its HTTPS port), through `prometheus-client`, the Prometheus org's client:
//! its metric types and registry, its text format (0.0.4) encoder, and here the one place that
//! answers `/metrics`, `/healthz` and `/readyz`.
//!
//! Each binary registers its metrics once at start into a [`Registry`] and freezes it in an
//! [`Exposition`]; values change, names and types do not. Counters are registered without the
//! `_total` suffix: the encoder adds it (`kvmount_cache_hits` is exposed as
//! `kvmount_cache_hits_total`, typed counter). Values that live elsewhere (the cache's atomics,
//! the number of volumes) are read at scrape time by a [`collector`].
//!
//! Labels are bounded and never carry secret values, tokens or paths: vault and object names,
//! fixed words (path, outcome, gRPC code, decision), HTTP status codes.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeGaugeValue, EncodeLabelSet, EncodeMetric,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::MetricConstructor;
use prometheus_client::metrics::gauge::ConstGauge;

pub use prometheus_client::collector::Collector;
pub use prometheus_client::metrics::counter::Counter;
pub use prometheus_client::metrics::family::Family;
pub use prometheus_client::metrics::gauge::Gauge;
pub use prometheus_client::metrics::histogram::Histogram;
pub use prometheus_client::registry::Registry;

/// The `Content-Type` of `/metrics`: the Prometheus text format, version 0.0.4.
pub const METRICS_CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Upper bounds (seconds) of the latency histograms, per kind of operation.
pub mod buckets {
    /// A Mount or NodePublishVolume: about a millisecond from the cache, tens to hundreds of
    /// milliseconds with Key Vault reads, up to the `--mount-timeout-seconds` deadline (60 s).
    pub const MOUNT: &[f64] = &[
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    ];
    /// One Key Vault HTTP try (token challenges and retries are tries of their own): a few
    /// milliseconds in region, seconds when the service is slow; the SDK gives up after 30 s.
    pub const KEYVAULT_REQUEST: &[f64] = &[
        0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ];
    /// One admission decision: a few hundred microseconds from the review alone, one API
    /// round trip more with a SecretProviderClass or service-account lookup; the API server
    /// stops waiting after the webhook's `timeoutSeconds` (at most 30 s).
    pub const ADMISSION: &[f64] = &[
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        10.0, 30.0,
    ];
}

/// Makes the histograms of a [`HistogramFamily`] with fixed buckets.
#[derive(Debug, Clone, Copy)]
pub struct Buckets(pub &'static [f64]);

impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(self.0.iter().copied())
    }
}

/// Histograms by label set, all with the same buckets.
pub type HistogramFamily<L> = Family<L, Histogram, Buckets>;

/// A [`HistogramFamily`] with `buckets` (one of [`buckets`]).
pub fn histogram_family<L>(buckets: &'static [f64]) -> HistogramFamily<L>
where
    L: Clone + std::hash::Hash + Eq,
{
    Family::new_with_constructor(Buckets(buckets))
}

/// A histogram without labels with `buckets` (one of [`buckets`]).
pub fn histogram(buckets: &'static [f64]) -> Histogram {
    Buckets(buckets).new_metric()
}

/// Values read at scrape time, written by a [`collector`]'s function.
pub struct Scrape<'a> {
    encoder: DescriptorEncoder<'a>,
    result: std::fmt::Result,
}

impl Scrape<'_> {
    fn metric(&mut self, name: &str, help: &str, metric: &impl EncodeMetric) {
        if self.result.is_err() {
            return;
        }
        self.result = self
            .encoder
            .encode_descriptor(name, help, None, metric.metric_type())
            .and_then(|encoder| metric.encode(encoder));
    }

    /// A counter kept elsewhere (an atomic that only grows); `name` without `_total`, which
    /// the encoder adds.
    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.metric(name, help, &ConstCounter::new(value));
    }

    /// A gauge without labels (a count as an integer, a time as `f64`).
    pub fn gauge<N: EncodeGaugeValue>(&mut self, name: &str, help: &str, value: N) {
        self.metric(name, help, &ConstGauge::new(value));
    }

    /// A gauge with one series per label set (none at all when `series` is empty).
    pub fn gauges<L: EncodeLabelSet, N: EncodeGaugeValue>(
        &mut self,
        name: &str,
        help: &str,
        series: impl IntoIterator<Item = (L, N)>,
    ) {
        if self.result.is_err() {
            return;
        }
        let mut series = series.into_iter().peekable();
        if series.peek().is_none() {
            return;
        }
        self.result = (|| {
            let mut encoder =
                self.encoder
                    .encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (labels, value) in series {
                ConstGauge::new(value).encode(encoder.encode_family(&labels)?)?;
            }
            Ok(())
        })();
    }
}

struct FnCollector<F>(F);

impl<F> std::fmt::Debug for FnCollector<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FnCollector")
    }
}

impl<F> Collector for FnCollector<F>
where
    F: Fn(&mut Scrape<'_>) + Send + Sync + 'static,
{
    fn encode(&self, encoder: DescriptorEncoder) -> std::fmt::Result {
        let mut scrape = Scrape {
            encoder,
            result: Ok(()),
        };
        (self.0)(&mut scrape);
        scrape.result
    }
}

/// A collector that runs `collect` at each scrape, for values that live elsewhere; register
/// it with [`Registry::register_collector`].
pub fn collector(collect: impl Fn(&mut Scrape<'_>) + Send + Sync + 'static) -> Box<dyn Collector> {
    Box::new(FnCollector(collect))
}

/// What `/metrics` serves: a registry whose metrics were all registered at start.
#[derive(Debug)]
pub struct Exposition {
    registry: Registry,
}

impl Exposition {
    /// Freezes `registry`.
    pub fn new(registry: Registry) -> Arc<Self> {
        Arc::new(Self { registry })
    }

    /// Every metric in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        {
            // Writing to a String fails only when a collector reports an error; a scrape then
            // gets what was written before it.
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        out
    }
}

/// A response with `body` as it is, for the servers that answer these endpoints (and the
/// webhook's other answers).
pub fn response(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// The answer for `path` when it is one of the endpoints every serving binary has:
/// `/metrics`, `/healthz` (the process answers) and `/readyz` (200 when `ready` is `Ok`, else
/// 503 with its reason). `None` for any other path.
pub fn respond(
    path: &str,
    exposition: &Exposition,
    ready: Result<(), &'static str>,
) -> Option<Response<Full<Bytes>>> {
    Some(match (path, ready) {
        ("/metrics", _) => response(StatusCode::OK, METRICS_CONTENT_TYPE, exposition.encode()),
        ("/healthz", _) => response(StatusCode::OK, "text/plain; charset=utf-8", "ok\n"),
        ("/readyz", Ok(())) => response(StatusCode::OK, "text/plain; charset=utf-8", "ready\n"),
        ("/readyz", Err(why)) => response(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain; charset=utf-8",
            format!("{why}\n"),
        ),
        _ => return None,
    })
}

/// The metrics address could not be listened on.
#[derive(Debug, thiserror::Error)]
#[error("{flag} {addr}: cannot listen: {source}")]
pub struct ListenError {
    /// The flag that gave the address (`--metrics-addr`).
    pub flag: &'static str,
    /// The address.
    pub addr: SocketAddr,
    /// The OS error.
    pub source: std::io::Error,
}

/// Listens on `addr` for [`serve`]; the error names `flag` (a port in use, an address the
/// node does not have), so a binary that cannot serve its probes says why at start.
pub async fn listen(
    flag: &'static str,
    addr: SocketAddr,
) -> Result<tokio::net::TcpListener, ListenError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ListenError { flag, addr, source })
}

/// Serves [`respond`]'s endpoints over plain HTTP/1.1 on `listener` until `shutdown` resolves;
/// `/readyz` answers 200 while `ready` is set.
pub async fn serve(
    listener: tokio::net::TcpListener,
    exposition: Arc<Exposition>,
    ready: Arc<AtomicBool>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "serving /metrics, /healthz and /readyz");
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = &mut shutdown => return Ok(()),
        };
        let exposition = Arc::clone(&exposition);
        let ready = Arc::clone(&ready);
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                    let readiness = if ready.load(Ordering::Acquire) {
                        Ok(())
                    } else {
                        Err("not ready")
                    };
                    let answer = respond(request.uri().path(), &exposition, readiness)
                        .unwrap_or_else(|| {
                            response(
                                StatusCode::NOT_FOUND,
                                "text/plain; charset=utf-8",
                                "not found; accepted: /metrics, /healthz, /readyz\n",
                            )
                        });
                    async move { Ok::<_, Infallible>(answer) }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn text_format_types_and_names() {
        let mut registry = Registry::default();
        let mounts = Family::<[(&'static str, &'static str); 2], Counter>::default();
        registry.register("kvmount_mounts", "Mounts", mounts.clone());
        let seconds = histogram_family::<[(&'static str, &'static str); 1]>(buckets::MOUNT);
        registry.register("kvmount_mount_seconds", "Latency", seconds.clone());
        registry.register_collector(collector(|scrape| {
            scrape.counter("kvmount_cache_hits", "Hits.", 7);
            scrape.gauge("kvmount_published_volumes", "Volumes.", 3i64);
            scrape.gauges(
                "kvmount_object_refresh_age_seconds",
                "Age.",
                [([("vault", "v"), ("object", "secret/a\"b")], 1.5)],
            );
            scrape.gauges::<[(&str, &str); 1], f64>("kvmount_nothing", "Absent.", []);
        }));
        mounts
            .get_or_create(&[("path", "csi"), ("outcome", "ok")])
            .inc_by(2);
        seconds.get_or_create(&[("path", "csi")]).observe(0.003);
        let text = Exposition::new(registry).encode();
        for line in [
            "# TYPE kvmount_mounts_total counter",
            "kvmount_mounts_total{path=\"csi\",outcome=\"ok\"} 2",
            "# TYPE kvmount_mount_seconds histogram",
            "kvmount_mount_seconds_bucket{path=\"csi\",le=\"0.0025\"} 0",
            "kvmount_mount_seconds_bucket{path=\"csi\",le=\"0.005\"} 1",
            "kvmount_mount_seconds_bucket{path=\"csi\",le=\"+Inf\"} 1",
            "kvmount_mount_seconds_count{path=\"csi\"} 1",
            "# TYPE kvmount_cache_hits_total counter",
            "kvmount_cache_hits_total 7",
            "# TYPE kvmount_published_volumes gauge",
            "kvmount_published_volumes 3",
            "kvmount_object_refresh_age_seconds{vault=\"v\",object=\"secret/a\\\"b\"} 1.5",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing in:\n{text}"
            );
        }
        assert!(!text.contains("kvmount_nothing"), "{text}");
        assert!(!text.contains("# EOF"), "Prometheus text, not OpenMetrics");
    }

    #[tokio::test]
    async fn serves_metrics_health_and_readiness_and_names_the_flag() {
        let listener = listen("--metrics-addr", "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let taken = listen("--metrics-addr", addr).await.unwrap_err();
        assert!(
            taken
                .to_string()
                .starts_with(&format!("--metrics-addr {addr}: cannot listen: ")),
            "{taken}"
        );
        let ready = Arc::new(AtomicBool::new(false));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listener,
            Exposition::new(Registry::default()),
            Arc::clone(&ready),
            async {
                let _ = stopped.await;
            },
        ));
        let get = |path: &'static str| async move {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            tcp.write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .unwrap();
            let mut out = String::new();
            tcp.read_to_string(&mut out).await.unwrap();
            out
        };
        assert!(get("/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(get("/readyz").await.starts_with("HTTP/1.1 503"));
        ready.store(true, Ordering::Release);
        assert!(get("/readyz").await.starts_with("HTTP/1.1 200"));
        let metrics = get("/metrics").await;
        assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
        assert!(metrics.contains("text/plain; version=0.0.4"), "{metrics}");
        assert!(get("/other").await.starts_with("HTTP/1.1 404"));
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
}
