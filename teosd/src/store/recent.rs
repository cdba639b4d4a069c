//! The transactions of the recent blocks, for appointments that arrive after their dispute was
//! mined.
//!
//! On disk, `recent_blocks` holds one record per block (height → block hash ‖ txids), written in
//! the block's own batch. In memory, each recent block keeps the sorted first 8 bytes of its
//! transactions' locators, in each dialect's byte order (rust-teos and python-teos, see
//! `protocol::Dialect`): 16 bytes per transaction, so an appointment's probe is one binary search
//! per recent block and no store read. A probe that hits queues a late check; the Watcher answers
//! it when the follower shows it that block again, comparing all 16 bytes there.
//!
//! The chain follower indexes a block in memory *before* it scans the block for breaches, and
//! an appointment holds a [`RecentGuard`] from its probe until its batch is committed. So an
//! appointment whose dispute is in a block being processed is either committed before the scan
//! (the scan finds it) or probes after the block was indexed (a late check is queued with it).

use std::collections::BTreeMap;
use std::sync::{PoisonError, RwLock, RwLockReadGuard};

use bitcoin::hashes::Hash;
use bitcoin::{BlockHash, Txid};

use super::kv::{Cf, Kv, Op};
use super::records::be_u32;
use super::{appointment_key, corrupt, Batch, Store, StoreError};
use crate::protocol::{Dialect, Locator, UserId, LOCATOR_LEN, USER_ID_LEN};

/// A recent block holding a transaction with a given locator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecentHit {
    /// The block's height.
    pub height: u32,
    /// The block.
    pub block_hash: BlockHash,
}

#[derive(Debug)]
struct IndexedBlock {
    hash: BlockHash,
    /// First 8 bytes of each transaction's locator, sorted: rust-teos locators, then python-teos.
    prefixes: [Vec<u64>; 2],
}

type Blocks = BTreeMap<u32, IndexedBlock>;

/// The in-memory index of `recent_blocks`.
#[derive(Debug, Default)]
pub(super) struct RecentIndex {
    blocks: RwLock<Blocks>,
}

fn short(locator: &Locator) -> u64 {
    let bytes = locator.as_bytes();
    u64::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7]])
}

fn index_block(hash: BlockHash, txids: impl Iterator<Item = Txid>) -> IndexedBlock {
    let (mut rust, mut python): (Vec<u64>, Vec<u64>) =
        txids.map(|txid| (short(&Dialect::Rust.locator(&txid)), short(&Dialect::Python.locator(&txid)))).unzip();
    rust.sort_unstable();
    python.sort_unstable();
    IndexedBlock { hash, prefixes: [rust, python] }
}

fn form(dialect: Dialect) -> usize {
    match dialect {
        Dialect::Rust => 0,
        Dialect::Python => 1,
    }
}

fn decode_record(height: u32, bytes: &[u8]) -> Result<(BlockHash, impl Iterator<Item = Txid> + '_), StoreError> {
    if bytes.len() < 32 || !bytes.len().is_multiple_of(32) {
        return Err(corrupt(Cf::RecentBlocks, "recent block", format!("height {height}: {} bytes", bytes.len())));
    }
    let hash = BlockHash::from_slice(&bytes[..32]).map_err(|e| corrupt(Cf::RecentBlocks, "hash", e.to_string()))?;
    let txids = bytes[32..].chunks_exact(32).filter_map(|c| Txid::from_slice(c).ok());
    Ok((hash, txids))
}

impl RecentIndex {
    /// Indexes every record of `recent_blocks`.
    pub(super) fn load(kv: &dyn Kv) -> Result<RecentIndex, StoreError> {
        let mut blocks = Blocks::new();
        let mut from = 0u32.to_be_bytes().to_vec();
        // One record at a time: a block's record is up to a few hundred kB.
        while let Some((key, value)) = kv.range(Cf::RecentBlocks, &from, &[0xff; 5], 1)?.pop() {
            let height = be_u32(&key, 0).filter(|_| key.len() == 4);
            let height = height.ok_or_else(|| corrupt(Cf::RecentBlocks, "key", format!("{} bytes", key.len())))?;
            let (hash, txids) = decode_record(height, &value)?;
            blocks.insert(height, index_block(hash, txids));
            from = key;
            from.push(0);
        }
        Ok(RecentIndex { blocks: RwLock::new(blocks) })
    }

    fn read(&self) -> RwLockReadGuard<'_, Blocks> {
        // The index holds no invariant a panicking writer could break halfway.
        self.blocks.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self, change: impl FnOnce(&mut Blocks)) {
        change(&mut self.blocks.write().unwrap_or_else(PoisonError::into_inner))
    }
}

/// A read hold on the recent-block index (see the module documentation): the chain follower
/// indexes no new block while it is held.
#[derive(Debug)]
pub struct RecentGuard<'a> {
    blocks: RwLockReadGuard<'a, Blocks>,
}

impl RecentGuard<'_> {
    /// The recent blocks that may hold a transaction with `locator` in `dialect`'s byte order (8
    /// of its 16 bytes are compared here; the late check compares the rest).
    pub fn blocks_with(&self, locator: &Locator, dialect: Dialect) -> Vec<RecentHit> {
        let wanted = short(locator);
        self.blocks
            .iter()
            .filter(|(_, block)| block.prefixes[form(dialect)].binary_search(&wanted).is_ok())
            .map(|(&height, block)| RecentHit { height, block_hash: block.hash })
            .collect()
    }
}

impl Batch {
    /// Records the transactions of the block `hash` at `height`.
    pub fn put_recent_block(&mut self, height: u32, hash: &BlockHash, txids: &[Txid]) {
        let mut value = Vec::with_capacity(32 * (1 + txids.len()));
        value.extend_from_slice(hash.as_byte_array());
        for txid in txids {
            value.extend_from_slice(txid.as_byte_array());
        }
        self.ops.push(Op::Put(Cf::RecentBlocks, height.to_be_bytes().to_vec(), value));
    }

    /// Forgets the recent block at `height`.
    pub fn delete_recent_block(&mut self, height: u32) {
        self.ops.push(Op::Delete(Cf::RecentBlocks, height.to_be_bytes().to_vec()));
    }

    /// Records that `user`'s appointment at `locator` arrived after a transaction with its
    /// locator was mined in `hit`.
    pub fn put_late_check(&mut self, locator: &Locator, user: &UserId, hit: &RecentHit) {
        self.ops.push(Op::Put(Cf::LateChecks, late_check_key(hit, locator, user), Vec::new()));
    }

    /// Removes a late check.
    pub fn delete_late_check(&mut self, hit: &RecentHit, locator: &Locator, user: &UserId) {
        self.ops.push(Op::Delete(Cf::LateChecks, late_check_key(hit, locator, user)));
    }
}

impl Store {
    /// Holds the recent-block index for reading (see [`RecentGuard`]).
    pub fn recent(&self) -> RecentGuard<'_> {
        RecentGuard { blocks: self.recent.read() }
    }

    /// Indexes in memory the block `hash` at `height` (replacing any other block at that height).
    /// Its record is written by the block's batch ([`Batch::put_recent_block`]).
    pub fn index_recent_block(&self, height: u32, hash: BlockHash, txids: &[Txid]) {
        let block = index_block(hash, txids.iter().copied());
        self.recent.write(|blocks| {
            blocks.insert(height, block);
        });
    }

    /// Drops from the in-memory index the block at `height` and every block below `below`
    /// (once their records' deletion is committed).
    pub fn unindex_recent_blocks(&self, height: Option<u32>, below: u32) {
        self.recent.write(|blocks| {
            if let Some(height) = height {
                blocks.remove(&height);
            }
            *blocks = blocks.split_off(&below);
        });
    }

    /// Heights of the recent blocks below `height`. Read from the in-memory index, which holds
    /// every height with a record (a block is indexed before its record is written, and leaves
    /// the index only after its record's deletion is committed): no store read per block.
    pub fn recent_blocks_below(&self, height: u32) -> Vec<u32> {
        self.recent.read().range(..height).map(|(&h, _)| h).collect()
    }

    /// Up to `limit` blocks that late checks wait for, oldest first (one seek per block, however
    /// many checks each has).
    pub fn late_check_blocks(&self, limit: usize) -> Result<Vec<RecentHit>, StoreError> {
        let mut blocks = Vec::new();
        let mut from = Vec::new();
        while blocks.len() < limit {
            let Some((key, _)) = self.kv.range(Cf::LateChecks, &from, &[0xff; LATE_KEY_LEN + 1], 1)?.pop() else {
                break;
            };
            let (hit, _, _) = split_late_check_key(&key)?;
            blocks.push(hit);
            match successor(&key[..BLOCK_PREFIX_LEN]) {
                Some(next) => from = next,
                None => break,
            }
        }
        Ok(blocks)
    }

    /// Up to `limit` late checks waiting for the block `hit`, after `after`, in key order.
    pub fn late_checks_at(
        &self,
        hit: &RecentHit,
        after: Option<&(Locator, UserId)>,
        limit: usize,
    ) -> Result<Vec<(Locator, UserId)>, StoreError> {
        let prefix = block_prefix(hit);
        let mut from = match after {
            Some((locator, user)) => late_check_key(hit, locator, user),
            None => prefix.clone(),
        };
        if after.is_some() {
            from.push(0);
        }
        let rows = self.kv.scan(Cf::LateChecks, &prefix, &from, limit)?;
        rows.iter().map(|(k, _)| split_late_check_key(k).map(|(_, locator, user)| (locator, user))).collect()
    }

    /// Up to `limit` late checks, oldest blocks first, with the block each waits for.
    pub fn late_checks(&self, limit: usize) -> Result<Vec<(Locator, UserId, RecentHit)>, StoreError> {
        let rows = self.kv.range(Cf::LateChecks, &[], &[0xff; LATE_KEY_LEN + 1], limit)?;
        rows.iter().map(|(k, _)| split_late_check_key(k).map(|(hit, locator, user)| (locator, user, hit))).collect()
    }
}

/// `height ‖ block hash`: the part of a late check's key naming its block.
const BLOCK_PREFIX_LEN: usize = 4 + 32;
/// `height ‖ block hash ‖ locator ‖ user_id`.
pub(super) const LATE_KEY_LEN: usize = BLOCK_PREFIX_LEN + LOCATOR_LEN + USER_ID_LEN;

fn block_prefix(hit: &RecentHit) -> Vec<u8> {
    let mut key = Vec::with_capacity(LATE_KEY_LEN);
    key.extend_from_slice(&hit.height.to_be_bytes());
    key.extend_from_slice(hit.block_hash.as_byte_array());
    key
}

pub(super) fn late_check_key(hit: &RecentHit, locator: &Locator, user: &UserId) -> Vec<u8> {
    let mut key = block_prefix(hit);
    key.extend_from_slice(&appointment_key(locator, user));
    key
}

fn split_late_check_key(key: &[u8]) -> Result<(RecentHit, Locator, UserId), StoreError> {
    if key.len() != LATE_KEY_LEN {
        return Err(corrupt(Cf::LateChecks, "key", format!("{} bytes", key.len())));
    }
    let height = be_u32(key, 0).ok_or_else(|| corrupt(Cf::LateChecks, "key", "short"))?;
    let block_hash =
        BlockHash::from_slice(&key[4..BLOCK_PREFIX_LEN]).map_err(|e| corrupt(Cf::LateChecks, "hash", e.to_string()))?;
    let (locator, user) = super::trackers::split_key(Cf::LateChecks, &key[BLOCK_PREFIX_LEN..])?;
    Ok((RecentHit { height, block_hash }, locator, user))
}

/// The smallest byte string greater than every string starting with `prefix` (`None` if all are
/// 0xff).
fn successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut next = prefix.to_vec();
    while let Some(last) = next.pop() {
        if last < 0xff {
            next.push(last + 1);
            return Some(next);
        }
    }
    None
}
