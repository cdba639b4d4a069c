//! The tower's store of record. Every change that spans keys is one atomic, durable batch
//! ([`Batch`] → [`Store::commit`]); readers never see half of one. Layouts: `docs/schema.md`.
//!
//! Calls are blocking: async code reaches the store through `tokio::task::spawn_blocking`.

mod counts;
mod kv;
mod listing;
mod memory;
mod migrate;
mod recent;
mod records;
mod rocks;
mod trackers;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bitcoin::hashes::Hash;
use bitcoin::secp256k1::SecretKey;
use bitcoin::BlockHash;

pub use counts::StoredCounts;
pub use kv::{Cf, Entries, Kv, KvError, Op};
pub use memory::MemoryKv;
pub use recent::{RecentGuard, RecentHit};
pub use records::{DecodeError, PenaltyStatus, StoredAppointment, TrackerRecord, UserRecord};
pub use rocks::{OpenError, RocksKv};
pub use trackers::TrackerEvent;

use crate::metrics::Metrics;
use crate::protocol::{Dialect, Locator, UserId, LOCATOR_LEN, USER_ID_LEN};

/// The layout version this build reads and writes (and upgrades versions 2 and 3 to, at open).
pub const SCHEMA_VERSION: u32 = 4;

const META_SCHEMA_VERSION: &[u8] = b"schema_version";
const META_TOWER_KEY: &[u8] = b"tower_key/";
const META_TIP: &[u8] = b"tip";
const META_PARTIAL_BLOCK: &[u8] = b"partial_block";
const META_OUTCOMES: &[u8] = b"penalty_outcomes";
/// Present once a python-teos user has registered: from then on blocks are also searched for
/// python-teos locators (see `protocol::Dialect`).
const META_PYTHON_USERS: &[u8] = b"python_users";
const META_BANNED: &[u8] = b"banned/";

/// Store errors. None of them is ever answered by resetting data.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Could not open the database.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The backend failed.
    #[error(transparent)]
    Kv(#[from] KvError),
    /// The store was written by a different layout version.
    #[error(
        "store schema version {found} is not supported (this teosd reads version {SCHEMA_VERSION}); \
             the data was left untouched"
    )]
    SchemaVersion {
        /// The version on disk.
        found: u32,
    },
    /// The store holds data but no schema version.
    #[error("store has data but no schema version: not a teosd store, or damaged; the data was left untouched")]
    MissingSchemaVersion,
    /// A record did not decode.
    #[error("corrupt record in `{cf}`: {source}")]
    Corrupt {
        /// Column family name.
        cf: &'static str,
        /// What was wrong.
        source: DecodeError,
    },
}

fn corrupt(cf: Cf, what: &'static str, why: impl Into<String>) -> StoreError {
    StoreError::Corrupt { cf: cf.name(), source: DecodeError { what, why: why.into() } }
}

fn join(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(a.len() + b.len());
    key.extend_from_slice(a);
    key.extend_from_slice(b);
    key
}

/// `locator ‖ user_id`: the key of trackers and late checks.
fn appointment_key(locator: &Locator, user: &UserId) -> Vec<u8> {
    join(locator.as_bytes(), &user.to_bytes())
}

/// `locator ‖ user number`: the key of `appointments` (4 bytes instead of the 33-byte user id
/// in a column family sorted by random locators, where keys share no prefix).
fn numbered_key(locator: &Locator, number: u32) -> Vec<u8> {
    join(locator.as_bytes(), &number.to_be_bytes())
}

/// Splits a `locator ‖ user number` key.
fn split_numbered_key(key: &[u8]) -> Result<(Locator, u32), StoreError> {
    let number = records::be_u32(key, LOCATOR_LEN).filter(|_| key.len() == LOCATOR_LEN + 4);
    let number = number.ok_or_else(|| corrupt(Cf::Appointments, "key", format!("{} bytes", key.len())))?;
    let locator =
        Locator::from_slice(&key[..LOCATOR_LEN]).map_err(|e| corrupt(Cf::Appointments, "key", e.to_string()))?;
    Ok((locator, number))
}

fn expiry_key(expiry: u32, user: &UserId) -> Vec<u8> {
    join(&expiry.to_be_bytes(), &user.to_bytes())
}

/// How the penalties that ended, ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutcomeCounts {
    /// Buried 100 blocks deep.
    pub won: u64,
    /// A conflicting spend of their input got buried first.
    pub lost: u64,
    /// Still unconfirmed past the horizon.
    pub abandoned: u64,
}

/// An appointment found at a locator: the locator, its user, the appointment.
pub type AppointmentAt = (Locator, UserId, StoredAppointment);

/// Where a page of [`Store::appointments_at_page`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppointmentsCursor(Vec<u8>);

/// A set of changes applied atomically by [`Store::commit`].
#[derive(Debug, Default)]
pub struct Batch {
    ops: Vec<Op>,
    /// Registers the store's first python-teos user (perhaps).
    adds_python_user: bool,
    /// What the writes change in the store's counts (applied once committed).
    counts: counts::CountDelta,
}

impl Batch {
    /// Writes a user, moving its expiry index entry from `old` if it changed (and recording its
    /// number when it is new).
    pub fn put_user(&mut self, user: &UserId, old: Option<&UserRecord>, new: &UserRecord) {
        if let Some(old) = old.filter(|o| o.subscription_expiry != new.subscription_expiry) {
            self.ops.push(Op::Delete(Cf::UsersByExpiry, expiry_key(old.subscription_expiry, user)));
        }
        if old.is_none_or(|o| o.number != new.number) {
            self.ops.push(Op::Put(Cf::UserNumbers, new.number.to_be_bytes().to_vec(), user.to_bytes().to_vec()));
        }
        if old.is_none_or(|o| o.subscription_expiry != new.subscription_expiry) {
            self.ops.push(Op::Put(Cf::UsersByExpiry, expiry_key(new.subscription_expiry, user), Vec::new()));
        }
        self.ops.push(Op::Put(Cf::Users, user.to_bytes().to_vec(), new.encode()));
        self.counts.users += i64::from(old.is_none());
        if old.is_none() && new.dialect == Dialect::Python {
            self.ops.push(Op::Put(Cf::Meta, META_PYTHON_USERS.to_vec(), Vec::new()));
            self.adds_python_user = true;
        }
    }

    /// Writes `user`'s appointment at its locator (`record` is the user's): a new one, or an
    /// update of the one stored there (`is_new` false), for the store's counts.
    pub fn put_appointment(&mut self, user: &UserId, record: &UserRecord, stored: &StoredAppointment, is_new: bool) {
        self.counts.appointments += i64::from(is_new);
        let locator = stored.appointment.locator;
        self.ops.push(Op::Put(Cf::Appointments, numbered_key(&locator, record.number), stored.encode()));
        self.ops.push(Op::Put(Cf::UserLocators, join(&user.to_bytes(), locator.as_bytes()), Vec::new()));
    }

    /// Removes `user`'s appointment at `locator` (`record` is the user's).
    pub fn delete_appointment(&mut self, user: &UserId, record: &UserRecord, locator: &Locator) {
        self.counts.appointments -= 1;
        self.ops.push(Op::Delete(Cf::Appointments, numbered_key(locator, record.number)));
        self.ops.push(Op::Delete(Cf::UserLocators, join(&user.to_bytes(), locator.as_bytes())));
    }

    /// Records the tower key number `index`.
    pub fn put_tower_key(&mut self, index: u32, secret: &SecretKey) {
        self.ops.push(Op::Put(Cf::Meta, join(META_TOWER_KEY, &index.to_be_bytes()), secret.secret_bytes().to_vec()));
    }

    /// Records the last block whose effects this batch completes.
    pub fn set_tip(&mut self, height: u32, hash: &BlockHash) {
        self.ops.push(Op::Put(Cf::Meta, META_TIP.to_vec(), join(&height.to_be_bytes(), hash.as_byte_array())));
    }

    /// Records that part of the block `hash` at `height` is committed ahead of the block itself
    /// (its breaches, in chunks); the block's own batch clears it.
    pub fn set_partial_block(&mut self, height: u32, hash: &BlockHash) {
        self.ops.push(Op::Put(
            Cf::Meta,
            META_PARTIAL_BLOCK.to_vec(),
            join(&height.to_be_bytes(), hash.as_byte_array()),
        ));
    }

    /// Records how many penalties have ended, and how.
    pub fn put_outcome_counts(&mut self, counts: &OutcomeCounts) {
        let mut value = Vec::with_capacity(24);
        for n in [counts.won, counts.lost, counts.abandoned] {
            value.extend_from_slice(&n.to_be_bytes());
        }
        self.ops.push(Op::Put(Cf::Meta, META_OUTCOMES.to_vec(), value));
    }

    /// Records that `user` is banned (at `height`, for the operator's listing).
    pub fn put_ban(&mut self, user: &UserId, height: u32) {
        self.ops.push(Op::Put(Cf::Meta, join(META_BANNED, &user.to_bytes()), height.to_be_bytes().to_vec()));
    }

    /// Lifts `user`'s ban.
    pub fn delete_ban(&mut self, user: &UserId) {
        self.ops.push(Op::Delete(Cf::Meta, join(META_BANNED, &user.to_bytes())));
    }

    /// Clears the partial-block mark.
    pub fn clear_partial_block(&mut self) {
        self.ops.push(Op::Delete(Cf::Meta, META_PARTIAL_BLOCK.to_vec()));
    }

    /// Records a processed block of the best chain.
    pub fn put_block(&mut self, height: u32, hash: &BlockHash, prev: &BlockHash) {
        self.ops.push(Op::Put(
            Cf::Blocks,
            height.to_be_bytes().to_vec(),
            join(hash.as_byte_array(), prev.as_byte_array()),
        ));
    }

    /// Forgets the processed block at `height` (disconnected, or too old to matter).
    pub fn delete_block(&mut self, height: u32) {
        self.ops.push(Op::Delete(Cf::Blocks, height.to_be_bytes().to_vec()));
    }

    /// Removes a user record, its expiry index entry and its number.
    pub fn delete_user(&mut self, user: &UserId, record: &UserRecord) {
        self.counts.users -= 1;
        self.ops.push(Op::Delete(Cf::UserNumbers, record.number.to_be_bytes().to_vec()));
        self.ops.push(Op::Delete(Cf::UsersByExpiry, expiry_key(record.subscription_expiry, user)));
        self.ops.push(Op::Delete(Cf::Users, user.to_bytes().to_vec()));
    }

    /// Whether the batch changes nothing.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// The store: typed reads, and atomic durable batches.
#[derive(Debug, Clone)]
pub struct Store {
    kv: Arc<dyn Kv>,
    counts: Arc<counts::Counts>,
    metrics: Metrics,
    recent: Arc<recent::RecentIndex>,
    next_user_number: Arc<AtomicU64>,
    python_users: Arc<AtomicBool>,
}

impl Store {
    /// Opens the RocksDB store at `path` (created if missing), checking its schema version.
    pub fn open(path: &Path, cache_mib: usize) -> Result<Store, StoreError> {
        Store::with_kv(Arc::new(RocksKv::open(path, cache_mib)?))
    }

    /// Opens the RocksDB store at `path` read-only (a backup: to check it and read its tip).
    pub fn open_read_only(path: &Path) -> Result<Store, StoreError> {
        Store::with_kv_mode(Arc::new(RocksKv::open_read_only(path)?), true)
    }

    /// A store in memory, for tests.
    pub fn in_memory() -> Store {
        Store::with_kv(Arc::new(MemoryKv::new())).expect("an empty memory store initialises")
    }

    /// Wraps a backend, initialising an empty one and checking the schema version of any other.
    pub fn with_kv(kv: Arc<dyn Kv>) -> Result<Store, StoreError> {
        Store::with_kv_mode(kv, false)
    }

    fn with_kv_mode(kv: Arc<dyn Kv>, read_only: bool) -> Result<Store, StoreError> {
        match kv.get(Cf::Meta, META_SCHEMA_VERSION)? {
            Some(bytes) => match records::be_u32(&bytes, 0) {
                Some(SCHEMA_VERSION) if bytes.len() == 4 => {}
                Some(3) if bytes.len() == 4 && !read_only => migrate::v3_to_v4(kv.as_ref())?,
                // A backup of an older store, checked read-only: counted below, not upgraded.
                Some(3) if bytes.len() == 4 => {}
                Some(2) if bytes.len() == 4 => {
                    migrate::v2_to_v3(kv.as_ref())?;
                    migrate::v3_to_v4(kv.as_ref())?;
                }
                Some(found) => return Err(StoreError::SchemaVersion { found }),
                None => return Err(corrupt(Cf::Meta, "schema version", format!("{} bytes", bytes.len()))),
            },
            None if is_empty(kv.as_ref())? => {
                let version = SCHEMA_VERSION.to_be_bytes().to_vec();
                kv.write(vec![Op::Put(Cf::Meta, META_SCHEMA_VERSION.to_vec(), version), counts::zero_counts()])?;
            }
            None => return Err(StoreError::MissingSchemaVersion),
        }
        let recent = Arc::new(recent::RecentIndex::load(kv.as_ref())?);
        let next_user_number =
            Arc::new(AtomicU64::new(highest_user_number(kv.as_ref())?.map_or(1, |n| u64::from(n) + 1)));
        let python_users = Arc::new(AtomicBool::new(kv.get(Cf::Meta, META_PYTHON_USERS)?.is_some()));
        let store =
            Store { kv, recent, next_user_number, python_users, counts: Arc::default(), metrics: Metrics::new() };
        store.load_counts(read_only)?;
        Ok(store)
    }

    /// A number for a new user, never given to a user that is stored (a removed user's number
    /// may be given again after a restart: nothing refers to it by then). `None` once the 32-bit
    /// numbers are used up: they never wrap.
    pub fn new_user_number(&self) -> Option<u32> {
        let next = self
            .next_user_number
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (n <= u64::from(u32::MAX)).then_some(n + 1));
        next.ok().and_then(|n| u32::try_from(n).ok())
    }

    /// The user with `number`.
    pub fn user_by_number(&self, number: u32) -> Result<Option<UserId>, StoreError> {
        self.kv
            .get(Cf::UserNumbers, &number.to_be_bytes())?
            .map(|v| UserId::from_slice(&v).map_err(|e| corrupt(Cf::UserNumbers, "user id", e.to_string())))
            .transpose()
    }

    fn user_of_row(&self, number: u32) -> Result<UserId, StoreError> {
        self.user_by_number(number)?
            .ok_or_else(|| corrupt(Cf::Appointments, "key", format!("user number {number} is not registered")))
    }

    /// The tower's metrics (one registry per store, so per tower: every part that records holds
    /// the store).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// A new, empty batch.
    pub fn batch(&self) -> Batch {
        Batch::default()
    }

    /// Whether a python-teos user ever registered here: if not, blocks are searched for rust-teos
    /// locators only.
    pub fn has_python_users(&self) -> bool {
        self.python_users.load(Ordering::Acquire)
    }

    /// Applies the batch atomically; returns once it is durable.
    pub fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        if batch.adds_python_user {
            // Before the write: searching for python locators too is harmless, missing them is not.
            self.python_users.store(true, Ordering::Release);
        }
        let mut ops = batch.ops;
        ops.extend(batch.counts.op());
        let started = std::time::Instant::now();
        let written = self.kv.write(ops);
        self.metrics.store_commit(started.elapsed(), written.is_ok());
        written?;
        self.counts.apply(&batch.counts);
        Ok(())
    }

    /// Compacts the whole store now (for tools, after a bulk load; teosd leaves it to RocksDB's
    /// background compactions). Blocking, and long on a big store.
    pub fn compact(&self) -> Result<(), StoreError> {
        Ok(self.kv.compact()?)
    }

    /// Writes a consistent copy of the store into `dir` (which must not exist yet) while the
    /// tower goes on writing: see [`Kv::checkpoint`]. Blocking; its size does not grow with the
    /// store on one file system (table files are hard-linked).
    pub fn checkpoint(&self, dir: &Path) -> Result<(), StoreError> {
        Ok(self.kv.checkpoint(dir)?)
    }

    /// The banned users and the height each was banned at, in id order.
    pub fn banned_users(&self) -> Result<Vec<(UserId, u32)>, StoreError> {
        let rows = self.kv.scan(Cf::Meta, META_BANNED, META_BANNED, usize::MAX)?;
        rows.iter()
            .map(|(k, v)| {
                let user = UserId::from_slice(&k[META_BANNED.len()..])
                    .map_err(|e| corrupt(Cf::Meta, "banned user", e.to_string()))?;
                let height = records::be_u32(v, 0)
                    .filter(|_| v.len() == 4)
                    .ok_or_else(|| corrupt(Cf::Meta, "banned user", format!("{} bytes", v.len())))?;
                Ok((user, height))
            })
            .collect()
    }

    /// Every tower key, oldest first. The last is the current one.
    pub fn tower_keys(&self) -> Result<Vec<SecretKey>, StoreError> {
        let rows = self.kv.scan(Cf::Meta, META_TOWER_KEY, META_TOWER_KEY, usize::MAX)?;
        rows.iter()
            .map(|(_, v)| SecretKey::from_slice(v).map_err(|_| corrupt(Cf::Meta, "tower key", "not a secret key")))
            .collect()
    }

    /// The last block whose effects are stored.
    pub fn tip(&self) -> Result<Option<(u32, BlockHash)>, StoreError> {
        let Some(bytes) = self.kv.get(Cf::Meta, META_TIP)? else {
            return Ok(None);
        };
        match (bytes.len(), records::be_u32(&bytes, 0)) {
            (36, Some(height)) => {
                let hash = BlockHash::from_slice(&bytes[4..]).map_err(|e| corrupt(Cf::Meta, "tip", e.to_string()))?;
                Ok(Some((height, hash)))
            }
            (len, _) => Err(corrupt(Cf::Meta, "tip", format!("{len} bytes"))),
        }
    }

    /// How many penalties have ended, and how, since the store was created.
    pub fn outcome_counts(&self) -> Result<OutcomeCounts, StoreError> {
        let Some(bytes) = self.kv.get(Cf::Meta, META_OUTCOMES)? else { return Ok(OutcomeCounts::default()) };
        let count = |at: usize| bytes.get(at..at + 8).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes);
        match (bytes.len(), count(0), count(8), count(16)) {
            (24, Some(won), Some(lost), Some(abandoned)) => Ok(OutcomeCounts { won, lost, abandoned }),
            (len, ..) => Err(corrupt(Cf::Meta, "penalty outcomes", format!("{len} bytes"))),
        }
    }

    /// The block whose effects are partly committed ahead of it, if any (see
    /// [`Batch::set_partial_block`]).
    pub fn partial_block(&self) -> Result<Option<(u32, BlockHash)>, StoreError> {
        let Some(bytes) = self.kv.get(Cf::Meta, META_PARTIAL_BLOCK)? else { return Ok(None) };
        match (bytes.len(), records::be_u32(&bytes, 0)) {
            (36, Some(height)) => {
                let hash = BlockHash::from_slice(&bytes[4..])
                    .map_err(|e| corrupt(Cf::Meta, "partial block", e.to_string()))?;
                Ok(Some((height, hash)))
            }
            (len, _) => Err(corrupt(Cf::Meta, "partial block", format!("{len} bytes"))),
        }
    }

    /// The processed block at `height`: its hash and its parent's.
    pub fn block_at(&self, height: u32) -> Result<Option<(BlockHash, BlockHash)>, StoreError> {
        let Some(bytes) = self.kv.get(Cf::Blocks, &height.to_be_bytes())? else {
            return Ok(None);
        };
        if bytes.len() != 64 {
            return Err(corrupt(Cf::Blocks, "block", format!("{} bytes", bytes.len())));
        }
        let hash = BlockHash::from_slice(&bytes[..32]).map_err(|e| corrupt(Cf::Blocks, "block", e.to_string()))?;
        let prev = BlockHash::from_slice(&bytes[32..]).map_err(|e| corrupt(Cf::Blocks, "block", e.to_string()))?;
        Ok(Some((hash, prev)))
    }

    /// A user's subscription.
    pub fn user(&self, user: &UserId) -> Result<Option<UserRecord>, StoreError> {
        self.kv
            .get(Cf::Users, &user.to_bytes())?
            .map(|v| UserRecord::decode(&v).map_err(|source| StoreError::Corrupt { cf: Cf::Users.name(), source }))
            .transpose()
    }

    /// The appointment at `locator` of the user whose record is `record`.
    pub fn appointment(&self, locator: &Locator, record: &UserRecord) -> Result<Option<StoredAppointment>, StoreError> {
        self.kv
            .get(Cf::Appointments, &numbered_key(locator, record.number))?
            .map(|v| decode_appointment(*locator, &v))
            .transpose()
    }

    /// The tracker of `user`'s appointment at `locator`.
    pub fn tracker(&self, locator: &Locator, user: &UserId) -> Result<Option<TrackerRecord>, StoreError> {
        self.kv.get(Cf::Trackers, &appointment_key(locator, user))?.map(|v| decode_tracker(&v)).transpose()
    }

    /// Whether `user`'s appointment at `locator` was triggered.
    pub fn has_tracker(&self, locator: &Locator, user: &UserId) -> Result<bool, StoreError> {
        Ok(self.kv.get(Cf::Trackers, &appointment_key(locator, user))?.is_some())
    }

    /// Every user's appointment at `locator`.
    pub fn appointments_at(&self, locator: &Locator) -> Result<Vec<(UserId, StoredAppointment)>, StoreError> {
        let rows = self.appointments_at_any(std::slice::from_ref(locator))?;
        Ok(rows.into_iter().map(|(_, user, stored)| (user, stored)).collect())
    }

    /// Every appointment at any of `locators` (one pass over the store), in key order.
    pub fn appointments_at_any(
        &self,
        locators: &[Locator],
    ) -> Result<Vec<(Locator, UserId, StoredAppointment)>, StoreError> {
        Ok(self.appointments_at_page(locators, None, usize::MAX)?.0)
    }

    /// Those of `locators` at which some appointment is stored (one probe each, however many users
    /// share a locator), in the order given.
    pub fn locators_held(&self, locators: &[Locator]) -> Result<Vec<Locator>, StoreError> {
        // Probed in key order: neighbouring probes share blocks, as a block's sorted probes do.
        let mut sorted: Vec<&[u8]> = locators.iter().map(|l| l.as_bytes().as_slice()).collect();
        sorted.sort_unstable();
        sorted.dedup();
        let present = self.kv.prefixes_present(Cf::Appointments, &sorted)?;
        let held: std::collections::HashSet<&[u8]> =
            sorted.into_iter().zip(present).filter(|(_, held)| *held).map(|(p, _)| p).collect();
        Ok(locators.iter().filter(|l| held.contains(l.as_bytes().as_slice())).copied().collect())
    }

    /// Up to `limit` appointments at any of `locators` after the cursor `after`, in key order, in
    /// one pass over the store (a block's transactions, a page at a time); and the cursor of the
    /// next page, if the page is full.
    pub fn appointments_at_page(
        &self,
        locators: &[Locator],
        after: Option<&AppointmentsCursor>,
        limit: usize,
    ) -> Result<(Vec<AppointmentAt>, Option<AppointmentsCursor>), StoreError> {
        let prefixes: Vec<&[u8]> = locators.iter().map(|l| l.as_bytes().as_slice()).collect();
        let rows = self.kv.scan_prefixes(Cf::Appointments, &prefixes, after.map(|c| c.0.as_slice()), limit)?;
        let next = rows.last().filter(|_| rows.len() == limit).map(|(k, _)| AppointmentsCursor(k.clone()));
        let page = rows
            .iter()
            .map(|(k, v)| {
                let (locator, number) = split_numbered_key(k)?;
                Ok((locator, self.user_of_row(number)?, decode_appointment(locator, v)?))
            })
            .collect::<Result<_, StoreError>>()?;
        Ok((page, next))
    }

    /// The locators of `user`'s appointments, in byte order.
    pub fn user_locators(&self, user: &UserId) -> Result<Vec<Locator>, StoreError> {
        let prefix = user.to_bytes();
        let rows = self.kv.scan(Cf::UserLocators, &prefix, &prefix, usize::MAX)?;
        rows.iter()
            .map(|(k, _)| {
                Locator::from_slice(&k[USER_ID_LEN..]).map_err(|e| corrupt(Cf::UserLocators, "key", e.to_string()))
            })
            .collect()
    }

    /// Up to `limit` of `user`'s locators after `after`, in byte order (a page of them).
    pub fn user_locators_page(
        &self,
        user: &UserId,
        after: Option<&Locator>,
        limit: usize,
    ) -> Result<Vec<Locator>, StoreError> {
        let prefix = user.to_bytes();
        let from = match after {
            Some(locator) => {
                let mut key = join(&prefix, locator.as_bytes());
                key.push(0);
                key
            }
            None => prefix.to_vec(),
        };
        let rows = self.kv.scan(Cf::UserLocators, &prefix, &from, limit)?;
        rows.iter()
            .map(|(k, _)| {
                Locator::from_slice(&k[USER_ID_LEN..]).map_err(|e| corrupt(Cf::UserLocators, "key", e.to_string()))
            })
            .collect()
    }

    /// Users whose `subscription_expiry` is below `height`, up to `limit`.
    pub fn users_expiring_before(&self, height: u32, limit: usize) -> Result<Vec<(u32, UserId)>, StoreError> {
        let rows = self.kv.range(Cf::UsersByExpiry, &[], &height.to_be_bytes(), limit)?;
        rows.iter()
            .map(|(k, _)| {
                let expiry = records::be_u32(k, 0).ok_or_else(|| corrupt(Cf::UsersByExpiry, "key", "short"))?;
                let user = UserId::from_slice(&k[4..]).map_err(|e| corrupt(Cf::UsersByExpiry, "key", e.to_string()))?;
                Ok((expiry, user))
            })
            .collect()
    }
}

/// The highest key of `user_numbers`, by bisection over the u32 key space (32 seeks).
fn highest_user_number(kv: &dyn Kv) -> Result<Option<u32>, StoreError> {
    let any_in = |from: u64, to: u64| -> Result<bool, StoreError> {
        let to = if to > u64::from(u32::MAX) { vec![0xff; 5] } else { (to as u32).to_be_bytes().to_vec() };
        Ok(!kv.range(Cf::UserNumbers, &(from as u32).to_be_bytes(), &to, 1)?.is_empty())
    };
    let (mut low, mut high) = (0u64, 1u64 << 32);
    if !any_in(low, high)? {
        return Ok(None);
    }
    // Invariant: some key is in [low, high).
    while high - low > 1 {
        let mid = low + (high - low) / 2;
        if any_in(mid, high)? {
            low = mid;
        } else {
            high = mid;
        }
    }
    Ok(Some(low as u32))
}

fn is_empty(kv: &dyn Kv) -> Result<bool, StoreError> {
    for cf in Cf::ALL {
        if !kv.range(cf, &[], &[0xff; 64], 1)?.is_empty() {
            return Ok(false);
        }
    }
    Ok(true)
}

fn decode_tracker(bytes: &[u8]) -> Result<TrackerRecord, StoreError> {
    TrackerRecord::decode(bytes).map_err(|source| StoreError::Corrupt { cf: Cf::Trackers.name(), source })
}

fn decode_appointment(locator: Locator, bytes: &[u8]) -> Result<StoredAppointment, StoreError> {
    StoredAppointment::decode(locator, bytes)
        .map_err(|source| StoreError::Corrupt { cf: Cf::Appointments.name(), source })
}

#[cfg(test)]
mod tests;
