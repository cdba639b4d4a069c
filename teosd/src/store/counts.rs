//! What the store holds, counted in memory: appointments and trackers by state, for the metrics.
//! Counted once when the store opens (key scans), then kept by every committed batch, which
//! carries the changes its writes make ([`CountDelta`]), so that reading a count costs a load.

use std::sync::atomic::{AtomicI64, Ordering};

use super::records::PenaltyStatus;
use super::trackers::TrackerEvent;
use super::{Cf, Store, StoreError};
use crate::protocol::{LOCATOR_LEN, USER_ID_LEN};

/// The changes a batch makes to the counts.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct CountDelta {
    pub(super) appointments: i64,
    /// By state, in the order of [`state_index`].
    pub(super) trackers: [i64; 4],
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

/// The counts.
#[derive(Debug, Default)]
pub(super) struct Counts {
    appointments: AtomicI64,
    trackers: [AtomicI64; 4],
}

/// Stored appointments and trackers by state (broadcast, refused, confirmed, conflicted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoredCounts {
    /// Appointments stored (watched, or triggered and still followed).
    pub appointments: u64,
    /// Trackers by state: broadcast, refused, confirmed, conflicted.
    pub trackers: [u64; 4],
}

impl Counts {
    pub(super) fn apply(&self, delta: &CountDelta) {
        if delta.appointments != 0 {
            self.appointments.fetch_add(delta.appointments, Ordering::Relaxed);
        }
        for (count, change) in self.trackers.iter().zip(delta.trackers) {
            if change != 0 {
                count.fetch_add(change, Ordering::Relaxed);
            }
        }
    }

    fn read(&self) -> StoredCounts {
        let load = |n: &AtomicI64| u64::try_from(n.load(Ordering::Relaxed)).unwrap_or(0);
        StoredCounts { appointments: load(&self.appointments), trackers: self.trackers.each_ref().map(load) }
    }
}

impl Store {
    /// Counts what the store holds (at open). Cost: a walk of the keys of `user_locators` (one
    /// per appointment) and of `tracker_events`' state entries, nothing copied out: about 0.2 s
    /// per million appointments (teos-bench `--full --only sizes`: ready in ~0.27 s at 1M
    /// stored, from ~0.06 s without it).
    pub(super) fn count_contents(&self) -> Result<(), StoreError> {
        let everything = [0xff; USER_ID_LEN + LOCATOR_LEN + 1];
        let appointments = self.kv.count(Cf::UserLocators, &[], &everything)?;
        let mut delta =
            CountDelta { appointments: i64::try_from(appointments).unwrap_or(i64::MAX), ..CountDelta::default() };
        let kinds = [TrackerEvent::Broadcast, TrackerEvent::Refused, TrackerEvent::Confirmed, TrackerEvent::Conflicted];
        for (index, kind) in kinds.into_iter().enumerate() {
            let trackers = self.kv.count(Cf::TrackerEvents, &[kind as u8], &[kind as u8 + 1])?;
            delta.trackers[index] = i64::try_from(trackers).unwrap_or(i64::MAX);
        }
        self.counts.apply(&delta);
        Ok(())
    }

    /// Appointments and trackers by state, as committed. Cost: a few atomic loads.
    pub fn stored_counts(&self) -> StoredCounts {
        self.counts.read()
    }
}
