//! The Gatekeeper: subscriptions. Registers and renews users, authenticates signed requests and
//! charges slots. Plain logic over the store; callers serialise work per user (see
//! [`crate::locks::UserLocks`]). On the chain side, at each block, it gives back the slots of
//! completed trackers and removes the users whose grace period ended. For the operator it bans,
//! unbans and deletes users.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::chain::{BlockBatch, ChainError, ChainListener, ConnectedBlock};

/// Users removed per block at most: a wave of users expiring at one height is spread over the
/// following blocks (they are already refused service; their data just lingers a little longer),
/// so that no block's batch grows with it.
pub const EXPIRIES_PER_BLOCK: usize = 1000;
use crate::config::Policy;
use crate::protocol::{recover_signer, Dialect, Locator, UserId};
use crate::store::{Batch, Store, StoreError, UserRecord};

/// Why a subscription request failed.
#[derive(Debug, thiserror::Error)]
pub enum SubscriptionError {
    /// Renewal would take the user past the tower's slot cap (or overflow the count).
    #[error("Subscription maximum slots count reached")]
    SlotsOverflow,
    /// The tower takes no new users (its user cap is reached).
    #[error("The tower accepts no new users: it is full")]
    TowerFull,
    /// The signature does not recover a registered user.
    #[error("unknown user or bad signature")]
    Unauthenticated,
    /// The user's subscription has ended.
    #[error("Your subscription expired at {0}")]
    Expired(u32),
    /// The user registered with the other client dialect (a user keeps the one it started with).
    #[error("This user registered as a {registered}-teos client; register with the same request field as before")]
    OtherDialect {
        /// The dialect it registered with.
        registered: Dialect,
    },
    /// The operator banned the user: every request of theirs is refused.
    #[error("This user is banned from the tower")]
    Banned,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Subscriptions and their accounting.
#[derive(Debug, Clone)]
pub struct Gatekeeper {
    store: Store,
    policy: Policy,
    /// Registered users: counted at start, then kept up to date (for the user cap).
    users: Arc<AtomicU64>,
    /// Banned users: loaded at start, then changed with the store (an operator's short list).
    banned: Arc<RwLock<HashSet<UserId>>>,
}

/// What deleting a user removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeletedUser {
    /// Appointments removed (triggered ones included: their trackers stay).
    pub appointments: u64,
    /// Trackers kept: they are followed to their end.
    pub trackers_kept: u64,
}

impl Gatekeeper {
    /// A gatekeeper over `store` applying `policy` (takes the store's count of registered users,
    /// and loads the banned users).
    pub fn new(store: Store, policy: Policy) -> Result<Self, StoreError> {
        let users = Arc::new(AtomicU64::new(store.stored_counts().users));
        let banned = store.banned_users()?.into_iter().map(|(user, _)| user).collect();
        Ok(Gatekeeper { store, policy, users, banned: Arc::new(RwLock::new(banned)) })
    }

    /// How many users are registered.
    pub fn user_count(&self) -> u64 {
        self.users.load(Ordering::Relaxed)
    }

    /// Whether the operator banned `user`.
    pub fn is_banned(&self, user: &UserId) -> bool {
        self.banned.read().unwrap_or_else(|p| p.into_inner()).contains(user)
    }

    /// Bans `user` (registered or not) from `height` on: its requests are refused from now on;
    /// its appointments stay watched. Returns false if it was banned already (nothing changes).
    /// The caller holds the user's lock, so that no request of the user is half-way through.
    pub fn ban(&self, user: &UserId, height: u32) -> Result<bool, StoreError> {
        if self.is_banned(user) {
            return Ok(false);
        }
        let mut batch = self.store.batch();
        batch.put_ban(user, height);
        self.store.commit(batch)?;
        self.banned.write().unwrap_or_else(|p| p.into_inner()).insert(*user);
        Ok(true)
    }

    /// Lifts `user`'s ban; false if it was not banned.
    pub fn unban(&self, user: &UserId) -> Result<bool, StoreError> {
        if !self.is_banned(user) {
            return Ok(false);
        }
        let mut batch = self.store.batch();
        batch.delete_ban(user);
        self.store.commit(batch)?;
        self.banned.write().unwrap_or_else(|p| p.into_inner()).remove(user);
        Ok(true)
    }

    /// Deletes `user` with all its appointments in one batch, as an expiry does: its trackers
    /// stay until they end (they owe it nothing back: a refund to a removed user is dropped). A
    /// ban is not lifted. `None` if it is not registered. The caller holds the user's lock.
    pub fn delete_user(&self, user: &UserId) -> Result<Option<DeletedUser>, StoreError> {
        let Some(record) = self.store.user(user)? else { return Ok(None) };
        let mut batch = self.store.batch();
        let locators = self.remove_user(&mut batch, user, &record)?;
        let mut trackers_kept = 0;
        for locator in &locators {
            trackers_kept += u64::from(self.store.has_tracker(locator, user)?);
        }
        self.store.commit(batch)?;
        let appointments = locators.len() as u64;
        self.users.fetch_sub(1, Ordering::Relaxed);
        Ok(Some(DeletedUser { appointments, trackers_kept }))
    }

    /// Adds to `batch` the removal of `user` and its appointments (not its trackers); returns the
    /// appointments' locators.
    fn remove_user(&self, batch: &mut Batch, user: &UserId, record: &UserRecord) -> Result<Vec<Locator>, StoreError> {
        let locators = self.store.user_locators(user)?;
        for locator in &locators {
            batch.delete_appointment(user, record, locator);
        }
        batch.delete_user(user, record);
        Ok(locators)
    }

    /// Registers `user` at `height`, or renews it: a renewal adds the configured slots and
    /// extends the expiry from the later of the old expiry and `height`, so both strictly grow.
    /// A renewal past `max_slots_per_user` is refused, and so is a new user past `max_users`, and
    /// a renewal in another dialect than the user's.
    pub fn register(&self, user: &UserId, height: u32, dialect: Dialect) -> Result<UserRecord, SubscriptionError> {
        if self.is_banned(user) {
            return Err(SubscriptionError::Banned);
        }
        let old = self.store.user(user)?;
        let new = match old {
            Some(old) if old.dialect != dialect => {
                return Err(SubscriptionError::OtherDialect { registered: old.dialect });
            }
            Some(old) => self.renewed(old, height)?,
            None => {
                self.reserve_user()?;
                let Some(number) = self.store.new_user_number() else {
                    self.users.fetch_sub(1, Ordering::Relaxed);
                    return Err(SubscriptionError::TowerFull);
                };
                UserRecord {
                    available_slots: self.policy.subscription_slots,
                    subscription_start: height,
                    subscription_expiry: height.saturating_add(self.policy.subscription_duration),
                    number,
                    dialect,
                }
            }
        };
        let mut batch = self.store.batch();
        batch.put_user(user, old.as_ref(), &new);
        if let Err(e) = self.store.commit(batch) {
            if old.is_none() {
                self.users.fetch_sub(1, Ordering::Relaxed);
            }
            return Err(e.into());
        }
        Ok(new)
    }

    fn renewed(&self, old: UserRecord, height: u32) -> Result<UserRecord, SubscriptionError> {
        let available_slots = old
            .available_slots
            .checked_add(self.policy.subscription_slots)
            .filter(|slots| *slots <= self.policy.max_slots_per_user)
            .ok_or(SubscriptionError::SlotsOverflow)?;
        let subscription_expiry = old
            .subscription_expiry
            .max(height)
            .checked_add(self.policy.subscription_duration)
            .ok_or(SubscriptionError::SlotsOverflow)?;
        Ok(UserRecord { available_slots, subscription_expiry, ..old })
    }

    /// Counts a new user in, unless the tower is full.
    fn reserve_user(&self) -> Result<(), SubscriptionError> {
        self.users
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (n < self.policy.max_users).then_some(n + 1))
            .map(|_| ())
            .map_err(|_| SubscriptionError::TowerFull)
    }

    /// Recovers the signer of `msg` and returns it with its subscription, if it is registered and
    /// not expired at `height`.
    pub fn authenticate(
        &self,
        msg: &[u8],
        signature: &str,
        height: u32,
    ) -> Result<(UserId, UserRecord), SubscriptionError> {
        let user = recover_signer(msg, signature).map_err(|_| SubscriptionError::Unauthenticated)?;
        Ok((user, self.subscription(&user, height)?))
    }

    /// `user`'s subscription, if it is registered, not banned and not expired at `height`.
    pub fn subscription(&self, user: &UserId, height: u32) -> Result<UserRecord, SubscriptionError> {
        if self.is_banned(user) {
            return Err(SubscriptionError::Banned);
        }
        let record = self.store.user(user)?.ok_or(SubscriptionError::Unauthenticated)?;
        unexpired(record, height)
    }

    /// `user`'s `record` if the user is not banned and the subscription not expired at `height`.
    pub fn still_valid(&self, user: &UserId, record: UserRecord, height: u32) -> Result<UserRecord, SubscriptionError> {
        if self.is_banned(user) {
            return Err(SubscriptionError::Banned);
        }
        unexpired(record, height)
    }

    /// Adds to `batch` the charge of `slots` slots to `user`, if it has them.
    pub fn charge(
        &self,
        batch: &mut Batch,
        user: &UserId,
        record: &UserRecord,
        slots: u32,
    ) -> Result<UserRecord, SubscriptionError> {
        if slots == 0 {
            return Ok(*record);
        }
        let available_slots = record.available_slots.checked_sub(slots).ok_or(SubscriptionError::Unauthenticated)?;
        let charged = UserRecord { available_slots, ..*record };
        batch.put_user(user, Some(record), &charged);
        Ok(charged)
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }
}

/// `record` if its subscription has not ended at `height`.
fn unexpired(record: UserRecord, height: u32) -> Result<UserRecord, SubscriptionError> {
    if height >= record.subscription_expiry {
        return Err(SubscriptionError::Expired(record.subscription_expiry));
    }
    Ok(record)
}

impl ChainListener for Gatekeeper {
    /// Settles the slots the block owes back (completed trackers), then removes the users whose
    /// grace period ended by this block, with their appointments (trackers stay until they
    /// complete). Runs last, under the locks of every user it touches, held until the block's
    /// batch commits: a renewal racing an expiry is either seen here or comes after it.
    fn block_connected(&self, block: &ConnectedBlock, batch: &mut BlockBatch<'_>) -> Result<(), ChainError> {
        let limit = block.height.checked_sub(self.policy.expiry_delta);
        let expiring = match limit {
            Some(limit) => self.store.users_expiring_before(limit.saturating_add(1), EXPIRIES_PER_BLOCK)?,
            None => Vec::new(),
        };
        let refunds = batch.take_refunds();
        for user in refunds.keys().chain(expiring.iter().map(|(_, user)| user)) {
            batch.lock_user(user);
        }
        let expired = |record: &UserRecord| limit.is_some_and(|limit| record.subscription_expiry <= limit);
        for (user, slots) in refunds {
            // A user removed, or removed below, gets nothing back.
            let Some(record) = self.store.user(&user)?.filter(|r| !expired(r)) else { continue };
            let refunded = UserRecord { available_slots: record.available_slots.saturating_add(slots), ..record };
            batch.writes().put_user(&user, Some(&record), &refunded);
        }
        for (_, user) in expiring {
            // Re-read under the lock: renewed meanwhile, it stays.
            let Some(record) = self.store.user(&user)?.filter(expired) else { continue };
            self.remove_user(batch.writes(), &user, &record)?;
            let (expiry, users) = (record.subscription_expiry, self.users.clone());
            batch.after_commit(move || {
                users.fetch_sub(1, Ordering::Relaxed);
                tracing::info!(user_id = %user, expiry, "subscription outdated: user removed")
            });
        }
        Ok(())
    }

    /// Nothing: an expiry is not undone by a reorg (the user may register again).
    fn block_disconnected(&self, _height: u32, _batch: &mut BlockBatch<'_>) -> Result<(), ChainError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::EXPIRIES_PER_BLOCK;
    use crate::test_utils::{channel, policy, user, FakeChain, Scene};

    #[tokio::test]
    async fn a_user_is_removed_with_its_appointments_when_its_grace_period_ends() {
        let s = Scene::new(Arc::new(FakeChain::new())).await;
        let expiry = s.register(&user(1)).subscription_expiry;
        let (dispute, penalty) = channel(1);
        s.add_appointment(&user(1), &dispute, &penalty);
        s.mine_empty(expiry + policy().expiry_delta - 1).await;
        assert!(s.user(&user(1)).is_some(), "expired, but within its grace period");
        s.mine_empty(1).await;
        assert!(s.user(&user(1)).is_none());
        assert!(s.store.user_locators(&user(1)).unwrap().is_empty());
        assert!(s
            .store
            .appointments_at(&crate::protocol::Locator::from_txid(&dispute.compute_txid()))
            .unwrap()
            .is_empty());
    }

    #[tokio::test]
    async fn a_renewal_before_the_grace_period_ends_keeps_the_user() {
        let s = Scene::new(Arc::new(FakeChain::new())).await;
        let expiry = s.register(&user(1)).subscription_expiry;
        s.mine_empty(expiry + 1).await;
        let renewed = s.watcher.gatekeeper().register(&user(1), s.height(), crate::protocol::Dialect::Rust).unwrap();
        assert!(renewed.subscription_expiry > s.height() + policy().expiry_delta);
        s.mine_empty(policy().expiry_delta + 1).await;
        assert_eq!(s.user(&user(1)), Some(renewed));
    }

    #[tokio::test]
    async fn users_expiring_together_go_in_the_same_block() {
        let s = Scene::new(Arc::new(FakeChain::new())).await;
        for n in 1..=20 {
            s.register(&user(n));
        }
        s.mine_empty(policy().subscription_duration + policy().expiry_delta).await;
        assert!((1..=20).all(|n| s.user(&user(n)).is_none()));
    }

    #[tokio::test]
    async fn a_wave_of_expiries_is_spread_over_blocks_and_the_same_blocks_breach_is_answered() {
        let s = Scene::new(Arc::new(FakeChain::new())).await;
        let wave = EXPIRIES_PER_BLOCK as u32 * 2 + 10;
        for i in 0..wave {
            s.register(&crate::test_utils::numbered_user(3, i));
        }
        s.mine_empty(policy().subscription_duration + policy().expiry_delta - 2).await;
        // A user registered later, with an appointment whose dispute comes in the wave's block.
        s.register(&user(1));
        let (dispute, penalty) = channel(1);
        s.add_appointment(&user(1), &dispute, &penalty);
        s.mine_empty(1).await;
        let before = s.watcher.gatekeeper().user_count();
        s.mine(vec![dispute.clone()]).await;
        assert!(s.tracker(&user(1), &dispute).is_some(), "answered in the wave's block");
        assert_eq!(before - s.watcher.gatekeeper().user_count(), EXPIRIES_PER_BLOCK as u64);
        s.mine_empty(2).await;
        assert_eq!(s.watcher.gatekeeper().user_count(), 1, "the rest in the next blocks");
    }
}
