//! The appointment intake: accepted appointments are decided and committed in groups, by one
//! thread, with one synced write per group.
//!
//! A request's signature work (recovering the user, signing the receipt) runs where the request
//! runs; what needs the store (the user's subscription, whether the locator is new, whether its
//! dispute was already seen) is decided on the intake's thread, for every request waiting there
//! at once, into one batch ([`AppointmentGroup`], the Watcher's domain logic). The group is
//! committed with one synced write, and only then is any of its requests answered: a receipt
//! still follows its own durable commit.
//!
//! Within a group, one user may have several appointments: each is decided against the user's
//! record as the group's earlier appointments left it (slots charged, locators written), so the
//! group charges exactly what the same requests would charge one at a time. The intake holds, from
//! its first read to the commit, a request's share of the chain's turn, the locks of the group's
//! users and the recent-block index (in that order, as every request does: see [`crate::locks`]
//! and [`crate::store::RecentGuard`]). It only tries the users' locks: an appointment whose user's
//! lock is held elsewhere waits for the next group, so one slow holder holds up that user alone. A
//! refused appointment writes nothing; a failed commit fails the whole group and leaves the store
//! and its counts as they were.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::locks::UserLocks;
use crate::protocol::{Appointment, UserId};
pub use crate::watcher::{Accepted, AppointmentGroup};
use crate::watcher::{AppointmentError, Watcher};

/// Appointments waiting for the intake, at most; further requests wait for room (the public
/// API's connection cap bounds how many can wait).
const QUEUE: usize = 1024;
/// Appointments decided into one group at most.
pub const MAX_GROUP: usize = 256;
/// When every appointment waiting has its user's lock held elsewhere, the intake tries again after
/// this long, or as soon as a new appointment arrives.
const RETRY_BUSY: std::time::Duration = std::time::Duration::from_millis(1);

/// Why the intake could not decide an appointment.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// The appointment was refused.
    #[error(transparent)]
    Refused(#[from] AppointmentError),
    /// Its group's commit failed: nothing of it was stored.
    #[error("the appointment's batch was not committed: {0}")]
    NotCommitted(String),
    /// The intake's thread is gone (shutdown) or dropped the request (a panic).
    #[error("the appointment intake is not running")]
    Gone,
}

/// One request waiting for the intake.
#[derive(Debug)]
struct Job {
    user: UserId,
    appointment: Appointment,
    signature: String,
    height: u32,
    answer: oneshot::Sender<Result<Accepted, IntakeError>>,
}

/// The handle requests use to hand appointments to the intake's thread. The thread ends when
/// the last handle is dropped.
#[derive(Debug, Clone)]
pub struct Intake {
    jobs: mpsc::Sender<Job>,
    /// The intake's thread, woken by each new job when it waits for busy locks.
    thread: std::thread::Thread,
}

/// The intake's thread as its owner sees it: it ends once every [`Intake`] handle is dropped,
/// having let go of the store.
#[derive(Debug)]
pub struct IntakeThread {
    ended: oneshot::Receiver<()>,
}

impl IntakeThread {
    /// Waits for the thread to end.
    pub async fn ended(self) {
        // An error is the sender dropped by a panic: ended too.
        let _ = self.ended.await;
    }
}

impl Intake {
    /// Starts the intake's thread over `watcher`, taking `locks` as requests do.
    pub fn spawn(watcher: Arc<Watcher>, locks: Arc<UserLocks>) -> std::io::Result<(Intake, IntakeThread)> {
        let (jobs, queue) = mpsc::channel(QUEUE);
        let (end, ended) = oneshot::channel();
        let handle = std::thread::Builder::new().name("teos-intake".into()).spawn(move || {
            run(&watcher, &locks, queue);
            // The store is let go before the owner hears of the end (it closes the store next).
            drop(watcher);
            let _ = end.send(());
        })?;
        Ok((Intake { jobs, thread: handle.thread().clone() }, IntakeThread { ended }))
    }

    /// Decides authenticated `user`'s `appointment` at `height` with whatever else is waiting,
    /// and answers once its group is durable (or refused).
    pub async fn submit(
        &self,
        user: UserId,
        appointment: Appointment,
        signature: String,
        height: u32,
    ) -> Result<Accepted, IntakeError> {
        let (answer, answered) = oneshot::channel();
        let job = Job { user, appointment, signature, height, answer };
        self.jobs.send(job).await.map_err(|_| IntakeError::Gone)?;
        self.thread.unpark();
        answered.await.map_err(|_| IntakeError::Gone)?
    }
}

/// The intake's thread: takes every job waiting (up to [`MAX_GROUP`]) and decides them as one
/// group, until every handle is dropped. Jobs whose user's lock is held elsewhere wait for the
/// next group, first in it; if no job could be decided, the thread waits [`RETRY_BUSY`] or for a
/// new job first. A panic fails its group's requests, not the thread.
fn run(watcher: &Watcher, locks: &UserLocks, mut queue: mpsc::Receiver<Job>) {
    let mut waiting = Vec::with_capacity(MAX_GROUP);
    loop {
        if waiting.is_empty() {
            match queue.blocking_recv() {
                Some(job) => waiting.push(job),
                None => return,
            }
        }
        while waiting.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(job) => waiting.push(job),
                Err(_) => break,
            }
        }
        let jobs = std::mem::take(&mut waiting);
        let size = jobs.len();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| decide_and_commit(watcher, locks, jobs))) {
            Ok(busy) if busy.len() == size => {
                waiting = busy;
                std::thread::park_timeout(RETRY_BUSY);
            }
            Ok(busy) => waiting = busy,
            Err(_) => tracing::error!(size, "the appointment intake panicked: its group's requests failed"),
        }
    }
}

/// Decides `jobs` as one group, commits it, then answers each job; returns the jobs left for the
/// next group: those whose user's lock another request, or an operator's change, holds (one slow
/// holder holds up only its users, not the intake).
fn decide_and_commit(watcher: &Watcher, locks: &UserLocks, jobs: Vec<Job>) -> Vec<Job> {
    let _turn = locks.priority().request();
    let mut held = locks.hold();
    let (ready, busy): (Vec<Job>, Vec<Job>) = jobs.into_iter().partition(|job| held.try_add(&job.user));
    let mut group = AppointmentGroup::new(watcher);
    let mut decided = Vec::with_capacity(ready.len());
    for Job { user, appointment, signature, height, answer } in ready {
        match group.add(&user, appointment, signature, height) {
            Ok(accepted) => decided.push((answer, accepted)),
            Err(refused) => {
                let _ = answer.send(Err(refused.into()));
            }
        }
    }
    let committed = if group.is_empty() { Ok(()) } else { group.commit() };
    drop(held);
    match committed {
        Ok(()) => {
            for (answer, accepted) in decided {
                let _ = answer.send(Ok(accepted));
            }
        }
        Err(e) => {
            tracing::error!(error = %e, appointments = decided.len(), "an appointment batch failed to commit");
            for (answer, _) in decided {
                let _ = answer.send(Err(IntakeError::NotCommitted(e.to_string())));
            }
        }
    }
    busy
}

#[cfg(test)]
#[path = "intake_tests.rs"]
mod tests;
