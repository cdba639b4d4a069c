//! The Responder: sends the penalties of the breaches the Watcher finds and follows them, block by
//! block, until they are buried. Per block it marks the penalties confirmed in it, completes the
//! trackers whose penalty is [`IRREVOCABLY_RESOLVED`] deep (owing the user its slot back), and
//! sends again the penalties unconfirmed for `rebroadcast_after` blocks, giving up on those whose
//! dispute is irrevocable. Disconnecting a block sends its penalties back to waiting and removes
//! the trackers whose dispute it held, so their appointments are watched again.

use std::collections::HashSet;
use std::sync::Arc;

use bitcoin::{Transaction, Txid};

use crate::chain::{BlockBatch, BroadcastOutcome, Broadcaster, ChainError, ChainListener, ConnectedBlock};
use crate::protocol::{Locator, UserId};
use crate::store::{PenaltyStatus, Store, TrackerEvent, TrackerRecord};

/// Confirmations after which a penalty is irrevocable and its tracker completes; also how deep a
/// dispute may get before an unconfirmed penalty is given up.
pub const IRREVOCABLY_RESOLVED: u32 = 100;

/// Completions, and rebroadcasts, per block at most (the oldest first; the rest wait a block).
const PER_BLOCK: usize = 1000;

/// A dispute found on chain with the penalty its appointment held.
#[derive(Debug, Clone)]
pub struct Breach {
    /// The appointment's locator.
    pub locator: Locator,
    /// Its user.
    pub user: UserId,
    /// The dispute's txid (the dispute itself is not copied per breach).
    pub dispute_txid: Txid,
    /// The decrypted penalty.
    pub penalty: Transaction,
}

/// Sends penalties and follows them.
#[derive(Debug, Clone)]
pub struct Responder {
    store: Store,
    broadcaster: Arc<dyn Broadcaster>,
    rebroadcast_after: u32,
}

impl Responder {
    /// A responder sending through `broadcaster`, and again every `rebroadcast_after` blocks
    /// until a penalty confirms.
    pub fn new(store: Store, broadcaster: Arc<dyn Broadcaster>, rebroadcast_after: u32) -> Self {
        Responder { store, broadcaster, rebroadcast_after }
    }

    /// Sends each breach's penalty (together: the broadcaster may send several at once) and adds
    /// its tracker to `batch`. `dispute_block` holds the disputes; `tip` is the chain's height now
    /// (the same block, unless the appointment came late). A penalty already in `dispute_block`
    /// is confirmed there.
    pub fn respond(
        &self,
        breaches: Vec<Breach>,
        dispute_block: &ConnectedBlock,
        tip: u32,
        batch: &mut BlockBatch<'_>,
    ) -> Result<(), ChainError> {
        if breaches.is_empty() {
            return Ok(());
        }
        let penalties: Vec<&Transaction> = breaches.iter().map(|b| &b.penalty).collect();
        let outcomes = batch.timed_broadcast(|| self.broadcaster.broadcast_all(&penalties));
        for (breach, outcome) in breaches.into_iter().zip(outcomes) {
            let outcome = outcome?;
            let penalty_txid = breach.penalty.compute_txid();
            log_outcome("breach: penalty broadcast", &breach.user, &breach.locator, &breach.penalty, &outcome);
            let status = match outcome {
                _ if dispute_block.contains(&penalty_txid) => PenaltyStatus::Confirmed(dispute_block.height),
                BroadcastOutcome::AlreadyConfirmed => PenaltyStatus::Confirmed(tip),
                _ => PenaltyStatus::Broadcast(tip),
            };
            let tracker = TrackerRecord {
                dispute_txid: breach.dispute_txid,
                penalty: breach.penalty,
                dispute_height: dispute_block.height,
                status,
            };
            batch.writes().put_tracker(&breach.locator, &breach.user, &tracker, None);
            batch.count_breach();
            let (user, locator) = (breach.user, breach.locator);
            batch.after_commit(move || tracing::info!(user_id = %user, %locator, %penalty_txid, "New tracker added"));
        }
        Ok(())
    }

    /// Penalties confirmed in `block` are marked so.
    fn mark_confirmations(&self, block: &ConnectedBlock, batch: &mut BlockBatch<'_>) -> Result<(), ChainError> {
        for (penalty_txid, locator, user) in self.store.trackers_by_penalty(&block.txids)? {
            let Some(old) = self.store.tracker(&locator, &user)? else { continue };
            let confirmed = TrackerRecord { status: PenaltyStatus::Confirmed(block.height), ..old.clone() };
            batch.writes().put_tracker(&locator, &user, &confirmed, Some(&old));
            let height = block.height;
            batch.after_commit(
                move || tracing::info!(user_id = %user, %locator, %penalty_txid, height, "penalty confirmed"),
            );
        }
        Ok(())
    }

    /// Trackers whose penalty is irrevocable at `height` complete: the tracker and its appointment
    /// go, and the user is owed its slot back.
    fn complete_irrevocable(&self, height: u32, batch: &mut BlockBatch<'_>) -> Result<(), ChainError> {
        let Some(until) = height.checked_sub(IRREVOCABLY_RESOLVED) else { return Ok(()) };
        for (_, locator, user) in self.store.trackers_with_event(TrackerEvent::Confirmed, 0, until + 1, PER_BLOCK)? {
            let Some(tracker) = self.store.tracker(&locator, &user)? else { continue };
            batch.writes().delete_tracker(&locator, &user, &tracker);
            // A removed user's appointments went with it.
            if let Some(record) = self.store.user(&user)? {
                batch.writes().delete_appointment(&user, &record, &locator);
                batch.refund_slot(user);
            }
            let penalty_txid = tracker.penalty.compute_txid();
            batch.after_commit(move || {
                tracing::info!(user_id = %user, %locator, %penalty_txid, "penalty irrevocable: tracker completed, slot refunded")
            });
        }
        Ok(())
    }

    /// Penalties unconfirmed `rebroadcast_after` blocks after they were last sent (and not in
    /// `block`) are sent again, or given up once their dispute is irrevocable.
    fn rebroadcast_due(&self, block: &ConnectedBlock, batch: &mut BlockBatch<'_>) -> Result<(), ChainError> {
        let Some(until) = block.height.checked_sub(self.rebroadcast_after) else { return Ok(()) };
        let mut due = Vec::new();
        for (_, locator, user) in self.store.trackers_with_event(TrackerEvent::Broadcast, 0, until + 1, PER_BLOCK)? {
            let Some(old) = self.store.tracker(&locator, &user)? else { continue };
            if block.contains(&old.penalty.compute_txid()) {
                continue; // confirmed by this very block
            }
            if old.dispute_height.saturating_add(IRREVOCABLY_RESOLVED) <= block.height {
                self.give_up(&locator, &user, &old, batch)?;
                continue;
            }
            due.push((locator, user, old));
        }
        let penalties: Vec<&Transaction> = due.iter().map(|(_, _, t)| &t.penalty).collect();
        let outcomes = batch.timed_broadcast(|| self.broadcaster.broadcast_all(&penalties));
        for ((locator, user, old), outcome) in due.iter().zip(outcomes) {
            let outcome = outcome?;
            log_outcome("penalty sent again", user, locator, &old.penalty, &outcome);
            let status = match outcome {
                BroadcastOutcome::AlreadyConfirmed => PenaltyStatus::Confirmed(block.height),
                _ => PenaltyStatus::Broadcast(block.height),
            };
            batch.writes().put_tracker(locator, user, &TrackerRecord { status, ..old.clone() }, Some(old));
        }
        Ok(())
    }

    fn give_up(
        &self,
        locator: &Locator,
        user: &UserId,
        tracker: &TrackerRecord,
        batch: &mut BlockBatch<'_>,
    ) -> Result<(), ChainError> {
        batch.writes().delete_tracker(locator, user, tracker);
        if let Some(record) = self.store.user(user)? {
            batch.writes().delete_appointment(user, &record, locator);
        }
        let (user, locator, penalty_txid) = (*user, *locator, tracker.penalty.compute_txid());
        batch.after_commit(move || {
            tracing::error!(user_id = %user, %locator, %penalty_txid,
                "penalty never confirmed and its dispute is irrevocable: giving up")
        });
        Ok(())
    }
}

impl ChainListener for Responder {
    fn block_connected(&self, block: &ConnectedBlock, batch: &mut BlockBatch<'_>) -> Result<(), ChainError> {
        self.mark_confirmations(block, batch)?;
        self.complete_irrevocable(block.height, batch)?;
        self.rebroadcast_due(block, batch)
    }

    /// Penalties confirmed in the block go back to waiting (sent again at the next block);
    /// trackers whose dispute was in it are removed, so their appointments are watched again.
    fn block_disconnected(&self, height: u32, batch: &mut BlockBatch<'_>) -> Result<(), ChainError> {
        let mut removed = HashSet::new();
        for (_, locator, user) in
            self.store.trackers_with_event(TrackerEvent::Dispute, height, height + 1, usize::MAX)?
        {
            let Some(tracker) = self.store.tracker(&locator, &user)? else { continue };
            batch.writes().delete_tracker(&locator, &user, &tracker);
            removed.insert((locator, user));
            batch.after_commit(move || {
                tracing::warn!(user_id = %user, %locator, height, "dispute reorged out: appointment watched again")
            });
        }
        for (_, locator, user) in
            self.store.trackers_with_event(TrackerEvent::Confirmed, height, height + 1, usize::MAX)?
        {
            if removed.contains(&(locator, user)) {
                continue;
            }
            let Some(old) = self.store.tracker(&locator, &user)? else { continue };
            let waiting = TrackerRecord { status: PenaltyStatus::Broadcast(0), ..old.clone() };
            batch.writes().put_tracker(&locator, &user, &waiting, Some(&old));
            batch.after_commit(move || {
                tracing::warn!(user_id = %user, %locator, height, "penalty's block reorged out: it will be sent again")
            });
        }
        Ok(())
    }
}

fn log_outcome(what: &str, user: &UserId, locator: &Locator, penalty: &Transaction, outcome: &BroadcastOutcome) {
    let penalty_txid = penalty.compute_txid();
    match outcome {
        BroadcastOutcome::Rejected { code, message } => {
            tracing::warn!(user_id = %user, %locator, %penalty_txid, code, message, "{what}: rejected by bitcoind, will retry")
        }
        other => tracing::info!(user_id = %user, %locator, %penalty_txid, outcome = ?other, "{what}"),
    }
}

#[cfg(test)]
#[path = "responder_tests.rs"]
mod tests;
