//! The chain side: how long teosd takes to process a 2000-transaction block (its own `took_ms`
//! on the `block connected` line), and how long from a breach being mined to `get_appointment`
//! answering `dispute_responded`.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bitcoin::absolute::LockTime;
use bitcoin::{Sequence, Transaction};
use serde_json::json;
use teosd::protocol::{encrypt_penalty, sign_message, Appointment, Locator};

use super::api::{add_appointment_body, client, post, register_all, BenchUser};
use super::daemon::{field, Daemon};
use super::{median, Figure};
use crate::backend::Bitcoind;
use crate::wallet::{commitment_tx, penalty_tx, spend_tx, split_tx, Funding, Utxo};

/// Transactions in the benchmark's big blocks (besides the coinbase).
pub const BLOCK_TXS: usize = 2000;

/// Hands the tower, for the registered `user`, an appointment for `penalty` of `dispute`.
pub async fn appoint(
    http: &reqwest::Client,
    api_url: &str,
    user: &BenchUser,
    dispute: &Transaction,
    penalty: &Transaction,
) -> Result<()> {
    let txid = dispute.compute_txid();
    let appointment = Appointment {
        locator: Locator::from_txid(&txid),
        encrypted_blob: encrypt_penalty(penalty, &txid),
        to_self_delay: 42,
    };
    let (status, reply) =
        post(http, &format!("{api_url}/add_appointment"), add_appointment_body(&appointment, user)).await?;
    if status != 200 {
        bail!("add_appointment: {status} {reply}");
    }
    Ok(())
}

/// Waits until the in-process node has `n` ZMQ subscriptions (a real bitcoind does not tell).
pub async fn wait_subscribed(bitcoind: &Bitcoind, n: u64) -> Result<()> {
    if let Some(node) = bitcoind.regtest_node() {
        tokio::time::timeout(Duration::from_secs(30), node.wait_for_zmq_subscriptions(n))
            .await
            .context("teosd never subscribed to the ZMQ feed")?;
    }
    Ok(())
}

/// One processed big block.
#[derive(Debug, Clone)]
pub struct BlockPoint {
    pub breaches: usize,
    /// teosd's `took_ms`: from starting to fetch the block to its effects committed.
    pub took_ms: f64,
    /// The `breaches=` teosd logged (a check that the breaches were found).
    pub logged_breaches: usize,
    /// Where teosd got the block: `zmq` (rawblock) or `rpc` (getblock).
    pub source: String,
    /// teosd's per-stage milliseconds, as logged: fetch, check, scan, broadcast, commit.
    pub stages: Vec<(&'static str, f64)>,
}

/// The stages teosd times on its `block connected` line.
pub const BLOCK_STAGES: [&str; 5] = ["fetch_ms", "check_ms", "scan_ms", "broadcast_ms", "commit_ms"];

/// On the running tower `daemon`: for each count in `breaches`,
/// a block of [`BLOCK_TXS`] transactions of which that many are disputes with an appointment.
pub async fn block_processing(
    bitcoind: &Bitcoind,
    funding: &mut Funding,
    daemon: &mut Daemon,
    breaches: &[usize],
    salt: u32,
) -> Result<Vec<BlockPoint>> {
    let http = client(4);
    let user = BenchUser::new(salt, 0);
    register_all(&daemon.api_url, std::slice::from_ref(&user)).await?;
    let mut points = Vec::new();
    for (round, &k) in breaches.iter().enumerate() {
        let coin = funding.next_coin(bitcoind).await?;
        let split = split_tx(&[coin], BLOCK_TXS, 2, Sequence::MAX, LockTime::ZERO)?;
        bitcoind.mine_block_with(std::slice::from_ref(&split)).await?;
        let mut txs = Vec::with_capacity(BLOCK_TXS);
        for vout in 0..BLOCK_TXS as u32 {
            let input = Utxo::of(&split, vout);
            if (vout as usize) < k {
                let number = (round as u64) << 32 | u64::from(vout);
                let commitment = commitment_tx(&input, 1, 2, number)?;
                let penalty = penalty_tx(&commitment, 0, 3)?;
                appoint(&http, &daemon.api_url, &user, &commitment, &penalty).await?;
                txs.push(commitment);
            } else {
                txs.push(spend_tx(&[input], 1, 2)?);
            }
        }
        let (tip, _) = bitcoind.tip().await?;
        daemon.wait_height(tip)?;
        bitcoind.mine_block_with(&txs).await?;
        let line = daemon.wait_for(&format!("block connected height={} ", tip + 1))?;
        let took_ms = field(&line, "took_ms").ok_or_else(|| anyhow!("no took_ms in `{line}`"))?;
        let logged_breaches = field(&line, "breaches").unwrap_or(-1.0) as usize;
        let stages = BLOCK_STAGES.iter().filter_map(|&name| Some((name, field(&line, name)?))).collect();
        let source = ["zmq", "rpc"].iter().find(|s| line.contains(&format!("source=\"{s}\""))).unwrap_or(&"?");
        points.push(BlockPoint { breaches: k, took_ms, logged_breaches, stages, source: source.to_string() });
    }
    Ok(points)
}

/// Milliseconds from `mine_block_with` (a one-breach block) to `get_appointment` answering
/// `dispute_responded`, over `trials`, on a fresh tower at `datadir`; with `zmq`, teosd
/// subscribes to the node's `hashblock` feed, else it polls every second.
pub async fn reaction(
    bitcoind: &Bitcoind,
    funding: &mut Funding,
    datadir: &std::path::Path,
    zmq: bool,
    trials: usize,
    salt: u32,
) -> Result<Vec<f64>> {
    let endpoint = match (zmq, bitcoind.zmq_hashblock_endpoint()) {
        (true, Some(endpoint)) => Some(endpoint),
        (true, None) => bail!("the node publishes no ZMQ hashblock feed"),
        (false, _) => None,
    };
    let mut extra = vec![];
    if let Some(endpoint) = &endpoint {
        extra = vec!["--zmqpubhashblock", endpoint.as_str()];
    }
    let before = bitcoind.regtest_node().map_or(0, |node| node.zmq_subscriptions());
    let mut daemon = Daemon::start(bitcoind, datadir, &extra).await?;
    if zmq {
        wait_subscribed(bitcoind, before + 1).await?;
    }
    let http = client(2);
    let user = BenchUser::new(salt, 0);
    register_all(&daemon.api_url, std::slice::from_ref(&user)).await?;
    let get_url = format!("{}/get_appointment", daemon.api_url);
    let mut latencies = Vec::new();
    for trial in 0..trials {
        let coin = funding.next_coin(bitcoind).await?;
        let dispute = commitment_tx(&coin, 2, 2, trial as u64 + 1)?;
        let penalty = penalty_tx(&dispute, 0, 3)?;
        appoint(&http, &daemon.api_url, &user, &dispute, &penalty).await?;
        let locator = Locator::from_txid(&dispute.compute_txid()).to_string();
        let signature = sign_message(format!("get appointment {locator}").as_bytes(), &user.secret);
        let get_body = serde_json::to_vec(&json!({"locator": locator, "signature": signature}))?;
        let (tip, _) = bitcoind.tip().await?;
        daemon.wait_height(tip)?;
        // Spread the trials over the polling period, so polling's phase is sampled evenly.
        tokio::time::sleep(Duration::from_millis((trial as u64 * 373) % 1000)).await;
        let mined = Instant::now();
        bitcoind.mine_block_with(std::slice::from_ref(&dispute)).await?;
        loop {
            let (status, reply) = post(&http, &get_url, get_body.clone()).await?;
            if status == 200 && reply["status"] == "dispute_responded" {
                break;
            }
            if mined.elapsed() > Duration::from_secs(30) {
                bail!("no dispute_responded 30 s after the breach was mined: {status} {reply}");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        latencies.push(mined.elapsed().as_secs_f64() * 1000.0);
        daemon.wait_height(tip + 1)?;
    }
    daemon.stop()?;
    Ok(latencies)
}

/// The scan stage of 0-breach blocks with a python-teos user registered over the same without
/// (same store, same run): what the second locator order costs per block.
pub fn python_scan_figure(stored: usize, rust_only: &[BlockPoint], with_python: &[BlockPoint]) -> Option<Figure> {
    let scan = |blocks: &[BlockPoint]| -> Option<f64> {
        let mut ms: Vec<f64> = blocks
            .iter()
            .skip(1)
            .filter(|b| b.breaches == 0)
            .filter_map(|b| b.stages.iter().find(|(name, _)| *name == "scan_ms").map(|(_, ms)| *ms))
            .collect();
        (!ms.is_empty()).then(|| median(&mut ms))
    };
    let (before, after) = (scan(rust_only)?, scan(with_python)?);
    Some(Figure::new(
        format!("{BLOCK_TXS}-tx block scan with python-teos users / without, 0 breaches, {stored} stored"),
        after / before.max(0.001),
        "x",
        format!("median scan_ms {after:.2} vs {before:.2} (same store, same run): one more bloom-filtered probe per transaction"),
    ))
}

/// The first block (cold cache) on its own, then the median of each count of breaches; `how`
/// the blocks reached teosd.
pub fn block_figures(stored: usize, how: &str, blocks: &[BlockPoint], breaches: &[usize]) -> Vec<Figure> {
    let stages = |b: &BlockPoint| -> String {
        b.stages.iter().map(|(name, ms)| format!("{name} {ms:.1}")).collect::<Vec<_>>().join(", ")
    };
    let mut figures = Vec::new();
    let Some((first, measured)) = blocks.split_first() else { return figures };
    figures.push(Figure::new(
        format!("{BLOCK_TXS}-tx block ({how}), first after a restart (cold cache), 0 breaches, {stored} stored"),
        first.took_ms,
        "ms",
        format!("teosd's took_ms: {} (block from {})", stages(first), first.source),
    ));
    for &k in breaches {
        let mut runs: Vec<&BlockPoint> = measured.iter().filter(|b| b.breaches == k).collect();
        runs.sort_by(|a, b| a.took_ms.total_cmp(&b.took_ms));
        let Some(mid) = runs.get((runs.len().max(1) - 1) / 2) else { continue };
        // Each run with its source and its slowest stage, so an outlier says where it went.
        let slowest = |b: &BlockPoint| {
            let top = b.stages.iter().max_by(|x, y| x.1.total_cmp(&y.1));
            top.map_or(String::new(), |(name, ms)| format!(", {name} {ms:.1}"))
        };
        let all: Vec<String> = runs.iter().map(|b| format!("{:.1} ({}{})", b.took_ms, b.source, slowest(b))).collect();
        let note = format!(
            "median of {} blocks [{}] ms, teosd's took_ms (block taken .. synced commit); median's stages: {}",
            runs.len(),
            all.join(", "),
            stages(mid)
        );
        let mut f = Figure::new(
            format!("{BLOCK_TXS}-tx block ({how}), {k} breaches, {stored} stored"),
            mid.took_ms,
            "ms",
            note,
        );
        f = match k {
            1 => f.at_most(15.0, "< 15 ms"),
            100 => f.at_most(300.0, "< 300 ms"),
            _ => f,
        };
        if let Some(wrong) = runs.iter().find(|b| b.logged_breaches != k) {
            f.pass = Some(false);
            f.note = format!("{}; a block logged breaches={} instead of {k}", f.note, wrong.logged_breaches);
        }
        figures.push(f);
    }
    figures
}
