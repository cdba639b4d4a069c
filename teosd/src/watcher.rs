//! The Watcher's request side: accepting, reading and listing appointments. (Breach detection
//! per block is the chain side.)

use crate::gatekeeper::{Gatekeeper, SubscriptionError};
use crate::protocol::{appointment_receipt_bytes, Appointment, Locator, TowerSigner, UserId};
use crate::store::{Store, StoreError, StoredAppointment, UserRecord};

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

/// Accepts and serves appointments.
#[derive(Debug, Clone)]
pub struct Watcher {
    store: Store,
    gatekeeper: Gatekeeper,
    signer: TowerSigner,
}

impl Watcher {
    /// A watcher signing receipts with `signer`.
    pub fn new(store: Store, gatekeeper: Gatekeeper, signer: TowerSigner) -> Self {
        Watcher { store, gatekeeper, signer }
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

    /// Authenticates the user behind `signature` over `appointment`.
    pub fn authenticate_appointment(
        &self,
        appointment: &Appointment,
        signature: &str,
        height: u32,
    ) -> Result<(UserId, UserRecord), AppointmentError> {
        Ok(self.gatekeeper.authenticate(&appointment.signed_bytes(), signature, height)?)
    }

    /// Stores `appointment` for an authenticated `user` and charges a slot if it is new (an
    /// update is free), in one durable batch; then signs the receipt. The caller holds the user's
    /// lock so that `record` is current.
    pub fn store_appointment(
        &self,
        user: &UserId,
        record: &UserRecord,
        appointment: Appointment,
        signature: String,
        height: u32,
    ) -> Result<AppointmentReceipt, AppointmentError> {
        let locator = appointment.locator;
        if self.store.has_tracker(&locator, user)? {
            return Err(AppointmentError::AlreadyTriggered);
        }
        let cost = u32::from(self.store.appointment(&locator, record)?.is_none());
        let mut batch = self.store.batch();
        let charged = self.gatekeeper.charge(&mut batch, user, record, cost)?;
        let stored = StoredAppointment { appointment, user_signature: signature, start_block: height };
        batch.put_appointment(user, record, &stored);
        // A dispute already mined: the chain follower answers it (durably queued with the receipt).
        // The hold on the recent-block index lasts until the commit (see `store::recent`).
        let recent = self.store.recent();
        let hits = recent.blocks_with(&locator);
        for hit in &hits {
            batch.put_late_check(&locator, user, hit);
        }
        self.store.commit(batch)?;
        drop(recent);
        let receipt = appointment_receipt_bytes(&stored.user_signature, height);
        Ok(AppointmentReceipt {
            late_dispute: !hits.is_empty(),
            locator,
            start_block: height,
            signature: self.signer.sign(&receipt),
            available_slots: charged.available_slots,
            subscription_expiry: charged.subscription_expiry,
        })
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
