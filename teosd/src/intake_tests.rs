//! The intake: a group decides each user's appointments as one-at-a-time requests would, a
//! refusal writes nothing, a failed commit fails the whole group; and through the thread, many
//! concurrent requests of one user are charged exactly its slots.

use std::sync::Arc;
use std::time::Duration;

use bitcoin::Transaction;

use super::*;
use crate::gatekeeper::SubscriptionError;
use crate::protocol::{Dialect, Locator};
use crate::test_utils::{channel, policy, user, FakeChain, Scene};

/// Every test's bound on waiting for the intake.
const BOUND: Duration = Duration::from_secs(20);

async fn scene() -> Scene {
    Scene::new(Arc::new(FakeChain::new())).await
}

fn signature() -> String {
    "y".repeat(104)
}

fn appointment(n: u8, blob: u8) -> Appointment {
    Appointment { locator: Locator::from_array([n; 16]), encrypted_blob: vec![blob; 64], to_self_delay: 42 }
}

fn disputed(dispute: &Transaction) -> Appointment {
    Appointment {
        locator: Dialect::Rust.locator(&dispute.compute_txid()),
        encrypted_blob: vec![1; 64],
        to_self_delay: 42,
    }
}

#[tokio::test]
async fn a_group_charges_a_user_as_its_requests_one_at_a_time_would() {
    let s = scene().await;
    s.register(&user(1));
    let slots = policy().subscription_slots;
    let mut group = AppointmentGroup::new(&s.watcher);
    let h = s.height();
    let first = group.add(&user(1), appointment(1, 1), signature(), h).unwrap();
    let second = group.add(&user(1), appointment(2, 1), signature(), h).unwrap();
    let update = group.add(&user(1), appointment(1, 9), signature(), h).unwrap();
    assert_eq!(
        [first.available_slots, second.available_slots, update.available_slots],
        [slots - 1, slots - 2, slots - 2],
        "two new locators are charged, the update of one is free"
    );
    assert_eq!(s.user(&user(1)).unwrap().available_slots, slots, "nothing is stored before the commit");
    group.commit().unwrap();

    let record = s.user(&user(1)).unwrap();
    assert_eq!(record.available_slots, slots - 2);
    assert_eq!(s.store.stored_counts().appointments, 2, "the update counts once");
    let stored = s.store.appointment(&Locator::from_array([1; 16]), &record).unwrap().unwrap();
    assert_eq!(stored.appointment.encrypted_blob, vec![9; 64], "the group's last version is kept");
}

#[tokio::test]
async fn a_group_refuses_past_the_last_slot_and_a_refusal_writes_nothing() {
    let s = scene().await;
    s.register(&user(1));
    s.register(&user(2));
    let slots = policy().subscription_slots;
    let mut group = AppointmentGroup::new(&s.watcher);
    let h = s.height();
    for n in 0..slots as u8 {
        group.add(&user(1), appointment(n, 1), signature(), h).unwrap();
    }
    let refused = group.add(&user(1), appointment(200, 1), signature(), h);
    assert!(matches!(refused, Err(AppointmentError::Subscription(SubscriptionError::Unauthenticated))));
    // An update of an appointment of the group is still free; the other users are not affected.
    assert_eq!(group.add(&user(1), appointment(0, 5), signature(), h).unwrap().available_slots, 0);
    let unknown = group.add(&user(3), appointment(201, 1), signature(), h);
    assert!(matches!(unknown, Err(AppointmentError::Subscription(SubscriptionError::Unauthenticated))));
    let expired = group.add(&user(2), appointment(202, 1), signature(), h + policy().subscription_duration);
    assert!(matches!(expired, Err(AppointmentError::Subscription(SubscriptionError::Expired(_)))));
    assert_eq!(group.add(&user(2), appointment(203, 1), signature(), h).unwrap().available_slots, slots - 1);
    group.commit().unwrap();

    assert_eq!(s.user(&user(1)).unwrap().available_slots, 0);
    assert_eq!(s.user(&user(2)).unwrap().available_slots, slots - 1);
    assert!(s.user(&user(3)).is_none());
    assert_eq!(s.store.stored_counts().appointments, u64::from(slots) + 1);
    for locator in [200, 201, 202] {
        assert!(s.store.appointments_at(&Locator::from_array([locator; 16])).unwrap().is_empty());
    }
}

#[tokio::test]
async fn a_group_queues_a_late_check_for_a_dispute_already_mined() {
    let s = scene().await;
    s.register(&user(1));
    let (dispute, _) = channel(1);
    s.mine(vec![dispute.clone()]).await;
    let mut group = AppointmentGroup::new(&s.watcher);
    let late = group.add(&user(1), disputed(&dispute), signature(), s.height()).unwrap();
    let fresh = group.add(&user(1), appointment(7, 1), signature(), s.height()).unwrap();
    assert!(late.late_dispute && !fresh.late_dispute);
    group.commit().unwrap();
    let checks = s.store.late_checks(10).unwrap();
    assert_eq!(checks.len(), 1);
    assert_eq!(checks[0].0, late.locator);
}

#[tokio::test]
async fn a_failed_commit_stores_nothing_of_the_group() {
    let s = scene().await;
    s.register(&user(1));
    s.register(&user(2));
    let mut group = AppointmentGroup::new(&s.watcher);
    group.add(&user(1), appointment(1, 1), signature(), s.height()).unwrap();
    group.add(&user(2), appointment(2, 1), signature(), s.height()).unwrap();
    s.kv.set_failing(true);
    assert!(group.commit().is_err());
    s.kv.set_failing(false);
    for n in [1, 2] {
        assert_eq!(s.user(&user(n)).unwrap().available_slots, policy().subscription_slots);
    }
    assert_eq!(s.store.stored_counts().appointments, 0);
    assert!(s.store.appointments_at(&Locator::from_array([1; 16])).unwrap().is_empty());
}

#[tokio::test]
async fn concurrent_requests_of_one_user_are_charged_exactly_its_slots() {
    let s = scene().await;
    s.register(&user(1));
    let slots = policy().subscription_slots;
    let (intake, _) = Intake::spawn(s.watcher.clone(), s.locks.clone()).unwrap();
    let h = s.height();
    let requests = (0..3 * slots as u8).map(|n| {
        let intake = intake.clone();
        tokio::spawn(async move { intake.submit(user(1), appointment(n, 1), signature(), h).await })
    });
    let answers = tokio::time::timeout(BOUND, futures_util::future::join_all(requests)).await.expect("bounded");
    let mut left: Vec<u32> = Vec::new();
    let mut refused = 0;
    for answer in answers {
        match answer.unwrap() {
            Ok(accepted) => left.push(accepted.available_slots),
            Err(IntakeError::Refused(AppointmentError::Subscription(SubscriptionError::Unauthenticated))) => {
                refused += 1
            }
            Err(e) => panic!("unexpected answer: {e}"),
        }
    }
    left.sort_unstable();
    assert_eq!(left, (0..slots).collect::<Vec<_>>(), "each slot charged once");
    assert_eq!(refused, 2 * slots);
    assert_eq!(s.user(&user(1)).unwrap().available_slots, 0);
    assert_eq!(s.store.stored_counts().appointments, u64::from(slots));
}

#[tokio::test]
async fn when_the_store_fails_every_request_is_told_and_the_next_ones_go_through() {
    let s = scene().await;
    s.register(&user(1));
    s.register(&user(2));
    let (intake, _) = Intake::spawn(s.watcher.clone(), s.locks.clone()).unwrap();
    let h = s.height();
    s.kv.set_failing(true);
    let failing = [1, 2].map(|n| intake.submit(user(n), appointment(n, 1), signature(), h));
    for answer in tokio::time::timeout(BOUND, futures_util::future::join_all(failing)).await.expect("bounded") {
        assert!(matches!(answer, Err(IntakeError::NotCommitted(_))), "{answer:?}");
    }
    assert_eq!(s.store.stored_counts().appointments, 0);
    s.kv.set_failing(false);
    let accepted = tokio::time::timeout(BOUND, intake.submit(user(1), appointment(1, 1), signature(), h))
        .await
        .expect("bounded")
        .unwrap();
    assert_eq!(accepted.available_slots, policy().subscription_slots - 1, "the failed attempt charged nothing");
}

#[tokio::test]
async fn the_thread_ends_and_lets_go_of_the_store_once_every_handle_is_dropped() {
    let s = scene().await;
    let before = Arc::strong_count(&s.watcher);
    let (intake, thread) = Intake::spawn(s.watcher.clone(), s.locks.clone()).unwrap();
    let second = intake.clone();
    drop(intake);
    assert_eq!(Arc::strong_count(&s.watcher), before + 1, "the running thread holds the watcher");
    drop(second);
    tokio::time::timeout(BOUND, thread.ended()).await.expect("bounded");
    assert_eq!(Arc::strong_count(&s.watcher), before, "the thread let go of the watcher");
}

#[tokio::test]
async fn a_user_whose_lock_is_held_elsewhere_holds_up_only_its_own_appointments() {
    let s = scene().await;
    let (slow, other) = (user(1), user(2));
    assert_ne!(s.locks.stripe(&slow), s.locks.stripe(&other), "the test needs two stripes");
    s.register(&slow);
    s.register(&other);
    let (intake, _) = Intake::spawn(s.watcher.clone(), s.locks.clone()).unwrap();
    // Another thread holds the slow user's lock (an operator's long change, say) until released.
    let (release, released) = std::sync::mpsc::channel::<()>();
    let (taken, is_taken) = std::sync::mpsc::channel();
    let locks = s.locks.clone();
    let holder = std::thread::spawn(move || {
        let _held = locks.lock(&slow);
        taken.send(()).unwrap();
        let _ = released.recv();
    });
    is_taken.recv_timeout(BOUND).unwrap();
    let h = s.height();
    let mut slow_requests = Vec::new();
    let mut other_requests = Vec::new();
    for n in 0..8u8 {
        for (who, requests) in [(slow, &mut slow_requests), (other, &mut other_requests)] {
            let intake = intake.clone();
            requests.push(tokio::spawn(async move { intake.submit(who, appointment(n, 1), signature(), h).await }));
        }
    }
    for answer in tokio::time::timeout(BOUND, futures_util::future::join_all(other_requests)).await.expect("bounded") {
        answer.unwrap().expect("accepted while the other user's lock is held");
    }
    assert!(slow_requests.iter().all(|r| !r.is_finished()), "the slow user's requests wait for its lock");
    release.send(()).unwrap();
    holder.join().unwrap();
    let answers = tokio::time::timeout(BOUND, futures_util::future::join_all(slow_requests)).await.expect("bounded");
    let mut left: Vec<u32> = answers.into_iter().map(|a| a.unwrap().expect("accepted").available_slots).collect();
    left.sort_unstable();
    let slots = policy().subscription_slots;
    assert_eq!(left, (slots - 8..slots).collect::<Vec<_>>());
}
