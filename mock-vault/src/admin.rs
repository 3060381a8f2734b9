//! Request statistics and injected faults (`/_mock/stats`, `/_mock/faults`).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Request counts, as served by `GET /_mock/stats`.
///
/// ```json
/// {"total":4,"entries":[{"vault":"demo","route":"secret.get","object":"secret/db-password","status":200,"count":3}]}
/// ```
/// `vault` and `object` are `""` where they do not apply (token endpoint, lists).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Every request counted.
    pub total: u64,
    /// One entry per (vault, route, object, status), sorted.
    pub entries: Vec<StatsEntry>,
    /// TLS connections accepted, by the server name the client sent (`""` without one, as
    /// for an IP address): how many connections a client opened to a vault host.
    #[serde(default)]
    pub connections: BTreeMap<String, u64>,
}

/// One counter of [`Stats`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsEntry {
    /// Vault name (first Host label), `""` for routes outside a vault.
    pub vault: String,
    /// Route name, e.g. `secret.get` (see the crate docs for the list).
    pub route: String,
    /// `secret/<name>` for single-secret routes, the client id for `token`, else `""`.
    pub object: String,
    /// HTTP status answered.
    pub status: u16,
    /// How many times.
    pub count: u64,
}

impl Stats {
    /// Sums the counters that match every filter given (`None` matches anything).
    pub fn count(
        &self,
        vault: Option<&str>,
        route: Option<&str>,
        object: Option<&str>,
        status: Option<u16>,
    ) -> u64 {
        self.entries
            .iter()
            .filter(|e| vault.is_none_or(|v| e.vault == v))
            .filter(|e| route.is_none_or(|r| e.route == r))
            .filter(|e| object.is_none_or(|o| e.object == o))
            .filter(|e| status.is_none_or(|s| e.status == s))
            .map(|e| e.count)
            .sum()
    }
}

#[derive(Default)]
pub(crate) struct StatsRecorder {
    counts: Mutex<BTreeMap<(String, String, String, u16), u64>>,
    connections: Mutex<BTreeMap<String, u64>>,
}

impl StatsRecorder {
    pub fn record(&self, vault: &str, route: &str, object: &str, status: u16) {
        let mut counts = lock(&self.counts);
        *counts
            .entry((
                vault.to_string(),
                route.to_string(),
                object.to_string(),
                status,
            ))
            .or_insert(0) += 1;
    }

    /// A TLS connection was accepted for `server_name` (`""` without SNI).
    pub fn connected(&self, server_name: &str) {
        *lock(&self.connections)
            .entry(server_name.to_ascii_lowercase())
            .or_insert(0) += 1;
    }

    pub fn snapshot(&self) -> Stats {
        let counts = lock(&self.counts);
        let entries: Vec<StatsEntry> = counts
            .iter()
            .map(|((vault, route, object, status), count)| StatsEntry {
                vault: vault.clone(),
                route: route.clone(),
                object: object.clone(),
                status: *status,
                count: *count,
            })
            .collect();
        Stats {
            total: entries.iter().map(|e| e.count).sum(),
            entries,
            connections: lock(&self.connections).clone(),
        }
    }

    pub fn reset(&self) {
        lock(&self.counts).clear();
        lock(&self.connections).clear();
    }
}

/// Locks a mutex, continuing past a poisoned lock (the data are counters and rule lists,
/// which stay consistent even if a holder panicked).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Body of `PUT /_mock/faults`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    /// The rules, replacing any set before.
    pub rules: Vec<FaultRule>,
}

/// One injected fault. String fields are exact names or globs (`*`, `?`); absent = any.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FaultRule {
    /// Vault name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault: Option<String>,
    /// Route name (`secret.get`, `token`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// Object (`secret/db-password`; the client id for `token`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    /// Answer with this status (a Key Vault- or Entra-shaped error) instead of serving.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// `Retry-After` seconds to send with the fault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
    /// Delay before answering (alone: delay, then serve normally).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    /// How many matching requests the rule applies to; absent = forever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub times: Option<u64>,
    /// Cut the connection mid-response: the request is served (or answered with `status`),
    /// the status line, the headers (with the full `Content-Length`) and at most the first half
    /// of the body are sent, then the connection is closed (HTTP/1.1) or the stream reset (h2).
    /// The client sees a response that ends early, as with a TCP reset or a dying proxy.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reset: bool,
}

impl FaultRule {
    /// Checks a rule: it must do something and name a real status.
    pub fn check(&self) -> Result<(), String> {
        if self.status.is_none() && self.latency_ms.is_none() && !self.reset {
            return Err("a rule needs status, latencyMs or reset".into());
        }
        if let Some(s) = self.status.filter(|s| !(400..=599).contains(s)) {
            return Err(format!("status {s} is not an error status (400-599)"));
        }
        if self.retry_after.is_some() && self.status.is_none() {
            return Err("retryAfter needs a status".into());
        }
        if self.latency_ms.is_some_and(|l| l > 60_000) {
            return Err("latencyMs may be at most 60000".into());
        }
        Ok(())
    }

    fn matches(&self, vault: &str, route: &str, object: &str) -> bool {
        self.vault.as_deref().is_none_or(|p| glob(p, vault))
            && self.route.as_deref().is_none_or(|p| glob(p, route))
            && self.object.as_deref().is_none_or(|p| glob(p, object))
    }
}

/// What the matching fault rules ask for one request.
#[derive(Debug, Default)]
pub(crate) struct FaultHit {
    pub latency: Duration,
    /// (status, Retry-After seconds)
    pub status: Option<(u16, Option<u64>)>,
    /// Some matching rule asks to cut the connection mid-response.
    pub reset: bool,
}

#[derive(Default)]
pub(crate) struct FaultTable {
    rules: Mutex<Vec<FaultRule>>,
}

impl FaultTable {
    pub fn set(&self, rules: Vec<FaultRule>) {
        *lock(&self.rules) = rules;
    }

    pub fn get(&self) -> Vec<FaultRule> {
        lock(&self.rules).clone()
    }

    /// The added latency of the rules that match, using up none of their `times`: what a
    /// challenge 401 costs (a round trip is as slow whatever it answers).
    pub fn latency(&self, vault: &str, route: &str, object: &str) -> Duration {
        lock(&self.rules)
            .iter()
            .filter(|rule| rule.times != Some(0) && rule.matches(vault, route, object))
            .map(|rule| Duration::from_millis(rule.latency_ms.unwrap_or(0)))
            .sum()
    }

    /// Applies every matching rule: latencies add up, the first status wins; each matched rule
    /// uses up one of its `times`.
    pub fn hit(&self, vault: &str, route: &str, object: &str) -> FaultHit {
        let mut rules = lock(&self.rules);
        let mut hit = FaultHit::default();
        for rule in rules.iter_mut() {
            if rule.times == Some(0) || !rule.matches(vault, route, object) {
                continue;
            }
            if let Some(t) = rule.times.as_mut() {
                *t -= 1;
            }
            hit.latency += Duration::from_millis(rule.latency_ms.unwrap_or(0));
            hit.reset |= rule.reset;
            if hit.status.is_none() {
                hit.status = rule.status.map(|s| (s, rule.retry_after));
            }
        }
        rules.retain(|r| r.times != Some(0));
        hit
    }
}

/// Glob match with `*` (any run) and `?` (one character).
pub(crate) fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("*", ""));
        assert!(glob("secret/*", "secret/db-password"));
        assert!(glob("secret/db-*", "secret/db-password"));
        assert!(!glob("secret/db-*", "secret/api-key"));
        assert!(glob("s?cret/a*b*c", "secret/axxbyyc"));
        assert!(!glob("secret/a", "secret/ab"));
        assert!(glob("secret.*", "secret.get"));
    }

    #[test]
    fn faults_count_down() {
        let t = FaultTable::default();
        t.set(vec![FaultRule {
            route: Some("secret.get".into()),
            status: Some(429),
            retry_after: Some(1),
            times: Some(2),
            ..Default::default()
        }]);
        assert_eq!(
            t.hit("demo", "secret.get", "secret/a").status,
            Some((429, Some(1)))
        );
        assert!(t.hit("demo", "secret.list", "").status.is_none());
        assert_eq!(
            t.hit("demo", "secret.get", "secret/a").status,
            Some((429, Some(1)))
        );
        assert!(t.hit("demo", "secret.get", "secret/a").status.is_none());
        assert!(t.get().is_empty());
    }

    #[test]
    fn reset_rules() {
        let reset = FaultRule {
            route: Some("secret.get".into()),
            reset: true,
            times: Some(1),
            ..Default::default()
        };
        assert!(reset.check().is_ok(), "reset alone is a fault");
        assert!(FaultRule::default().check().is_err());
        let json = serde_json::to_string(&reset).expect("json");
        assert_eq!(json, r#"{"route":"secret.get","times":1,"reset":true}"#);
        let t = FaultTable::default();
        t.set(vec![reset]);
        assert!(!t.hit("demo", "secret.list", "").reset);
        let hit = t.hit("demo", "secret.get", "secret/a");
        assert!(hit.reset && hit.status.is_none());
        assert!(!t.hit("demo", "secret.get", "secret/a").reset, "used up");
    }
}
