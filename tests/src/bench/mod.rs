//! The benchmark harness behind `teos-bench` (`./scripts/bench`, `docs/performance.md`): the real
//! `teosd` binary against the in-process regtest node, measured from outside through `/proc`,
//! its HTTP API and its log.
//!
//! * [`daemon`]: runs `teosd` and reads its log, pid and readiness.
//! * [`api`]: add_appointment throughput, latency, server CPU, and the crypto floor.
//! * [`store`]: memory, disk and start-up time with many appointments stored.
//! * [`chain`]: block processing time and breach-to-response latency.
//! * [`attack`]: honest throughput and latency while strangers attack the public API.
//! * [`bounded`]: what one block or one request costs when an abuser shapes the store.
//! * [`mempool`]: a dispute in the mempool answered, and what a big mempool costs to watch.
//! * [`scale`]: one store of 100k, 1M or 10M appointments: its requests and admin calls.

pub mod api;
pub mod attack;
pub mod bounded;
pub mod chain;
pub mod daemon;
pub mod mempool;
pub mod scale;
pub mod store;

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

/// Bytes of the encrypted blobs the bench stores (the reference measurement's size).
pub const BLOB_SIZE: usize = 253;

/// One measured figure, with the target for it when there is one.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    /// What was measured, e.g. `add_appointment throughput, 64 in flight`.
    pub name: String,
    /// The value, or `None` when it was not measured.
    pub value: Option<f64>,
    pub unit: String,
    /// The target, in words (`>= 2000/s`), if the issue sets one.
    pub target: Option<String>,
    /// `Some(true)` met, `Some(false)` missed, `None` no target or not measured.
    pub pass: Option<bool>,
    /// How it was measured, or why it was not.
    pub note: String,
}

impl Figure {
    pub fn new(name: impl Into<String>, value: f64, unit: &str, note: impl Into<String>) -> Figure {
        Figure { name: name.into(), value: Some(value), unit: unit.into(), target: None, pass: None, note: note.into() }
    }

    pub fn not_measured(name: impl Into<String>, unit: &str, why: impl Into<String>) -> Figure {
        Figure { name: name.into(), value: None, unit: unit.into(), target: None, pass: None, note: why.into() }
    }

    /// Target: the value must be at most `max`.
    pub fn at_most(mut self, max: f64, target: &str) -> Figure {
        self.target = Some(target.into());
        self.pass = self.value.map(|v| v <= max);
        self
    }

    /// Target: the value must be at least `min`.
    pub fn at_least(mut self, min: f64, target: &str) -> Figure {
        self.target = Some(target.into());
        self.pass = self.value.map(|v| v >= min);
        self
    }
}

/// Bytes in MiB.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The `p`-th percentile (0..=100) of sorted `values` (nearest rank).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The median of `values` (sorted here).
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    percentile(values, 50.0)
}

/// Clock ticks per second of `/proc/<pid>/stat` times (`getconf CLK_TCK`, 100 if unknown).
pub fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// User plus system CPU time of process `pid`, all threads (from `/proc/<pid>/stat`).
pub fn process_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: fields are counted after its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after `pid (comm)`.
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(Duration::from_secs_f64(ticks / clock_ticks()))
}

/// CPU time of the calling thread, in nanoseconds (`/proc/thread-self/schedstat`, else
/// `/proc/thread-self/stat` at clock-tick resolution).
pub fn thread_cpu() -> Option<Duration> {
    if let Ok(s) = std::fs::read_to_string("/proc/thread-self/schedstat") {
        if let Some(ns) = s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()) {
            return Some(Duration::from_nanos(ns));
        }
    }
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(Duration::from_secs_f64(ticks / clock_ticks()))
}

/// Resident memory of process `pid` in bytes (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Peak resident memory (VmHWM) of process `pid`, in bytes.
pub fn hwm_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Disk usage of a directory tree in bytes (allocated blocks, as `du` counts them).
pub fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|entry| match entry.metadata() {
            Ok(m) if m.is_dir() => disk_usage(&entry.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

/// `/proc/loadavg`'s three load averages.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// Deterministic pseudo-random bytes (SHA-256 in counter mode over `seed`): incompressible, as
/// encrypted blobs are.
pub fn pseudo_random(seed: &[u8], len: usize) -> Vec<u8> {
    use bitcoin::hashes::{sha256, Hash};
    let mut out = Vec::with_capacity(len + 32);
    let mut counter = 0u32;
    while out.len() < len {
        let mut input = seed.to_vec();
        input.extend_from_slice(&counter.to_be_bytes());
        out.extend_from_slice(sha256::Hash::hash(&input).as_byte_array());
        counter += 1;
    }
    out.truncate(len);
    out
}
