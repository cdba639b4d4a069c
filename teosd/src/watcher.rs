//! The Watcher. On the request side it accepts and serves appointments; on the chain side it
//! looks for each block's transactions among the stored locators, decrypts the penalty of every
//! match and hands the breaches to the [`Responder`]. Appointments that arrive after their dispute
//! was mined carry a late check: the Watcher asks the follower to show it that recent block again
//! and answers them the same way.

use std::collections::HashMap;
use std::sync::Arc;

use bitcoin::{Transaction, Txid};

use crate::chain::{BlockBatch, ChainError, ChainListener, ConnectedBlock, Revisit};
use crate::gatekeeper::{Gatekeeper, SubscriptionError};
use crate::protocol::{decrypt_penalty_as, recover_signer, Appointment, Dialect, Locator, TowerSigner, UserId};
use crate::responder::{Breach, Responder};
use crate::store::{RecentHit, Store, StoreError, StoredAppointment, UserRecord};

#[path = "appointment_group.rs"]
mod group;
pub use group::{Accepted, AppointmentGroup};

/// Late checks answered per page (each page is committed before the next is read).
const LATE_CHECKS_PER_PAGE: usize = 256;
/// Appointments at a block's locators handled per chunk (each chunk but the last is committed on
/// its own, so memory stays bounded however many users wait at one locator).
pub const BREACH_CHUNK: usize = 512;

/// Why an appointment request failed.
#[derive(Debug, thiserror::Error)]
pub enum AppointmentError {
    /// A subscription problem.
    #[error(transparent)]
    Subscription(#[from] SubscriptionError),
    /// `encrypted_blob` is empty.
    #[error("`encrypted_blob` field is empty")]
    EmptyBlob,
    /// `encrypted_blob` is over the limit.
    #[error("`encrypted_blob` is {got} bytes, over the tower's limit of {max}")]
    BlobTooBig {
        /// Limit.
        max: usize,
        /// Given.
        got: usize,
    },
    /// `to_self_delay` is below the limit.
    #[error("`to_self_delay` is {got}, below the tower's minimum of {min}")]
    ToSelfDelayTooSmall {
        /// Limit.
        min: u32,
        /// Given.
        got: u32,
    },
    /// The dispute was seen: the penalty is being followed, the appointment can't change.
    #[error("The provided appointment has already been triggered")]
    AlreadyTriggered,
    /// No such appointment for this user.
    #[error("Appointment not found")]
    NotFound,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What the tower signs and returns for an accepted appointment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppointmentReceipt {
    /// Locator.
    pub locator: Locator,
    /// The tower's height at acceptance.
    pub start_block: u32,
    /// The tower's signature over the receipt.
    pub signature: String,
    /// Slots left.
    pub available_slots: u32,
    /// The subscription's end.
    pub subscription_expiry: u32,
    /// The dispute was already mined: a late check was queued for the chain follower.
    pub late_dispute: bool,
}

/// An appointment's state as its user sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppointmentState {
    /// Waiting for its dispute.
    BeingWatched(Appointment),
    /// Its dispute was seen; the penalty is being followed.
    DisputeResponded {
        /// The dispute transaction id.
        dispute_txid: bitcoin::Txid,
        /// The penalty transaction.
        penalty: bitcoin::Transaction,
    },
}

/// Accepts and serves appointments, and finds their breaches.
#[derive(Debug, Clone)]
pub struct Watcher {
    store: Store,
    gatekeeper: Gatekeeper,
    signer: TowerSigner,
    responder: Arc<Responder>,
}

impl Watcher {
    /// A watcher signing receipts with `signer` and handing breaches to `responder`.
    pub fn new(store: Store, gatekeeper: Gatekeeper, signer: TowerSigner, responder: Arc<Responder>) -> Self {
        Watcher { store, gatekeeper, signer, responder }
    }

    /// The tower's signer.
    pub fn signer(&self) -> &TowerSigner {
        &self.signer
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The gatekeeper.
    pub fn gatekeeper(&self) -> &Gatekeeper {
        &self.gatekeeper
    }

    /// Checks the fields the signature does not vouch for.
    pub fn inspect(&self, appointment: &Appointment) -> Result<(), AppointmentError> {
        let policy = self.gatekeeper.policy();
        let blob_len = appointment.encrypted_blob.len();
        if blob_len == 0 {
            return Err(AppointmentError::EmptyBlob);
        }
        if blob_len > policy.max_blob_size {
            return Err(AppointmentError::BlobTooBig { max: policy.max_blob_size, got: blob_len });
        }
        if appointment.to_self_delay < policy.min_to_self_delay {
            return Err(AppointmentError::ToSelfDelayTooSmall {
                min: policy.min_to_self_delay,
                got: appointment.to_self_delay,
            });
        }
        Ok(())
    }

    /// The user behind `signature` over `appointment` (signature recovery only: no store read;
    /// whether it is registered is decided with its appointment, see [`crate::intake`]).
    pub fn appointment_signer(&self, appointment: &Appointment, signature: &str) -> Result<UserId, AppointmentError> {
        recover_signer(&appointment.signed_bytes(), signature)
            .map_err(|_| AppointmentError::Subscription(SubscriptionError::Unauthenticated))
    }

    /// Stores `appointment` for an authenticated `user` and charges a slot if it is new (an
    /// update is free), in a durable batch of its own; then signs the receipt. The caller holds
    /// the user's lock. (Requests go through [`crate::intake`], which groups many.)
    pub fn store_appointment(
        &self,
        user: &UserId,
        appointment: Appointment,
        signature: String,
        height: u32,
    ) -> Result<AppointmentReceipt, AppointmentError> {
        let mut group = AppointmentGroup::new(self);
        let accepted = group.add(user, appointment, signature, height)?;
        group.commit()?;
        Ok(self.receipt(accepted))
    }

    /// The signed receipt of an accepted appointment (once it is durable).
    pub fn receipt(&self, accepted: Accepted) -> AppointmentReceipt {
        AppointmentReceipt {
            late_dispute: accepted.late_dispute,
            locator: accepted.locator,
            start_block: accepted.start_block,
            signature: self.signer.sign(&accepted.receipt),
            available_slots: accepted.available_slots,
            subscription_expiry: accepted.subscription_expiry,
        }
    }

    /// The state of `user`'s appointment at `locator` (`record` is the user's).
    pub fn appointment_state(
        &self,
        user: &UserId,
        record: &UserRecord,
        locator: &Locator,
    ) -> Result<AppointmentState, AppointmentError> {
        if let Some(tracker) = self.store.tracker(locator, user)? {
            return Ok(AppointmentState::DisputeResponded {
                dispute_txid: tracker.dispute_txid,
                penalty: tracker.penalty,
            });
        }
        match self.store.appointment(locator, record)? {
            Some(stored) => Ok(AppointmentState::BeingWatched(stored.appointment)),
            None => Err(AppointmentError::NotFound),
        }
    }
}

/// The penalty in `blob` (made by a client of `dialect`) for the dispute `dispute_txid`, or why
/// there is none.
pub fn penalty_for(blob: &[u8], dispute_txid: &Txid, dialect: Dialect) -> Result<Transaction, String> {
    let penalty = decrypt_penalty_as(blob, dispute_txid, dialect).map_err(|e| e.to_string())?;
    if !penalty.input.iter().any(|i| i.previous_output.txid == *dispute_txid) {
        return Err("the penalty spends no output of the dispute".into());
    }
    Ok(penalty)
}

impl Watcher {
    /// The breaches of one page of `matches` (appointments at the locators of `block`'s
    /// transactions, found by `by_locator`), in block order. Appointments already triggered are
    /// skipped (so a block processed again after a crash skips the chunks it committed); those
    /// whose blob does not yield a valid penalty are dropped (no refund) in `batch`.
    fn breaches_in(
        &self,
        matches: Vec<(Locator, UserId, StoredAppointment)>,
        block: &ConnectedBlock,
        by_locator: &HashMap<Locator, (usize, Dialect)>,
        batch: &mut BlockBatch<'_>,
    ) -> Result<Vec<Breach>, ChainError> {
        let mut breaches = Vec::new();
        for (locator, user, stored) in matches {
            let Some(&(index, dialect)) = by_locator.get(&locator) else { continue };
            if self.store.has_tracker(&locator, &user)? {
                continue;
            }
            let dispute_txid = block.txids[index];
            if let Some(penalty) = self.checked_penalty(&user, &locator, &stored, &dispute_txid, dialect, batch)? {
                let to_self_delay = stored.appointment.to_self_delay;
                breaches.push((index, Breach { locator, user, dispute_txid, penalty, to_self_delay }));
            }
        }
        breaches.sort_by_key(|(index, _)| *index);
        Ok(breaches.into_iter().map(|(_, breach)| breach).collect())
    }

    /// The penalty of `stored` (a `dialect` client's) for the dispute `txid`; if it has none, the
    /// appointment is dropped in `batch` (without a refund) and the reason logged.
    fn checked_penalty(
        &self,
        user: &UserId,
        locator: &Locator,
        stored: &StoredAppointment,
        txid: &Txid,
        dialect: Dialect,
        batch: &mut BlockBatch<'_>,
    ) -> Result<Option<Transaction>, ChainError> {
        match penalty_for(&stored.appointment.encrypted_blob, txid, dialect) {
            Ok(penalty) => Ok(Some(penalty)),
            Err(reason) => {
                tracing::warn!(user_id = %user, %locator, dispute_txid = %txid, reason, "breach seen but the appointment is invalid: dropped");
                if let Some(record) = self.store.user(user)? {
                    batch.writes().delete_appointment(user, &record, locator);
                }
                Ok(None)
            }
        }
    }

    /// The breach of `user`'s appointment at `locator` in `block`, if it is still watched (the
    /// user's lock is held until the batch commits, so an update cannot slip in between).
    fn late_breach(
        &self,
        locator: Locator,
        user: UserId,
        block: &ConnectedBlock,
        batch: &mut BlockBatch<'_>,
    ) -> Result<Option<Breach>, ChainError> {
        // The recent index compares 8 bytes of the locator; here all 16 are.
        let found = self.dialects().iter().find_map(|d| block.transaction_with(&locator, *d).map(|(_, t)| (t, *d)));
        let Some((dispute_txid, dialect)) = found else { return Ok(None) };
        batch.lock_user(&user);
        let Some(record) = self.store.user(&user)? else { return Ok(None) };
        if self.store.has_tracker(&locator, &user)? {
            return Ok(None);
        }
        let Some(stored) = self.store.appointment(&locator, &record)? else { return Ok(None) };
        let penalty = self.checked_penalty(&user, &locator, &stored, &dispute_txid, dialect, batch)?;
        let to_self_delay = stored.appointment.to_self_delay;
        Ok(penalty.map(|penalty| Breach { locator, user, dispute_txid, penalty, to_self_delay }))
    }
}

impl Watcher {
    /// The byte orders blocks are searched in: python-teos's only once a python-teos user has
    /// registered (a tower without one pays nothing for them). An appointment is matched in
    /// either order and its blob decrypted with the key of the order it matched in, whatever its
    /// user's dialect: a python-teos user who works around its client's byte order (reference
    /// §10) is answered too, and no one can be harmed by it (a locator is the user's own choice).
    pub(crate) fn dialects(&self) -> &'static [Dialect] {
        if self.store.has_python_users() {
            &Dialect::ALL
        } else {
            &Dialect::ALL[..1]
        }
    }
}

impl ChainListener for Watcher {
    /// The block's breaches: the locators of all its transactions are looked up in one pass over
    /// the store (prefix probes with bloom filters, so the cost does not grow with the number of
    /// appointments), a page of [`BREACH_CHUNK`] appointments at a time; each page's penalties go
    /// to the Responder, and a page followed by another is committed on its own (a checkpoint),
    /// so memory stays bounded however many users wait at one locator.
    fn block_connected(&self, block: &ConnectedBlock, batch: &mut BlockBatch<'_>) -> Result<(), ChainError> {
        let mut locators = Vec::with_capacity(block.txids.len() * self.dialects().len());
        let mut by_locator = HashMap::with_capacity(locators.capacity());
        for &dialect in self.dialects() {
            for (index, locator) in block.locators(dialect).into_iter().enumerate() {
                by_locator.entry(locator).or_insert_with(|| {
                    locators.push(locator);
                    (index, dialect)
                });
            }
        }
        let mut cursor = None;
        loop {
            let (page, next) = self.store.appointments_at_page(&locators, cursor.as_ref(), BREACH_CHUNK)?;
            let breaches = self.breaches_in(page, block, &by_locator, batch)?;
            self.responder.respond(breaches, block, block.height, batch)?;
            match next {
                Some(next) => {
                    batch.checkpoint()?;
                    cursor = Some(next);
                }
                None => return Ok(()),
            }
        }
    }

    /// Nothing: appointments stay until their tracker completes, so a dispute that leaves the
    /// chain leaves its appointment watched (the Responder removes the tracker).
    fn block_disconnected(&self, _height: u32, _batch: &mut BlockBatch<'_>) -> Result<(), ChainError> {
        Ok(())
    }

    /// The unconfirmed transactions whose locator some appointment has (one pass over the store;
    /// only the first page of users at a locator is read: existence is all that is asked).
    fn mempool_interest(&self, txids: &[Txid]) -> Result<Vec<Txid>, ChainError> {
        let dialects = self.dialects();
        let locators: Vec<Locator> = dialects.iter().flat_map(|d| txids.iter().map(|txid| d.locator(txid))).collect();
        let held: std::collections::HashSet<Locator> = self.store.locators_held(&locators)?.into_iter().collect();
        let wanted = |txid: &&Txid| dialects.iter().any(|d| held.contains(&d.locator(txid)));
        Ok(txids.iter().filter(wanted).copied().collect())
    }

    /// Disputes seen unconfirmed: their penalties are decrypted, checked and sent at once (the
    /// penalty relays as the dispute's child). Nothing is written: an invalid appointment is
    /// dropped, and a valid one tracked, by the block that confirms the dispute, if one does.
    fn mempool_transactions(&self, txs: &[Transaction]) -> Result<(), ChainError> {
        for (txid, &dialect) in
            txs.iter().map(Transaction::compute_txid).flat_map(|t| self.dialects().iter().map(move |d| (t, d)))
        {
            let locator = dialect.locator(&txid);
            let mut cursor = None;
            loop {
                let (page, next) = self.store.appointments_at_page(&[locator], cursor.as_ref(), BREACH_CHUNK)?;
                let mut penalties = Vec::new();
                for (locator, user, stored) in page {
                    if self.store.has_tracker(&locator, &user)? {
                        continue;
                    }
                    if let Ok(penalty) = penalty_for(&stored.appointment.encrypted_blob, &txid, dialect) {
                        penalties.push((locator, user, penalty));
                    }
                }
                self.responder.send_early(&penalties)?;
                match next {
                    Some(next) => cursor = Some(next),
                    None => break,
                }
            }
        }
        Ok(())
    }

    /// The blocks late checks wait for, oldest first: a flood of checks at one block costs one
    /// revisit of that block, and never pushes a check at an older block back.
    fn blocks_to_revisit(&self, limit: usize) -> Result<Vec<Revisit>, ChainError> {
        let blocks = self.store.late_check_blocks(limit)?;
        Ok(blocks.into_iter().map(|hit| Revisit { height: hit.height, hash: hit.block_hash }).collect())
    }

    /// Answers every late check waiting for this block, a page at a time (each page committed
    /// with its answers), and clears them. A block that left the chain (`None`) leaves its
    /// appointments watched like any other.
    fn revisit(
        &self,
        revisit: Revisit,
        block: Option<&ConnectedBlock>,
        tip: u32,
        batch: &mut BlockBatch<'_>,
    ) -> Result<(), ChainError> {
        let hit = RecentHit { height: revisit.height, block_hash: revisit.hash };
        loop {
            let checks = self.store.late_checks_at(&hit, None, LATE_CHECKS_PER_PAGE)?;
            let full = checks.len() == LATE_CHECKS_PER_PAGE;
            let mut breaches = Vec::new();
            for (locator, user) in checks {
                batch.writes().delete_late_check(&hit, &locator, &user);
                if let Some(breach) = block.map(|b| self.late_breach(locator, user, b, batch)).transpose()?.flatten() {
                    breaches.push(breach);
                }
            }
            if let Some(block) = block {
                self.responder.respond(breaches, block, tip, batch)?;
            }
            if !full {
                return Ok(());
            }
            // The page's answers and the removal of its checks, before the next page is read.
            batch.checkpoint()?;
        }
    }
}

#[cfg(test)]
#[path = "watcher_tests.rs"]
mod tests;
