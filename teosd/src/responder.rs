//! The Responder: sends the penalties of the breaches the Watcher finds and follows them, block by
//! block, until they are won, lost or abandoned. It never gives up while a penalty can still
//! confirm: a refused penalty (its fee, a full mempool) is sent again at every block, an accepted
//! one every `rebroadcast_after` blocks, for as long as the outputs it spends are unspent.
//!
//! A tracker ends (docs/architecture.md draws the states) when its penalty is buried
//! [`IRREVOCABLY_RESOLVED`] blocks deep (won); when a confirmed transaction that is not the
//! penalty spent an output the penalty spends, and is buried [`CONFLICT_BURIED`] deep (lost: the
//! cheater swept first); or, never confirmed, past its horizon, [`ABANDON_AFTER_DEADLINE`] blocks
//! after the cheater could sweep (abandoned). Each end refunds the user's slot and is counted in
//! the store. Disconnecting a block undoes what it did: penalties confirmed in it and conflicts
//! confirmed in it go back to waiting, trackers whose dispute it held are removed.

use std::collections::HashSet;
use std::sync::Arc;

use bitcoin::{OutPoint, Transaction, Txid};

use crate::chain::{BlockBatch, BroadcastOutcome, Broadcaster, ChainError, ChainListener, ConnectedBlock};
use crate::metrics::PenaltySend;
use crate::protocol::{Locator, UserId};
use crate::store::{OutcomeCounts, PenaltyStatus, Store, StoreError, TrackerEvent, TrackerRecord};

/// Confirmations after which a penalty is irrevocable and its tracker completes.
pub const IRREVOCABLY_RESOLVED: u32 = 100;
/// Confirmations of a conflicting spend after which the penalty is lost.
pub const CONFLICT_BURIED: u32 = 6;
/// Blocks past the deadline (the dispute plus its `to_self_delay`, at least
/// [`IRREVOCABLY_RESOLVED`]) after which a penalty that never confirmed is abandoned.
pub const ABANDON_AFTER_DEADLINE: u32 = 2016;
/// An unconfirmed penalty is at risk this many blocks after its dispute...
pub const AT_RISK_UNCONFIRMED: u32 = 6;
/// ... or this close to its deadline.
pub const AT_RISK_DEADLINE_MARGIN: u32 = 12;

/// Completions, conflicts settled, and retries, per block at most (the oldest first; the rest wait
/// a block).
const PER_BLOCK: usize = 1000;
/// Trackers looked at for the per-block "at risk" warning, at most.
const AT_RISK_SCAN: usize = 1000;

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
    /// The appointment's `to_self_delay`.
    pub to_self_delay: u32,
}

/// How a tracker ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Won,
    Lost,
    Abandoned,
}

/// When the cheater may sweep the output the penalty takes: the dispute plus its
/// `to_self_delay` (`None` if unknown).
pub fn deadline(tracker: &TrackerRecord) -> Option<u32> {
    (tracker.to_self_delay > 0).then(|| tracker.dispute_height.saturating_add(tracker.to_self_delay))
}

/// The height past which a penalty that never confirmed is abandoned.
pub fn horizon(tracker: &TrackerRecord) -> u32 {
    let wait = tracker.to_self_delay.max(IRREVOCABLY_RESOLVED);
    tracker.dispute_height.saturating_add(wait).saturating_add(ABANDON_AFTER_DEADLINE)
}

/// Whether the penalty is at risk at `height`: refused, conflicted, still unconfirmed
/// [`AT_RISK_UNCONFIRMED`] blocks after its dispute, or unconfirmed within
/// [`AT_RISK_DEADLINE_MARGIN`] blocks of its deadline.
pub fn at_risk(tracker: &TrackerRecord, height: u32) -> bool {
    match tracker.status {
        PenaltyStatus::Confirmed(_) => false,
        PenaltyStatus::Refused(_) | PenaltyStatus::Conflicted { .. } => true,
        PenaltyStatus::Broadcast(_) => {
            let late = height >= tracker.dispute_height.saturating_add(AT_RISK_UNCONFIRMED);
            let near = deadline(tracker).is_some_and(|d| height.saturating_add(AT_RISK_DEADLINE_MARGIN) >= d);
            late || near
        }
    }
}

/// The status a broadcast's answer leaves a penalty in, at `height`.
fn status_after(outcome: &BroadcastOutcome, height: u32) -> PenaltyStatus {
    match outcome {
        BroadcastOutcome::Accepted => PenaltyStatus::Broadcast(height),
        BroadcastOutcome::AlreadyConfirmed => PenaltyStatus::Confirmed(height),
        BroadcastOutcome::Rejected { .. } => PenaltyStatus::Refused(height),
    }
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
    /// until a penalty confirms (every block while bitcoind refuses it).
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
            self.store.metrics().penalty_sent(PenaltySend::Breach, outcome.refusal_reason());
            let status = match outcome {
                _ if dispute_block.contains(&penalty_txid) => PenaltyStatus::Confirmed(dispute_block.height),
                ref outcome => status_after(outcome, tip),
            };
            let confirmed = matches!(status, PenaltyStatus::Confirmed(_));
            let tracker = TrackerRecord {
                dispute_txid: breach.dispute_txid,
                penalty: breach.penalty,
                dispute_height: dispute_block.height,
                to_self_delay: breach.to_self_delay,
                status,
            };
            batch.writes().put_tracker(&breach.locator, &breach.user, &tracker, None);
            batch.count_breach();
            let (user, locator, metrics) = (breach.user, breach.locator, self.store.metrics().clone());
            batch.after_commit(move || {
                metrics.breach();
                if confirmed {
                    metrics.penalty_confirmed();
                }
                tracing::info!(user_id = %user, %locator, %penalty_txid, "New tracker added")
            });
        }
        Ok(())
    }

    /// Sends the penalties of disputes seen unconfirmed (each with its appointment's locator and
    /// user), writing nothing: the block that confirms the dispute creates the tracker, as for
    /// any breach (the penalty is then already known to bitcoind).
    pub fn send_early(&self, penalties: &[(Locator, UserId, Transaction)]) -> Result<(), ChainError> {
        let txs: Vec<&Transaction> = penalties.iter().map(|(_, _, p)| p).collect();
        for ((locator, user, penalty), outcome) in penalties.iter().zip(self.broadcaster.broadcast_all(&txs)) {
            let outcome = outcome?;
            log_outcome("dispute seen in the mempool: penalty broadcast", user, locator, penalty, &outcome);
            self.store.metrics().penalty_sent(PenaltySend::Mempool, outcome.refusal_reason());
        }
        Ok(())
    }

    /// Penalties confirmed in `block` are marked so; returns them (a penalty's own spend of its
    /// inputs is no conflict).
    fn mark_confirmations(
        &self,
        block: &ConnectedBlock,
        batch: &mut BlockBatch<'_>,
    ) -> Result<HashSet<(Locator, UserId)>, ChainError> {
        let mut confirmed = HashSet::new();
        for (penalty_txid, locator, user) in self.store.trackers_by_penalty(&block.txids)? {
            let Some(old) = self.store.tracker(&locator, &user)? else { continue };
            let status = PenaltyStatus::Confirmed(block.height);
            batch.writes().put_tracker(&locator, &user, &TrackerRecord { status, ..old.clone() }, Some(&old));
            confirmed.insert((locator, user));
            let (height, metrics) = (block.height, self.store.metrics().clone());
            batch.after_commit(move || {
                metrics.penalty_confirmed();
                tracing::info!(user_id = %user, %locator, %penalty_txid, height, "penalty confirmed")
            });
        }
        Ok(confirmed)
    }

    /// Trackers whose penalty spends an output that a transaction of `block` (not the penalty)
    /// spends: conflicted at this height.
    fn mark_conflicts(
        &self,
        block: &ConnectedBlock,
        confirmed: &HashSet<(Locator, UserId)>,
        batch: &mut BlockBatch<'_>,
    ) -> Result<(), ChainError> {
        let spent: Vec<(OutPoint, usize)> = block
            .block
            .txdata
            .iter()
            .enumerate()
            .skip(1)
            .flat_map(|(i, tx)| tx.input.iter().map(move |input| (input.previous_output, i)))
            .collect();
        let outpoints: Vec<OutPoint> = spent.iter().map(|(o, _)| *o).collect();
        let spender: std::collections::HashMap<OutPoint, usize> = spent.into_iter().collect();
        for (outpoint, locator, user) in self.store.trackers_spending(&outpoints)? {
            if confirmed.contains(&(locator, user)) {
                continue;
            }
            let Some(old) = self.store.tracker(&locator, &user)? else { continue };
            let by = block.txids[spender[&outpoint]];
            if by == old.penalty.compute_txid() || matches!(old.status, PenaltyStatus::Confirmed(_)) {
                continue;
            }
            let status = PenaltyStatus::Conflicted { height: block.height, by };
            batch.writes().put_tracker(&locator, &user, &TrackerRecord { status, ..old.clone() }, Some(&old));
            let (height, penalty_txid) = (block.height, old.penalty.compute_txid());
            batch.after_commit(move || {
                tracing::warn!(user_id = %user, %locator, %penalty_txid, conflicting_txid = %by, height,
                    "an output the penalty spends was spent by another transaction: lost if it gets buried")
            });
        }
        Ok(())
    }

    /// Ends trackers won (penalty irrevocable) or lost (conflict buried) by `height`.
    fn settle(&self, height: u32, counts: &mut OutcomeCounts, batch: &mut BlockBatch<'_>) -> Result<(), ChainError> {
        for (kind, depth, end) in [
            (TrackerEvent::Confirmed, IRREVOCABLY_RESOLVED, End::Won),
            (TrackerEvent::Conflicted, CONFLICT_BURIED, End::Lost),
        ] {
            let Some(until) = height.checked_sub(depth) else { continue };
            for (_, locator, user) in self.store.trackers_with_event(kind, 0, until + 1, PER_BLOCK)? {
                let Some(tracker) = self.store.tracker(&locator, &user)? else { continue };
                self.end(&locator, &user, &tracker, end, counts, batch)?;
            }
        }
        Ok(())
    }

    /// Sends again the penalties bitcoind refused (every block) and those it accepted that are
    /// still unconfirmed `rebroadcast_after` blocks later; abandons those past their horizon.
    fn retry(
        &self,
        block: &ConnectedBlock,
        counts: &mut OutcomeCounts,
        batch: &mut BlockBatch<'_>,
    ) -> Result<(), ChainError> {
        let mut due = self.store.trackers_with_event(TrackerEvent::Refused, 0, block.height, PER_BLOCK)?;
        if let Some(until) = block.height.checked_sub(self.rebroadcast_after) {
            due.extend(self.store.trackers_with_event(TrackerEvent::Broadcast, 0, until + 1, PER_BLOCK)?);
        }
        let mut sending = Vec::new();
        for (_, locator, user) in due {
            let Some(old) = self.store.tracker(&locator, &user)? else { continue };
            if block.contains(&old.penalty.compute_txid()) {
                continue; // confirmed by this very block
            }
            if block.height > horizon(&old) {
                self.end(&locator, &user, &old, End::Abandoned, counts, batch)?;
                continue;
            }
            sending.push((locator, user, old));
        }
        let penalties: Vec<&Transaction> = sending.iter().map(|(_, _, t)| &t.penalty).collect();
        let outcomes = batch.timed_broadcast(|| self.broadcaster.broadcast_all(&penalties));
        for ((locator, user, old), outcome) in sending.iter().zip(outcomes) {
            let outcome = outcome?;
            log_outcome("penalty sent again", user, locator, &old.penalty, &outcome);
            self.store.metrics().penalty_sent(PenaltySend::Again, outcome.refusal_reason());
            let status = status_after(&outcome, block.height);
            if matches!(status, PenaltyStatus::Confirmed(_)) {
                let metrics = self.store.metrics().clone();
                batch.after_commit(move || metrics.penalty_confirmed());
            }
            batch.writes().put_tracker(locator, user, &TrackerRecord { status, ..old.clone() }, Some(old));
        }
        Ok(())
    }

    /// Ends a tracker: it and its appointment go, the user is owed its slot back, the end is
    /// counted and logged.
    fn end(
        &self,
        locator: &Locator,
        user: &UserId,
        tracker: &TrackerRecord,
        end: End,
        counts: &mut OutcomeCounts,
        batch: &mut BlockBatch<'_>,
    ) -> Result<(), ChainError> {
        batch.writes().delete_tracker(locator, user, tracker);
        // A removed user's appointments went with it (and a user registered again since has a
        // new number, under which the old appointment never was: the counts must not drop).
        if let Some(record) = self.store.user(user)? {
            if self.store.appointment(locator, &record)?.is_some() {
                batch.writes().delete_appointment(user, &record, locator);
            }
            batch.refund_slot(*user);
        }
        match end {
            End::Won => counts.won += 1,
            End::Lost => counts.lost += 1,
            End::Abandoned => counts.abandoned += 1,
        }
        let (user, locator, penalty_txid, dispute_txid) =
            (*user, *locator, tracker.penalty.compute_txid(), tracker.dispute_txid);
        let status = tracker.status;
        batch.after_commit(move || match (end, status) {
            (End::Won, _) => tracing::info!(user_id = %user, %locator, %penalty_txid,
                "penalty irrevocable: tracker completed, slot refunded"),
            (End::Lost, PenaltyStatus::Conflicted { by, .. }) => tracing::error!(user_id = %user, %locator,
                %dispute_txid, %penalty_txid, conflicting_txid = %by,
                "penalty lost: another transaction spending its input is buried"),
            _ => tracing::error!(user_id = %user, %locator, %dispute_txid, %penalty_txid,
                "penalty never confirmed and its horizon has passed: abandoned"),
        });
        Ok(())
    }

    /// Trackers at risk at `height` (see [`at_risk`]), looking at up to `limit` of each kind of
    /// unconfirmed tracker.
    pub fn trackers_at_risk(
        store: &Store,
        height: u32,
        limit: usize,
    ) -> Result<Vec<(Locator, UserId, TrackerRecord)>, StoreError> {
        let mut found = Vec::new();
        for kind in [TrackerEvent::Refused, TrackerEvent::Conflicted, TrackerEvent::Broadcast] {
            for (_, locator, user) in store.trackers_with_event(kind, 0, u32::MAX, limit)? {
                let Some(tracker) = store.tracker(&locator, &user)? else { continue };
                if at_risk(&tracker, height) {
                    found.push((locator, user, tracker));
                }
            }
        }
        Ok(found)
    }

    /// Logs (at warn, once for the block) the penalties at risk after `block`.
    fn warn_at_risk(&self, height: u32, batch: &mut BlockBatch<'_>) -> Result<(), ChainError> {
        let at_risk = Self::trackers_at_risk(&self.store, height, AT_RISK_SCAN)?;
        if at_risk.is_empty() {
            return Ok(());
        }
        let worst: Vec<String> = at_risk
            .iter()
            .take(5)
            .map(|(locator, user, t)| {
                let deadline = deadline(t).map_or("unknown".to_string(), |d| d.to_string());
                format!("{locator}/{user}: {:?}, deadline {deadline}", t.status)
            })
            .collect();
        let count = at_risk.len();
        batch.after_commit(move || tracing::warn!(count, height, first = ?worst, "penalties at risk"));
        Ok(())
    }
}

impl ChainListener for Responder {
    fn block_connected(&self, block: &ConnectedBlock, batch: &mut BlockBatch<'_>) -> Result<(), ChainError> {
        let before = self.store.outcome_counts()?;
        let mut counts = before;
        let confirmed = self.mark_confirmations(block, batch)?;
        self.mark_conflicts(block, &confirmed, batch)?;
        self.settle(block.height, &mut counts, batch)?;
        self.retry(block, &mut counts, batch)?;
        if counts != before {
            batch.writes().put_outcome_counts(&counts);
        }
        self.warn_at_risk(block.height, batch)
    }

    /// Penalties confirmed in the block, and conflicts confirmed in it, go back to waiting (sent
    /// again at the next block); trackers whose dispute was in it are removed, so their
    /// appointments are watched again.
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
        for kind in [TrackerEvent::Confirmed, TrackerEvent::Conflicted] {
            for (_, locator, user) in self.store.trackers_with_event(kind, height, height + 1, usize::MAX)? {
                if removed.contains(&(locator, user)) {
                    continue;
                }
                let Some(old) = self.store.tracker(&locator, &user)? else { continue };
                // Due at once: sent again at the next block.
                let waiting = TrackerRecord { status: PenaltyStatus::Broadcast(0), ..old.clone() };
                batch.writes().put_tracker(&locator, &user, &waiting, Some(&old));
                let what = match kind {
                    TrackerEvent::Confirmed => "penalty's block reorged out: it will be sent again",
                    _ => "the conflicting spend was reorged out: the penalty will be sent again",
                };
                batch.after_commit(move || tracing::warn!(user_id = %user, %locator, height, "{what}"));
            }
        }
        Ok(())
    }
}

fn log_outcome(what: &str, user: &UserId, locator: &Locator, penalty: &Transaction, outcome: &BroadcastOutcome) {
    let penalty_txid = penalty.compute_txid();
    match outcome {
        BroadcastOutcome::Rejected { code, message } => {
            tracing::warn!(user_id = %user, %locator, %penalty_txid, code, message, "{what}: refused by bitcoind, sent again at the next block")
        }
        other => tracing::info!(user_id = %user, %locator, %penalty_txid, outcome = ?other, "{what}"),
    }
}

#[cfg(test)]
#[path = "responder_tests.rs"]
mod tests;
