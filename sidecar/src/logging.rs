//! Log setup: structured `tracing` to stderr, text or JSON (the same shape as the node daemon).
//!
//! The filter is a list of `target=level` directives with an optional default level
//! (`info`, `kvmount_vault=debug,warn`): `tracing_subscriber`'s `Targets`, which needs no
//! regular-expression engine, so the agent binary neither carries nor touches one.

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The filter: `RUST_LOG` when it is set, not blank and valid, else `level` (same rules), else
/// `info`.
fn filter(rust_log: Option<&str>, level: &str) -> Targets {
    let parse = |directives: &str| {
        Some(directives)
            .filter(|d| !d.trim().is_empty())
            .and_then(|d| d.parse::<Targets>().ok())
    };
    rust_log
        .and_then(parse)
        .or_else(|| parse(level))
        .unwrap_or_else(|| Targets::new().with_default(LevelFilter::INFO))
}

/// Installs the global subscriber. `RUST_LOG` overrides `level` when set.
pub fn init(level: &str, format: LogFormat) {
    let filter = filter(std::env::var("RUST_LOG").ok().as_deref(), level);
    let lines = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(true);
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match format {
        LogFormat::Text => registry.with(lines).try_init(),
        LogFormat::Json => registry.with(lines.json().flatten_event(true)).try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;

    #[test]
    fn rust_log_then_level_then_info() {
        let f = filter(Some("kvmount_vault=debug,warn"), "trace");
        assert!(f.would_enable("kvmount_vault::client", &Level::DEBUG));
        assert!(!f.would_enable("hyper", &Level::INFO));
        let f = filter(Some("not a directive=="), "debug");
        assert!(f.would_enable("anything", &Level::DEBUG));
        let f = filter(Some(" "), "");
        assert!(f.would_enable("anything", &Level::INFO));
        assert!(!f.would_enable("anything", &Level::DEBUG));
    }
}
