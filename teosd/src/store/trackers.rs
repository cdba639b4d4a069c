//! Trackers (breaches being answered), with the indexes the Responder needs so that no per-block
//! work scans everything.

use bitcoin::hashes::Hash;
use bitcoin::{OutPoint, Txid};

use super::counts::state_index;
use super::records::{be_u32, PenaltyStatus, TrackerRecord};
use super::{appointment_key, corrupt, join, Batch, Cf, Op, Store, StoreError};
use crate::protocol::{Locator, UserId, LOCATOR_LEN};

/// When a tracker needs attention: the index `tracker_events` keys trackers by these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrackerEvent {
    /// The penalty was last accepted at this height and is unconfirmed.
    Broadcast = 0,
    /// The penalty confirmed at this height.
    Confirmed = 1,
    /// The dispute confirmed at this height.
    Dispute = 2,
    /// The penalty was last refused at this height.
    Refused = 3,
    /// A conflicting spend of the penalty's input confirmed at this height.
    Conflicted = 4,
}

fn event_key(kind: TrackerEvent, height: u32, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + key.len());
    out.push(kind as u8);
    out.extend_from_slice(&height.to_be_bytes());
    out.extend_from_slice(key);
    out
}

fn status_event(status: PenaltyStatus) -> (TrackerEvent, u32) {
    match status {
        PenaltyStatus::Broadcast(h) => (TrackerEvent::Broadcast, h),
        PenaltyStatus::Confirmed(h) => (TrackerEvent::Confirmed, h),
        PenaltyStatus::Refused(h) => (TrackerEvent::Refused, h),
        PenaltyStatus::Conflicted { height, .. } => (TrackerEvent::Conflicted, height),
    }
}

/// `txid ‖ vout`: an outpoint as the `tracker_inputs` index keys it.
fn outpoint_key(outpoint: &OutPoint) -> Vec<u8> {
    join(outpoint.txid.as_byte_array(), &outpoint.vout.to_be_bytes())
}

impl Batch {
    /// Writes `user`'s tracker at `locator`, replacing `old` (whose index entries are removed).
    pub fn put_tracker(
        &mut self,
        locator: &Locator,
        user: &UserId,
        tracker: &TrackerRecord,
        old: Option<&TrackerRecord>,
    ) {
        let key = appointment_key(locator, user);
        if let Some(old) = old {
            self.delete_tracker_indexes(&key, old);
            self.counts.trackers[state_index(&old.status)] -= 1;
        }
        self.counts.trackers[state_index(&tracker.status)] += 1;
        let (kind, height) = status_event(tracker.status);
        self.ops.push(Op::Put(Cf::TrackerEvents, event_key(kind, height, &key), Vec::new()));
        self.ops.push(Op::Put(
            Cf::TrackerEvents,
            event_key(TrackerEvent::Dispute, tracker.dispute_height, &key),
            Vec::new(),
        ));
        let penalty_txid = tracker.penalty.compute_txid();
        self.ops.push(Op::Put(Cf::TrackersByPenalty, join(penalty_txid.as_byte_array(), &key), Vec::new()));
        for input in &tracker.penalty.input {
            self.ops.push(Op::Put(Cf::TrackerInputs, join(&outpoint_key(&input.previous_output), &key), Vec::new()));
        }
        self.ops.push(Op::Put(Cf::Trackers, key, tracker.encode()));
    }

    /// Removes `user`'s tracker at `locator` and its index entries.
    pub fn delete_tracker(&mut self, locator: &Locator, user: &UserId, tracker: &TrackerRecord) {
        let key = appointment_key(locator, user);
        self.delete_tracker_indexes(&key, tracker);
        self.counts.trackers[state_index(&tracker.status)] -= 1;
        self.ops.push(Op::Delete(Cf::Trackers, key));
    }

    fn delete_tracker_indexes(&mut self, key: &[u8], tracker: &TrackerRecord) {
        let (kind, height) = status_event(tracker.status);
        self.ops.push(Op::Delete(Cf::TrackerEvents, event_key(kind, height, key)));
        self.ops.push(Op::Delete(Cf::TrackerEvents, event_key(TrackerEvent::Dispute, tracker.dispute_height, key)));
        let penalty_txid = tracker.penalty.compute_txid();
        self.ops.push(Op::Delete(Cf::TrackersByPenalty, join(penalty_txid.as_byte_array(), key)));
        for input in &tracker.penalty.input {
            self.ops.push(Op::Delete(Cf::TrackerInputs, join(&outpoint_key(&input.previous_output), key)));
        }
    }
}

/// Splits a `locator ‖ user_id` key (of trackers, late checks and the indexes that end with one).
pub(super) fn split_key(cf: Cf, key: &[u8]) -> Result<(Locator, UserId), StoreError> {
    let (locator, user) = key.split_at(LOCATOR_LEN.min(key.len()));
    let locator = Locator::from_slice(locator).map_err(|e| corrupt(cf, "key", e.to_string()))?;
    let user = UserId::from_slice(user).map_err(|e| corrupt(cf, "key", e.to_string()))?;
    Ok((locator, user))
}

impl Store {
    /// Trackers with an event of `kind` at a height in `from..to`, up to `limit`.
    pub fn trackers_with_event(
        &self,
        kind: TrackerEvent,
        from: u32,
        to: u32,
        limit: usize,
    ) -> Result<Vec<(u32, Locator, UserId)>, StoreError> {
        let rows = self.kv.range(Cf::TrackerEvents, &event_key(kind, from, &[]), &event_key(kind, to, &[]), limit)?;
        rows.iter()
            .map(|(k, _)| {
                let height = be_u32(k, 1).ok_or_else(|| corrupt(Cf::TrackerEvents, "key", "short"))?;
                let (locator, user) = split_key(Cf::TrackerEvents, &k[5..])?;
                Ok((height, locator, user))
            })
            .collect()
    }

    /// Trackers whose penalty spends one of `outpoints` (one pass over the index), with that
    /// outpoint.
    pub fn trackers_spending(&self, outpoints: &[OutPoint]) -> Result<Vec<(OutPoint, Locator, UserId)>, StoreError> {
        let keys: Vec<Vec<u8>> = outpoints.iter().map(outpoint_key).collect();
        let prefixes: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        let rows = self.kv.scan_prefixes(Cf::TrackerInputs, &prefixes, None, usize::MAX)?;
        rows.iter()
            .map(|(k, _)| {
                let bad = || corrupt(Cf::TrackerInputs, "key", format!("{} bytes", k.len()));
                let txid = Txid::from_slice(k.get(..32).ok_or_else(bad)?).map_err(|_| bad())?;
                let vout = be_u32(k, 32).ok_or_else(bad)?;
                let (locator, user) = split_key(Cf::TrackerInputs, &k[36..])?;
                Ok((OutPoint { txid, vout }, locator, user))
            })
            .collect()
    }

    /// Trackers whose penalty is one of `txids` (one pass over the index), with that txid.
    pub fn trackers_by_penalty(&self, txids: &[Txid]) -> Result<Vec<(Txid, Locator, UserId)>, StoreError> {
        let prefixes: Vec<&[u8]> = txids.iter().map(|t| t.as_byte_array().as_slice()).collect();
        let rows = self.kv.scan_prefixes(Cf::TrackersByPenalty, &prefixes, None, usize::MAX)?;
        rows.iter()
            .map(|(k, _)| {
                let txid = Txid::from_slice(&k[..32.min(k.len())])
                    .map_err(|e| corrupt(Cf::TrackersByPenalty, "key", e.to_string()))?;
                let (locator, user) = split_key(Cf::TrackersByPenalty, &k[32..])?;
                Ok((txid, locator, user))
            })
            .collect()
    }
}
