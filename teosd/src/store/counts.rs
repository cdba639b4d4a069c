//! What the store holds, counted: users, appointments, and trackers by state (for the metrics
//! and the operator's `gettowerinfo`). The totals are kept in the store itself, in the `meta`
//! key `counts`: every batch that changes them carries its changes ([`CountDelta`]) as one
//! [`Op::AddCounters`] in the same atomic batch, so the stored totals are exact after any crash.
//! At open they are read (one key) into memory, where committed batches keep them, so reading a
//! count costs an atomic load. A store of schema version 3 (before the key existed) is counted
//! once (key scans) when it is upgraded to version 4 (`migrate::v3_to_v4`).

use std::sync::atomic::{AtomicI64, Ordering};

use super::kv::{Kv, Op};
use super::records::PenaltyStatus;
use super::trackers::TrackerEvent;
use super::{corrupt, Cf, Store, StoreError};
use crate::protocol::{LOCATOR_LEN, USER_ID_LEN};

/// The `meta` key of the stored totals: six big-endian `i64`s (users, appointments, trackers
/// broadcast, refused, confirmed, conflicted).
pub(super) const META_COUNTS: &[u8] = b"counts";
const WORDS: usize = 6;

/// The changes a batch makes to the counts.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct CountDelta {
    pub(super) users: i64,
    pub(super) appointments: i64,
    /// By state, in the order of [`state_index`].
    pub(super) trackers: [i64; 4],
}

impl CountDelta {
    fn words(&self) -> [i64; WORDS] {
        let t = self.trackers;
        [self.users, self.appointments, t[0], t[1], t[2], t[3]]
    }

    fn is_zero(&self) -> bool {
        self.words() == [0; WORDS]
    }

    fn encode(&self) -> Vec<u8> {
        self.words().iter().flat_map(|w| w.to_be_bytes()).collect()
    }

    fn decode(bytes: &[u8]) -> Option<CountDelta> {
        if bytes.len() != WORDS * 8 {
            return None;
        }
        let w = |i: usize| bytes[i * 8..i * 8 + 8].try_into().ok().map(i64::from_be_bytes);
        Some(CountDelta { users: w(0)?, appointments: w(1)?, trackers: [w(2)?, w(3)?, w(4)?, w(5)?] })
    }

    /// The op that adds this delta to the stored totals (`None` if it changes nothing).
    pub(super) fn op(&self) -> Option<Op> {
        (!self.is_zero()).then(|| Op::AddCounters(Cf::Meta, META_COUNTS.to_vec(), self.encode()))
    }
}

/// The index of a tracker state in the counts (that of `metrics::TRACKER_STATES`).
pub(super) fn state_index(status: &PenaltyStatus) -> usize {
    match status {
        PenaltyStatus::Broadcast(_) => 0,
        PenaltyStatus::Refused(_) => 1,
        PenaltyStatus::Confirmed(_) => 2,
        PenaltyStatus::Conflicted { .. } => 3,
    }
}

/// The counts, in memory.
#[derive(Debug, Default)]
pub(super) struct Counts {
    users: AtomicI64,
    appointments: AtomicI64,
    trackers: [AtomicI64; 4],
}

/// Stored users, appointments and trackers by state (broadcast, refused, confirmed, conflicted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoredCounts {
    /// Registered users.
    pub users: u64,
    /// Appointments stored (watched, or triggered and still followed).
    pub appointments: u64,
    /// Trackers by state: broadcast, refused, confirmed, conflicted.
    pub trackers: [u64; 4],
}

impl Counts {
    pub(super) fn apply(&self, delta: &CountDelta) {
        let targets = [&self.users, &self.appointments];
        let changes = [delta.users, delta.appointments];
        for (count, change) in targets.into_iter().chain(&self.trackers).zip(changes.into_iter().chain(delta.trackers))
        {
            if change != 0 {
                count.fetch_add(change, Ordering::Relaxed);
            }
        }
    }

    fn read(&self) -> StoredCounts {
        let load = |n: &AtomicI64| u64::try_from(n.load(Ordering::Relaxed)).unwrap_or(0);
        StoredCounts {
            users: load(&self.users),
            appointments: load(&self.appointments),
            trackers: self.trackers.each_ref().map(load),
        }
    }
}

/// Counts what `kv` holds by walking keys: `users_by_expiry` (one per user), `user_locators`
/// (one per appointment) and `tracker_events`' state entries, nothing copied out. About 0.2 s
/// per million appointments: done only for a store without the `counts` key, and by tests.
pub(super) fn recount(kv: &dyn Kv) -> Result<CountDelta, StoreError> {
    let to_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    let users = kv.count(Cf::UsersByExpiry, &[], &[0xff; 4 + USER_ID_LEN + 1])?;
    let appointments = kv.count(Cf::UserLocators, &[], &[0xff; USER_ID_LEN + LOCATOR_LEN + 1])?;
    let mut delta = CountDelta { users: to_i64(users), appointments: to_i64(appointments), ..CountDelta::default() };
    let kinds = [TrackerEvent::Broadcast, TrackerEvent::Refused, TrackerEvent::Confirmed, TrackerEvent::Conflicted];
    for (index, kind) in kinds.into_iter().enumerate() {
        delta.trackers[index] = to_i64(kv.count(Cf::TrackerEvents, &[kind as u8], &[kind as u8 + 1])?);
    }
    Ok(delta)
}

/// The op that writes `totals` as the stored counts.
pub(super) fn put_counts(totals: &CountDelta) -> Op {
    Op::Put(Cf::Meta, META_COUNTS.to_vec(), totals.encode())
}

/// The counts of an empty store.
pub(super) fn zero_counts() -> Op {
    put_counts(&CountDelta::default())
}

/// The stored totals, if the store has them.
fn stored_totals(kv: &dyn Kv) -> Result<Option<CountDelta>, StoreError> {
    let Some(bytes) = kv.get(Cf::Meta, META_COUNTS)? else { return Ok(None) };
    CountDelta::decode(&bytes).map(Some).ok_or_else(|| corrupt(Cf::Meta, "counts", format!("{} bytes", bytes.len())))
}

impl Store {
    /// Loads the stored totals into memory (at open). A store without them (a version-3 backup
    /// opened read-only; or damaged) is counted; unless `read_only`, the count is written, so
    /// later opens read one key. Nothing else writes while a store opens: the count is exact.
    pub(super) fn load_counts(&self, read_only: bool) -> Result<(), StoreError> {
        let totals = match stored_totals(self.kv.as_ref())? {
            Some(totals) => totals,
            None => {
                let counted = recount(self.kv.as_ref())?;
                if !read_only {
                    self.kv.write(vec![put_counts(&counted)])?;
                }
                counted
            }
        };
        self.counts.apply(&totals);
        Ok(())
    }

    /// Users, appointments and trackers by state, as committed. Cost: a few atomic loads.
    pub fn stored_counts(&self) -> StoredCounts {
        self.counts.read()
    }

    /// The same counted again by walking the keys (O(appointments)): for tests and checks that
    /// the kept counts are exact.
    pub fn recount(&self) -> Result<StoredCounts, StoreError> {
        let counts = Counts::default();
        counts.apply(&recount(self.kv.as_ref())?);
        Ok(counts.read())
    }

    /// The totals stored in the `counts` key (what the next open will load).
    pub fn persisted_counts(&self) -> Result<Option<StoredCounts>, StoreError> {
        Ok(stored_totals(self.kv.as_ref())?.map(|totals| {
            let counts = Counts::default();
            counts.apply(&totals);
            counts.read()
        }))
    }
}
