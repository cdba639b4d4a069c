//! `teos-bench`: measures the real `teosd` binary against the in-process regtest node (or
//! `BITCOIND_EXE`) and prints a table of figures next to the targets of issue 8, writing the
//! same as JSON. Run it through `./scripts/bench` (release build); see `docs/performance.md`.
//!
//! ```text
//! teos-bench [--full] [--only load|attacks|bounded|mempool|sizes|blocks|reaction] [--out <path.json>]
//! teos-bench --scale 100k|1m|10m [--out <path.json>]
//! ```

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Result};
use serde_json::json;
use teos_tests::backend::Bitcoind;
use teos_tests::bench::api::{crypto_cost, load, prepare, register_all, BenchUser, CryptoCost, LoadResult};
use teos_tests::bench::attack::{honest_under, Attack, ATTACKS};
use teos_tests::bench::bounded;
use teos_tests::bench::chain::{
    block_figures, block_processing, python_scan_figure, reaction, wait_subscribed, BlockPoint, BLOCK_TXS,
};
use teos_tests::bench::daemon::{teosd_path, Daemon};
use teos_tests::bench::mempool;
use teos_tests::bench::scale::{self, parse_scale};
use teos_tests::bench::store::{fill, measure, size_figures, SizeRun, PER_USER};
use teos_tests::bench::{loadavg, median, mib, percentile, Figure, BLOB_SIZE};
use teos_tests::wallet::Funding;

/// What a mode runs.
struct Plan {
    name: &'static str,
    /// (requests in flight, requests sent).
    loads: Vec<(usize, usize)>,
    /// Users the load is spread over.
    users: u32,
    floor_iterations: usize,
    sizes: Vec<usize>,
    /// Appointments per user in the filled stores.
    per_user: usize,
    /// add_appointment requests after the fill, before the second memory reading.
    size_load: usize,
    restarts: usize,
    breaches: Vec<usize>,
    /// Times each count of `breaches` is measured (after one warm-up block).
    block_rounds: usize,
    reaction_trials: usize,
    /// Honest requests sent during each attack run.
    attack_requests: usize,
}

impl Plan {
    fn quick() -> Plan {
        Plan {
            name: "quick",
            loads: vec![(1, 200), (16, 2000), (64, 4000)],
            users: 256,
            floor_iterations: 2000,
            sizes: vec![0, 100_000],
            per_user: PER_USER,
            size_load: 1000,
            restarts: 2,
            breaches: vec![0, 1, 100],
            block_rounds: 1,
            reaction_trials: 3,
            attack_requests: 5000,
        }
    }

    fn full() -> Plan {
        Plan {
            name: "full",
            loads: vec![(1, 1000), (16, 10_000), (64, 30_000)],
            users: 1024,
            floor_iterations: 10_000,
            sizes: vec![0, 100_000, 1_000_000],
            per_user: PER_USER,
            size_load: 1000,
            restarts: 3,
            breaches: vec![0, 1, 100],
            block_rounds: 3,
            reaction_trials: 10,
            attack_requests: 10_000,
        }
    }

    /// Issue 18's run: the empty store and one of `stored` appointments, 100 per user.
    fn scale(stored: usize) -> Plan {
        Plan { name: "scale", sizes: vec![0, stored], per_user: scale::PER_USER, size_load: 4000, ..Plan::full() }
    }
}

struct Args {
    full: bool,
    out: PathBuf,
    /// Only this one of [`SECTIONS`], if given.
    only: Option<String>,
    /// `--scale`: this many appointments, sizes and blocks only, and the scale run's requests.
    scale: Option<usize>,
}

impl Args {
    fn runs(&self, section: &str) -> bool {
        if self.scale.is_some() {
            return section == "sizes" || section == "blocks";
        }
        self.only.as_deref().is_none_or(|only| only == section)
    }
}

/// The sections `--only` can pick.
const SECTIONS: [&str; 7] = ["load", "attacks", "bounded", "mempool", "sizes", "blocks", "reaction"];

fn parse_args() -> Result<Args> {
    let mut args = Args { full: false, out: PathBuf::from("target/bench/latest.json"), only: None, scale: None };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--full" => args.full = true,
            "--quick" => args.full = false,
            "--out" => match it.next() {
                Some(path) => args.out = PathBuf::from(path),
                None => bail!("--out needs a path"),
            },
            "--only" => match it.next() {
                Some(section) if SECTIONS.contains(&section.as_str()) => args.only = Some(section),
                _ => bail!("--only needs one of: {}", SECTIONS.join(", ")),
            },
            "--scale" => match it.next().as_deref().and_then(parse_scale) {
                Some(n) => args.scale = Some(n),
                None => bail!("--scale needs one of: 100k, 1m, 10m"),
            },
            "-h" | "--help" => {
                let sections = SECTIONS.join("|");
                println!("teos-bench [--full] [--only {sections}] [--out <path.json>]  (see docs/performance.md)");
                println!("teos-bench --scale 100k|1m|10m [--out <path.json>]");
                std::process::exit(0);
            }
            other => bail!("unknown argument `{other}` (try --help)"),
        }
    }
    if args.scale.is_some() && (args.only.is_some() || args.full) {
        bail!("--scale runs its own sections: not with --only or --full");
    }
    Ok(args)
}

fn fresh(root: &Path, name: &str) -> PathBuf {
    root.join(name)
}

/// add_appointment at each level of requests in flight, each on a fresh tower.
async fn load_levels(bitcoind: &Bitcoind, root: &Path, plan: &Plan) -> Result<Vec<LoadResult>> {
    let mut results = Vec::new();
    for (i, &(in_flight, requests)) in plan.loads.iter().enumerate() {
        let salt = 100 + i as u32;
        let mut daemon = Daemon::start(bitcoind, &fresh(root, &format!("load-{in_flight}")), &[]).await?;
        let users: Vec<BenchUser> = (0..plan.users).map(|u| BenchUser::new(salt, u)).collect();
        register_all(&daemon.api_url, &users).await?;
        let bodies = tokio::task::spawn_blocking(move || prepare(salt, requests, &users)).await?;
        let result = load(&daemon.api_url, daemon.pid(), bodies, in_flight).await?;
        daemon.stop()?;
        eprintln!(
            "  {in_flight:>2} in flight: {:.0}/s p50 {:.2} ms p99 {:.2} ms",
            result.throughput(),
            result.p(50.0),
            result.p(99.0)
        );
        results.push(result);
    }
    Ok(results)
}

fn load_figures(results: &[LoadResult], crypto: Option<CryptoCost>, floor_note: &str) -> Vec<Figure> {
    let mut figures = Vec::new();
    for r in results {
        let note = format!("{} requests, {} keep-alive connections, fresh store", r.requests, r.in_flight);
        let mut throughput =
            Figure::new(format!("add_appointment/s, {} in flight", r.in_flight), r.throughput(), "1/s", &note);
        if r.in_flight == 64 {
            throughput = throughput.at_least(2000.0, ">= 2000/s");
        }
        figures.push(throughput);
        figures.push(Figure::new(format!("add_appointment p50, {} in flight", r.in_flight), r.p(50.0), "ms", &note));
        let mut p99 = Figure::new(format!("add_appointment p99, {} in flight", r.in_flight), r.p(99.0), "ms", &note);
        if r.in_flight == 16 {
            p99 = p99.at_most(10.0, "< 10 ms");
        }
        figures.push(p99);
    }
    for r in results {
        let name = format!("teosd CPU per appointment, {} in flight", r.in_flight);
        figures.push(match r.cpu_per_appointment_us() {
            Some(us) => Figure::new(name, us, "µs", "utime+stime of /proc/<pid>/stat over the run / requests"),
            None => Figure::not_measured(name, "µs", "no /proc/<pid>/stat"),
        });
    }
    figures.extend(crypto_figures(crypto, floor_note));
    for r in results {
        let ratio_name = format!("CPU per appointment / raw floor ({} in flight)", r.in_flight);
        figures.push(match (r.cpu_per_appointment_us(), crypto) {
            (Some(cpu), Some(c)) => {
                let f = Figure::new(ratio_name, cpu / c.raw_us, "x", "both CPU time, same run");
                if r.in_flight == 64 {
                    f.at_most(2.0, "<= 2.0x")
                } else {
                    f
                }
            }
            _ => Figure::not_measured(ratio_name, "x", "CPU or floor not measured"),
        });
    }
    figures
}

/// The raw floor (libsecp256k1 on one context: recover + sign) and teosd's own signature path
/// over it.
fn crypto_figures(crypto: Option<CryptoCost>, note: &str) -> Vec<Figure> {
    let floor = "raw floor: libsecp256k1 recover + sign, one context";
    match crypto {
        Some(c) => vec![
            Figure::new(floor, c.raw_us, "µs", note),
            Figure::new(
                "teosd's signature path (protocol::recover_signer + TowerSigner::sign) / raw floor",
                c.ours_us / c.raw_us,
                "x",
                format!("{:.1} µs vs {:.1} µs, same thread, interleaved", c.ours_us, c.raw_us),
            ),
        ],
        None => vec![Figure::not_measured(floor, "µs", note)],
    }
}

/// The crypto floor (before and after), then add_appointment at each level of requests in flight.
async fn load_section(bitcoind: &Bitcoind, root: &Path, plan: &Plan) -> Vec<Figure> {
    eprintln!("crypto floor, add_appointment load ...");
    let mut figures = Vec::new();
    let iterations = plan.floor_iterations;
    let floor_before = tokio::task::spawn_blocking(move || crypto_cost(iterations)).await;
    let loads = load_levels(bitcoind, root, plan).await;
    let floor_after = tokio::task::spawn_blocking(move || crypto_cost(iterations)).await;
    let (floor_before, floor_after) = match (floor_before, floor_after) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => (Err(anyhow::anyhow!("{e}")), Err(anyhow::anyhow!("floor task"))),
    };
    let (floor, floor_note) = match (&floor_before, &floor_after) {
        (Ok(a), Ok(b)) => (
            Some(CryptoCost { raw_us: (a.raw_us + b.raw_us) / 2.0, ours_us: (a.ours_us + b.ours_us) / 2.0 }),
            format!(
                "thread CPU, {iterations} iterations before and after the load: {:.1} and {:.1} µs",
                a.raw_us, b.raw_us
            ),
        ),
        (Err(e), _) | (_, Err(e)) => (None, format!("failed: {e:#}")),
    };
    match loads {
        Ok(results) => figures.extend(load_figures(&results, floor, &floor_note)),
        Err(e) => {
            figures.push(Figure::not_measured("add_appointment load", "", format!("failed: {e:#}")));
            figures.extend(crypto_figures(floor, &floor_note));
        }
    }

    figures
}

/// Issue 14's four cases, each on a fresh tower.
async fn bounded_figures(bitcoind: &Bitcoind, funding: &mut Funding, root: &Path) -> Vec<Figure> {
    let mut figures = Vec::new();
    match bounded::crowd(bitcoind, funding, &fresh(root, "crowd"), 10_000, 100).await {
        Ok(c) => {
            let note = format!(
                "{} users at the locator of one {} B dispute (VmHWM {:.1} MiB before the block)",
                c.users,
                c.dispute_bytes,
                mib(c.hwm_before)
            );
            figures.push(
                Figure::new("peak RSS, 10,000 users at one 100 kB dispute", mib(c.hwm), "MiB", &note)
                    .at_most(256.0, "< 256 MiB"),
            );
            figures.push(Figure::new("that block's took_ms", c.took_ms, "ms", &note).at_most(2000.0, "< 2 s"));
        }
        Err(e) => figures.push(Figure::not_measured("10,000 users at one dispute", "", format!("failed: {e:#}"))),
    }
    match bounded::subscription(bitcoind, &fresh(root, "subscription"), 1_000_000).await {
        Ok(s) => {
            let note = format!(
                "{} locators streamed in {:.2} s; VmHWM after less VmHWM/VmRSS before",
                s.locators,
                s.took.as_secs_f64()
            );
            figures.push(
                Figure::new("get_subscription_info, 1M locators: peak RSS growth", mib(s.growth), "MiB", note)
                    .at_most(32.0, "< 32 MiB"),
            );
        }
        Err(e) => {
            figures.push(Figure::not_measured("get_subscription_info, 1M locators", "", format!("failed: {e:#}")))
        }
    }
    match bounded::expiry_wave(bitcoind, funding, &fresh(root, "expiry"), 100_000).await {
        Ok((answered, took)) => figures.push(
            Figure::new(
                "breach answered in a block where 100,000 users expire",
                answered,
                "ms",
                format!(
                    "mined -> dispute_responded (get_appointment polled every 1 ms); the block's took_ms {took:.1}"
                ),
            )
            .at_most(500.0, "< 500 ms"),
        ),
        Err(e) => figures.push(Figure::not_measured("100,000 users expiring", "", format!("failed: {e:#}"))),
    }
    match bounded::flooded_block(bitcoind, funding, &fresh(root, "flooded")).await {
        Ok((quiet, loaded)) => figures.push(
            Figure::new(
                "2000-tx block while 64 clients flood add_appointment / unloaded",
                loaded / quiet,
                "x",
                format!("took_ms {loaded:.1} against {quiet:.1} unloaded, one breach, same tower"),
            )
            .at_most(2.0, "<= 2x"),
        ),
        Err(e) => {
            figures.push(Figure::not_measured("block under an add_appointment flood", "", format!("failed: {e:#}")))
        }
    }
    figures
}

/// A dispute in the mempool answered over ZMQ rawtx, and what a big mempool costs to watch, on a
/// tower holding `stored` appointments.
async fn mempool_figures(
    bitcoind: &Bitcoind,
    funding: &mut Funding,
    root: &Path,
    stored: usize,
    trials: usize,
) -> Vec<Figure> {
    const MEMPOOL: usize = 50_000;
    let datadir = fresh(root, "mempool");
    let filled = async {
        Daemon::start(bitcoind, &datadir, &[]).await?.stop()?;
        let dir = datadir.clone();
        tokio::task::spawn_blocking(move || fill(&dir, stored, PER_USER, 601)).await??;
        mempool::run(bitcoind, funding, &datadir, trials, MEMPOOL).await
    };
    let m = match filled.await {
        Ok(m) => m,
        Err(e) => return vec![Figure::not_measured("mempool watching", "", format!("failed: {e:#}"))],
    };
    let reaction = |what: &str, mut r: mempool::Reactions| {
        let med = median(&mut r.penalty_ms);
        let max = percentile(&r.penalty_ms, 100.0);
        let floor = median(&mut r.dispute_ms);
        let note = format!(
            "{} trials; node's mempool checked every 0.2 ms; the node's own sendrawtransaction of the dispute: median {floor:.2} ms",
            r.penalty_ms.len()
        );
        [
            Figure::new(format!("dispute in mempool -> penalty accepted, ZMQ rawtx, {what}: median"), med, "ms", note)
                .at_most(50.0, "< 50 ms"),
            Figure::new(format!("dispute in mempool -> penalty accepted, ZMQ rawtx, {what}: max"), max, "ms", "")
                .at_most(50.0, "< 50 ms"),
            Figure::new(
                format!("that median / the node accepting the dispute, {what}"),
                med / floor,
                "x",
                "the penalty's way: ZMQ to teosd, probe, decrypt, sendrawtransaction",
            ),
        ]
    };
    let mut figures = Vec::new();
    figures.extend(reaction("empty mempool", m.reaction_empty));
    figures.extend(reaction(&format!("{} tx mempool", m.mempool_size), m.reaction_full));
    let per_mempool_tx = m.probe_ms * 1000.0 / m.polled_new as f64;
    let per_block_tx = m.block_scan_ms * 1000.0 / m.block_txs as f64;
    figures.push(Figure::new(
        format!("probe per mempool tx / per block tx, {} stored", stored),
        per_mempool_tx / per_block_tx,
        "x",
        format!(
            "polls finding {} new txs (the first poll left out): probes {:.1} ms ({per_mempool_tx:.2} us/tx), \
             whole polls {:.1} ms; a {}-tx block's scan {:.1} ms ({per_block_tx:.2} us/tx)",
            m.polled_new, m.probe_ms, m.poll_ms, m.block_txs, m.block_scan_ms
        ),
    ));
    figures
}

/// Honest throughput and p99 under each attack, against the same run without one.
async fn attack_figures(bitcoind: &Bitcoind, root: &Path, requests: usize) -> Vec<Figure> {
    let mut figures = Vec::new();
    let mut baseline: Option<LoadResult> = None;
    for (i, attack) in ATTACKS.iter().enumerate() {
        let name = Attack::name(*attack);
        let run = honest_under(bitcoind, &fresh(root, &format!("attack-{i}")), *attack, requests).await;
        let (result, attacker_cpu) = match run {
            Ok(run) => (run.honest, run.attacker_cpu),
            Err(e) => {
                figures.push(Figure::not_measured(format!("honest load, {name}"), "", format!("failed: {e:#}")));
                continue;
            }
        };
        eprintln!("  {name}: {:.0}/s p99 {:.2} ms", result.throughput(), result.p(99.0));
        let cpu = |c: Option<std::time::Duration>| c.map_or("?".to_string(), |c| format!("{:.2} s", c.as_secs_f64()));
        let note = format!(
            "{requests} honest requests, 16 in flight from 16 addresses; fresh tower, default caps; over {:.2} s: teosd CPU {}, attacker CPU {}",
            result.elapsed.as_secs_f64(),
            cpu(result.server_cpu),
            cpu(attacker_cpu)
        );
        match &baseline {
            None => {
                figures.push(Figure::new("honest add_appointment/s, no attack", result.throughput(), "1/s", &note));
                figures.push(Figure::new("honest p99, no attack", result.p(99.0), "ms", &note));
                baseline = Some(result);
            }
            Some(base) => {
                let ratio = result.throughput() / base.throughput();
                let ratio_note =
                    format!("{note}; {:.0}/s against {:.0}/s without", result.throughput(), base.throughput());
                figures.push(
                    Figure::new(format!("honest throughput under {name} / without"), ratio, "x", ratio_note)
                        .at_least(0.5, ">= 0.5"),
                );
                figures.push(
                    Figure::new(format!("honest p99 under {name}"), result.p(99.0), "ms", &note)
                        .at_most(100.0, "< 100 ms"),
                );
            }
        }
    }
    figures
}

async fn run(args: &Args) -> Result<(serde_json::Value, Vec<Figure>)> {
    let plan = match args.scale {
        Some(stored) => Plan::scale(stored),
        None if args.full => Plan::full(),
        None => Plan::quick(),
    };
    let started = Instant::now();
    let load_before = loadavg();
    let nproc = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    eprintln!("teos-bench {} mode: nproc {nproc}, loadavg {load_before}, teosd {}", plan.name, teosd_path()?.display());
    let root = tempfile::Builder::new().prefix("teos-bench-").tempdir()?;
    let bitcoind = Bitcoind::start_with_zmq().await?;
    let mut funding = Funding::new();
    // With rawblock: a warm-up, then every count of breaches; with getblock: a warm-up, then one
    // breach.
    let blocks = 1 + plan.block_rounds * plan.breaches.len() + 1 + plan.block_rounds + 10;
    funding.mine(&bitcoind, 101 + 2 * plan.reaction_trials as u32 + blocks as u32 + 5).await?;
    let mut figures = Vec::new();

    if args.runs("load") {
        figures.extend(load_section(&bitcoind, root.path(), &plan).await);
    }
    if args.runs("attacks") {
        eprintln!("attacks on the public API ...");
        figures.extend(attack_figures(&bitcoind, root.path(), plan.attack_requests).await);
    }
    if args.runs("bounded") {
        eprintln!("bounded work per block and per request ...");
        figures.extend(bounded_figures(&bitcoind, &mut funding, root.path()).await);
    }
    let sizes = if args.runs("sizes") || args.runs("blocks") { plan.sizes.clone() } else { Vec::new() };

    eprintln!("store sizes {sizes:?} ...");
    let mut points = Vec::new();
    let mut size_error = None;
    for (i, &n) in sizes.iter().enumerate() {
        let run = SizeRun { per_user: plan.per_user, restarts: plan.restarts, load_requests: plan.size_load };
        match measure(&bitcoind, &fresh(root.path(), &format!("store-{n}")), n, run, 200 + i as u32).await {
            Ok(p) => {
                eprintln!(
                    "  {n} stored: ready {:?}, rss {:.1} MiB, disk {:.1} MiB",
                    p.ready,
                    mib(p.rss_loaded),
                    mib(p.disk)
                );
                points.push(p)
            }
            Err(e) => {
                size_error = Some(format!("{n} stored: {e:#}"));
                break;
            }
        }
    }
    figures.extend(size_figures(&points, args.full, args.scale.is_some()));
    if let Some(e) = size_error {
        figures.push(Figure::not_measured("store sizes", "", format!("failed at {e}")));
    }

    let biggest = points.iter().max_by_key(|p| p.stored).cloned().filter(|_| args.runs("blocks"));
    eprintln!("{BLOCK_TXS}-transaction blocks ...");
    match &biggest {
        _ if !args.runs("blocks") => {}
        Some(p) => {
            // Blocks come whole over ZMQ rawblock, as a tower next to its bitcoind is set up
            // (docs/operations.md): each count of breaches.
            let sequence: Vec<usize> =
                plan.breaches.iter().copied().cycle().take(plan.block_rounds * plan.breaches.len()).collect();
            let rust_only = match blocks_run(&bitcoind, &mut funding, &p.datadir, true, false, &sequence).await {
                Ok(blocks) => {
                    figures.extend(block_figures(p.stored, "rawblock", &blocks, &plan.breaches));
                    Some(blocks)
                }
                Err(e) => {
                    figures.push(Figure::not_measured("2000-tx blocks, rawblock", "ms", format!("failed: {e:#}")));
                    None
                }
            };
            // The same with getblock (a tower without rawblock): one breach.
            let sequence = vec![1; plan.block_rounds];
            match blocks_run(&bitcoind, &mut funding, &p.datadir, false, false, &sequence).await {
                Ok(blocks) => figures.extend(block_figures(p.stored, "getblock", &blocks, &[1])),
                Err(e) => {
                    figures.push(Figure::not_measured("2000-tx blocks, getblock", "ms", format!("failed: {e:#}")))
                }
            }
            // Last (it marks the store for good): a python-teos user registered, so every block is
            // also searched under the python-teos locators; the scan's cost against the first run.
            let sequence: Vec<usize> = [0, 1].iter().copied().cycle().take(plan.block_rounds * 2).collect();
            match blocks_run(&bitcoind, &mut funding, &p.datadir, true, true, &sequence).await {
                Ok(blocks) => {
                    figures.extend(block_figures(
                        p.stored,
                        "rawblock, a python-teos user registered",
                        &blocks,
                        &[0, 1],
                    ));
                    figures.extend(rust_only.and_then(|rust| python_scan_figure(p.stored, &rust, &blocks)));
                }
                Err(e) => figures.push(Figure::not_measured(
                    "2000-tx blocks, python-teos users",
                    "ms",
                    format!("failed: {e:#}"),
                )),
            }
        }
        None => figures.push(Figure::not_measured(format!("{BLOCK_TXS}-tx blocks"), "ms", "no filled store")),
    }

    if let (Some(_), Some(p)) = (args.scale, &biggest) {
        eprintln!("get_appointment and get_tower_info, {} stored ...", p.stored);
        figures.extend(scale::request_figures(&bitcoind, p).await);
    }

    eprintln!("breach -> dispute_responded ...");
    for zmq in [true, false].into_iter().filter(|_| args.runs("reaction")) {
        let what = if zmq { "ZMQ hashblock" } else { "polling 1 s" };
        let name = format!("mined breach -> dispute_responded, {what}");
        let dir = fresh(root.path(), if zmq { "reaction-zmq" } else { "reaction-poll" });
        match reaction(&bitcoind, &mut funding, &dir, zmq, plan.reaction_trials, 400 + u32::from(zmq)).await {
            Ok(mut ms) => {
                let med = median(&mut ms);
                let max = percentile(&ms, 100.0);
                let note = format!("median of {} trials, max {max:.0} ms; get_appointment polled every 1 ms", ms.len());
                let f = Figure::new(name, med, "ms", note);
                figures.push(if zmq { f.at_most(200.0, "< 200 ms") } else { f });
            }
            Err(e) => figures.push(Figure::not_measured(name, "ms", format!("failed: {e:#}"))),
        }
    }
    // Last: it leaves 50,000 transactions in the node's mempool, which slow the node's blocks.
    if args.runs("mempool") {
        let stored = 1_000_000;
        eprintln!("mempool watching, {stored} stored ...");
        figures.extend(mempool_figures(&bitcoind, &mut funding, root.path(), stored, plan.reaction_trials * 3).await);
    }
    drop(bitcoind);

    let load_after = loadavg();
    let meta = json!({
        "mode": plan.name,
        "scale": args.scale,
        "unix_time": SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "elapsed_s": started.elapsed().as_secs_f64(),
        "machine": { "nproc": nproc, "loadavg_before": load_before, "loadavg_after": load_after },
        "blob_size": BLOB_SIZE,
        "durability": "on (teosd syncs every batch before answering)",
        "backend": if std::env::var_os("BITCOIND_EXE").is_some() { "bitcoind (BITCOIND_EXE)" } else { "in-process regtest node" },
        "store_fill": "stored appointments beyond 0 are written directly with teosd::store::Store while teosd is stopped",
    });
    Ok((meta, figures))
}

fn print_table(meta: &serde_json::Value, figures: &[Figure]) {
    println!();
    println!(
        "teos-bench ({} mode, {:.0} s) nproc {} loadavg before {} after {}; durability on; blob {} B",
        meta["mode"].as_str().unwrap_or("?"),
        meta["elapsed_s"].as_f64().unwrap_or(0.0),
        meta["machine"]["nproc"],
        meta["machine"]["loadavg_before"].as_str().unwrap_or("?"),
        meta["machine"]["loadavg_after"].as_str().unwrap_or("?"),
        BLOB_SIZE
    );
    println!("{:<52} {:>12} {:<5} {:<28} {:<5} note", "figure", "value", "unit", "target", "");
    for f in figures {
        let value = f.value.map(|v| format!("{v:.2}")).unwrap_or_else(|| "not measured".into());
        let verdict = match f.pass {
            Some(true) => "pass",
            Some(false) => "MISS",
            None => "",
        };
        println!(
            "{:<52} {:>12} {:<5} {:<28} {:<5} {}",
            f.name,
            value,
            f.unit,
            f.target.as_deref().unwrap_or(""),
            verdict,
            f.note
        );
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    // The attack runs spawn this binary again as the attacker, in its own process.
    let argv: Vec<String> = std::env::args().collect();
    if let [_, flag, kind, url] = argv.as_slice() {
        if flag == "--attacker" {
            let Some(attack) = Attack::from_flag(kind) else { return ExitCode::from(2) };
            teos_tests::bench::attack::run_attacker(attack, url).await;
            return ExitCode::SUCCESS;
        }
    }
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("teos-bench: {e:#}");
            return ExitCode::from(2);
        }
    };
    let (meta, figures) = match run(&args).await {
        Ok(done) => done,
        Err(e) => {
            eprintln!("teos-bench: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    print_table(&meta, &figures);
    let mut report = meta.clone();
    report["figures"] = serde_json::to_value(&figures).unwrap_or_default();
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::create_dir_all(dir);
    }
    match std::fs::write(&args.out, serde_json::to_string_pretty(&report).unwrap_or_default()) {
        Ok(()) => println!("\nwrote {}", args.out.display()),
        Err(e) => eprintln!("teos-bench: writing {}: {e}", args.out.display()),
    }
    ExitCode::SUCCESS
}

/// Starts teosd on `datadir` (with `rawblock` on the node's feed, or fetching with getblock) and
/// processes one warm-up block (the first after a restart reads the filters and indexes from
/// disk), then a block for each count of breaches in `sequence`.
async fn blocks_run(
    bitcoind: &Bitcoind,
    funding: &mut Funding,
    datadir: &std::path::Path,
    rawblock: bool,
    python_user: bool,
    sequence: &[usize],
) -> Result<Vec<BlockPoint>> {
    let endpoint = bitcoind.zmq_hashblock_endpoint().ok_or_else(|| anyhow::anyhow!("no ZMQ endpoint"))?;
    let extra: Vec<&str> = if rawblock { vec!["--zmqpubrawblock", &endpoint] } else { vec![] };
    let before = bitcoind.regtest_node().map_or(0, |node| node.zmq_subscriptions());
    let mut daemon = Daemon::start(bitcoind, datadir, &extra).await?;
    if rawblock {
        wait_subscribed(bitcoind, before + 1).await?;
    }
    if python_user {
        let key = bitcoin::secp256k1::PublicKey::from_secret_key(
            &bitcoin::secp256k1::Secp256k1::new(),
            &bitcoin::secp256k1::SecretKey::from_slice(&[0x77; 32])?,
        );
        let body = serde_json::to_vec(&json!({ "public_key": key.to_string() }))?;
        let url = format!("{}/register", daemon.api_url);
        let (status, reply) = teos_tests::bench::api::post(&teos_tests::bench::api::client(1), &url, body).await?;
        if status != 200 {
            bail!("python-teos registration: {status} {reply}");
        }
    }
    let sequence: Vec<usize> = std::iter::once(0).chain(sequence.iter().copied()).collect();
    let salt = match (rawblock, python_user) {
        (_, true) => 700,
        (true, false) => 300,
        (false, false) => 500,
    };
    let result = block_processing(bitcoind, funding, &mut daemon, &sequence, salt).await;
    daemon.stop()?;
    result
}
