//! The tower's Prometheus metrics: one [`Registry`] per tower (never the process-wide default, so
//! that towers in one test process do not share counters), the handles the code records through,
//! and the text exposition `GET /metrics` serves (`api::metrics`). Names and meanings are listed in
//! `docs/operations.md`; [`NAMES`] holds every one of them, for the tests that keep the docs and the
//! Grafana dashboard honest.
//!
//! Costs on hot paths: an appointment records one store-commit observation and one HTTP request
//! (atomic adds into series resolved once, see [`HttpSeries`]); nothing takes a lock. Gauges that
//! reflect state (users, appointments, trackers, tips, disk) are set at scrape time from counters
//! the tower keeps anyway ([`StateGauges`]): a scrape reads no store.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Every metric name the tower exposes (histograms by their base name).
pub const NAMES: &[&str] = &[
    "teos_users",
    "teos_appointments",
    "teos_appointments_watched",
    "teos_trackers",
    "teos_chain_tip_height",
    "teos_bitcoind_tip_height",
    "teos_bitcoind_reachable",
    "teos_store_ok",
    "teos_disk_free_bytes",
    "teos_disk_reserve_bytes",
    "teos_blocks_connected_total",
    "teos_blocks_disconnected_total",
    "teos_block_stage_seconds",
    "teos_breaches_total",
    "teos_penalties_sent_total",
    "teos_penalties_confirmed_total",
    "teos_penalties_refused_total",
    "teos_http_requests_total",
    "teos_http_request_duration_seconds",
    "teos_store_commit_duration_seconds",
    "teos_store_commit_failures_total",
];

/// A stage of a connected block, as the `block connected` log line names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockStage {
    /// `getblock` (or the ZMQ block) and decoding.
    Fetch,
    /// Proof of work, merkle root, waiting for the requests in flight.
    Check,
    /// The listeners' own work.
    Scan,
    /// `sendrawtransaction` calls.
    Broadcast,
    /// The block's batch made durable.
    Commit,
    /// From starting to fetch to committed.
    Total,
}

impl BlockStage {
    fn label(self) -> &'static str {
        match self {
            BlockStage::Fetch => "fetch",
            BlockStage::Check => "check",
            BlockStage::Scan => "scan",
            BlockStage::Broadcast => "broadcast",
            BlockStage::Commit => "commit",
            BlockStage::Total => "total",
        }
    }
}

/// Why a penalty was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PenaltySend {
    /// Its dispute was found in a block.
    Breach,
    /// Its dispute was seen in the mempool.
    Mempool,
    /// Sent again (refused before, or unconfirmed for `rebroadcast_after` blocks).
    Again,
}

impl PenaltySend {
    fn label(self) -> &'static str {
        match self {
            PenaltySend::Breach => "breach",
            PenaltySend::Mempool => "mempool",
            PenaltySend::Again => "again",
        }
    }
}

/// The public API's routes, as labels: a fixed set, so that a stranger's paths cannot grow the
/// series (anything else is `other`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpRoute {
    /// `/register`
    Register,
    /// `/add_appointment`
    AddAppointment,
    /// `/get_appointment`
    GetAppointment,
    /// `/get_subscription_info`
    GetSubscriptionInfo,
    /// `/ping`
    Ping,
    /// `/health`
    Health,
    /// Anything else.
    Other,
}

impl HttpRoute {
    const ALL: [HttpRoute; 7] = [
        HttpRoute::Register,
        HttpRoute::AddAppointment,
        HttpRoute::GetAppointment,
        HttpRoute::GetSubscriptionInfo,
        HttpRoute::Ping,
        HttpRoute::Health,
        HttpRoute::Other,
    ];

    /// The route of a request path.
    pub fn of_path(path: &str) -> HttpRoute {
        match path {
            "/register" => HttpRoute::Register,
            "/add_appointment" => HttpRoute::AddAppointment,
            "/get_appointment" => HttpRoute::GetAppointment,
            "/get_subscription_info" => HttpRoute::GetSubscriptionInfo,
            "/ping" => HttpRoute::Ping,
            "/health" => HttpRoute::Health,
            _ => HttpRoute::Other,
        }
    }

    fn label(self) -> &'static str {
        match self {
            HttpRoute::Register => "register",
            HttpRoute::AddAppointment => "add_appointment",
            HttpRoute::GetAppointment => "get_appointment",
            HttpRoute::GetSubscriptionInfo => "get_subscription_info",
            HttpRoute::Ping => "ping",
            HttpRoute::Health => "health",
            HttpRoute::Other => "other",
        }
    }
}

/// The statuses the public API answers with, as labels (any other counts as `other`).
const HTTP_CODES: [u16; 16] = [200, 400, 401, 404, 405, 408, 411, 413, 415, 429, 431, 500, 503, 504, 507, 0];

fn code_index(status: u16) -> usize {
    HTTP_CODES.iter().position(|c| *c == status).unwrap_or(HTTP_CODES.len() - 1)
}

fn code_label(index: usize) -> String {
    match HTTP_CODES[index] {
        0 => "other".to_string(),
        code => code.to_string(),
    }
}

/// The HTTP series, each resolved on first use and kept: recording a request is then two atomic
/// adds and a histogram observation, without the vector's lock.
struct HttpSeries {
    requests: IntCounterVec,
    duration: HistogramVec,
    counters: [[OnceLock<IntCounter>; HTTP_CODES.len()]; HttpRoute::ALL.len()],
    durations: [OnceLock<Histogram>; HttpRoute::ALL.len()],
}

/// The state the tower keeps in memory, set into the gauges at scrape time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateGauges {
    /// Registered users.
    pub users: u64,
    /// Appointments stored (watched, or triggered and followed by a tracker).
    pub appointments: u64,
    /// Trackers by state: broadcast, refused, confirmed, conflicted.
    pub trackers: [u64; 4],
    /// The last block the tower processed.
    pub tip_height: u32,
    /// bitcoind's best height when last seen.
    pub bitcoind_height: Option<u32>,
    /// Whether bitcoind answered the last round.
    pub bitcoind_reachable: bool,
    /// Whether the store took the last round's writes.
    pub store_ok: bool,
    /// Free bytes in the data directory (`None`: could not be read).
    pub disk_free_bytes: Option<u64>,
    /// The disk reserve.
    pub disk_reserve_bytes: u64,
}

/// Why bitcoind refused a penalty, as `teos_penalties_refused_total` labels it (see
/// `chain::BroadcastOutcome::refusal_reason`).
pub const REFUSAL_REASONS: [&str; 4] = ["inputs_missing_or_spent", "policy", "decode", "other"];

/// The tracker states, in the order of [`StateGauges::trackers`].
pub const TRACKER_STATES: [&str; 4] = ["broadcast", "refused", "confirmed", "conflicted"];

struct Inner {
    registry: Registry,
    users: IntGauge,
    appointments: IntGauge,
    appointments_watched: IntGauge,
    trackers: IntGaugeVec,
    tip_height: IntGauge,
    bitcoind_height: IntGauge,
    bitcoind_reachable: IntGauge,
    store_ok: IntGauge,
    disk_free: IntGauge,
    disk_reserve: IntGauge,
    blocks_connected: IntCounter,
    blocks_disconnected: IntCounter,
    block_stages: HistogramVec,
    breaches: IntCounter,
    penalties_sent: IntCounterVec,
    penalties_confirmed: IntCounter,
    penalties_refused: IntCounterVec,
    http: HttpSeries,
    commit_duration: Histogram,
    commit_failures: IntCounter,
}

/// The tower's metrics. Cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Seconds buckets for block stages: 1 ms to 60 s.
const BLOCK_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
/// Seconds buckets for requests and commits: 100 µs to 10 s.
const FAST_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let registry = Registry::new();
        let inner = Inner {
            users: gauge(&registry, "teos_users", "Registered users"),
            appointments: gauge(&registry, "teos_appointments", "Appointments stored (watched or triggered)"),
            appointments_watched: gauge(
                &registry,
                "teos_appointments_watched",
                "Appointments being watched: stored, less those triggered (teos_trackers)",
            ),
            trackers: gauge_vec(&registry, "teos_trackers", "Trackers (breaches being answered) by state", &["state"]),
            tip_height: gauge(&registry, "teos_chain_tip_height", "Height of the last block the tower processed"),
            bitcoind_height: gauge(&registry, "teos_bitcoind_tip_height", "bitcoind's best height when last seen"),
            bitcoind_reachable: gauge(&registry, "teos_bitcoind_reachable", "1 if bitcoind answered the last round"),
            store_ok: gauge(&registry, "teos_store_ok", "1 if the store took the last round's writes"),
            disk_free: gauge(&registry, "teos_disk_free_bytes", "Free bytes in the data directory's file system"),
            disk_reserve: gauge(&registry, "teos_disk_reserve_bytes", "Free bytes below which public writes stop"),
            blocks_connected: counter(&registry, "teos_blocks_connected_total", "Blocks processed (connected)"),
            blocks_disconnected: counter(&registry, "teos_blocks_disconnected_total", "Blocks disconnected (reorgs)"),
            block_stages: histogram_vec(
                &registry,
                "teos_block_stage_seconds",
                "Time a connected block spent in each stage (total: fetch to commit)",
                &["stage"],
                BLOCK_BUCKETS,
            ),
            breaches: counter(&registry, "teos_breaches_total", "Breaches found (trackers created)"),
            penalties_sent: counter_vec(
                &registry,
                "teos_penalties_sent_total",
                "sendrawtransaction calls for penalties, answered, by why they were sent",
                &["why"],
            ),
            penalties_confirmed: counter(&registry, "teos_penalties_confirmed_total", "Penalties seen confirmed"),
            penalties_refused: counter_vec(
                &registry,
                "teos_penalties_refused_total",
                "Penalties bitcoind refused, by reason",
                &["reason"],
            ),
            http: HttpSeries {
                requests: counter_vec(
                    &registry,
                    "teos_http_requests_total",
                    "Public API requests answered, by route and status",
                    &["route", "code"],
                ),
                duration: histogram_vec(
                    &registry,
                    "teos_http_request_duration_seconds",
                    "Public API request latency (to the response's head), by route",
                    &["route"],
                    FAST_BUCKETS,
                ),
                counters: Default::default(),
                durations: Default::default(),
            },
            commit_duration: histogram(
                &registry,
                "teos_store_commit_duration_seconds",
                "Store batch commits (durable writes), successful or not",
                FAST_BUCKETS,
            ),
            commit_failures: counter(&registry, "teos_store_commit_failures_total", "Store batch commits that failed"),
            registry,
        };
        // Series with a known, fixed set of labels exist from the start (at zero), so that rates
        // and dashboards see them before the first event.
        for why in [PenaltySend::Breach, PenaltySend::Mempool, PenaltySend::Again] {
            inner.penalties_sent.with_label_values(&[why.label()]);
        }
        for reason in REFUSAL_REASONS {
            inner.penalties_refused.with_label_values(&[reason]);
        }
        for state in TRACKER_STATES {
            inner.trackers.with_label_values(&[state]);
        }
        for stage in [
            BlockStage::Fetch,
            BlockStage::Check,
            BlockStage::Scan,
            BlockStage::Broadcast,
            BlockStage::Commit,
            BlockStage::Total,
        ] {
            inner.block_stages.with_label_values(&[stage.label()]);
        }
        Metrics(Arc::new(inner))
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> Result<String, prometheus::Error> {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.0.registry.gather(), &mut out)?;
        String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }

    /// Sets the state gauges.
    pub fn set_state(&self, state: &StateGauges) {
        let m = &self.0;
        m.users.set(clamp(state.users));
        m.appointments.set(clamp(state.appointments));
        let triggered: u64 = state.trackers.iter().sum();
        m.appointments_watched.set(clamp(state.appointments.saturating_sub(triggered)));
        for (state_name, count) in TRACKER_STATES.iter().zip(state.trackers) {
            m.trackers.with_label_values(&[*state_name]).set(clamp(count));
        }
        m.tip_height.set(i64::from(state.tip_height));
        m.bitcoind_height.set(state.bitcoind_height.map_or(-1, i64::from));
        m.bitcoind_reachable.set(i64::from(state.bitcoind_reachable));
        m.store_ok.set(i64::from(state.store_ok));
        m.disk_free.set(state.disk_free_bytes.map_or(-1, clamp));
        m.disk_reserve.set(clamp(state.disk_reserve_bytes));
    }

    /// A block connected, with the time each stage took.
    pub fn block_connected(&self, stages: &[(BlockStage, Duration)]) {
        self.0.blocks_connected.inc();
        for (stage, took) in stages {
            self.0.block_stages.with_label_values(&[stage.label()]).observe(took.as_secs_f64());
        }
    }

    /// A block disconnected.
    pub fn block_disconnected(&self) {
        self.0.blocks_disconnected.inc();
    }

    /// A breach answered (its tracker committed).
    pub fn breach(&self) {
        self.0.breaches.inc();
    }

    /// bitcoind answered a penalty sent for `why`; `refused` is the reason if it refused it.
    pub fn penalty_sent(&self, why: PenaltySend, refused: Option<&'static str>) {
        self.0.penalties_sent.with_label_values(&[why.label()]).inc();
        if let Some(reason) = refused {
            self.0.penalties_refused.with_label_values(&[reason]).inc();
        }
    }

    /// A penalty seen confirmed (its tracker's new state committed).
    pub fn penalty_confirmed(&self) {
        self.0.penalties_confirmed.inc();
    }

    /// A store commit that took `took`, and whether it succeeded.
    pub fn store_commit(&self, took: Duration, ok: bool) {
        self.0.commit_duration.observe(took.as_secs_f64());
        if !ok {
            self.0.commit_failures.inc();
        }
    }

    /// A public API request on `route` answered with `status` after `took`.
    pub fn http_request(&self, route: HttpRoute, status: u16, took: Duration) {
        let http = &self.0.http;
        let r = HttpRoute::ALL.iter().position(|x| *x == route).unwrap_or(HttpRoute::ALL.len() - 1);
        let c = code_index(status);
        let counter =
            http.counters[r][c].get_or_init(|| http.requests.with_label_values(&[route.label(), &code_label(c)]));
        counter.inc();
        let duration = http.durations[r].get_or_init(|| http.duration.with_label_values(&[route.label()]));
        duration.observe(took.as_secs_f64());
    }
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

// Registration only fails on a duplicate name or a malformed one: both are programming errors,
// caught by the tests (every metric is registered in `Metrics::new`, which every test runs).
fn register<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: T) -> T {
    registry.register(Box::new(metric.clone())).expect("metric names are unique and well formed");
    metric
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    register(registry, IntGauge::new(name, help).expect("valid gauge"))
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(registry, IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge vector"))
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    register(registry, IntCounter::new(name, help).expect("valid counter"))
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(registry, IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter vector"))
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: &[f64]) -> Histogram {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    register(registry, Histogram::with_opts(opts).expect("valid histogram"))
}

fn histogram_vec(registry: &Registry, name: &str, help: &str, labels: &[&str], buckets: &[f64]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    register(registry, HistogramVec::new(opts, labels).expect("valid histogram vector"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_labels_are_a_fixed_set_whatever_the_path_or_status() {
        let metrics = Metrics::new();
        for path in ["/register", "/../etc/passwd", "/register/", "/x?y", "/add_appointment"] {
            metrics.http_request(HttpRoute::of_path(path), 200, Duration::from_millis(1));
        }
        metrics.http_request(HttpRoute::Other, 599, Duration::from_millis(1));
        metrics.http_request(HttpRoute::Other, 404, Duration::from_millis(1));
        let text = metrics.encode().unwrap();
        assert!(text.contains(r#"teos_http_requests_total{code="200",route="register"} 1"#), "{text}");
        assert!(text.contains(r#"teos_http_requests_total{code="200",route="other"} 3"#), "{text}");
        assert!(text.contains(r#"teos_http_requests_total{code="other",route="other"} 1"#), "{text}");
        assert!(text.contains(r#"teos_http_requests_total{code="404",route="other"} 1"#), "{text}");
        assert!(text.contains(r#"teos_http_request_duration_seconds_count{route="other"} 5"#), "{text}");
        assert!(!text.contains("passwd") && !text.contains("599"));
    }

    #[test]
    fn watched_appointments_are_stored_ones_less_trackers() {
        let metrics = Metrics::new();
        metrics.set_state(&StateGauges {
            users: 2,
            appointments: 10,
            trackers: [1, 2, 0, 1],
            tip_height: 7,
            bitcoind_height: None,
            disk_free_bytes: Some(4096),
            ..StateGauges::default()
        });
        let text = metrics.encode().unwrap();
        for line in [
            "teos_users 2",
            "teos_appointments 10",
            "teos_appointments_watched 6",
            r#"teos_trackers{state="refused"} 2"#,
            "teos_chain_tip_height 7",
            "teos_bitcoind_tip_height -1",
            "teos_disk_free_bytes 4096",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from\n{text}");
        }
    }
}
