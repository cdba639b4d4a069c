//! Trackers (breaches being answered) and the recent-transaction index, with the indexes the
//! Responder and the Watcher need so that no per-block work scans everything.

use bitcoin::hashes::Hash;
use bitcoin::{BlockHash, Txid};

use super::records::{be_u32, PenaltyStatus, TrackerRecord};
use super::{appointment_key, corrupt, join, Batch, Cf, Op, Store, StoreError};
use crate::protocol::{Locator, UserId, LOCATOR_LEN};

/// When a tracker needs attention: the index `tracker_events` keys trackers by these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrackerEvent {
    /// The penalty was last sent at this height and is unconfirmed.
    Broadcast = 0,
    /// The penalty confirmed at this height.
    Confirmed = 1,
    /// The dispute confirmed at this height.
    Dispute = 2,
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
    }
}

/// A transaction of a recent block, as the recent-transaction index keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecentTx {
    /// Its block's height.
    pub height: u32,
    /// Its id.
    pub txid: Txid,
    /// Its block.
    pub block_hash: BlockHash,
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
        }
        let (kind, height) = status_event(tracker.status);
        self.ops.push(Op::Put(Cf::TrackerEvents, event_key(kind, height, &key), Vec::new()));
        self.ops.push(Op::Put(
            Cf::TrackerEvents,
            event_key(TrackerEvent::Dispute, tracker.dispute_height, &key),
            Vec::new(),
        ));
        let penalty_txid = tracker.penalty.compute_txid();
        self.ops.push(Op::Put(Cf::TrackersByPenalty, join(penalty_txid.as_byte_array(), &key), Vec::new()));
        self.ops.push(Op::Put(Cf::Trackers, key, tracker.encode()));
    }

    /// Removes `user`'s tracker at `locator` and its index entries.
    pub fn delete_tracker(&mut self, locator: &Locator, user: &UserId, tracker: &TrackerRecord) {
        let key = appointment_key(locator, user);
        self.delete_tracker_indexes(&key, tracker);
        self.ops.push(Op::Delete(Cf::Trackers, key));
    }

    fn delete_tracker_indexes(&mut self, key: &[u8], tracker: &TrackerRecord) {
        let (kind, height) = status_event(tracker.status);
        self.ops.push(Op::Delete(Cf::TrackerEvents, event_key(kind, height, key)));
        self.ops.push(Op::Delete(Cf::TrackerEvents, event_key(TrackerEvent::Dispute, tracker.dispute_height, key)));
        let penalty_txid = tracker.penalty.compute_txid();
        self.ops.push(Op::Delete(Cf::TrackersByPenalty, join(penalty_txid.as_byte_array(), key)));
    }

    /// Records that `user`'s appointment at `locator` arrived after its dispute `recent` was mined.
    pub fn put_late_check(&mut self, locator: &Locator, user: &UserId, recent: &RecentTx) {
        let mut value = Vec::with_capacity(68);
        value.extend_from_slice(&recent.height.to_be_bytes());
        value.extend_from_slice(recent.txid.as_byte_array());
        value.extend_from_slice(recent.block_hash.as_byte_array());
        self.ops.push(Op::Put(Cf::LateChecks, appointment_key(locator, user), value));
    }

    /// Removes a late check.
    pub fn delete_late_check(&mut self, locator: &Locator, user: &UserId) {
        self.ops.push(Op::Delete(Cf::LateChecks, appointment_key(locator, user)));
    }

    /// Indexes a transaction of the block at `height`.
    pub fn put_recent_tx(&mut self, height: u32, txid: &Txid, block_hash: &BlockHash) {
        let locator = Locator::from_txid(txid);
        let key = join(locator.as_bytes(), &height.to_be_bytes());
        self.ops.push(Op::Put(Cf::RecentTxs, key, join(txid.as_byte_array(), block_hash.as_byte_array())));
        self.ops.push(Op::Put(Cf::RecentTxsByHeight, join(&height.to_be_bytes(), locator.as_bytes()), Vec::new()));
    }
}

fn split_key(cf: Cf, key: &[u8]) -> Result<(Locator, UserId), StoreError> {
    let locator =
        Locator::from_slice(&key[..LOCATOR_LEN.min(key.len())]).map_err(|e| corrupt(cf, "key", e.to_string()))?;
    let user = UserId::from_slice(&key[LOCATOR_LEN.min(key.len())..]).map_err(|e| corrupt(cf, "key", e.to_string()))?;
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

    /// Trackers whose penalty is `txid`.
    pub fn trackers_by_penalty(&self, txid: &Txid) -> Result<Vec<(Locator, UserId)>, StoreError> {
        let prefix = txid.as_byte_array();
        let rows = self.kv.scan(Cf::TrackersByPenalty, prefix, prefix, usize::MAX)?;
        rows.iter().map(|(k, _)| split_key(Cf::TrackersByPenalty, &k[32..])).collect()
    }

    /// Recent transactions whose locator is `locator`.
    pub fn recent_txs(&self, locator: &Locator) -> Result<Vec<RecentTx>, StoreError> {
        let rows = self.kv.scan(Cf::RecentTxs, locator.as_bytes(), locator.as_bytes(), usize::MAX)?;
        rows.iter()
            .map(|(k, v)| {
                let height = be_u32(k, LOCATOR_LEN).ok_or_else(|| corrupt(Cf::RecentTxs, "key", "short"))?;
                if v.len() != 64 {
                    return Err(corrupt(Cf::RecentTxs, "value", format!("{} bytes", v.len())));
                }
                let txid = Txid::from_slice(&v[..32]).map_err(|e| corrupt(Cf::RecentTxs, "txid", e.to_string()))?;
                let block_hash =
                    BlockHash::from_slice(&v[32..]).map_err(|e| corrupt(Cf::RecentTxs, "hash", e.to_string()))?;
                Ok(RecentTx { height, txid, block_hash })
            })
            .collect()
    }

    /// Up to `limit` appointments waiting for a late check, with the dispute each matched.
    pub fn late_checks(&self, limit: usize) -> Result<Vec<(Locator, UserId, RecentTx)>, StoreError> {
        let rows = self.kv.range(Cf::LateChecks, &[], &[0xff; 50], limit)?;
        rows.iter()
            .map(|(k, v)| {
                let (locator, user) = split_key(Cf::LateChecks, k)?;
                let height = be_u32(v, 0)
                    .filter(|_| v.len() == 68)
                    .ok_or_else(|| corrupt(Cf::LateChecks, "value", "not 68 bytes"))?;
                let txid = Txid::from_slice(&v[4..36]).map_err(|e| corrupt(Cf::LateChecks, "txid", e.to_string()))?;
                let block_hash =
                    BlockHash::from_slice(&v[36..]).map_err(|e| corrupt(Cf::LateChecks, "hash", e.to_string()))?;
                Ok((locator, user, RecentTx { height, txid, block_hash }))
            })
            .collect()
    }

    /// Adds to `batch` the removal of every recent transaction of the block at `height`.
    pub fn forget_recent_block(&self, batch: &mut Batch, height: u32) -> Result<(), StoreError> {
        let prefix = height.to_be_bytes();
        for (k, _) in self.kv.scan(Cf::RecentTxsByHeight, &prefix, &prefix, usize::MAX)? {
            batch.ops.push(Op::Delete(Cf::RecentTxs, join(&k[4..], &prefix)));
            batch.ops.push(Op::Delete(Cf::RecentTxsByHeight, k));
        }
        Ok(())
    }
}
