//! Follows bitcoind's best chain. On a new tip it finds the fork point against the blocks it has
//! processed, disconnects stale blocks tip first, then fetches, checks (linkage, proof of work,
//! merkle root) and processes each new block in order. Each block's effects are committed in the
//! same batch as the new tip, so a crash replays a block rather than skipping it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bitcoin::hashes::Hash;
use bitcoin::pow::Target;
use std::collections::HashSet;

use bitcoin::{Block, BlockHash, Network, TxMerkleNode, Txid};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use super::rpc::{BitcoindRpc, HeaderInfo, RpcError};
use super::zmq::OfferedBlocks;
use crate::config::Policy;
use crate::protocol::{Locator, UserId};
use crate::responder::{self, Breach, BroadcastOutcome, IRREVOCABLY_RESOLVED};
use crate::store::{Batch, PenaltyStatus, Store, StoreError, TrackerRecord};
use crate::tower::UserLocks;

/// How many processed blocks are remembered to find fork points.
const BLOCKS_KEPT: u32 = 1000;

/// Why following the chain stopped.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// bitcoind failed.
    #[error(transparent)]
    Rpc(#[from] RpcError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// bitcoind serves another network.
    #[error("bitcoind is running on {found} but teosd is set to run on {expected}")]
    WrongNetwork {
        /// bitcoind's chain.
        found: String,
        /// Ours.
        expected: String,
    },
    /// A block failed validation.
    #[error("block {hash} is invalid: {reason}")]
    InvalidBlock {
        /// The block.
        hash: BlockHash,
        /// What was wrong.
        reason: String,
    },
    /// The fork point is older than the blocks the tower remembers.
    #[error("reorg deeper than {BLOCKS_KEPT} blocks: cannot find the fork point")]
    ReorgTooDeep,
    /// A needed block was pruned by bitcoind.
    #[error("bitcoind no longer has block {0} (pruned): the tower fell too far behind")]
    Pruned(BlockHash),
    /// A blocking task failed.
    #[error("task failed: {0}")]
    Task(String),
}

/// What a block asks of the tower, found before any broadcast.
#[derive(Debug)]
struct BlockScan {
    breaches: Vec<Breach>,
    due: Vec<(Locator, UserId, TrackerRecord)>,
    drops: Batch,
    txids: Vec<Txid>,
    in_block: HashSet<Txid>,
}

/// What bitcoind answered to each broadcast of a [`BlockScan`], in the same order (`None`: a
/// penalty given up on).
#[derive(Debug, Default)]
struct Responses {
    new: Vec<BroadcastOutcome>,
    resent: Vec<Option<BroadcastOutcome>>,
}

fn log_outcome(
    what: &str,
    user: &UserId,
    locator: &Locator,
    penalty: &bitcoin::Transaction,
    outcome: &BroadcastOutcome,
) {
    let penalty_txid = penalty.compute_txid();
    match outcome {
        BroadcastOutcome::Rejected { code, message } => {
            tracing::warn!(user_id = %user, %locator, %penalty_txid, code, message, "{what}: rejected by bitcoind, will retry")
        }
        other => tracing::info!(user_id = %user, %locator, %penalty_txid, outcome = ?other, "{what}"),
    }
}

/// Everything the chain side needs to process blocks.
#[derive(Debug, Clone)]
pub struct ChainFollower {
    rpc: Arc<BitcoindRpc>,
    store: Store,
    locks: Arc<UserLocks>,
    policy: Policy,
    network: Network,
    height: watch::Sender<u32>,
    reachable: Arc<AtomicBool>,
    wake: Arc<Notify>,
    offered: Arc<OfferedBlocks>,
}

impl ChainFollower {
    /// A follower committing to `store` and publishing heights on `height`.
    pub fn new(
        rpc: Arc<BitcoindRpc>,
        store: Store,
        locks: Arc<UserLocks>,
        policy: Policy,
        network: Network,
        height: watch::Sender<u32>,
    ) -> Self {
        let reachable = Arc::new(AtomicBool::new(false));
        let (wake, offered) = (Arc::new(Notify::new()), Arc::new(OfferedBlocks::default()));
        ChainFollower { rpc, store, locks, policy, network, height, reachable, wake, offered }
    }

    /// Where the ZMQ `rawblock` subscriber ([`super::zmq`]) leaves whole blocks for
    /// [`connect`](Self::connect) to use instead of `getblock`.
    pub fn offered_blocks(&self) -> Arc<OfferedBlocks> {
        self.offered.clone()
    }

    /// Wakes [`follow`](Self::follow) between polls: the ZMQ `hashblock` subscriber
    /// ([`super::zmq`]) calls `notify_one` on it for every notification.
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Whether the last exchange with bitcoind succeeded (shared with the admin API).
    pub fn reachable(&self) -> Arc<AtomicBool> {
        self.reachable.clone()
    }

    /// Waits until bitcoind answers (with backoff, logging what it waits for) and checks its
    /// network. Returns `Ok(false)` if `shutdown` fired first.
    pub async fn wait_for_bitcoind(&self, shutdown: &CancellationToken) -> Result<bool, ChainError> {
        let mut delay = Duration::from_secs(1);
        loop {
            match self.rpc.blockchain_info().await {
                Ok(info) => {
                    let expected = self.network.to_core_arg();
                    if info.chain != expected {
                        return Err(ChainError::WrongNetwork { found: info.chain, expected: expected.to_string() });
                    }
                    tracing::info!(chain = info.chain, height = info.blocks, "connected to bitcoind");
                    self.reachable.store(true, Ordering::Relaxed);
                    return Ok(true);
                }
                Err(e) if e.is_transient() => {
                    self.reachable.store(false, Ordering::Relaxed);
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

    /// Brings the store up to bitcoind's best block. On first start, adopts the current tip.
    pub async fn sync(&self) -> Result<(), ChainError> {
        let best = self.rpc.best_block_hash().await?;
        let Some((_, tip_hash)) = self.blocking(|s| s.store.tip()).await? else {
            return self.adopt_tip(best).await;
        };
        if best == tip_hash {
            return Ok(());
        }
        let (fork_height, new_headers) = self.path_to(best).await?;
        self.disconnect_down_to(fork_height).await?;
        for header in new_headers.iter().rev() {
            self.connect(header).await?;
            // Before the next block can push a late check's block out of the recent window.
            self.answer_late_disputes().await?;
        }
        Ok(())
    }

    /// Polls for new tips until `shutdown` fires, and syncs at once when [`waker`](Self::waker)
    /// is notified (ZMQ); polling stays the fallback. bitcoind outages are logged and waited out.
    pub async fn follow(self, interval: Duration, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reachable = true;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = ticker.tick() => {}
                _ = self.wake.notified() => {}
            }
            let result = self.sync_round().await;
            let transient = matches!(&result, Err(ChainError::Rpc(e)) if e.is_transient());
            self.reachable.store(!transient, Ordering::Relaxed);
            match result {
                Ok(()) if !reachable => {
                    tracing::info!("bitcoind is reachable again");
                    reachable = true;
                }
                Ok(()) => {}
                Err(ChainError::Rpc(e)) if e.is_transient() => {
                    if reachable {
                        tracing::warn!(error = %e, "bitcoind unreachable; appointments are still accepted");
                    }
                    reachable = false;
                }
                Err(e) => {
                    tracing::error!(error = %e, "chain sync failed; retrying at the next poll")
                }
            }
        }
        tracing::info!("chain follower stopped");
    }

    /// One round: sync to the best block, then answer the appointments that arrived after their
    /// dispute was mined.
    async fn sync_round(&self) -> Result<(), ChainError> {
        self.sync().await?;
        self.answer_late_disputes().await
    }

    /// Answers queued late checks. A transport failure leaves them queued for the next round, so
    /// neither a bitcoind outage nor a restart loses one.
    async fn answer_late_disputes(&self) -> Result<(), ChainError> {
        for (locator, user, hit) in self.blocking(|me| me.store.late_checks(256)).await? {
            let txid = self.blocking(move |me| me.store.recent_txid(&hit, &locator)).await?;
            let dispute = match txid {
                Some(txid) => match self.rpc.transaction_in_block(&txid, &hit.block_hash).await {
                    Ok(tx) => Some(tx),
                    // Its block left the chain: the appointment stays watched like any other.
                    Err(RpcError::Rpc { code: -5, .. }) => None,
                    Err(e) => return Err(e.into()),
                },
                // The block was disconnected, or only 8 bytes of the locator matched.
                None => None,
            };
            let blob = self
                .blocking(move |me| {
                    let Some(record) = me.store.user(&user)? else { return Ok(None) };
                    let triggered = me.store.has_tracker(&locator, &user)?;
                    Ok(me
                        .store
                        .appointment(&locator, &record)?
                        .filter(|_| !triggered)
                        .map(|a| a.appointment.encrypted_blob))
                })
                .await?;
            let (Some(dispute), Some(blob)) = (dispute, blob) else {
                self.commit_late(locator, user, None).await?;
                continue;
            };
            let txid = dispute.compute_txid();
            match responder::penalty_for(&blob, &txid) {
                Ok(penalty) => {
                    let breach = Breach { locator, user, dispute, penalty };
                    let outcome = responder::broadcast(&self.rpc, &breach.penalty).await?;
                    log_outcome(
                        "dispute already on chain: penalty broadcast",
                        &user,
                        &locator,
                        &breach.penalty,
                        &outcome,
                    );
                    let tip = *self.height.borrow();
                    self.commit_late(locator, user, Some(responder::new_tracker(&breach, &outcome, hit.height, tip)))
                        .await?;
                    tracing::info!(user_id = %user, %locator, "New tracker added");
                }
                Err(reason) => {
                    tracing::warn!(user_id = %user, %locator, reason, "dispute already on chain but the appointment is invalid: dropped");
                    self.commit_late(locator, user, None).await?;
                    let drop_appointment = move |me: &ChainFollower| {
                        let _guard = me.locks.lock(&user);
                        let mut batch = me.store.batch();
                        if let Some(record) = me.store.user(&user)? {
                            batch.delete_appointment(&user, &record, &locator);
                        }
                        me.store.commit(batch)
                    };
                    self.blocking(drop_appointment).await?;
                }
            }
        }
        Ok(())
    }

    /// Clears a late check, storing the tracker it produced if any, in one batch under the
    /// user's lock.
    async fn commit_late(
        &self,
        locator: Locator,
        user: UserId,
        tracker: Option<TrackerRecord>,
    ) -> Result<(), ChainError> {
        self.blocking(move |me| {
            let _guard = me.locks.lock(&user);
            let mut batch = me.store.batch();
            if let Some(tracker) = &tracker {
                if !me.store.has_tracker(&locator, &user)? {
                    batch.put_tracker(&locator, &user, tracker, None);
                }
            }
            batch.delete_late_check(&locator, &user);
            me.store.commit(batch)
        })
        .await
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&ChainFollower) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, ChainError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || work(&me))
            .await
            .map_err(|e| ChainError::Task(e.to_string()))?
            .map_err(Into::into)
    }

    async fn adopt_tip(&self, best: BlockHash) -> Result<(), ChainError> {
        let header = self.rpc.header_info(&best).await?;
        let prev = header.previousblockhash.unwrap_or(BlockHash::all_zeros());
        self.blocking(move |me| {
            let mut batch = me.store.batch();
            batch.put_block(header.height, &header.hash, &prev);
            batch.set_tip(header.height, &header.hash);
            me.store.commit(batch)
        })
        .await?;
        tracing::info!(height = header.height, hash = %best, "fresh start: following the chain from bitcoind's tip");
        self.height.send_replace(header.height);
        Ok(())
    }

    /// Walks back from `best` to a block the tower processed; returns that height and the new
    /// headers, newest first.
    async fn path_to(&self, best: BlockHash) -> Result<(u32, Vec<HeaderInfo>), ChainError> {
        let mut headers = Vec::new();
        let mut cursor = self.rpc.header_info(&best).await?;
        loop {
            let height = cursor.height;
            let known = self.blocking(move |me| me.store.block_at(height)).await?;
            if known.is_some_and(|(hash, _)| hash == cursor.hash) {
                return Ok((cursor.height, headers));
            }
            if headers.len() as u32 > BLOCKS_KEPT + 100_000 {
                return Err(ChainError::ReorgTooDeep);
            }
            let prev = cursor.previousblockhash.ok_or(ChainError::ReorgTooDeep)?;
            headers.push(cursor);
            cursor = self.rpc.header_info(&prev).await?;
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
            let Some((_, prev)) = self.blocking(move |me| me.store.block_at(height)).await? else {
                return Err(ChainError::ReorgTooDeep);
            };
            let undone = self
                .blocking(move |me| {
                    let mut batch = me.store.batch();
                    let undone = responder::undo_block(&me.store, height, &mut batch)?;
                    batch.delete_block(height);
                    batch.set_tip(height - 1, &prev);
                    me.store.commit(batch)?;
                    // (Here, not on the async side: it waits for appointments being committed.)
                    me.store.unindex_recent_blocks(Some(height), 0);
                    Ok(undone)
                })
                .await?;
            undone.log(height);
            tracing::warn!(height, %hash, "block disconnected (reorg)");
            self.height.send_replace(height - 1);
        }
    }

    async fn connect(&self, header: &HeaderInfo) -> Result<(), ChainError> {
        let mut timer = StageTimer::start();
        let (block, source) = match self.offered_block(&header.hash) {
            Some(block) => (block, "zmq"),
            None => (self.fetch_block(&header.hash).await?, "rpc"),
        };
        let fetch_ms = timer.lap();
        let txids = self.check_block(header, &block)?;
        // The follower is the only writer of the tip, so this holds until the block is committed.
        let tip = self.blocking(|me| me.store.tip()).await?.unwrap_or((0, BlockHash::all_zeros()));
        if tip != (header.height.wrapping_sub(1), block.header.prev_blockhash) {
            return Err(ChainError::InvalidBlock {
                hash: header.hash,
                reason: "does not extend the stored tip".into(),
            });
        }
        let check_ms = timer.lap();
        let block = Arc::new(block);
        let (height, hash) = (header.height, header.hash);
        let scan = self
            .blocking({
                let block = block.clone();
                move |me| me.scan_block(&block, txids, height)
            })
            .await?;
        let scan_ms = timer.lap();
        let responses = self.broadcast_all(&scan, height).await?;
        let broadcast_ms = timer.lap();
        let breaches = scan.breaches.len();
        self.blocking(move |me| me.commit_block(&block, height, scan, responses)).await?;
        let commit_ms = timer.lap();
        // took_ms: getblock, checks, breach scan, broadcasts and the synced commit (docs/performance.md).
        let took_ms = timer.total();
        tracing::info!(height, %hash, breaches, source, took_ms, fetch_ms, check_ms, scan_ms, broadcast_ms, commit_ms, "block connected");
        self.height.send_replace(height);
        Ok(())
    }

    /// The block `hash` if it came whole over ZMQ (it is checked like any other).
    fn offered_block(&self, hash: &BlockHash) -> Option<Block> {
        let bytes = self.offered.take(hash)?;
        match bitcoin::consensus::deserialize(&bytes) {
            Ok(block) => Some(block),
            Err(error) => {
                tracing::warn!(%hash, %error, "block from ZMQ rawblock does not decode; fetching it over RPC");
                None
            }
        }
    }

    async fn fetch_block(&self, hash: &BlockHash) -> Result<Block, ChainError> {
        match self.rpc.block(hash).await {
            Err(RpcError::Rpc { code: -1, message }) if message.contains("pruned") => Err(ChainError::Pruned(*hash)),
            other => Ok(other?),
        }
    }

    /// The blocking part before broadcasts: expire users, complete irrevocable trackers, find
    /// breaches and the penalties due for a rebroadcast.
    fn scan_block(&self, block: &Block, txids: Vec<Txid>, height: u32) -> Result<BlockScan, StoreError> {
        // Indexed before the scan: see `store::recent` for why no appointment falls in between.
        self.store.index_recent_block(height, block.block_hash(), &txids);
        self.expire_users(height)?;
        responder::complete_irrevocable(&self.store, &self.locks, height)?;
        let mut drops = self.store.batch();
        let breaches = responder::find_breaches(&self.store, block, &txids, &mut drops)?;
        let in_block: HashSet<Txid> = txids.iter().copied().collect();
        let due = responder::due_for_rebroadcast(&self.store, height, self.policy.rebroadcast_after)?
            .into_iter()
            .filter(|(_, _, t)| !in_block.contains(&t.penalty.compute_txid()))
            .collect();
        Ok(BlockScan { breaches, due, drops, txids, in_block })
    }

    /// Sends every new penalty and every one due again. A transport failure aborts the block,
    /// which is then retried whole at the next poll: nothing is committed, nothing is lost.
    async fn broadcast_all(&self, scan: &BlockScan, height: u32) -> Result<Responses, ChainError> {
        let mut responses = Responses::default();
        for breach in &scan.breaches {
            let outcome = responder::broadcast(&self.rpc, &breach.penalty).await?;
            log_outcome("breach: penalty broadcast", &breach.user, &breach.locator, &breach.penalty, &outcome);
            responses.new.push(outcome);
        }
        for (locator, user, tracker) in &scan.due {
            if tracker.dispute_height.saturating_add(IRREVOCABLY_RESOLVED) <= height {
                tracing::error!(user_id = %user, %locator, penalty_txid = %tracker.penalty.compute_txid(),
                    "penalty never confirmed and its dispute is irrevocable: giving up");
                responses.resent.push(None);
                continue;
            }
            let outcome = responder::broadcast(&self.rpc, &tracker.penalty).await?;
            log_outcome("penalty sent again", user, locator, &tracker.penalty, &outcome);
            responses.resent.push(Some(outcome));
        }
        Ok(responses)
    }

    /// One batch with everything the block changes, and the new tip.
    fn commit_block(
        &self,
        block: &Block,
        height: u32,
        scan: BlockScan,
        responses: Responses,
    ) -> Result<(), StoreError> {
        let BlockScan { breaches, due, mut drops, txids, in_block } = scan;
        let batch = &mut drops;
        for (breach, outcome) in breaches.iter().zip(&responses.new) {
            let mut tracker = responder::new_tracker(breach, outcome, height, height);
            if in_block.contains(&breach.penalty.compute_txid()) {
                tracker.status = PenaltyStatus::Confirmed(height);
            }
            batch.put_tracker(&breach.locator, &breach.user, &tracker, None);
        }
        let confirmed = responder::mark_confirmations(&self.store, &txids, height, batch)?;
        for ((locator, user, old), outcome) in due.iter().zip(&responses.resent) {
            match outcome {
                None => {
                    batch.delete_tracker(locator, user, old);
                    if let Some(record) = self.store.user(user)? {
                        batch.delete_appointment(user, &record, locator);
                    }
                }
                Some(outcome) => {
                    let status = match outcome {
                        BroadcastOutcome::AlreadyConfirmed => PenaltyStatus::Confirmed(height),
                        _ => PenaltyStatus::Broadcast(height),
                    };
                    batch.put_tracker(locator, user, &TrackerRecord { status, ..old.clone() }, Some(old));
                }
            }
        }
        let block_hash = block.block_hash();
        batch.put_recent_block(height, &block_hash, &txids);
        let window_start = height.saturating_add(1).saturating_sub(self.policy.recent_block_lookback);
        for old in self.store.recent_blocks_below(window_start) {
            batch.delete_recent_block(old);
        }
        batch.put_block(height, &block.block_hash(), &block.header.prev_blockhash);
        if let Some(old) = height.checked_sub(BLOCKS_KEPT) {
            batch.delete_block(old);
        }
        batch.set_tip(height, &block.block_hash());
        self.store.commit(drops)?;
        self.store.unindex_recent_blocks(None, window_start);
        // Logged once durable: tests and operators may act on these lines.
        for breach in &breaches {
            tracing::info!(user_id = %breach.user, locator = %breach.locator, "New tracker added");
        }
        for (user, locator, penalty_txid) in confirmed {
            tracing::info!(user_id = %user, %locator, %penalty_txid, height, "penalty confirmed");
        }
        Ok(())
    }

    /// Checks the block against its header, the network's proof-of-work limit and its merkle
    /// root; returns its txids, in order.
    fn check_block(&self, header: &HeaderInfo, block: &Block) -> Result<Vec<Txid>, ChainError> {
        let invalid = |reason: &str| ChainError::InvalidBlock { hash: header.hash, reason: reason.to_string() };
        if block.block_hash() != header.hash {
            return Err(invalid("hash does not match the header"));
        }
        let limit: Target = bitcoin::params::Params::new(self.network).max_attainable_target;
        let target = block.header.target();
        if target > limit || block.header.validate_pow(target).is_err() {
            return Err(invalid("insufficient proof of work"));
        }
        let txids: Vec<Txid> = block.txdata.iter().map(|tx| tx.compute_txid()).collect();
        let root = bitcoin::merkle_tree::calculate_root(txids.iter().map(|t| t.to_raw_hash()));
        if root.map(TxMerkleNode::from_raw_hash) != Some(block.header.merkle_root) {
            return Err(invalid("merkle root mismatch"));
        }
        Ok(txids)
    }

    /// Removes users whose grace period ended by `height`, with their appointments (penalties
    /// already being followed stay until they complete). Each user goes in its own batch under
    /// its lock, so a renewal racing the removal is either seen or comes after it; replaying the
    /// block after a crash repeats nothing that matters.
    fn expire_users(&self, height: u32) -> Result<(), StoreError> {
        let Some(limit) = height.checked_sub(self.policy.expiry_delta) else {
            return Ok(());
        };
        for (_, user) in self.store.users_expiring_before(limit.saturating_add(1), usize::MAX)? {
            let _guard = self.locks.lock(&user);
            let Some(record) = self.store.user(&user)? else {
                continue;
            };
            if record.subscription_expiry > limit {
                continue; // renewed meanwhile
            }
            let mut batch: Batch = self.store.batch();
            for locator in self.store.user_locators(&user)? {
                batch.delete_appointment(&user, &record, &locator);
            }
            batch.delete_user(&user, &record);
            self.store.commit(batch)?;
            tracing::info!(user_id = %user, expiry = record.subscription_expiry, "subscription outdated: user removed");
        }
        Ok(())
    }
}

/// Milliseconds spent in each stage of a block, for the `block connected` line.
struct StageTimer {
    started: Instant,
    lap: Instant,
}

impl StageTimer {
    fn start() -> Self {
        let now = Instant::now();
        StageTimer { started: now, lap: now }
    }

    /// Milliseconds since the previous lap (or the start).
    fn lap(&mut self) -> f64 {
        let now = Instant::now();
        let ms = (now - self.lap).as_secs_f64() * 1000.0;
        self.lap = now;
        ms
    }

    fn total(&self) -> f64 {
        self.started.elapsed().as_secs_f64() * 1000.0
    }
}
