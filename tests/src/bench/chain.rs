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
