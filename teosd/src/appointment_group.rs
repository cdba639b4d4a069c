//! Appointments of several users decided together into one batch (the intake, `crate::intake`,
//! drives it from its thread; `Watcher::store_appointment` uses it for one appointment).

use std::collections::{HashMap, HashSet};

use super::{AppointmentError, Watcher};
use crate::gatekeeper::SubscriptionError;
use crate::protocol::{Appointment, Locator, UserId};
use crate::store::{Batch, RecentGuard, StoreError, StoredAppointment, UserRecord};

/// An appointment decided into a group, to be answered once the group is committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The receipt's bytes (in the user's dialect's layout), for the tower to sign.
    pub receipt: Vec<u8>,
    /// The locator.
    pub locator: Locator,
    /// The height the appointment was accepted at.
    pub start_block: u32,
    /// The user's slots left after it.
    pub available_slots: u32,
    /// The user's subscription end.
    pub subscription_expiry: u32,
    /// Its dispute was already mined: a late check is queued with it for the chain follower.
    pub late_dispute: bool,
}

/// Appointments of authenticated users decided together and committed in one batch. The caller
/// holds, until [`AppointmentGroup::commit`], the lock of every user it adds an appointment for.
#[derive(Debug)]
pub struct AppointmentGroup<'w> {
    watcher: &'w Watcher,
    batch: Batch,
    /// Each user's record as this group's appointments left it.
    records: HashMap<UserId, UserRecord>,
    /// The locators this group wrote, per user.
    written: HashSet<(UserId, Locator)>,
    /// Held from the first probe to the commit (see [`crate::store::RecentGuard`]).
    recent: RecentGuard<'w>,
}

impl<'w> AppointmentGroup<'w> {
    /// An empty group over `watcher`'s store.
    pub fn new(watcher: &'w Watcher) -> Self {
        let store = watcher.store();
        AppointmentGroup {
            watcher,
            batch: store.batch(),
            records: HashMap::new(),
            written: HashSet::new(),
            recent: store.recent(),
        }
    }

    /// Decides `user`'s `appointment` at `height`: refused (and nothing written), or written into
    /// the group's batch with the user's slot charged if its locator is new to the user (an
    /// update is free).
    pub fn add(
        &mut self,
        user: &UserId,
        appointment: Appointment,
        signature: String,
        height: u32,
    ) -> Result<Accepted, AppointmentError> {
        let record = self.record(user, height)?;
        let locator = appointment.locator;
        let store = self.watcher.store();
        if store.has_tracker(&locator, user)? {
            return Err(AppointmentError::AlreadyTriggered);
        }
        let known = self.written.contains(&(*user, locator)) || store.appointment(&locator, &record)?.is_some();
        let cost = u32::from(!known);
        // Built before anything is written: a signature that does not decode is refused.
        let receipt = record
            .dialect
            .appointment_receipt(&signature, height)
            .ok_or(AppointmentError::Subscription(SubscriptionError::Unauthenticated))?;
        let charged = self.watcher.gatekeeper().charge(&mut self.batch, user, &record, cost)?;
        let stored = StoredAppointment { appointment, user_signature: signature, start_block: height };
        self.batch.put_appointment(user, &record, &stored, !known);
        let hits: Vec<_> = self.watcher.dialects().iter().flat_map(|d| self.recent.blocks_with(&locator, *d)).collect();
        for hit in &hits {
            self.batch.put_late_check(&locator, user, hit);
        }
        self.records.insert(*user, charged);
        self.written.insert((*user, locator));
        Ok(Accepted {
            receipt,
            locator,
            start_block: height,
            available_slots: charged.available_slots,
            subscription_expiry: charged.subscription_expiry,
            late_dispute: !hits.is_empty(),
        })
    }

    /// `user`'s subscription at `height`: as this group left it, or as stored.
    fn record(&self, user: &UserId, height: u32) -> Result<UserRecord, SubscriptionError> {
        let gatekeeper = self.watcher.gatekeeper();
        match self.records.get(user) {
            Some(record) => gatekeeper.still_valid(user, *record, height),
            None => gatekeeper.subscription(user, height),
        }
    }

    /// Whether no appointment was added.
    pub fn is_empty(&self) -> bool {
        self.written.is_empty()
    }

    /// Commits the group's batch (one synced write); returns once it is durable.
    pub fn commit(self) -> Result<(), StoreError> {
        let AppointmentGroup { watcher, batch, recent, .. } = self;
        watcher.store().commit(batch)?;
        drop(recent);
        Ok(())
    }
}
