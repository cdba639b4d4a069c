//! Per-user serialisation shared by the request side and the chain side: a user's subscription
//! record is read, changed and written under its lock, so that a slot charge, a refund, a renewal
//! and an expiry never overwrite one another.
//!
//! Requests take one user's lock at a time. The chain follower may hold several at once (a block
//! that refunds or expires many users), through [`HeldLocks`], which takes each stripe once; so
//! may the appointment intake (`crate::intake`), but it only tries them ([`HeldLocks::try_add`])
//! and never waits for one. The follower holds its locks during its whole
//! [`ChainPriority`] turn, which no request shares, so no lock order can deadlock. Everyone takes
//! their turn before any user lock.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard, TryLockError};

use crate::protocol::UserId;

/// Stripes: users hash to one of these; different stripes run in parallel.
const STRIPES: usize = 256;

/// Striped locks: requests of one user run one at a time; different users run in parallel. With
/// them, the chain follower's right of way over requests ([`ChainPriority`]).
#[derive(Debug)]
pub struct UserLocks {
    stripes: Vec<Mutex<()>>,
    priority: ChainPriority,
}

impl Default for UserLocks {
    fn default() -> Self {
        UserLocks { stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(), priority: ChainPriority::default() }
    }
}

impl UserLocks {
    /// The follower's right of way (see [`ChainPriority`]).
    pub fn priority(&self) -> &ChainPriority {
        &self.priority
    }

    pub(crate) fn stripe(&self, user: &UserId) -> usize {
        // Byte 1 is the first byte of the key's x coordinate: uniformly spread.
        usize::from(user.to_bytes()[1]) % self.stripes.len()
    }

    fn lock_stripe(&self, stripe: usize) -> MutexGuard<'_, ()> {
        // The lock guards no data of its own: a panic while it was held leaves nothing half-done.
        self.stripes[stripe].lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Locks `user`'s stripe.
    pub fn lock(&self, user: &UserId) -> MutexGuard<'_, ()> {
        self.lock_stripe(self.stripe(user))
    }

    /// An empty set of held locks, to which users are added as work finds them.
    pub fn hold(&self) -> HeldLocks<'_> {
        HeldLocks { locks: self, held: BTreeMap::new(), busy: BTreeSet::new() }
    }

    fn try_lock_stripe(&self, stripe: usize) -> Option<MutexGuard<'_, ()>> {
        match self.stripes[stripe].try_lock() {
            Ok(guard) => Some(guard),
            Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }
}

/// Several users' locks held together until this is dropped (see the module documentation).
#[derive(Debug)]
pub struct HeldLocks<'a> {
    locks: &'a UserLocks,
    held: BTreeMap<usize, MutexGuard<'a, ()>>,
    /// Stripes found held elsewhere by [`HeldLocks::try_add`].
    busy: BTreeSet<usize>,
}

impl HeldLocks<'_> {
    /// Holds `user`'s lock too (at once if its stripe is already held).
    pub fn add(&mut self, user: &UserId) {
        let stripe = self.locks.stripe(user);
        if !self.held.contains_key(&stripe) {
            self.held.insert(stripe, self.locks.lock_stripe(stripe));
        }
    }

    /// Holds `user`'s lock if no one else holds it now (or it is held here already). False if
    /// another holds it; its stripe then counts as taken for the rest of this set's life, so that
    /// of one user's work, none overtakes what was turned away.
    pub fn try_add(&mut self, user: &UserId) -> bool {
        let stripe = self.locks.stripe(user);
        if self.held.contains_key(&stripe) {
            return true;
        }
        if self.busy.contains(&stripe) {
            return false;
        }
        match self.locks.try_lock_stripe(stripe) {
            Some(guard) => {
                self.held.insert(stripe, guard);
                true
            }
            None => {
                self.busy.insert(stripe);
                false
            }
        }
    }

    /// Whether no lock is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(n: u8) -> UserId {
        crate::test_utils::user(n)
    }

    #[test]
    fn holding_a_user_twice_takes_its_stripe_once_and_blocks_others_until_dropped() {
        let locks = UserLocks::default();
        let mut held = locks.hold();
        held.add(&user(1));
        held.add(&user(1));
        assert!(!held.is_empty());
        assert!(locks.stripes[locks.stripe(&user(1))].try_lock().is_err());
        drop(held);
        assert!(locks.stripes[locks.stripe(&user(1))].try_lock().is_ok());
    }

    #[test]
    fn trying_a_lock_held_elsewhere_fails_for_the_rest_of_the_set_even_once_it_is_free() {
        let locks = UserLocks::default();
        let elsewhere = locks.lock(&user(1));
        let mut held = locks.hold();
        assert!(!held.try_add(&user(1)));
        drop(elsewhere);
        assert!(!held.try_add(&user(1)), "turned away once, turned away for the set's life");
        assert!(held.try_add(&user(2)) && held.try_add(&user(2)));
        assert!(locks.stripes[locks.stripe(&user(2))].try_lock().is_err(), "user 2's lock is held by the set");
        drop(held);
        assert!(locks.hold().try_add(&user(1)), "a new set takes it");
    }
}

/// The chain follower's right of way. Requests hold a share of it while their blocking work runs
/// (taken on the blocking thread, so queued requests hold nothing); the follower takes it whole
/// while it processes a block. It waits only for the few requests already running, then runs
/// alone, and requests arriving meanwhile wait for it: a flood of requests cannot slow a block
/// down beyond the requests in flight when it comes. Taken before any user lock, on both sides.
#[derive(Debug, Default)]
pub struct ChainPriority {
    turn: std::sync::RwLock<()>,
}

impl ChainPriority {
    /// A request's share, held while its work runs.
    pub fn request(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.turn.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The follower's whole turn, held while it processes a block.
    pub fn chain(&self) -> std::sync::RwLockWriteGuard<'_, ()> {
        self.turn.write().unwrap_or_else(|p| p.into_inner())
    }
}
