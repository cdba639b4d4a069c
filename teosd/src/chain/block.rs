//! A block as the listeners see it, and the batch they fill.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bitcoin::{Block, BlockHash, Transaction, Txid};

use crate::locks::{HeldLocks, UserLocks};
use crate::protocol::{Dialect, Locator, UserId};
use crate::store::{Batch, Store, StoreError};

/// A checked block of the best chain, with its transaction ids computed once.
#[derive(Debug)]
pub struct ConnectedBlock {
    /// Its height.
    pub height: u32,
    /// Its hash.
    pub hash: BlockHash,
    /// The block.
    pub block: Block,
    /// Its transactions' ids, in block order.
    pub txids: Vec<Txid>,
    positions: HashMap<Txid, usize>,
}

impl ConnectedBlock {
    /// The block `block` at `height`.
    pub fn new(height: u32, block: Block) -> Self {
        let txids: Vec<Txid> = block.txdata.iter().map(Transaction::compute_txid).collect();
        let positions = txids.iter().enumerate().map(|(i, txid)| (*txid, i)).collect();
        ConnectedBlock { height, hash: block.block_hash(), block, txids, positions }
    }

    /// Whether the block holds `txid`.
    pub fn contains(&self, txid: &Txid) -> bool {
        self.positions.contains_key(txid)
    }

    /// Position in the block of the transaction `txid`.
    pub fn position(&self, txid: &Txid) -> Option<usize> {
        self.positions.get(txid).copied()
    }

    /// The block's transaction whose locator in `dialect` is `locator` (all 16 bytes compared).
    pub fn transaction_with(&self, locator: &Locator, dialect: Dialect) -> Option<(&Transaction, Txid)> {
        let index = self.txids.iter().position(|txid| dialect.locator(txid) == *locator)?;
        Some((&self.block.txdata[index], self.txids[index]))
    }

    /// The locators of the block's transactions in `dialect`, in block order.
    pub fn locators(&self, dialect: Dialect) -> Vec<Locator> {
        self.txids.iter().map(|txid| dialect.locator(txid)).collect()
    }
}

/// Everything one block (or one disconnection, or one revisit) changes, committed at once by the
/// follower. Besides the store writes it carries the users whose locks the writes need (held
/// until the commit), slots owed back to users (settled by the Gatekeeper), log lines that may
/// only be written once the batch is durable, and the block's timings.
///
/// A listener with unbounded work for one block (every user at a breached locator) commits it in
/// chunks with [`BlockBatch::checkpoint`]: each chunk is durable on its own, marked as part of
/// this block, so that a replay of the same block skips what is done and a different block at
/// that height first undoes it (see `chain::follower`).
pub struct BlockBatch<'l> {
    store: &'l Store,
    /// The block being connected, for the partial-block mark of checkpoints.
    block: Option<(u32, BlockHash)>,
    writes: Batch,
    locks: HeldLocks<'l>,
    refunds: BTreeMap<UserId, u32>,
    after_commit: Vec<Box<dyn FnOnce() + 'l>>,
    broadcast_time: Duration,
    breaches: usize,
}

impl std::fmt::Debug for BlockBatch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockBatch")
            .field("writes", &self.writes)
            .field("refunds", &self.refunds)
            .field("after_commit", &self.after_commit.len())
            .finish_non_exhaustive()
    }
}

impl<'l> BlockBatch<'l> {
    /// An empty batch over `store`, taking user locks from `locks`, for the block `block` being
    /// connected (`None`: a disconnection or a revisit).
    pub fn new(store: &'l Store, locks: &'l UserLocks, block: Option<(u32, BlockHash)>) -> Self {
        BlockBatch {
            store,
            block,
            writes: Batch::default(),
            locks: locks.hold(),
            refunds: BTreeMap::new(),
            after_commit: Vec::new(),
            broadcast_time: Duration::ZERO,
            breaches: 0,
        }
    }

    /// The store writes.
    pub fn writes(&mut self) -> &mut Batch {
        &mut self.writes
    }

    /// Holds `user`'s lock until the batch is committed or dropped: for reads of the user's
    /// subscription that the batch's writes depend on.
    pub fn lock_user(&mut self, user: &UserId) {
        self.locks.add(user);
    }

    /// Owes `user` a slot (a completed tracker). The Gatekeeper settles what is owed.
    pub fn refund_slot(&mut self, user: UserId) {
        *self.refunds.entry(user).or_default() += 1;
    }

    /// Commits the writes so far on their own (with the partial-block mark when a block is being
    /// connected) and writes their log lines; the locks stay held. For work too big for one batch.
    pub fn checkpoint(&mut self) -> Result<(), StoreError> {
        let mut writes = std::mem::take(&mut self.writes);
        if let Some((height, hash)) = &self.block {
            writes.set_partial_block(*height, hash);
        }
        self.store.commit(writes)?;
        for log in std::mem::take(&mut self.after_commit) {
            log();
        }
        Ok(())
    }

    /// Takes the slots owed, by user.
    pub fn take_refunds(&mut self) -> BTreeMap<UserId, u32> {
        std::mem::take(&mut self.refunds)
    }

    /// Runs `log` once the batch is durable (operators and tools may act on what it says).
    pub fn after_commit(&mut self, log: impl FnOnce() + 'l) {
        self.after_commit.push(Box::new(log));
    }

    /// Runs `send` (a broadcast), counting its time in the block's `broadcast_ms`.
    pub fn timed_broadcast<T>(&mut self, send: impl FnOnce() -> T) -> T {
        let started = Instant::now();
        let result = send();
        self.broadcast_time += started.elapsed();
        result
    }

    /// Counts a breach answered in this batch.
    pub fn count_breach(&mut self) {
        self.breaches += 1;
    }

    /// Time spent broadcasting so far.
    pub fn broadcast_time(&self) -> Duration {
        self.broadcast_time
    }

    /// Breaches answered so far.
    pub fn breaches(&self) -> usize {
        self.breaches
    }

    /// The writes, and what to run once they are durable. The locks go when the caller drops
    /// the returned guard, after its commit.
    pub fn finish(self) -> (Batch, AfterCommit<'l>, HeldLocks<'l>) {
        (self.writes, AfterCommit(self.after_commit), self.locks)
    }
}

/// Log lines waiting for their batch to be durable.
pub struct AfterCommit<'l>(Vec<Box<dyn FnOnce() + 'l>>);

impl std::fmt::Debug for AfterCommit<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AfterCommit({} lines)", self.0.len())
    }
}

impl AfterCommit<'_> {
    /// Runs them, in the order they were added.
    pub fn run(self) {
        for log in self.0 {
            log();
        }
    }
}
