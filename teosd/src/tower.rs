//! The tower's request-side core as the APIs see it: async methods that run the Gatekeeper and
//! Watcher on the blocking pool (the store blocks), serialising each user's requests so that a
//! slot charge and the appointment it pays for are decided and written together. Appointments
//! go through the intake ([`crate::intake`]), which decides and commits them in groups.

use std::sync::Arc;

use tokio::sync::{watch, Notify};

use crate::chain::ChainStatus;
use crate::disk::DiskReserve;
use crate::gatekeeper::{DeletedUser, Gatekeeper, SubscriptionError};
use crate::intake::{Intake, IntakeError, IntakeThread};
use crate::locks::UserLocks;
use crate::metrics::{Metrics, StateGauges};
use crate::protocol::{Appointment, Dialect, Locator, UserId};
use crate::store::StoreError;
use crate::task::TaskFailed;
use crate::watcher::{AppointmentError, AppointmentReceipt, AppointmentState, Watcher};

/// Why a user's request was refused. The APIs map each to their wire errors.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// Registration would overflow the slot count.
    #[error("Subscription maximum slots count reached")]
    SlotsOverflow,
    /// add_appointment: bad signature, unknown user or no slot left.
    #[error("Invalid signature or user does not have enough slots available")]
    AppointmentUnauthorized,
    /// get_appointment: bad signature or unknown user.
    #[error("User cannot be authenticated")]
    UserUnauthenticated,
    /// get_subscription_info: bad signature or unknown user.
    #[error("User not found. Have you registered?")]
    UserNotFound,
    /// The subscription has ended.
    #[error("Your subscription expired at {0}")]
    Expired(u32),
    /// A registration in the other dialect than the user's.
    #[error("{0}")]
    OtherDialect(String),
    /// The operator banned the user.
    #[error("This user is banned from the tower")]
    Banned,
    /// The appointment itself was refused: inspection (blob, `to_self_delay`), already
    /// triggered, or not found.
    #[error(transparent)]
    Appointment(AppointmentError),
    /// The data directory is below its disk reserve: no new public data for now.
    #[error(transparent)]
    BelowDiskReserve(#[from] crate::disk::BelowReserve),
    /// The tower takes no new users.
    #[error("The tower accepts no new users: it is full")]
    TowerFull,
    /// The tower failed (store, task); nothing was stored.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for RequestError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "store failure while serving a request");
        RequestError::Internal("the tower could not access its store".into())
    }
}

impl RequestError {
    fn from_subscription(e: SubscriptionError, unauthenticated: RequestError) -> Self {
        match e {
            SubscriptionError::SlotsOverflow => RequestError::SlotsOverflow,
            SubscriptionError::TowerFull => RequestError::TowerFull,
            SubscriptionError::Unauthenticated => unauthenticated,
            SubscriptionError::Expired(at) => RequestError::Expired(at),
            e @ SubscriptionError::OtherDialect { .. } => RequestError::OtherDialect(e.to_string()),
            SubscriptionError::Banned => RequestError::Banned,
            SubscriptionError::Store(e) => e.into(),
        }
    }

    fn from_appointment(e: AppointmentError, unauthenticated: RequestError) -> Self {
        match e {
            AppointmentError::Subscription(e) => RequestError::from_subscription(e, unauthenticated),
            AppointmentError::Store(e) => e.into(),
            other => RequestError::Appointment(other),
        }
    }
}

/// A signed registration receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationReceipt {
    /// The user.
    pub user: UserId,
    /// Slots now available.
    pub available_slots: u32,
    /// Start height.
    pub subscription_start: u32,
    /// Expiry height.
    pub subscription_expiry: u32,
    /// The tower's signature over the receipt (in the user's dialect's layout).
    pub signature: String,
}

/// A user's subscription as it sees it (its locators are read a page at a time:
/// [`Tower::locators_page`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionInfo {
    /// The user.
    pub user: UserId,
    /// Its dialect.
    pub dialect: Dialect,
    /// Slots left.
    pub available_slots: u32,
    /// Expiry height.
    pub subscription_expiry: u32,
}

/// The request-side tower shared by the APIs.
#[derive(Debug, Clone)]
pub struct Tower {
    watcher: Arc<Watcher>,
    locks: Arc<UserLocks>,
    intake: Intake,
    chain: watch::Receiver<ChainStatus>,
    chain_waker: Option<Arc<Notify>>,
    disk: Arc<DiskReserve>,
}

impl Tower {
    /// A tower serving `watcher`, at the height the chain follower publishes in `chain`. An
    /// appointment whose dispute is already in a recent block is queued in the store for the
    /// follower, which `chain_waker` wakes at once. New public data is refused while `disk` is
    /// below its reserve. Starts the appointment intake's thread ([`crate::intake`]), which ends
    /// once the last clone of the tower is dropped.
    pub fn new(
        watcher: Arc<Watcher>,
        locks: Arc<UserLocks>,
        chain: watch::Receiver<ChainStatus>,
        chain_waker: Option<Arc<Notify>>,
        disk: Arc<DiskReserve>,
    ) -> std::io::Result<(Self, IntakeThread)> {
        let (intake, thread) = Intake::spawn(watcher.clone(), locks.clone())?;
        Ok((Tower { watcher, locks, intake, chain, chain_waker, disk }, thread))
    }

    /// The tower's metrics.
    pub fn metrics(&self) -> &Metrics {
        self.watcher.store().metrics()
    }

    /// The state the metrics' gauges show, from what the tower keeps in memory (no store read).
    /// Cost: atomic loads and one `statvfs`.
    pub fn state_gauges(&self) -> StateGauges {
        let chain = self.chain.borrow().clone();
        let stored = self.watcher.store().stored_counts();
        StateGauges {
            users: self.watcher.gatekeeper().user_count(),
            appointments: stored.appointments,
            trackers: stored.trackers,
            tip_height: chain.tip_height,
            bitcoind_height: chain.source_height,
            bitcoind_reachable: chain.source_reachable,
            store_ok: chain.store_failing_since.is_none(),
            disk_free_bytes: self.disk.free_bytes().ok(),
            disk_reserve_bytes: self.disk.reserve_bytes(),
        }
    }

    /// The height requests are served at: the last block the tower processed.
    pub fn height(&self) -> u32 {
        self.chain.borrow().tip_height
    }

    /// The tower's public id.
    pub fn tower_id(&self) -> UserId {
        self.watcher.signer().tower_id()
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Watcher, &UserLocks, u32) -> Result<T, RequestError> + Send + 'static,
    ) -> Result<T, RequestError> {
        let (watcher, locks, height) = (self.watcher.clone(), self.locks.clone(), self.height());
        crate::task::blocking(move || {
            // Taken here, on the blocking thread: a request queued for the pool holds nothing.
            let _turn = locks.priority().request();
            work(&watcher, &locks, height)
        })
        .await
        .map_err(|e| RequestError::Internal(format!("request task failed: {e}")))?
    }

    /// Registers or renews `user`, a `dialect` client.
    pub async fn register(&self, user: UserId, dialect: Dialect) -> Result<RegistrationReceipt, RequestError> {
        self.disk.check()?;
        self.blocking(move |watcher, locks, height| {
            let _guard = locks.lock(&user);
            let record = watcher
                .gatekeeper()
                .register(&user, height, dialect)
                .map_err(|e| RequestError::from_subscription(e, RequestError::UserNotFound))?;
            let receipt = dialect.registration_receipt(
                &user,
                record.available_slots,
                record.subscription_start,
                record.subscription_expiry,
            );
            tracing::info!(user_id = %user, %dialect, slots = record.available_slots, expiry = record.subscription_expiry, "user registered");
            Ok(RegistrationReceipt {
                user,
                available_slots: record.available_slots,
                subscription_start: record.subscription_start,
                subscription_expiry: record.subscription_expiry,
                signature: watcher.signer().sign(&receipt),
            })
        })
        .await
    }

    /// Accepts an appointment signed by a registered user.
    pub async fn add_appointment(
        &self,
        appointment: Appointment,
        signature: String,
    ) -> Result<AppointmentReceipt, RequestError> {
        self.disk.check()?;
        let refuse = |e| RequestError::from_appointment(e, RequestError::AppointmentUnauthorized);
        self.watcher.inspect(&appointment).map_err(refuse)?;
        // Signature work runs here, on the request's task (CPU only, tens of µs); what needs the
        // store is decided on the intake's thread with the other appointments waiting there.
        let user = self.watcher.appointment_signer(&appointment, &signature).map_err(refuse)?;
        let accepted = self.intake.submit(user, appointment, signature, self.height()).await.map_err(|e| match e {
            IntakeError::Refused(e) => refuse(e),
            IntakeError::NotCommitted(_) => RequestError::Internal("the tower could not access its store".into()),
            IntakeError::Gone => RequestError::Internal(e.to_string()),
        })?;
        let receipt = self.watcher.receipt(accepted);
        // Debug, not info: strangers set this line's rate (the metrics count acceptances).
        tracing::debug!(user_id = %user, locator = %receipt.locator, slots = receipt.available_slots, late = receipt.late_dispute, "appointment accepted");
        if let (true, Some(waker)) = (receipt.late_dispute, &self.chain_waker) {
            waker.notify_one();
        }
        Ok(receipt)
    }

    /// The state of the signer's appointment at `locator` (`None`: it has none there), and the
    /// signer's dialect (the reply's shape depends on it).
    pub async fn get_appointment(
        &self,
        locator: Locator,
        signature: String,
    ) -> Result<(Dialect, Option<AppointmentState>), RequestError> {
        self.blocking(move |watcher, _, height| {
            let msg = format!("get appointment {locator}");
            let refuse = |e| RequestError::from_subscription(e, RequestError::UserUnauthenticated);
            let (user, record) =
                watcher.gatekeeper().authenticate(msg.as_bytes(), &signature, height).map_err(refuse)?;
            match watcher.appointment_state(&user, &record, &locator) {
                Ok(state) => Ok((record.dialect, Some(state))),
                Err(AppointmentError::NotFound) => Ok((record.dialect, None)),
                Err(e) => Err(RequestError::from_appointment(e, RequestError::UserUnauthenticated)),
            }
        })
        .await
    }

    /// The signer's subscription (authenticated; its locators come from [`Tower::locators_page`]).
    pub async fn subscription_info(&self, signature: String) -> Result<SubscriptionInfo, RequestError> {
        self.blocking(move |watcher, _, height| {
            let refuse = |e| RequestError::from_subscription(e, RequestError::UserNotFound);
            let (user, record) =
                watcher.gatekeeper().authenticate(b"get subscription info", &signature, height).map_err(refuse)?;
            Ok(SubscriptionInfo {
                user,
                dialect: record.dialect,
                available_slots: record.available_slots,
                subscription_expiry: record.subscription_expiry,
            })
        })
        .await
    }

    /// Up to `limit` of `user`'s locators after `after`, in byte order.
    pub async fn locators_page(
        &self,
        user: UserId,
        after: Option<Locator>,
        limit: usize,
    ) -> Result<Vec<Locator>, RequestError> {
        self.blocking(move |watcher, _, _| Ok(watcher.store().user_locators_page(&user, after.as_ref(), limit)?)).await
    }

    /// Runs the operator's `work` on the blocking pool under `user`'s lock, so that it comes
    /// wholly before or after any request of that user (and any block's pass over it).
    async fn for_user<T: Send + 'static>(
        &self,
        user: UserId,
        work: impl FnOnce(&Gatekeeper, u32) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<Result<T, StoreError>, TaskFailed> {
        let (watcher, locks, height) = (self.watcher.clone(), self.locks.clone(), self.height());
        crate::task::blocking(move || {
            let _turn = locks.priority().request();
            let _guard = locks.lock(&user);
            work(watcher.gatekeeper(), height)
        })
        .await
    }

    /// Bans `user` (see [`Gatekeeper::ban`]); false if it was banned already.
    pub async fn ban_user(&self, user: UserId) -> Result<Result<bool, StoreError>, TaskFailed> {
        self.for_user(user, move |gatekeeper, height| gatekeeper.ban(&user, height)).await
    }

    /// Lifts `user`'s ban; false if it was not banned.
    pub async fn unban_user(&self, user: UserId) -> Result<Result<bool, StoreError>, TaskFailed> {
        self.for_user(user, move |gatekeeper, _| gatekeeper.unban(&user)).await
    }

    /// Deletes `user` and its appointments (its trackers run to their end); `None` if it is not
    /// registered.
    pub async fn delete_user(&self, user: UserId) -> Result<Result<Option<DeletedUser>, StoreError>, TaskFailed> {
        self.for_user(user, move |gatekeeper, _| gatekeeper.delete_user(&user)).await
    }

    /// Whether `user` is registered (for the operator's report of a ban).
    pub async fn is_registered(&self, user: UserId) -> Result<Result<bool, StoreError>, TaskFailed> {
        let watcher = self.watcher.clone();
        crate::task::blocking(move || Ok(watcher.store().user(&user)?.is_some())).await
    }
}
