//! The Responder: broadcasts penalties and follows them until they are buried. And the Watcher's
//! chain side: finding breaches in a block. Both are driven by the chain follower, block by block;
//! everything a block changes is committed with the block (see `bitcoind::chain`).

use std::collections::{HashMap, HashSet};

use bitcoin::{Block, Transaction, Txid};

use crate::bitcoind::rpc::{BitcoindRpc, RpcError};
use crate::protocol::{decrypt_penalty, Locator, UserId};
use crate::store::{Batch, PenaltyStatus, Store, StoreError, TrackerEvent, TrackerRecord, UserRecord};
use crate::tower::UserLocks;

/// Confirmations after which a penalty is irrevocable and its tracker completes.
pub const IRREVOCABLY_RESOLVED: u32 = 100;

/// A dispute found on chain with the penalty its appointment held.
#[derive(Debug, Clone)]
pub struct Breach {
    /// The appointment's locator.
    pub locator: Locator,
    /// Its user.
    pub user: UserId,
    /// The dispute transaction.
    pub dispute: Transaction,
    /// The decrypted penalty.
    pub penalty: Transaction,
}

/// What bitcoind said to a penalty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BroadcastOutcome {
    /// In the mempool (now or already).
    Accepted,
    /// Already in the chain (RPC -27).
    AlreadyConfirmed,
    /// Refused (-25 missing or spent inputs, -26 policy, -22 decode, anything else): kept and
    /// retried every `rebroadcast_after` blocks until the dispute is irrevocable.
    Rejected {
        /// bitcoind's code.
        code: i64,
        /// Its message.
        message: String,
    },
}

/// Sends `tx`. A transport failure (bitcoind down) is an error: the caller retries the whole
/// block later, so no broadcast is lost.
pub async fn broadcast(rpc: &BitcoindRpc, tx: &Transaction) -> Result<BroadcastOutcome, RpcError> {
    classify(rpc.send_raw_transaction(tx).await)
}

/// What each `sendrawtransaction` answer means for a penalty (see `docs/architecture.md`).
pub fn classify(result: Result<Txid, RpcError>) -> Result<BroadcastOutcome, RpcError> {
    match result {
        Ok(_) => Ok(BroadcastOutcome::Accepted),
        Err(RpcError::Rpc { code: -27, .. }) => Ok(BroadcastOutcome::AlreadyConfirmed),
        Err(RpcError::Rpc { code: -26, message }) if message.contains("already") => Ok(BroadcastOutcome::Accepted),
        Err(RpcError::Rpc { code, message }) => Ok(BroadcastOutcome::Rejected { code, message }),
        Err(e) => Err(e),
    }
}

/// Why a matched appointment was dropped instead of answered.
pub fn penalty_for(blob: &[u8], dispute_txid: &Txid) -> Result<Transaction, String> {
    let penalty = decrypt_penalty(blob, dispute_txid).map_err(|e| e.to_string())?;
    if !penalty.input.iter().any(|i| i.previous_output.txid == *dispute_txid) {
        return Err("the penalty spends no output of the dispute".into());
    }
    Ok(penalty)
}

/// Finds the breaches in `block`: the locators of all its transactions are looked up in one pass
/// over the store (prefix probes with bloom filters, so the cost does not grow with the number of
/// appointments). Appointments whose blob does not yield a valid penalty are dropped (no refund)
/// in `drops`. `txids` are the block's, in order (computed once per block by the caller).
pub fn find_breaches(
    store: &Store,
    block: &Block,
    txids: &[Txid],
    drops: &mut Batch,
) -> Result<Vec<Breach>, StoreError> {
    let locators: Vec<Locator> = txids.iter().map(Locator::from_txid).collect();
    let matches = store.appointments_at_any(&locators)?;
    if matches.is_empty() {
        return Ok(Vec::new());
    }
    let by_locator: HashMap<Locator, usize> = locators.iter().enumerate().map(|(i, l)| (*l, i)).collect();
    let mut breaches = Vec::new();
    for (locator, user, stored) in matches {
        let Some(&index) = by_locator.get(&locator) else { continue };
        if store.has_tracker(&locator, &user)? {
            continue;
        }
        let (tx, txid) = (&block.txdata[index], txids[index]);
        match penalty_for(&stored.appointment.encrypted_blob, &txid) {
            Ok(penalty) => breaches.push(Breach { locator, user, dispute: tx.clone(), penalty }),
            Err(reason) => {
                tracing::warn!(user_id = %user, %locator, dispute_txid = %txid, reason, "breach seen but the appointment is invalid: dropped");
                if let Some(record) = store.user(&user)? {
                    drops.delete_appointment(&user, &record, &locator);
                }
            }
        }
    }
    // In block order, as the transactions came.
    breaches.sort_by_key(|b| by_locator.get(&b.locator).copied());
    Ok(breaches)
}

/// The tracker a breach becomes after its broadcast.
pub fn new_tracker(breach: &Breach, outcome: &BroadcastOutcome, dispute_height: u32, height: u32) -> TrackerRecord {
    let status = match outcome {
        BroadcastOutcome::AlreadyConfirmed => PenaltyStatus::Confirmed(height),
        _ => PenaltyStatus::Broadcast(height),
    };
    TrackerRecord {
        dispute_txid: breach.dispute.compute_txid(),
        dispute: breach.dispute.clone(),
        penalty: breach.penalty.clone(),
        dispute_height,
        status,
    }
}

/// Trackers whose penalty has waited `rebroadcast_after` blocks without confirming.
pub fn due_for_rebroadcast(
    store: &Store,
    height: u32,
    rebroadcast_after: u32,
) -> Result<Vec<(Locator, UserId, TrackerRecord)>, StoreError> {
    let Some(until) = height.checked_sub(rebroadcast_after) else { return Ok(Vec::new()) };
    let mut due = Vec::new();
    for (_, locator, user) in store.trackers_with_event(TrackerEvent::Broadcast, 0, until + 1, usize::MAX)? {
        if let Some(tracker) = store.tracker(&locator, &user)? {
            due.push((locator, user, tracker));
        }
    }
    Ok(due)
}

/// Adds to `batch` the block's effects on existing trackers: penalties confirmed in it, which
/// it returns.
pub fn mark_confirmations(
    store: &Store,
    txids: &[Txid],
    height: u32,
    batch: &mut Batch,
) -> Result<Vec<(UserId, Locator, Txid)>, StoreError> {
    let mut confirmed = Vec::new();
    for (txid, locator, user) in store.trackers_by_penalty(txids)? {
        if let Some(old) = store.tracker(&locator, &user)? {
            let status = PenaltyStatus::Confirmed(height);
            batch.put_tracker(&locator, &user, &TrackerRecord { status, ..old.clone() }, Some(&old));
            confirmed.push((user, locator, txid));
        }
    }
    Ok(confirmed)
}

/// Completes trackers whose penalty is irrevocable: the tracker and its appointment go and the
/// user gets its slot back. Each user in its own batch under its lock (the refund is a
/// read-modify-write of the user record); replaying the block repeats nothing.
pub fn complete_irrevocable(store: &Store, locks: &UserLocks, height: u32) -> Result<(), StoreError> {
    let Some(until) = height.checked_sub(IRREVOCABLY_RESOLVED) else { return Ok(()) };
    for (_, locator, user) in store.trackers_with_event(TrackerEvent::Confirmed, 0, until + 1, usize::MAX)? {
        let _guard = locks.lock(&user);
        let Some(tracker) = store.tracker(&locator, &user)? else { continue };
        let mut batch = store.batch();
        batch.delete_tracker(&locator, &user, &tracker);
        // A removed user's appointments went with it.
        if let Some(record) = store.user(&user)? {
            batch.delete_appointment(&user, &record, &locator);
            let refunded = UserRecord { available_slots: record.available_slots.saturating_add(1), ..record };
            batch.put_user(&user, Some(&record), &refunded);
        }
        store.commit(batch)?;
        tracing::info!(user_id = %user, %locator, penalty_txid = %tracker.penalty.compute_txid(), "penalty irrevocable: tracker completed, slot refunded");
    }
    Ok(())
}

/// Adds to `batch` what disconnecting the block at `height` undoes: penalties confirmed in it go
/// back to waiting (and are sent again at the next block); trackers whose dispute was in it are
/// removed, so their appointments are watched again. Returns what it undid, for the log.
pub fn undo_block(store: &Store, height: u32, batch: &mut Batch) -> Result<Undone, StoreError> {
    let mut undone = HashSet::new();
    let mut pending = Vec::new();
    for (_, locator, user) in store.trackers_with_event(TrackerEvent::Dispute, height, height + 1, usize::MAX)? {
        if let Some(tracker) = store.tracker(&locator, &user)? {
            batch.delete_tracker(&locator, &user, &tracker);
            undone.insert((locator, user));
        }
    }
    for (_, locator, user) in store.trackers_with_event(TrackerEvent::Confirmed, height, height + 1, usize::MAX)? {
        if undone.contains(&(locator, user)) {
            continue;
        }
        if let Some(old) = store.tracker(&locator, &user)? {
            let waiting = TrackerRecord { status: PenaltyStatus::Broadcast(0), ..old.clone() };
            batch.put_tracker(&locator, &user, &waiting, Some(&old));
            pending.push((locator, user));
        }
    }
    batch.delete_recent_block(height);
    Ok(Undone { disputes: undone.into_iter().collect(), penalties: pending })
}

/// What undoing a block changed.
#[derive(Debug, Default)]
pub struct Undone {
    /// Trackers removed because their dispute left the chain.
    pub disputes: Vec<(Locator, UserId)>,
    /// Trackers whose penalty left the chain and will be sent again.
    pub penalties: Vec<(Locator, UserId)>,
}

impl Undone {
    /// Logs it (once committed).
    pub fn log(&self, height: u32) {
        for (locator, user) in &self.disputes {
            tracing::warn!(user_id = %user, %locator, height, "dispute reorged out: appointment watched again");
        }
        for (locator, user) in &self.penalties {
            tracing::warn!(user_id = %user, %locator, height, "penalty's block reorged out: it will be sent again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use bitcoin::OutPoint;

    use crate::test_utils::spending as tx;

    fn rpc(code: i64, message: &str) -> Result<Txid, RpcError> {
        Err(RpcError::Rpc { code, message: message.into() })
    }

    #[test]
    fn every_sendrawtransaction_outcome_has_a_consequence() {
        use bitcoin::hashes::Hash;
        assert_eq!(classify(Ok(Txid::all_zeros())).unwrap(), BroadcastOutcome::Accepted);
        assert_eq!(
            classify(rpc(-27, "Transaction outputs already in utxo set")).unwrap(),
            BroadcastOutcome::AlreadyConfirmed
        );
        assert_eq!(classify(rpc(-26, "txn-already-in-mempool")).unwrap(), BroadcastOutcome::Accepted);
        for (code, message) in [
            (-26, "txn-mempool-conflict"),
            (-25, "bad-txns-inputs-missingorspent"),
            (-22, "TX decode failed"),
            (-1, "anything"),
            (-32603, "internal"),
        ] {
            assert_eq!(
                classify(rpc(code, message)).unwrap(),
                BroadcastOutcome::Rejected { code, message: message.into() }
            );
        }
        // Transport failures and refused credentials are not outcomes: the block is retried.
        assert!(classify(Err(RpcError::Transport("connection refused".into()))).is_err());
        assert!(classify(Err(RpcError::Unauthorized)).is_err());
        assert!(classify(Err(RpcError::Decode("garbage".into()))).is_err());
    }

    #[test]
    fn a_rejected_penalty_is_still_tracked_and_an_already_mined_one_is_confirmed() {
        let dispute = tx(OutPoint::null());
        let penalty = tx(OutPoint { txid: dispute.compute_txid(), vout: 0 });
        let user =
            crate::protocol::TowerSigner::new(bitcoin::secp256k1::SecretKey::from_slice(&[1; 32]).unwrap()).tower_id();
        let breach = Breach { locator: Locator::from_txid(&dispute.compute_txid()), user, dispute, penalty };
        let rejected = BroadcastOutcome::Rejected { code: -26, message: "min relay fee not met".into() };
        assert_eq!(new_tracker(&breach, &rejected, 100, 101).status, PenaltyStatus::Broadcast(101));
        assert_eq!(
            new_tracker(&breach, &BroadcastOutcome::AlreadyConfirmed, 100, 101).status,
            PenaltyStatus::Confirmed(101)
        );
        assert_eq!(new_tracker(&breach, &BroadcastOutcome::Accepted, 100, 101).dispute_height, 100);
    }

    #[test]
    fn penalties_that_do_not_spend_the_dispute_are_refused() {
        use crate::protocol::encrypt_penalty;
        let dispute = tx(OutPoint::null());
        let txid = dispute.compute_txid();
        let good = tx(OutPoint { txid, vout: 0 });
        assert_eq!(penalty_for(&encrypt_penalty(&good, &txid), &txid), Ok(good));
        let unrelated = tx(OutPoint { txid: bitcoin::hashes::Hash::all_zeros(), vout: 7 });
        assert!(penalty_for(&encrypt_penalty(&unrelated, &txid), &txid).unwrap_err().contains("spends no output"));
        assert!(penalty_for(&[0u8; 40], &txid).is_err());
    }
}
