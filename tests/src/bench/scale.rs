//! Issue 18's scale run (`teos-bench --scale 100k|1m|10m`): one store of that many appointments,
//! [`PER_USER`] per user, measured as the `sizes` and `blocks` sections measure theirs; then, on
//! the same store, `get_appointment` latency for filled appointments and the admin API's
//! `get_tower_info` over gRPC.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bitcoin::secp256k1::SecretKey;
use serde_json::json;
use teos_proto::admin::private_tower_services_client::PrivateTowerServicesClient;
use teos_proto::admin::GetTowerInfoRequest;
use teosd::protocol::{sign_message, Locator};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use super::api::{client, load, post, prepare, register_all, BenchUser, LoadResult};
use super::daemon::Daemon;
use super::store::SizePoint;
use super::{hwm_bytes, median, mib, percentile, rss_bytes, Figure};
use crate::backend::Bitcoind;

/// Appointments per user in a scale run's store (10M: 100k users).
pub const PER_USER: usize = 100;
/// get_appointment requests, and requests in flight.
const GET_REQUESTS: usize = 4000;
const GET_IN_FLIGHT: usize = 16;
/// add_appointment requests of the sustained load (16 in flight) after which memory is read: enough
/// to fill and flush the `appointments` memtables several times (~360 bytes each, 8 MiB tables).
const SUSTAINED_REQUESTS: usize = 60_000;
/// get_tower_info calls timed on one open channel.
const TOWER_INFO_CALLS: usize = 20;
/// Longest a scale run's admin call may take before it counts as failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// `100k`, `1m` or `10m` as a count of appointments.
pub fn parse_scale(scale: &str) -> Option<usize> {
    match scale.to_ascii_lowercase().as_str() {
        "100k" => Some(100_000),
        "1m" => Some(1_000_000),
        "10m" => Some(10_000_000),
        _ => None,
    }
}

/// Latencies (ms, sorted) of `requests` `get_appointment` calls for filled appointments
/// (`samples`, in turn), `in_flight` outstanding, each over its own keep-alive connection;
/// signatures made before the clock starts. Every answer must be 200 `being_watched`.
pub async fn get_appointment_load(
    api_url: &str,
    samples: &[(SecretKey, Locator)],
    requests: usize,
    in_flight: usize,
) -> Result<Vec<f64>> {
    if samples.is_empty() {
        bail!("no filled appointments to ask for");
    }
    let bodies: Vec<Vec<u8>> = (0..requests)
        .map(|j| {
            let (secret, locator) = &samples[j % samples.len()];
            let signature = sign_message(format!("get appointment {locator}").as_bytes(), secret);
            serde_json::to_vec(&json!({"locator": locator.to_string(), "signature": signature}))
        })
        .collect::<Result<_, _>>()?;
    let bodies = Arc::new(bodies);
    let next = Arc::new(AtomicUsize::new(0));
    let url = format!("{api_url}/get_appointment");
    let mut tasks = Vec::new();
    for _ in 0..in_flight {
        let (http, url, bodies, next) = (client(1), url.clone(), bodies.clone(), next.clone());
        // Warm the connection so its set-up is not timed.
        http.get(format!("{api_url}/ping")).send().await?;
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let j = next.fetch_add(1, Ordering::Relaxed);
                let Some(body) = bodies.get(j) else { return Ok::<_, anyhow::Error>(latencies) };
                let sent = Instant::now();
                let (status, reply) = post(&http, &url, body.clone()).await?;
                latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
                if status != 200 || reply["status"] != "being_watched" {
                    bail!("get_appointment {j}: {status} {reply}");
                }
            }
        }));
    }
    let mut latencies = Vec::with_capacity(requests);
    for task in tasks {
        latencies.extend(task.await.context("get_appointment task")??);
    }
    latencies.sort_by(f64::total_cmp);
    Ok(latencies)
}

/// `get_tower_info` timed from the bench over gRPC (mutual TLS with the data directory's
/// certificates, as teos-cli connects): no process spawn in the figure.
#[derive(Debug, Clone)]
pub struct TowerInfoTimes {
    /// Connecting (TCP + TLS) and the first call.
    pub first_ms: f64,
    /// Each later call on the open channel, sorted.
    pub calls_ms: Vec<f64>,
    /// What the last call reported: users, watched appointments, trackers.
    pub counts: (u64, u64, u64),
}

/// Times [`TOWER_INFO_CALLS`] `get_tower_info` calls to the tower whose data directory is
/// `datadir` and admin port `rpc_port`.
pub async fn tower_info_times(datadir: &Path, rpc_port: u16) -> Result<TowerInfoTimes> {
    let read = |name: &str| std::fs::read_to_string(datadir.join(name)).with_context(|| format!("reading {name}"));
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.pem")?))
        .identity(Identity::from_pem(read("client.pem")?, read("client-key.pem")?))
        .domain_name("localhost");
    let started = Instant::now();
    let channel = Channel::from_shared(format!("https://127.0.0.1:{rpc_port}"))?
        .connect_timeout(CALL_TIMEOUT)
        .timeout(CALL_TIMEOUT)
        .tls_config(tls)?
        .connect()
        .await?;
    let mut admin = PrivateTowerServicesClient::new(channel);
    admin.get_tower_info(GetTowerInfoRequest {}).await?;
    let first_ms = started.elapsed().as_secs_f64() * 1000.0;
    let mut calls_ms = Vec::with_capacity(TOWER_INFO_CALLS);
    let mut counts = (0, 0, 0);
    for _ in 0..TOWER_INFO_CALLS {
        let sent = Instant::now();
        let info = admin.get_tower_info(GetTowerInfoRequest {}).await?.into_inner();
        calls_ms.push(sent.elapsed().as_secs_f64() * 1000.0);
        counts = (info.n_registered_users, info.n_watcher_appointments, info.n_responder_trackers);
    }
    calls_ms.sort_by(f64::total_cmp);
    Ok(TowerInfoTimes { first_ms, calls_ms, counts })
}

/// The add_appointment latency of `point`'s load, then teosd started again on its store for
/// `get_appointment` and `get_tower_info`.
pub async fn request_figures(bitcoind: &Bitcoind, point: &SizePoint) -> Vec<Figure> {
    let n = point.stored;
    let load = &point.load;
    let mut figures = vec![Figure::new(
        format!("add_appointment p99, 16 in flight, {n} stored"),
        load.p(99.0),
        "ms",
        format!(
            "{} requests from 16 new users after the fill (the sizes load): {:.0}/s, p50 {:.2} ms",
            load.requests,
            load.throughput(),
            load.p(50.0)
        ),
    )
    .at_most(10.0, "< 10 ms")];
    let measured = async {
        let mut daemon = Daemon::start(bitcoind, &point.datadir, &[]).await?;
        let gets = get_appointment_load(&daemon.api_url, &point.samples, GET_REQUESTS, GET_IN_FLIGHT).await;
        let info = tower_info_times(&point.datadir, daemon.rpc_port).await;
        let sustained = sustained_memory(&daemon).await;
        daemon.stop()?;
        Ok::<_, anyhow::Error>((gets, info, sustained))
    };
    let (gets, info, sustained) = match measured.await {
        Ok(done) => done,
        Err(e) => {
            figures.push(Figure::not_measured("get_appointment, get_tower_info", "ms", format!("failed: {e:#}")));
            return figures;
        }
    };
    match gets {
        Ok(ms) => figures.push(Figure::new(
            format!("get_appointment p99, {GET_IN_FLIGHT} in flight, {n} stored"),
            percentile(&ms, 99.0),
            "ms",
            format!(
                "{} requests for {} filled appointments of as many users (a restarted tower: cold cache), p50 {:.2} ms",
                ms.len(),
                point.samples.len(),
                percentile(&ms, 50.0)
            ),
        )),
        Err(e) => figures.push(Figure::not_measured("get_appointment p99", "ms", format!("failed: {e:#}"))),
    }
    match info {
        Ok(mut t) => {
            let (users, watched, trackers) = t.counts;
            let max = percentile(&t.calls_ms, 100.0);
            let mut f = Figure::new(
                format!("get_tower_info (teos-cli gettowerinfo), {n} stored"),
                max,
                "ms",
                format!(
                    "slowest of {} calls over gRPC from the bench (mutual TLS, one open channel; median {:.2} ms; \
                     connecting + first call {:.1} ms); it reported {users} users, {watched} watched, {trackers} trackers",
                    t.calls_ms.len(),
                    median(&mut t.calls_ms),
                    t.first_ms
                ),
            )
            .at_most(100.0, "< 100 ms");
            if watched < n as u64 {
                f.pass = Some(false);
                f.note = format!("{}; fewer watched appointments than were filled", f.note);
            }
            figures.push(f);
        }
        Err(e) => figures.push(Figure::not_measured("get_tower_info", "ms", format!("failed: {e:#}"))),
    }
    match sustained {
        Ok((result, rss, hwm)) => {
            let note = format!(
                "after the requests above and {} add_appointment at 16 in flight ({:.0}/s, p99 {:.2} ms): \
                 memtables filled and flushed, block cache warm; VmRSS at the end {:.1} MiB",
                result.requests,
                result.throughput(),
                result.p(99.0),
                mib(rss)
            );
            figures.push(
                Figure::new(format!("VmHWM (peak RSS) under a sustained load, {n} stored"), mib(hwm), "MiB", note)
                    .at_most(96.0, "< 96 MiB"),
            );
        }
        Err(e) => figures.push(Figure::not_measured("VmHWM under a sustained load", "MiB", format!("failed: {e:#}"))),
    }
    figures
}

/// [`SUSTAINED_REQUESTS`] add_appointment from 16 new users; then VmRSS and VmHWM.
async fn sustained_memory(daemon: &Daemon) -> Result<(LoadResult, u64, u64)> {
    let salt = 0x5ca1e;
    let users: Vec<BenchUser> = (0..16).map(|i| BenchUser::new(salt, i)).collect();
    register_all(&daemon.api_url, &users).await?;
    let bodies = tokio::task::spawn_blocking(move || prepare(salt, SUSTAINED_REQUESTS, &users)).await?;
    let result = load(&daemon.api_url, daemon.pid(), bodies, 16).await?;
    let pid = daemon.pid();
    let rss = rss_bytes(pid).context("no VmRSS")?;
    let hwm = hwm_bytes(pid).context("no VmHWM")?;
    Ok((result, rss, hwm))
}
