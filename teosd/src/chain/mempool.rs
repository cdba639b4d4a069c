//! Watching the mempool: a dispute is often seen unconfirmed before a block holds it, and a tower
//! that sees it there can have its penalty in the very block that confirms the dispute (the
//! penalty relays as the dispute's child), or right after.
//!
//! Unconfirmed transactions come from bitcoind's ZMQ `rawtx` feed when it is configured (at once,
//! whole), and from a `getrawmempool` poll every `mempool_poll_secs` (only the txids new since
//! the last poll are looked at; the tower fetches only those whose locator it holds). A poll
//! lists the whole mempool (50,000 txids: ~3.4 MB of JSON, tens of milliseconds during which the
//! follower does nothing else), so with `rawtx` configured it is only a safety net for what the
//! feed missed, run [`SAFETY_NET_FACTOR`] times less often. Each is
//! shown to the listeners, which may act (the Watcher sends the penalty) but write nothing:
//! blocks stay the source of truth, and a dispute seen only in the mempool (replaced, never
//! mined) leaves its appointment watched like any other.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use bitcoin::{Transaction, Txid};
use tokio::time::Instant;

use super::{ChainError, ChainFollower};

/// Mempool transactions remembered as seen, at most (a bigger mempool is looked at in part).
pub const MAX_SEEN: usize = 300_000;

/// With ZMQ `rawtx` configured, the mempool is polled this many times less often.
pub const SAFETY_NET_FACTOR: u32 = 12;

/// What the follower has already shown of the mempool.
#[derive(Debug, Default)]
pub(super) struct MempoolWatch {
    seen: Mutex<HashSet<Txid>>,
    last_poll: Mutex<Option<Instant>>,
    /// Whether transactions also come over ZMQ `rawtx` (the poll is then a safety net).
    fed: AtomicBool,
}

impl MempoolWatch {
    /// Transactions also come over ZMQ `rawtx` from now on.
    pub(super) fn set_fed(&self) {
        self.fed.store(true, Ordering::Relaxed);
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, HashSet<Txid>> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ChainFollower {
    /// Polls the source's mempool, if it is time to (`mempool_poll` since the last poll), and
    /// shows the listeners what is new in it.
    pub(super) async fn poll_mempool(&self) -> Result<(), ChainError> {
        let Some(mut every) = self.settings.mempool_poll else { return Ok(()) };
        if self.mempool.fed.load(Ordering::Relaxed) {
            every *= SAFETY_NET_FACTOR;
        }
        {
            let mut last = self.mempool.last_poll.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|at| at.elapsed() < every) {
                return Ok(());
            }
            *last = Some(Instant::now());
        }
        let started = Instant::now();
        let mut current = self.source.mempool_txids().await?;
        let size = current.len();
        current.truncate(MAX_SEEN);
        let new: Vec<Txid> = {
            let mut seen = self.mempool.seen();
            let new = current.iter().filter(|txid| !seen.contains(*txid)).copied().collect();
            *seen = current.into_iter().collect();
            new
        };
        if new.is_empty() {
            return Ok(());
        }
        let n_new = new.len();
        let probing = Instant::now();
        let wanted = self.mempool_interest(new).await?;
        let probe_ms = probing.elapsed().as_secs_f64() * 1e3;
        let mut txs = Vec::with_capacity(wanted.len());
        for txid in wanted {
            if let Some(tx) = self.source.mempool_transaction(&txid).await? {
                txs.push(tx);
            }
        }
        let held = txs.len();
        self.show_mempool(txs).await?;
        tracing::debug!(
            size,
            new = n_new,
            held,
            probe_ms,
            took_ms = started.elapsed().as_secs_f64() * 1e3,
            "mempool polled"
        );
        Ok(())
    }

    /// Shows the listeners unconfirmed transactions that came whole (ZMQ `rawtx`), those not seen
    /// before.
    pub(super) async fn mempool_arrived(&self, txs: Vec<Transaction>) -> Result<(), ChainError> {
        // Each txid hashed once: the feed carries every transaction bitcoind accepts.
        let fresh: Vec<(Txid, Transaction)> = {
            let mut seen = self.mempool.seen();
            if seen.len() + txs.len() > MAX_SEEN {
                seen.clear();
            }
            txs.into_iter().map(|tx| (tx.compute_txid(), tx)).filter(|(txid, _)| seen.insert(*txid)).collect()
        };
        if fresh.is_empty() {
            return Ok(());
        }
        let wanted: HashSet<Txid> =
            self.mempool_interest(fresh.iter().map(|(txid, _)| *txid).collect()).await?.into_iter().collect();
        let txs = fresh.into_iter().filter(|(txid, _)| wanted.contains(txid)).map(|(_, tx)| tx).collect();
        self.show_mempool(txs).await
    }

    /// The txids any listener wants whole.
    async fn mempool_interest(&self, txids: Vec<Txid>) -> Result<Vec<Txid>, ChainError> {
        self.blocking(move |me| {
            let mut wanted = HashSet::new();
            for listener in me.listeners.iter() {
                wanted.extend(listener.mempool_interest(&txids)?);
            }
            Ok::<_, ChainError>(wanted.into_iter().collect())
        })
        .await
    }

    async fn show_mempool(&self, txs: Vec<Transaction>) -> Result<(), ChainError> {
        if txs.is_empty() {
            return Ok(());
        }
        self.blocking(move |me| {
            for listener in me.listeners.iter() {
                listener.mempool_transactions(&txs)?;
            }
            Ok::<_, ChainError>(())
        })
        .await
    }
}
