//! Mempool watching (issue 15), on a tower holding many appointments:
//!
//! * reaction: a dispute enters bitcoind's mempool → its penalty is accepted by the node, with
//!   teosd on the node's ZMQ `rawtx` feed; first with an empty mempool, then with a 50,000-
//!   transaction one (which the tower also polls, as a safety net).
//! * probe cost: teosd polling a mempool filling up to 50,000 transactions (its own `probe_ms` on
//!   the `mempool polled` debug lines, the first poll left out), per new transaction, against the
//!   same store's per-transaction scan of a 2000-transaction block (`scan_ms` on
//!   `block connected`) measured in the same run.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use bitcoin::absolute::LockTime;
use bitcoin::{Sequence, Transaction};

use super::api::{client, register_all, BenchUser};
use super::chain::{appoint, block_processing, wait_subscribed};
use super::daemon::{field, Daemon};
use crate::backend::Bitcoind;
use crate::wallet::{commitment_tx, penalty_tx, spend_tx, split_tx, Funding, Utxo};

/// Outputs per funding split (each split about 430 kB, well inside a block).
const PER_SPLIT: usize = 10_000;

/// What the mempool section measured.
#[derive(Debug, Clone)]
pub struct MempoolFigures {
    /// Dispute sent → penalty in the node's mempool, ms, with an empty mempool.
    pub reaction_empty: Reactions,
    /// The same with `mempool_size` other transactions in the mempool.
    pub reaction_full: Reactions,
    pub mempool_size: usize,
    /// teosd's probes, first poll left out: milliseconds for `polled_new` transactions.
    pub probe_ms: f64,
    pub polled_new: usize,
    /// The same polls whole (getrawmempool included), ms.
    pub poll_ms: f64,
    /// `scan_ms` of a 2000-transaction block without breaches on the same store.
    pub block_scan_ms: f64,
    pub block_txs: usize,
}

/// Reaction times, and the baseline: how long the node took to accept the dispute itself.
#[derive(Debug, Clone, Default)]
pub struct Reactions {
    /// Dispute sent → penalty in the node's mempool, ms.
    pub penalty_ms: Vec<f64>,
    /// `sendrawtransaction` of the dispute, ms (the node's own work, and the floor).
    pub dispute_ms: Vec<f64>,
}

/// On the stopped tower at `datadir` (its store filled): both reactions over `trials`, a
/// mempool of `mempool_size` transactions, and the probe costs.
pub async fn run(
    bitcoind: &Bitcoind,
    funding: &mut Funding,
    datadir: &Path,
    trials: usize,
    mempool_size: usize,
) -> Result<MempoolFigures> {
    let endpoint = bitcoind.zmq_hashblock_endpoint().ok_or_else(|| anyhow!("the node publishes no ZMQ feed"))?;
    // Reaction with an empty mempool, over ZMQ alone.
    let before = bitcoind.regtest_node().map_or(0, |node| node.zmq_subscriptions());
    let mut daemon = Daemon::start(bitcoind, datadir, &["--zmqpubrawtx", &endpoint, "--mempoolpoll", "0"]).await?;
    wait_subscribed(bitcoind, before + 1).await?;
    let reaction_empty = reactions(bitcoind, funding, &mut daemon, trials, 501).await?;
    daemon.stop()?;

    // The probe, by polling alone: half the mempool is there at start (the first poll: cold
    // caches, not counted), the other half arrives while the tower polls every second.
    let half = mempool_size / 2;
    fill_mempool(bitcoind, funding, half).await?;
    let mut daemon = Daemon::start(bitcoind, datadir, &["--mempoolpoll", "1"]).await?;
    daemon.wait_for("mempool polled")?;
    fill_mempool(bitcoind, funding, mempool_size - half).await?;
    let (mut probe_ms, mut poll_ms, mut polled_new) = (0.0, 0.0, 0);
    loop {
        let line = daemon.wait_for("mempool polled")?;
        let number = |name: &str| field(&line, name).ok_or_else(|| anyhow!("no {name} in `{line}`"));
        probe_ms += number("probe_ms")?;
        poll_ms += number("took_ms")?;
        polled_new += number("new")? as usize;
        if number("size")? as usize >= mempool_size {
            break;
        }
    }
    // The baseline: the same probe over a block's transactions, on the same store.
    let block = block_processing(bitcoind, funding, &mut daemon, &[0], 503).await?;
    let block_scan_ms = block
        .first()
        .and_then(|b| b.stages.iter().find(|(name, _)| *name == "scan_ms"))
        .map(|(_, ms)| *ms)
        .ok_or_else(|| anyhow!("no scan_ms on the block's line"))?;
    daemon.stop()?;

    // Reaction with the full mempool: ZMQ, and the poll as a safety net.
    let before = bitcoind.regtest_node().map_or(0, |node| node.zmq_subscriptions());
    let mut daemon = Daemon::start(bitcoind, datadir, &["--zmqpubrawtx", &endpoint, "--mempoolpoll", "1"]).await?;
    wait_subscribed(bitcoind, before + 1).await?;
    // Disputes arriving during the start-up poll (a few hundred ms, cold) wait for it to end: the
    // trials start after it.
    daemon.wait_for("mempool polled")?;
    let reaction_full = reactions(bitcoind, funding, &mut daemon, trials, 502).await?;
    daemon.stop()?;
    Ok(MempoolFigures {
        reaction_empty,
        reaction_full,
        mempool_size,
        probe_ms,
        polled_new,
        poll_ms,
        block_scan_ms,
        block_txs: super::chain::BLOCK_TXS,
    })
}

/// `trials` times: appoint a dispute, send it to the node, and time until the node holds the
/// penalty (its mempool checked every 0.2 ms); then mine both and wait for the tower.
async fn reactions(
    bitcoind: &Bitcoind,
    funding: &mut Funding,
    daemon: &mut Daemon,
    trials: usize,
    salt: u32,
) -> Result<Reactions> {
    let http = client(2);
    let user = BenchUser::new(salt, 0);
    register_all(&daemon.api_url, std::slice::from_ref(&user)).await?;
    let mut reactions = Reactions::default();
    for trial in 0..trials {
        let coin = funding.next_coin(bitcoind).await?;
        let dispute = commitment_tx(&coin, 2, 2, (u64::from(salt) << 32) | trial as u64)?;
        let penalty = penalty_tx(&dispute, 0, 3)?;
        appoint(&http, &daemon.api_url, &user, &dispute, &penalty).await?;
        let (tip, _) = bitcoind.tip().await?;
        daemon.wait_height(tip)?;
        let sent = Instant::now();
        bitcoind.send_raw_transaction(&dispute).await?;
        reactions.dispute_ms.push(sent.elapsed().as_secs_f64() * 1000.0);
        let txid = penalty.compute_txid();
        while !bitcoind.mempool_contains(&txid).await? {
            if sent.elapsed() > Duration::from_secs(30) {
                bail!("penalty {txid} not in the node's mempool 30 s after its dispute");
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        reactions.penalty_ms.push(sent.elapsed().as_secs_f64() * 1000.0);
        bitcoind.mine_block_with(&[dispute, penalty]).await?;
        daemon.wait_height(tip + 1)?;
    }
    Ok(reactions)
}

/// Puts `n` unrelated one-in one-out transactions in the node's mempool (funded by splits of
/// [`PER_SPLIT`] outputs, each mined alone).
async fn fill_mempool(bitcoind: &Bitcoind, funding: &mut Funding, n: usize) -> Result<()> {
    let mut outputs: Vec<Utxo> = Vec::with_capacity(n);
    while outputs.len() < n {
        let coin = funding.next_coin(bitcoind).await?;
        let split = split_tx(&[coin], PER_SPLIT, 2, Sequence::MAX, LockTime::ZERO)?;
        bitcoind.mine_block_with(std::slice::from_ref(&split)).await?;
        outputs.extend((0..PER_SPLIT as u32).map(|vout| Utxo::of(&split, vout)));
    }
    let spends: Vec<Transaction> =
        outputs.into_iter().take(n).map(|out| spend_tx(&[out], 1, 2)).collect::<Result<_, _>>()?;
    for tx in &spends {
        bitcoind.send_raw_transaction(tx).await?;
    }
    Ok(())
}
