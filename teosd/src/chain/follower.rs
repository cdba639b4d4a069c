//! Follows the source's best chain. On a new tip it finds the fork point against the blocks it
//! processed, disconnects stale blocks tip first, then fetches, checks and connects each new block
//! in order. Connecting a block shows it to every listener and commits what they wrote, with the
//! block's records and the new tip, in one batch (see [`super`] for what it holds): a crash
//! before the commit replays the block, after it the block is done. After each block, and at every
//! round, the listeners may ask to see recent blocks again (late appointments).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bitcoin::hashes::Hash;
use bitcoin::{BlockHash, Network};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use super::check::check_block;
use super::{
    BlockBatch, BlockSource, ChainError, ChainListener, ChainStatus, ConnectedBlock, HeaderInfo, Revisit, SourceError,
};
use crate::locks::UserLocks;
use crate::metrics::BlockStage;
use crate::store::{Batch, Store, StoreError};
use crate::task::Worker;

/// How many processed blocks are remembered to find fork points.
pub(super) const BLOCKS_KEPT: u32 = 1000;
/// Recent blocks shown again per round, at most.
const REVISITS_PER_ROUND: usize = 16;

/// Settings of the follower.
#[derive(Debug, Clone, Copy)]
pub struct FollowerSettings {
    /// The network blocks must belong to.
    pub network: Network,
    /// How many recent blocks' transactions are kept for late appointments.
    pub recent_block_lookback: u32,
    /// How often the source's mempool is polled (`None`: never; see [`super::mempool`]).
    pub mempool_poll: Option<Duration>,
}

/// The chain side's driver: fetch, check, find the fork point, disconnect and connect in order,
/// show each block to the listeners, commit, publish the height.
#[derive(Debug, Clone)]
pub struct ChainFollower {
    pub(super) source: Arc<dyn BlockSource>,
    store: Store,
    locks: Arc<UserLocks>,
    pub(super) listeners: Arc<[Arc<dyn ChainListener>]>,
    pub(super) settings: FollowerSettings,
    status: Arc<watch::Sender<ChainStatus>>,
    wake: Arc<Notify>,
    /// The follower's own thread for store work and broadcasts (see [`Worker`]).
    pub(super) worker: Worker,
    /// What of the mempool was already shown to the listeners.
    pub(super) mempool: Arc<super::mempool::MempoolWatch>,
}

impl ChainFollower {
    /// A follower reading `source`, showing blocks to `listeners` in this order, committing to
    /// `store` and publishing its progress on `status`. Starts its worker thread.
    pub fn new(
        source: Arc<dyn BlockSource>,
        store: Store,
        locks: Arc<UserLocks>,
        listeners: Vec<Arc<dyn ChainListener>>,
        settings: FollowerSettings,
        status: watch::Sender<ChainStatus>,
    ) -> std::io::Result<Self> {
        let wake = Arc::new(Notify::new());
        let status = Arc::new(status);
        let worker = Worker::spawn("chain-follower")?;
        let mempool = Arc::default();
        Ok(ChainFollower { source, store, locks, listeners: listeners.into(), settings, status, wake, worker, mempool })
    }

    /// Wakes [`follow`](Self::follow) between polls (ZMQ notifications, late appointments).
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// The follower's progress, as it publishes it.
    pub fn status(&self) -> watch::Receiver<ChainStatus> {
        self.status.subscribe()
    }

    fn set_height(&self, height: u32) {
        self.status.send_modify(|s| s.tip_height = height);
    }

    /// Waits until the source answers (with backoff, logging what it waits for) and checks its
    /// network. Returns `Ok(false)` if `shutdown` fired first.
    pub async fn wait_for_source(&self, shutdown: &CancellationToken) -> Result<bool, ChainError> {
        let mut delay = Duration::from_secs(1);
        loop {
            match self.source.chain_info().await {
                Ok(info) => {
                    let expected = self.settings.network.to_core_arg();
                    if info.chain != expected {
                        return Err(ChainError::WrongNetwork { found: info.chain, expected: expected.to_string() });
                    }
                    tracing::info!(chain = info.chain, height = info.height, "connected to bitcoind");
                    self.status.send_modify(|s| {
                        s.source_reachable = true;
                        s.source_height = Some(info.height);
                    });
                    return Ok(true);
                }
                Err(e) if e.is_transient() => {
                    self.status.send_modify(|s| {
                        s.source_reachable = false;
                        s.rounds += 1;
                    });
                    tracing::warn!(error = %e, retry_in = ?delay, "waiting for bitcoind");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(false),
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Brings the store up to the source's best block. On first start, adopts the current tip.
    pub async fn sync(&self) -> Result<(), ChainError> {
        let best = self.source.best_block_hash().await?;
        let Some((_, tip_hash)) = self.blocking(|me| me.store.tip()).await? else {
            return self.adopt_tip(best).await;
        };
        if best == tip_hash {
            self.status.send_modify(|s| s.source_height = Some(s.tip_height));
            return Ok(());
        }
        let (fork_height, new_headers) = self.path_to(best).await?;
        let best_height = new_headers.first().map_or(fork_height, |h| h.height);
        self.status.send_modify(|s| s.source_height = Some(best_height));
        self.disconnect_down_to(fork_height).await?;
        for header in new_headers.iter().rev() {
            self.connect(header).await?;
            // Before the next block can push a late appointment's block out of the recent window.
            self.revisit_recent_blocks().await?;
        }
        Ok(())
    }

    /// Polls for new tips until `shutdown` fires, and syncs at once when [`waker`](Self::waker)
    /// is notified; polling stays the fallback. Outages of the source are logged and waited out;
    /// any other failure is logged at every round and retried. If the store keeps failing for
    /// `store_failure_exit` (a full disk, say), it returns the failure, for the daemon to exit
    /// non-zero and be restarted. Unconfirmed transactions arriving on `rawtx` (ZMQ) are shown
    /// to the listeners at once (see [`super::mempool`]).
    pub async fn follow(
        self,
        interval: Duration,
        store_failure_exit: Duration,
        mut rawtx: Option<tokio::sync::mpsc::Receiver<bitcoin::Transaction>>,
        shutdown: CancellationToken,
    ) -> Result<(), ChainError> {
        if rawtx.is_some() {
            self.mempool.set_fed();
        }
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = ticker.tick() => {}
                _ = self.wake.notified() => {}
                Some(tx) = async { rawtx.as_mut()?.recv().await }, if rawtx.is_some() => {
                    let mut txs = vec![tx];
                    while let Some(more) = rawtx.as_mut().and_then(|r| r.try_recv().ok()).filter(|_| txs.len() < 1000) {
                        txs.push(more);
                    }
                    if let Err(e) = self.mempool_arrived(txs).await {
                        tracing::debug!(error = %e, "unconfirmed transactions from ZMQ rawtx not looked at");
                    }
                    continue;
                }
            }
            let result = self.sync_round().await;
            let failing_since = self.record_round(&result);
            if let (Err(e), Some(since)) = (result, failing_since) {
                if since.elapsed() >= store_failure_exit {
                    tracing::error!(error = %e, failing_for = ?since.elapsed(), "the store has failed for too long: stopping");
                    return Err(e);
                }
            }
        }
        tracing::info!("chain follower stopped");
        Ok(())
    }

    /// Publishes and logs how a round went; returns since when the store has been failing.
    fn record_round(&self, result: &Result<(), ChainError>) -> Option<tokio::time::Instant> {
        let was_reachable = self.status.borrow().source_reachable;
        match result {
            Ok(()) if !was_reachable => tracing::info!("bitcoind is reachable again"),
            Ok(()) => {}
            Err(e) if e.is_transient() => {
                if was_reachable {
                    tracing::warn!(error = %e, "bitcoind unreachable; appointments are still accepted");
                }
            }
            Err(e) => tracing::error!(error = %e, "chain sync failed; retrying at the next poll"),
        }
        let mut failing_since = None;
        self.status.send_modify(|s| {
            s.rounds += 1;
            s.source_reachable = !matches!(result, Err(e) if e.is_transient());
            s.store_failing_since = match result {
                Err(ChainError::Store(_)) => Some(s.store_failing_since.unwrap_or_else(tokio::time::Instant::now)),
                _ => None,
            };
            s.last_error = match result {
                Err(e) if !e.is_transient() => Some(e.to_string()),
                _ => None,
            };
            failing_since = s.store_failing_since;
        });
        failing_since
    }

    /// One round: sync to the best block, then show the listeners the recent blocks they asked
    /// for (appointments that arrived after their dispute was mined).
    pub async fn sync_round(&self) -> Result<(), ChainError> {
        self.sync().await?;
        self.revisit_recent_blocks().await?;
        self.poll_mempool().await
    }

    pub(super) async fn blocking<T: Send + 'static, E: Into<ChainError> + Send + 'static>(
        &self,
        work: impl FnOnce(&ChainFollower) -> Result<T, E> + Send + 'static,
    ) -> Result<T, ChainError> {
        let me = self.clone();
        self.worker.run(move || work(&me)).await?.map_err(Into::into)
    }

    async fn adopt_tip(&self, best: BlockHash) -> Result<(), ChainError> {
        let header = self.source.header(&best).await?;
        let prev = header.prev.unwrap_or(BlockHash::all_zeros());
        self.blocking(move |me| {
            let mut batch = me.store.batch();
            batch.put_block(header.height, &header.hash, &prev);
            batch.set_tip(header.height, &header.hash);
            me.store.commit(batch)
        })
        .await?;
        tracing::info!(height = header.height, hash = %best, "fresh start: following the chain from bitcoind's tip");
        self.set_height(header.height);
        Ok(())
    }

    /// Walks back from `best` to a block the tower processed; returns that height and the new
    /// headers, newest first.
    async fn path_to(&self, best: BlockHash) -> Result<(u32, Vec<HeaderInfo>), ChainError> {
        let mut headers = Vec::new();
        let mut cursor = self.source.header(&best).await?;
        loop {
            let height = cursor.height;
            let known = self.blocking(move |me| me.store.block_at(height)).await?;
            if known.is_some_and(|(hash, _)| hash == cursor.hash) {
                return Ok((cursor.height, headers));
            }
            if headers.len() as u32 > BLOCKS_KEPT + 100_000 {
                return Err(ChainError::ReorgTooDeep);
            }
            let prev = cursor.prev.ok_or(ChainError::ReorgTooDeep)?;
            headers.push(cursor);
            cursor = self.source.header(&prev).await?;
        }
    }

    async fn disconnect_down_to(&self, fork_height: u32) -> Result<(), ChainError> {
        loop {
            let Some((height, hash)) = self.blocking(|me| me.store.tip()).await? else {
                return Ok(());
            };
            if height <= fork_height {
                return Ok(());
            }
            self.blocking(move |me| me.disconnect_tip(height)).await?;
            self.store.metrics().block_disconnected();
            tracing::warn!(height, %hash, "block disconnected (reorg)");
            self.set_height(height - 1);
        }
    }

    /// Undoes the tip block at `height`: the listeners (in reverse order) and the block's
    /// records, in one batch with the tip moved back.
    fn disconnect_tip(&self, height: u32) -> Result<(), ChainError> {
        let _turn = self.locks.priority().chain();
        let Some((_, prev)) = self.store.block_at(height)? else {
            return Err(ChainError::ReorgTooDeep);
        };
        let mut batch = BlockBatch::new(&self.store, &self.locks, None);
        for listener in self.listeners.iter().rev() {
            listener.block_disconnected(height, &mut batch)?;
        }
        let writes = batch.writes();
        writes.delete_recent_block(height);
        writes.delete_block(height);
        writes.set_tip(height - 1, &prev);
        self.commit(batch)?;
        // (On the blocking side: it waits for appointments being committed.)
        self.store.unindex_recent_blocks(Some(height), 0);
        Ok(())
    }

    async fn connect(&self, header: &HeaderInfo) -> Result<(), ChainError> {
        let started = Instant::now();
        let fetched = self.source.block(&header.hash).await?;
        let fetch = started.elapsed();
        let block = ConnectedBlock::new(header.height, fetched.block);
        check_block(self.settings.network, &header.hash, &block)?;
        let checked = started.elapsed();
        let (height, hash) = (block.height, block.hash);
        let times = self.blocking(move |me| me.connect_block(&block)).await?;
        let took = started.elapsed();
        let check = checked - fetch + times.check;
        self.store.metrics().block_connected(&[
            (BlockStage::Fetch, fetch),
            (BlockStage::Check, check),
            (BlockStage::Scan, times.scan),
            (BlockStage::Broadcast, times.broadcast),
            (BlockStage::Commit, times.commit),
            (BlockStage::Total, took),
        ]);
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        tracing::info!(
            height,
            %hash,
            breaches = times.breaches,
            source = fetched.origin,
            // From starting to fetch the block to its effects committed (docs/performance.md).
            took_ms = ms(took),
            fetch_ms = ms(fetch),
            check_ms = ms(check),
            scan_ms = ms(times.scan),
            broadcast_ms = ms(times.broadcast),
            commit_ms = ms(times.commit),
            "block connected"
        );
        self.set_height(height);
        Ok(())
    }

    /// Shows `block` to every listener and commits their writes with the block's records.
    fn connect_block(&self, block: &ConnectedBlock) -> Result<BlockTimes, ChainError> {
        let started = Instant::now();
        // The block goes ahead of requests (see `ChainPriority`); its wait for the requests
        // already running counts in `check_ms`.
        let _turn = self.locks.priority().chain();
        // The follower is the only writer of the tip, so this holds until the block is committed.
        let tip = self.store.tip()?.unwrap_or((0, BlockHash::all_zeros()));
        if tip != (block.height.wrapping_sub(1), block.block.header.prev_blockhash) {
            return Err(ChainError::InvalidBlock { hash: block.hash, reason: "does not extend the stored tip".into() });
        }
        self.undo_other_partial_block(block)?;
        // Indexed before any listener looks: see `store::recent` for why no appointment falls in
        // between.
        self.store.index_recent_block(block.height, block.hash, &block.txids);
        let check = started.elapsed();
        let mut batch = BlockBatch::new(&self.store, &self.locks, Some((block.height, block.hash)));
        for listener in self.listeners.iter() {
            listener.block_connected(block, &mut batch)?;
        }
        let window_start = self.record_block(block, batch.writes());
        let (broadcast, breaches) = (batch.broadcast_time(), batch.breaches());
        let listened = started.elapsed();
        self.commit(batch)?;
        self.store.unindex_recent_blocks(None, window_start);
        let scan = (listened - check).saturating_sub(broadcast);
        Ok(BlockTimes { check, scan, broadcast, commit: started.elapsed() - listened, breaches })
    }

    /// A block partly committed before a crash (its first chunks of breaches) that is not `block`
    /// (a reorg happened meanwhile) is undone first, as if it had been disconnected. The same
    /// block is simply processed again: what its chunks committed is skipped.
    fn undo_other_partial_block(&self, block: &ConnectedBlock) -> Result<(), ChainError> {
        let Some((height, hash)) = self.store.partial_block()? else { return Ok(()) };
        if (height, hash) == (block.height, block.hash) {
            return Ok(());
        }
        let mut batch = BlockBatch::new(&self.store, &self.locks, None);
        for listener in self.listeners.iter().rev() {
            listener.block_disconnected(height, &mut batch)?;
        }
        batch.writes().clear_partial_block();
        self.commit(batch)?;
        tracing::warn!(height, %hash, "a block partly processed before a restart left the chain: undone");
        Ok(())
    }

    /// The follower's own writes for a connected block: its record, its transactions for late
    /// appointments (dropping the record that leaves the window), and the tip (clearing the
    /// partial-block mark of its checkpoints, if any). Returns the first height of the recent
    /// window.
    fn record_block(&self, block: &ConnectedBlock, writes: &mut Batch) -> u32 {
        let height = block.height;
        writes.put_recent_block(height, &block.hash, &block.txids);
        let window_start = height.saturating_add(1).saturating_sub(self.settings.recent_block_lookback);
        for old in self.store.recent_blocks_below(window_start) {
            writes.delete_recent_block(old);
        }
        writes.put_block(height, &block.hash, &block.block.header.prev_blockhash);
        if let Some(old) = height.checked_sub(BLOCKS_KEPT) {
            writes.delete_block(old);
        }
        writes.set_tip(height, &block.hash);
        writes.clear_partial_block();
        window_start
    }

    /// Commits `batch`, releases the users it locked and writes the lines it logs once durable.
    fn commit(&self, batch: BlockBatch<'_>) -> Result<(), StoreError> {
        let (writes, after_commit, locks) = batch.finish();
        self.store.commit(writes)?;
        drop(locks);
        after_commit.run();
        Ok(())
    }

    /// Shows each listener the recent blocks it asks for, each with its own batch.
    async fn revisit_recent_blocks(&self) -> Result<(), ChainError> {
        for (index, listener) in self.listeners.iter().enumerate() {
            let listener = listener.clone();
            let wanted = self.blocking(move |_| listener.blocks_to_revisit(REVISITS_PER_ROUND)).await?;
            for revisit in wanted {
                let block = self.revisited_block(revisit).await?;
                let tip = self.status.borrow().tip_height;
                self.blocking(move |me| {
                    let _turn = me.locks.priority().chain();
                    let mut batch = BlockBatch::new(&me.store, &me.locks, None);
                    me.listeners[index].revisit(revisit, block.as_ref(), tip, &mut batch)?;
                    me.commit(batch).map_err(ChainError::from)
                })
                .await?;
            }
        }
        Ok(())
    }

    /// The block of `revisit` if it is still in the chain the tower follows.
    async fn revisited_block(&self, revisit: Revisit) -> Result<Option<ConnectedBlock>, ChainError> {
        let known = self.blocking(move |me| me.store.block_at(revisit.height)).await?;
        if known.is_none_or(|(hash, _)| hash != revisit.hash) {
            return Ok(None);
        }
        match self.source.block(&revisit.hash).await {
            Ok(fetched) => {
                let block = ConnectedBlock::new(revisit.height, fetched.block);
                check_block(self.settings.network, &revisit.hash, &block)?;
                Ok(Some(block))
            }
            Err(SourceError::NotFound(_) | SourceError::Pruned(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

/// Where a block's time went, for the `block connected` line.
#[derive(Debug)]
struct BlockTimes {
    check: Duration,
    scan: Duration,
    broadcast: Duration,
    commit: Duration,
    breaches: usize,
}

#[cfg(test)]
#[path = "follower_tests.rs"]
mod tests;
