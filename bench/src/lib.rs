//! What the benchmark binaries share: percentiles, process measurements from `/proc`, the
//! results file they write, and hand-rolled SVG charts for `docs/benchmarks.md`.

#![forbid(unsafe_code)]

pub mod svg;

use std::path::Path;
use std::time::Duration;

/// The nearest-rank percentile `p` (0 to 100) of `samples`; zero when there are none.
pub fn percentile(samples: &[Duration], p: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let mut sorted = samples.to_vec();
    sorted.sort();
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Milliseconds as a float, for results files.
pub fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A `/proc/<pid>/status` field in KiB (`VmRSS`, `VmHWM`, `RssAnon`, `RssFile`); 0 when the
/// process or field is gone.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Resident set size in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS")
}

/// CPU seconds (user + system, all threads) the process used so far, from `/proc/<pid>/stat`.
/// Clock ticks are USER_HZ, which Linux fixes at 100 on the x86 and arm ABIs.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name (field 2) may hold spaces; fields after its closing parenthesis are fixed.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// The machine a run measured, as Markdown list items: CPU, cores, memory, kernel (with
/// `setting`, where the processes ran) and the load average now (with `noise`, what the shared
/// cores make noisy and what not).
pub fn machine(setting: &str, noise: &str) -> String {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.split_whitespace().next()?.parse::<f64>().ok())
        .map(|k| format!("{:.1} GiB", k / 1024.0 / 1024.0))
        .unwrap_or_default();
    let kernel = read("/proc/sys/kernel/osrelease");
    format!(
        "- CPU: {cpu}, {cores} cores available to the run\n- memory: {mem}\n- kernel: {} ({setting})\n- load average when the report was written: {} (other work shares these cores, so {noise})\n",
        kernel.trim(),
        load_average()
    )
}

/// The 1, 5 and 15 minute load averages, as `/proc/loadavg` shows them.
pub fn load_average() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    load.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The heading of the section `bench/run.sh cluster-budget` writes into docs/benchmarks.md
/// (a full run keeps it).
pub const CLUSTER_BUDGET_HEADING: &str = "## A whole cluster's Key Vault budget";

/// The section of Markdown `doc` that starts with the line `heading`, up to the next `## `
/// heading (or the end).
pub fn section<'a>(doc: &'a str, heading: &str) -> Option<&'a str> {
    let start = doc
        .match_indices(heading)
        .map(|(i, _)| i)
        .find(|&i| i == 0 || doc[..i].ends_with('\n'))?;
    let rest = &doc[start + heading.len()..];
    let end = rest
        .find("\n## ")
        .map_or(doc.len(), |i| start + heading.len() + i + 1);
    Some(&doc[start..end])
}

/// `doc` with the section that starts with `new`'s first line replaced by `new`, or `new`
/// inserted before `before` (a heading line) when there is none, or appended.
pub fn replace_section(doc: &str, new: &str, before: &str) -> String {
    let heading = new.lines().next().unwrap_or_default();
    if let Some(old) = section(doc, heading) {
        return doc.replacen(old, new, 1);
    }
    match section(doc, before) {
        Some(next) => doc.replacen(next, &format!("{new}{next}"), 1),
        None => format!("{doc}{new}"),
    }
}

/// Writes `value` as pretty JSON to `dir/name`, creating `dir`.
pub fn write_json(dir: &Path, name: &str, value: &serde_json::Value) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut text = serde_json::to_string_pretty(value).map_err(std::io::Error::other)?;
    text.push('\n');
    std::fs::write(dir.join(name), text)
}

/// How the binary at `path` is linked, and its size in bytes: "static" (no program
/// interpreter, like the images' musl builds) or "dynamic" (a glibc build that maps shared
/// libraries, whose pages count in its RSS).
pub fn binary_kind(path: &Path) -> std::io::Result<(&'static str, u64)> {
    use object::read::elf::{ElfFile64, ProgramHeader as _};
    let bytes = std::fs::read(path)?;
    let elf = ElfFile64::<object::Endianness>::parse(&*bytes).map_err(std::io::Error::other)?;
    let endian = elf.endian();
    let dynamic = elf
        .elf_program_headers()
        .iter()
        .any(|header| header.p_type(endian) == object::elf::PT_INTERP);
    Ok((
        if dynamic { "dynamic" } else { "static" },
        bytes.len() as u64,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let s: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&s, 50.0), Duration::from_millis(50));
        assert_eq!(percentile(&s, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&s[..3], 99.0), Duration::from_millis(3));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
    }

    #[test]
    fn sections_are_found_and_replaced() {
        let doc = "# T\n\n## A\n\na\n\n## Raw numbers\n\nraw\n";
        assert_eq!(section(doc, "## A"), Some("## A\n\na\n\n"));
        assert_eq!(section(doc, "## B"), None);
        let added = replace_section(doc, "## B\n\nb\n\n", "## Raw numbers");
        assert_eq!(
            added,
            "# T\n\n## A\n\na\n\n## B\n\nb\n\n## Raw numbers\n\nraw\n"
        );
        let again = replace_section(&added, "## B\n\nc\n\n", "## Raw numbers");
        assert_eq!(again, added.replace("\nb\n", "\nc\n"));
        assert_eq!(
            section(&again, "## Raw numbers"),
            Some("## Raw numbers\n\nraw\n")
        );
    }

    #[test]
    fn own_process_measurements() {
        let pid = std::process::id();
        assert!(rss_kib(pid) > 0);
        assert!(status_kib(pid, "VmHWM") >= rss_kib(pid) / 2);
        assert!(cpu_seconds(pid) >= 0.0);
        assert_eq!(status_kib(u32::MAX, "VmRSS"), 0);
    }
}
