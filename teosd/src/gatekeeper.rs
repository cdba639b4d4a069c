//! The Gatekeeper: subscriptions. Registers and renews users, authenticates signed requests and
//! charges slots. Plain logic over the store; callers serialise work per user (see
//! [`crate::tower::UserLocks`]).

use crate::config::Policy;
use crate::protocol::{recover_signer, UserId};
use crate::store::{Batch, Store, StoreError, UserRecord};

/// Why a subscription request failed.
#[derive(Debug, thiserror::Error)]
pub enum SubscriptionError {
    /// Renewal would overflow the slot count.
    #[error("Subscription maximum slots count reached")]
    SlotsOverflow,
    /// The signature does not recover a registered user.
    #[error("unknown user or bad signature")]
    Unauthenticated,
    /// The user's subscription has ended.
    #[error("Your subscription expired at {0}")]
    Expired(u32),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Subscriptions and their accounting.
#[derive(Debug, Clone)]
pub struct Gatekeeper {
    store: Store,
    policy: Policy,
}

impl Gatekeeper {
    /// A gatekeeper over `store` applying `policy`.
    pub fn new(store: Store, policy: Policy) -> Self {
        Gatekeeper { store, policy }
    }

    /// Registers `user` at `height`, or renews it: a renewal adds the configured slots and
    /// extends the expiry from the later of the old expiry and `height`, so both strictly grow.
    pub fn register(&self, user: &UserId, height: u32) -> Result<UserRecord, SubscriptionError> {
        let old = self.store.user(user)?;
        let new = match old {
            Some(old) => UserRecord {
                available_slots: old
                    .available_slots
                    .checked_add(self.policy.subscription_slots)
                    .ok_or(SubscriptionError::SlotsOverflow)?,
                subscription_start: old.subscription_start,
                subscription_expiry: old
                    .subscription_expiry
                    .max(height)
                    .checked_add(self.policy.subscription_duration)
                    .ok_or(SubscriptionError::SlotsOverflow)?,
                number: old.number,
            },
            None => UserRecord {
                available_slots: self.policy.subscription_slots,
                subscription_start: height,
                subscription_expiry: height.saturating_add(self.policy.subscription_duration),
                number: self.store.new_user_number(),
            },
        };
        let mut batch = self.store.batch();
        batch.put_user(user, old.as_ref(), &new);
        self.store.commit(batch)?;
        Ok(new)
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

    /// `user`'s subscription, if it is registered and not expired at `height`.
    pub fn subscription(&self, user: &UserId, height: u32) -> Result<UserRecord, SubscriptionError> {
        let record = self.store.user(user)?.ok_or(SubscriptionError::Unauthenticated)?;
        if height >= record.subscription_expiry {
            return Err(SubscriptionError::Expired(record.subscription_expiry));
        }
        Ok(record)
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
