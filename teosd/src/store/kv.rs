//! The key-value seam under the store: column families, atomic batches and ordered scans.
//! RocksDB implements it for real; [`super::memory::MemoryKv`] implements it for tests.

/// A column family. Layouts are in `docs/schema.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Cf {
    /// Schema version, tower keys, chain tip.
    Meta,
    /// user_id → subscription.
    Users,
    /// expiry ‖ user_id → ().
    UsersByExpiry,
    /// user number → user_id.
    UserNumbers,
    /// locator ‖ user number → appointment.
    Appointments,
    /// user_id ‖ locator → ().
    UserLocators,
    /// locator ‖ user_id → tracker.
    Trackers,
    /// penalty_txid ‖ locator ‖ user_id → ().
    TrackersByPenalty,
    /// outpoint (txid ‖ vout) ‖ locator ‖ user_id → (): the outputs each penalty spends, to see a
    /// conflicting spend confirm.
    TrackerInputs,
    /// height ‖ hash → previous hash: the recently processed chain.
    Blocks,
    /// kind ‖ height ‖ locator ‖ user_id → (): when each tracker needs attention.
    TrackerEvents,
    /// height → block hash ‖ txids: the transactions of the recent blocks, kept for appointments
    /// that arrive after their dispute (indexed in memory by [`super::recent`]).
    RecentBlocks,
    /// height ‖ block hash ‖ locator ‖ user_id → (): appointments whose dispute was already mined
    /// when they arrived, waiting for the chain follower to answer them, oldest blocks first.
    LateChecks,
}

impl Cf {
    /// Every column family, in a fixed order.
    pub const ALL: [Cf; 13] = [
        Cf::Meta,
        Cf::Users,
        Cf::UsersByExpiry,
        Cf::UserNumbers,
        Cf::Appointments,
        Cf::UserLocators,
        Cf::Trackers,
        Cf::TrackersByPenalty,
        Cf::TrackerInputs,
        Cf::Blocks,
        Cf::TrackerEvents,
        Cf::RecentBlocks,
        Cf::LateChecks,
    ];

    /// The column family's name on disk.
    pub fn name(self) -> &'static str {
        match self {
            Cf::Meta => "meta",
            Cf::Users => "users",
            Cf::UsersByExpiry => "users_by_expiry",
            Cf::UserNumbers => "user_numbers",
            Cf::Appointments => "appointments",
            Cf::UserLocators => "user_locators",
            Cf::Trackers => "trackers",
            Cf::TrackersByPenalty => "trackers_by_penalty",
            Cf::TrackerInputs => "tracker_inputs",
            Cf::Blocks => "blocks",
            Cf::TrackerEvents => "tracker_events",
            Cf::RecentBlocks => "recent_blocks",
            Cf::LateChecks => "late_checks",
        }
    }

    /// Length of the key prefix that lookups by prefix use (and RocksDB's bloom filters index).
    pub fn prefix_len(self) -> Option<usize> {
        match self {
            Cf::Appointments | Cf::Trackers => Some(16),
            Cf::UserLocators => Some(33),
            Cf::TrackersByPenalty => Some(32),
            Cf::TrackerInputs => Some(36),
            _ => None,
        }
    }
}

/// Key-value pairs in key order.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// One change in a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Set a key.
    Put(Cf, Vec<u8>, Vec<u8>),
    /// Remove a key.
    Delete(Cf, Vec<u8>),
    /// Add to a key's counters: the value and the operand are big-endian `i64`s, added word by
    /// word (a missing key, or missing words, count as 0): see [`add_counters`]. Only on
    /// [`Cf::Meta`] (RocksDB's merge operator is set there alone).
    AddCounters(Cf, Vec<u8>, Vec<u8>),
}

/// `value` with `operand` added to it, word by word (big-endian `i64`s, wrapping); `None` if
/// either is not a whole number of words. The meaning of [`Op::AddCounters`] in every backend
/// (RocksDB's merge operator calls it), and associative, as RocksDB needs.
pub fn add_counters(value: Option<&[u8]>, operand: &[u8]) -> Option<Vec<u8>> {
    let value = value.unwrap_or_default();
    if !value.len().is_multiple_of(8) || !operand.len().is_multiple_of(8) {
        return None;
    }
    let word = |bytes: &[u8], i: usize| {
        bytes.get(i * 8..i * 8 + 8).and_then(|w| w.try_into().ok()).map_or(0, i64::from_be_bytes)
    };
    let words = value.len().max(operand.len()) / 8;
    Some((0..words).flat_map(|i| word(value, i).wrapping_add(word(operand, i)).to_be_bytes()).collect())
}

/// Errors from the storage backend.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// The backend failed (I/O, corruption detected while reading, ...).
    #[error("storage backend: {0}")]
    Backend(String),
    /// The backend cannot do this (an in-memory store has nothing to check point).
    #[error("the storage backend does not support {0}")]
    Unsupported(&'static str),
}

/// An ordered key-value store with column families and atomic, durable batches.
pub trait Kv: Send + Sync + std::fmt::Debug {
    /// Reads one key.
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, KvError>;

    /// Applies every op or none, and returns only once the batch is durable (synced to stable
    /// storage). Concurrent callers may share one sync.
    fn write(&self, ops: Vec<Op>) -> Result<(), KvError>;

    /// Up to `limit` entries whose key starts with `prefix` and is `>= from`, in key order.
    /// `from` must itself start with `prefix`.
    fn scan(&self, cf: Cf, prefix: &[u8], from: &[u8], limit: usize) -> Result<Entries, KvError>;

    /// Up to `limit` entries with `from <= key < to`, in key order.
    fn range(&self, cf: Cf, from: &[u8], to: &[u8], limit: usize) -> Result<Entries, KvError>;

    /// How many keys there are with `from <= key < to` (a walk of the range; implementations may
    /// count without copying the entries out).
    fn count(&self, cf: Cf, from: &[u8], to: &[u8]) -> Result<u64, KvError> {
        const PAGE: usize = 10_000;
        let mut from = from.to_vec();
        let mut count = 0u64;
        loop {
            let rows = self.range(cf, &from, to, PAGE)?;
            let full = rows.len() == PAGE;
            count += rows.len() as u64;
            match rows.into_iter().last() {
                Some((mut last, _)) if full => {
                    last.push(0);
                    from = last;
                }
                _ => return Ok(count),
            }
        }
    }

    /// Up to `limit` entries whose key starts with one of `prefixes` (each of the column family's
    /// [`Cf::prefix_len`]) and is greater than `after`, in one pass: what a block's probes need,
    /// without one iterator per probe, a page at a time. Entries come in key order; `prefixes`
    /// may come in any order and repeat.
    fn scan_prefixes(&self, cf: Cf, prefixes: &[&[u8]], after: Option<&[u8]>, limit: usize)
        -> Result<Entries, KvError>;

    /// For each of `prefixes` (in order), whether some key starts with it: one probe each,
    /// whatever the number of keys under a prefix (a mempool's transactions against the stored
    /// locators).
    fn prefixes_present(&self, cf: Cf, prefixes: &[&[u8]]) -> Result<Vec<bool>, KvError> {
        prefixes.iter().map(|prefix| Ok(!self.scan(cf, prefix, prefix, 1)?.is_empty())).collect()
    }

    /// Rewrites the stored data compactly now rather than in the background later (after a bulk
    /// load). Changes no content.
    fn compact(&self) -> Result<(), KvError>;

    /// Writes a consistent copy of the whole store into `dir` (which must not exist) while
    /// writers go on: every batch committed before the copy began is in it, none is half in it.
    fn checkpoint(&self, _dir: &std::path::Path) -> Result<(), KvError> {
        Err(KvError::Unsupported("checkpoints"))
    }
}

/// Where a page of the entries with `prefix` starts when the previous page ended at `after`:
/// `None` if every such entry is at or before `after`.
pub(super) fn page_start(prefix: &[u8], after: Option<&[u8]>) -> Option<Vec<u8>> {
    let Some(after) = after else { return Some(prefix.to_vec()) };
    let head = &after[..prefix.len().min(after.len())];
    match prefix.cmp(head) {
        std::cmp::Ordering::Greater => Some(prefix.to_vec()),
        std::cmp::Ordering::Equal => Some(after.to_vec()),
        std::cmp::Ordering::Less => None,
    }
}
