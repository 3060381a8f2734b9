//! Prometheus metrics (text exposition format), `/healthz` and `/readyz` on `--metrics-addr`.
//! Labels carry vault, operation, status, outcome: never object contents, tokens or paths with
//! secrets in them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

/// Upper bounds (seconds) of the latency histograms.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

type Labels = Vec<(&'static str, String)>;

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    total: u64,
}

#[derive(Default)]
struct Families {
    counters: BTreeMap<&'static str, BTreeMap<Labels, u64>>,
    gauges: BTreeMap<&'static str, BTreeMap<Labels, i64>>,
    histograms: BTreeMap<&'static str, BTreeMap<Labels, Histogram>>,
}

/// Refreshes gauges from live state right before a scrape.
pub type Collector = Box<dyn Fn(&Metrics) + Send + Sync>;

/// The daemon's metrics.
#[derive(Default)]
pub struct Metrics {
    families: Mutex<Families>,
    help: Mutex<BTreeMap<&'static str, &'static str>>,
    collector: Mutex<Option<Collector>>,
}

fn labels(pairs: &[(&'static str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
}

impl Metrics {
    fn families(&self) -> std::sync::MutexGuard<'_, Families> {
        self.families.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn describe(&self, name: &'static str, help: &'static str) {
        self.help
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(name)
            .or_insert(help);
    }

    /// Adds 1 to counter `name` with `pairs`.
    pub fn inc(&self, name: &'static str, help: &'static str, pairs: &[(&'static str, &str)]) {
        self.describe(name, help);
        *self
            .families()
            .counters
            .entry(name)
            .or_default()
            .entry(labels(pairs))
            .or_default() += 1;
    }

    /// Sets gauge `name`.
    pub fn set(
        &self,
        name: &'static str,
        help: &'static str,
        pairs: &[(&'static str, &str)],
        value: i64,
    ) {
        self.describe(name, help);
        self.families()
            .gauges
            .entry(name)
            .or_default()
            .insert(labels(pairs), value);
    }

    /// Records one observation of histogram `name`.
    pub fn observe(
        &self,
        name: &'static str,
        help: &'static str,
        pairs: &[(&'static str, &str)],
        value: Duration,
    ) {
        self.describe(name, help);
        let seconds = value.as_secs_f64();
        let mut families = self.families();
        let h = families
            .histograms
            .entry(name)
            .or_default()
            .entry(labels(pairs))
            .or_default();
        for (i, bound) in BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                h.counts[i] += 1;
            }
        }
        h.sum += seconds;
        h.total += 1;
    }

    /// The current value of a counter (tests and `status`).
    pub fn counter(&self, name: &str, pairs: &[(&'static str, &str)]) -> u64 {
        let families = self.families();
        families
            .counters
            .get(name)
            .and_then(|f| f.get(&labels(pairs)))
            .copied()
            .unwrap_or(0)
    }

    /// Installs the function that refreshes gauges before each scrape.
    pub fn set_collector(&self, collector: Collector) {
        *self
            .collector
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(collector);
    }

    /// Renders every family in the Prometheus text format.
    pub fn render(&self) -> String {
        if let Some(collect) = self
            .collector
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            collect(self);
        }
        let help = self
            .help
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let families = self.families();
        let mut out = String::new();
        let fmt_labels = |labels: &Labels, extra: Option<(&str, String)>| {
            let mut parts: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            if let Some((k, v)) = extra {
                parts.push(format!("{k}=\"{v}\""));
            }
            if parts.is_empty() {
                String::new()
            } else {
                format!("{{{}}}", parts.join(","))
            }
        };
        for (name, series) in &families.counters {
            let _ = writeln!(
                out,
                "# HELP {name} {}\n# TYPE {name} counter",
                help.get(name).unwrap_or(&"")
            );
            for (l, v) in series {
                let _ = writeln!(out, "{name}{} {v}", fmt_labels(l, None));
            }
        }
        for (name, series) in &families.gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {}\n# TYPE {name} gauge",
                help.get(name).unwrap_or(&"")
            );
            for (l, v) in series {
                let _ = writeln!(out, "{name}{} {v}", fmt_labels(l, None));
            }
        }
        for (name, series) in &families.histograms {
            let _ = writeln!(
                out,
                "# HELP {name} {}\n# TYPE {name} histogram",
                help.get(name).unwrap_or(&"")
            );
            for (l, h) in series {
                for (i, bound) in BUCKETS.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "{name}_bucket{} {}",
                        fmt_labels(l, Some(("le", bound.to_string()))),
                        h.counts[i]
                    );
                }
                let _ = writeln!(
                    out,
                    "{name}_bucket{} {}",
                    fmt_labels(l, Some(("le", "+Inf".into()))),
                    h.total
                );
                let _ = writeln!(out, "{name}_sum{} {}", fmt_labels(l, None), h.sum);
                let _ = writeln!(out, "{name}_count{} {}", fmt_labels(l, None), h.total);
            }
        }
        out
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Listens on `addr` for [`serve`]; the error names the flag (a port in use, an address the
/// node does not have), so a daemon that cannot serve its probes says why at start.
pub async fn listen(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("--metrics-addr {addr}: cannot listen: {e}"))
}

/// Serves `/metrics`, `/healthz` (alive) and `/readyz` (200 only once every socket serves) on
/// `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "serving metrics, /healthz and /readyz");
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = &mut shutdown => return Ok(()),
        };
        let metrics = Arc::clone(&metrics);
        let ready = Arc::clone(&ready);
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                    let metrics = Arc::clone(&metrics);
                    let ready = Arc::clone(&ready);
                    async move {
                        let (status, body) = match request.uri().path() {
                            "/metrics" => (StatusCode::OK, metrics.render()),
                            "/healthz" => (StatusCode::OK, "ok\n".to_owned()),
                            "/readyz" if ready.load(Ordering::Acquire) => {
                                (StatusCode::OK, "ready\n".to_owned())
                            }
                            "/readyz" => {
                                (StatusCode::SERVICE_UNAVAILABLE, "not ready\n".to_owned())
                            }
                            _ => (StatusCode::NOT_FOUND, "not found\n".to_owned()),
                        };
                        let mut response = Response::new(Full::new(Bytes::from(body)));
                        *response.status_mut() = status;
                        response.headers_mut().insert(
                            hyper::header::CONTENT_TYPE,
                            hyper::header::HeaderValue::from_static(
                                "text/plain; version=0.0.4; charset=utf-8",
                            ),
                        );
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_format() {
        let m = Metrics::default();
        m.inc(
            "kvmount_mounts_total",
            "Mounts.",
            &[("path", "csi"), ("outcome", "ok")],
        );
        m.inc(
            "kvmount_mounts_total",
            "Mounts.",
            &[("path", "csi"), ("outcome", "ok")],
        );
        m.set("kvmount_published_volumes", "Volumes.", &[], 3);
        m.observe(
            "kvmount_publish_seconds",
            "Latency.",
            &[],
            Duration::from_millis(3),
        );
        let text = m.render();
        assert!(text.contains("# TYPE kvmount_mounts_total counter"));
        assert!(text.contains("kvmount_mounts_total{path=\"csi\",outcome=\"ok\"} 2"));
        assert!(text.contains("kvmount_published_volumes 3"));
        assert!(text.contains("kvmount_publish_seconds_bucket{le=\"0.005\"} 1"));
        assert!(text.contains("kvmount_publish_seconds_bucket{le=\"0.0025\"} 0"));
        assert!(text.contains("kvmount_publish_seconds_count 1"));
        assert_eq!(
            m.counter(
                "kvmount_mounts_total",
                &[("path", "csi"), ("outcome", "ok")]
            ),
            2
        );
    }
}
