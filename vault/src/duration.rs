//! Durations as users type them, for the daemon's flags and the sidecar's annotations: `90s`,
//! `1m30s`, `2h`, `500ms`, `1h 30m` (parsed by the `humantime` crate), or a bare number of
//! seconds. One parser for both, so a value that works in one place works in the other.

use std::time::Duration;

/// Longest input looked at: longer is refused before parsing.
const MAX_CHARS: usize = 64;

/// Longest input quoted back in an error.
const QUOTED_CHARS: usize = 24;

/// Parses `text` and checks it is within `min..=max`. The error names `field`, quotes at most a
/// short prefix of the input and says what is accepted.
pub fn parse_duration_within(
    field: &str,
    text: &str,
    min: Duration,
    max: Duration,
) -> Result<Duration, String> {
    let shown: String = text.chars().take(QUOTED_CHARS).collect();
    let accepted = format!(
        "accepted: a duration from {} to {}, such as 90s, 1m30s, 2h or 500ms, or a number of seconds",
        humantime::format_duration(min),
        humantime::format_duration(max)
    );
    let trimmed = text.trim();
    let parsed = if trimmed.is_empty() || trimmed.len() > MAX_CHARS {
        None
    } else if trimmed.bytes().all(|b| b.is_ascii_digit()) {
        trimmed.parse::<u64>().ok().map(Duration::from_secs)
    } else {
        humantime::parse_duration(trimmed).ok()
    };
    match parsed {
        Some(d) if (min..=max).contains(&d) => Ok(d),
        Some(_) => Err(format!("{field}: {shown:?} is out of range; {accepted}")),
        None => Err(format!("{field}: {shown:?} is not a duration; {accepted}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn parse(text: &str) -> Result<Duration, String> {
        parse_duration_within("--rotation-interval", text, Duration::ZERO, DAY)
    }

    #[test]
    fn what_users_type() {
        for (text, seconds) in [
            ("90s", 90.0),
            ("1m30s", 90.0),
            ("1m 30s", 90.0),
            ("2h", 7200.0),
            ("2m", 120.0),
            ("500ms", 0.5),
            ("45", 45.0),
            (" 5m ", 300.0),
            ("1d", 86_400.0),
        ] {
            assert_eq!(parse(text), Ok(Duration::from_secs_f64(seconds)), "{text}");
        }
    }

    #[test]
    fn refusals_name_the_field_and_the_range() {
        for bad in ["", "m", "1x", "-5s", "1.5", "2 fortnights", "5m garbage"] {
            let err = parse(bad).expect_err(bad);
            assert!(err.starts_with("--rotation-interval: "), "{err}");
            assert!(
                err.contains("not a duration; accepted: a duration from 0s to 1day"),
                "{err}"
            );
        }
        let err = parse("2days").expect_err("over");
        assert!(err.contains("out of range"), "{err}");
        let err = parse(&"9".repeat(1000)).expect_err("long");
        assert!(err.len() < 300, "{err}");
    }
}
