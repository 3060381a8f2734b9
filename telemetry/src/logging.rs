//! Logs: structured `tracing` to stderr, text or JSON, filtered by level.
//!
//! `--log-level` takes a level (`error`, `warn`, `info`, `debug`, `trace`, `off`; `warning` is
//! read as `warn`) or a list of `target=level` directives with an optional default level
//! (`kvmount_vault=debug,warn`). Anything else is refused when the flags are parsed, naming the
//! flag: a typo must not silently turn logging off. `RUST_LOG`, when set and not blank,
//! overrides the flag and is checked the same way.
//!
//! The filter is `tracing_subscriber`'s `Targets`, which needs no regular-expression engine, so
//! the agent binary neither carries nor touches one.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

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

/// The levels a directive may name, as the error lists them.
const ACCEPTED: &str = "error, warn (or warning), info, debug, trace, off, or target=level directives separated by commas (e.g. kvmount_vault=debug,warn)";

/// Longest part of a refused value quoted back.
const QUOTED_CHARS: usize = 64;

/// A checked `--log-level`: use it as a clap `value_parser` (its `FromStr`).
#[derive(Clone)]
pub struct LogLevel {
    text: String,
    // Shared: a `Targets` is large, and the flag structs that hold this are moved around.
    targets: Arc<Targets>,
}

impl fmt::Debug for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn level(word: &str) -> Option<LevelFilter> {
    Some(match word.trim().to_ascii_lowercase().as_str() {
        "error" => LevelFilter::ERROR,
        "warn" | "warning" => LevelFilter::WARN,
        "info" => LevelFilter::INFO,
        "debug" => LevelFilter::DEBUG,
        "trace" => LevelFilter::TRACE,
        "off" => LevelFilter::OFF,
        _ => return None,
    })
}

fn quoted(text: &str) -> String {
    let cut: String = text.chars().take(QUOTED_CHARS).collect();
    if cut.len() < text.len() {
        format!("{cut:?}...")
    } else {
        format!("{cut:?}")
    }
}

impl FromStr for LogLevel {
    type Err = String;

    /// Parses a level or directives; the error says what is accepted (clap adds the flag).
    fn from_str(text: &str) -> Result<Self, String> {
        let refuse = || format!("{} is not a log level; accepted: {ACCEPTED}", quoted(text));
        if text.trim().is_empty() || text.len() > 1024 {
            return Err(refuse());
        }
        let mut targets = Targets::new();
        let mut default = None;
        for directive in text.split(',') {
            match directive.split_once('=') {
                None => {
                    if default.is_some() {
                        return Err(refuse());
                    }
                    default = Some(level(directive).ok_or_else(refuse)?);
                }
                Some((target, word)) => {
                    let target = target.trim();
                    let target_ok = !target.is_empty()
                        && target
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':' || c == '-');
                    if !target_ok {
                        return Err(refuse());
                    }
                    targets = targets.with_target(target, level(word).ok_or_else(refuse)?);
                }
            }
        }
        // A list of target directives alone keeps `info` for everything else.
        let targets = targets.with_default(default.unwrap_or(LevelFilter::INFO));
        Ok(Self {
            text: text.trim().to_owned(),
            targets: Arc::new(targets),
        })
    }
}

impl LogLevel {
    /// The level `RUST_LOG` names when it is set and not blank, else `self`. An invalid
    /// `RUST_LOG` is an error naming it.
    pub fn or_rust_log(&self) -> Result<LogLevel, String> {
        match std::env::var("RUST_LOG") {
            Ok(value) if !value.trim().is_empty() => {
                value.parse().map_err(|e: String| format!("RUST_LOG: {e}"))
            }
            _ => Ok(self.clone()),
        }
    }

    /// Whether a target at `level` would be logged (tests, and callers that skip work).
    pub fn enables(&self, target: &str, level: tracing::Level) -> bool {
        self.targets.would_enable(target, &level)
    }
}

/// Installs the global subscriber with `level` (or `RUST_LOG`, see [`LogLevel::or_rust_log`]).
pub fn init(level: &LogLevel, format: LogFormat) -> Result<(), String> {
    let filter = Targets::clone(&level.or_rust_log()?.targets);
    let lines = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(true);
    let registry = tracing_subscriber::registry().with(filter);
    // A second init (tests, `dev` after its daemon) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => registry.with(lines).try_init(),
        LogFormat::Json => registry.with(lines.json().flatten_event(true)).try_init(),
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;

    fn parse(text: &str) -> Result<LogLevel, String> {
        text.parse()
    }

    #[test]
    fn every_level_word_and_warning_as_warn() {
        for (word, on, off) in [
            ("error", Level::ERROR, Some(Level::WARN)),
            ("warn", Level::WARN, Some(Level::INFO)),
            ("warning", Level::WARN, Some(Level::INFO)),
            ("WARNING", Level::WARN, Some(Level::INFO)),
            ("info", Level::INFO, Some(Level::DEBUG)),
            ("debug", Level::DEBUG, Some(Level::TRACE)),
            ("trace", Level::TRACE, None),
        ] {
            let l = parse(word).expect(word);
            assert!(l.enables("kvmount_provider::daemon", on), "{word}");
            if let Some(off) = off {
                assert!(!l.enables("kvmount_provider::daemon", off), "{word}");
            }
        }
        assert!(!parse("off").expect("off").enables("x", Level::ERROR));
    }

    #[test]
    fn directives_with_and_without_a_default() {
        let l = parse("kvmount_vault=debug,warn").expect("directives");
        assert!(l.enables("kvmount_vault::client", Level::DEBUG));
        assert!(!l.enables("hyper", Level::INFO));
        assert!(l.enables("hyper", Level::WARN));
        let l = parse("kvmount_vault=trace").expect("target only");
        assert!(l.enables("kvmount_vault", Level::TRACE));
        assert!(l.enables("anything", Level::INFO));
        assert!(!l.enables("anything", Level::DEBUG));
    }

    #[test]
    fn anything_else_is_refused_saying_what_is_accepted() {
        for bad in [
            "",
            " ",
            "warnings",
            "verbose",
            "info,debug",
            "kvmount=loud",
            "=debug",
            "a b=info",
            "info;rm -rf",
        ] {
            let err = parse(bad).expect_err(bad);
            assert!(err.contains("accepted: error, warn (or warning)"), "{err}");
        }
        let long = "x".repeat(5000);
        let err = parse(&long).expect_err("long");
        assert!(err.len() < 400, "a short prefix: {err}");
    }
}
