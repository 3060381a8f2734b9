//! What every kvmount binary shares to report on itself: log setup and the `--log-level`
//! and `--log-format` values, checked when the flags are parsed; with the `metrics` feature,
//! Prometheus metrics and the `/metrics`, `/healthz`, `/readyz` endpoints (the node daemon and
//! the webhook; the injected agent serves none of them and builds without it).

pub mod logging;
#[cfg(feature = "metrics")]
pub mod metrics;
