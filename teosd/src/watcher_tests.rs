//! The Watcher's chain side: breaches found in blocks, invalid appointments dropped, and
//! appointments that arrive after their dispute was mined. In memory, through the real follower.

use std::sync::Arc;

use bitcoin::hashes::Hash;
use bitcoin::OutPoint;

use super::*;
use crate::protocol::{encrypt_penalty, Dialect};
use crate::store::PenaltyStatus;
use crate::test_utils::{channel, policy, spending, user, FakeChain, Scene};

async fn scene() -> Scene {
    Scene::new(Arc::new(FakeChain::new())).await
}

fn appointment(locator_of: &Transaction, blob: Vec<u8>) -> Appointment {
    Appointment { locator: Locator::from_txid(&locator_of.compute_txid()), encrypted_blob: blob, to_self_delay: 42 }
}

#[tokio::test]
async fn appointments_whose_blob_yields_no_valid_penalty_are_dropped_without_a_refund() {
    let s = scene().await;
    s.register(&user(1));
    let (dispute, penalty) = channel(1);
    let txid = dispute.compute_txid();
    let unrelated = spending(OutPoint { txid: bitcoin::Txid::all_zeros(), vout: 0 });
    // Three users at the same dispute: one with a penalty spending something else, one with a blob
    // under another key, one valid.
    s.register(&user(2));
    s.register(&user(3));
    s.store_appointment(&user(1), appointment(&dispute, encrypt_penalty(&unrelated, &txid)));
    s.store_appointment(&user(2), appointment(&dispute, encrypt_penalty(&penalty, &bitcoin::Txid::all_zeros())));
    s.add_appointment(&user(3), &dispute, &penalty);

    s.mine(vec![dispute.clone()]).await;
    for bad in [1, 2] {
        assert!(s.tracker(&user(bad), &dispute).is_none());
        assert!(s.appointment(&user(bad), &dispute).is_none(), "user {bad}'s appointment is dropped");
        assert_eq!(s.user(&user(bad)).unwrap().available_slots, policy().subscription_slots - 1);
    }
    assert!(s.tracker(&user(3), &dispute).is_some());
    assert_eq!(s.broadcaster.sent(), vec![penalty.compute_txid()]);
}

#[tokio::test]
async fn every_user_at_a_breached_locator_gets_a_tracker_in_block_order() {
    let s = scene().await;
    let channels: Vec<_> = (1..=3).map(channel).collect();
    for (n, (dispute, penalty)) in channels.iter().enumerate().rev() {
        s.register(&user(n as u8 + 1));
        s.add_appointment(&user(n as u8 + 1), dispute, penalty);
    }
    s.mine(channels.iter().map(|(d, _)| d.clone()).collect()).await;
    let penalties: Vec<_> = channels.iter().map(|(_, p)| p.compute_txid()).collect();
    assert_eq!(s.broadcaster.sent(), penalties, "penalties go out in the order of their disputes");
}

#[tokio::test]
async fn an_appointment_for_a_dispute_already_mined_is_answered_at_the_next_round() {
    let s = scene().await;
    s.register(&user(1));
    let (dispute, penalty) = channel(1);
    s.mine(vec![dispute.clone()]).await;
    s.mine_empty(2).await;

    assert!(s.add_appointment(&user(1), &dispute, &penalty), "a late check is queued with the appointment");
    assert!(s.tracker(&user(1), &dispute).is_none());
    s.sync().await;
    let tracker = s.tracker(&user(1), &dispute).expect("answered");
    assert_eq!((tracker.dispute_height, tracker.status), (1, PenaltyStatus::Broadcast(3)));
    assert_eq!(s.broadcaster.sent(), vec![penalty.compute_txid()]);
    assert!(s.store.late_checks(10).unwrap().is_empty(), "the check is cleared with the answer");
}

#[tokio::test]
async fn a_late_check_survives_a_restart_and_an_outage_until_it_is_answered() {
    let s = scene().await;
    s.register(&user(1));
    let (dispute, penalty) = channel(1);
    s.mine(vec![dispute.clone()]).await;
    s.chain.set_down(true);
    assert!(s.add_appointment(&user(1), &dispute, &penalty));
    assert!(s.follower.sync_round().await.unwrap_err().is_transient());

    let s = s.restart();
    s.chain.set_down(false);
    s.sync().await;
    assert_eq!(s.tracker(&user(1), &dispute).expect("answered").dispute_height, 1);
}

#[tokio::test]
async fn a_late_appointment_whose_dispute_block_left_the_chain_stays_watched() {
    let s = scene().await;
    s.register(&user(1));
    let (dispute, penalty) = channel(1);
    s.mine(vec![dispute.clone()]).await;
    assert!(s.add_appointment(&user(1), &dispute, &penalty));
    // The dispute's block goes before the follower answers the check.
    s.chain.disconnect_tip();
    s.chain.mine_empty(2);
    s.sync().await;
    assert!(s.tracker(&user(1), &dispute).is_none());
    assert!(s.appointment(&user(1), &dispute).is_some(), "watched like any other");
    assert!(s.store.late_checks(10).unwrap().is_empty());
    // And answered when the dispute comes back.
    s.mine(vec![dispute.clone()]).await;
    assert_eq!(s.tracker(&user(1), &dispute).unwrap().dispute_height, 3);
}

#[tokio::test]
async fn a_late_appointment_with_an_invalid_blob_is_dropped() {
    let s = scene().await;
    s.register(&user(1));
    let (dispute, _) = channel(1);
    s.mine(vec![dispute.clone()]).await;
    assert!(s.store_appointment(&user(1), appointment(&dispute, vec![7; 100])));
    s.sync().await;
    assert!(s.appointment(&user(1), &dispute).is_none());
    assert!(s.tracker(&user(1), &dispute).is_none());
    assert!(s.broadcaster.sent().is_empty());
}

#[tokio::test]
async fn an_appointment_for_a_dispute_older_than_the_recent_window_gets_no_late_check() {
    let s = scene().await;
    s.register(&user(1));
    let (dispute, penalty) = channel(1);
    s.mine(vec![dispute.clone()]).await;
    s.mine_empty(policy().recent_block_lookback).await;
    assert!(!s.add_appointment(&user(1), &dispute, &penalty));
}

/// `n` users (numbers from 10), each with an appointment for `dispute`'s penalty.
fn crowd(s: &Scene, n: u32, dispute: &Transaction, penalty: &Transaction) -> Vec<UserId> {
    (0..n)
        .map(|i| {
            let user = crate::test_utils::numbered_user(1, i);
            s.register(&user);
            s.add_appointment(&user, dispute, penalty);
            user
        })
        .collect()
}

#[tokio::test]
async fn more_users_at_a_locator_than_one_chunk_all_get_trackers_and_the_partial_mark_is_cleared() {
    let s = scene().await;
    let (dispute, penalty) = channel(1);
    let users = crowd(&s, BREACH_CHUNK as u32 * 2 + 7, &dispute, &penalty);
    s.mine(vec![dispute.clone()]).await;
    assert!(users.iter().all(|u| s.tracker(u, &dispute).is_some()));
    assert_eq!(s.broadcaster.sends_of(&penalty.compute_txid()), users.len());
    assert_eq!(s.store.partial_block().unwrap(), None);
}

/// A chunk and five users at `dispute`, mined: the first chunk commits, then the store fails (the
/// rest of the block, and its own batch). Returns the users.
async fn crash_after_the_first_chunk(s: &Scene, dispute: &Transaction, penalty: &Transaction) -> Vec<UserId> {
    let users = crowd(s, BREACH_CHUNK as u32 + 5, dispute, penalty);
    s.kv.fail_after(1);
    s.chain.mine(vec![dispute.clone()]);
    assert!(s.follower.sync_round().await.is_err());
    users
}

#[tokio::test]
async fn a_crash_after_a_chunk_replays_the_rest_without_sending_the_committed_chunk_again() {
    let s = scene().await;
    let (dispute, penalty) = channel(1);
    let users = crash_after_the_first_chunk(&s, &dispute, &penalty).await;
    let done = users.iter().filter(|u| s.tracker(u, &dispute).is_some()).count();
    assert_eq!(done, BREACH_CHUNK);
    assert_eq!(s.store.partial_block().unwrap().map(|(h, _)| h), Some(1));
    assert_eq!(s.store.tip().unwrap().unwrap().0, 0, "the block itself is not committed");

    s.kv.set_failing(false);
    let s = s.restart();
    s.sync().await;
    assert!(users.iter().all(|u| s.tracker(u, &dispute).is_some()));
    // One send per user: the committed chunk was skipped, the one that failed sent again.
    assert_eq!(s.broadcaster.sends_of(&penalty.compute_txid()), BREACH_CHUNK + 2 * 5);
    assert_eq!(s.store.partial_block().unwrap(), None);
}

#[tokio::test]
async fn a_partly_processed_block_that_left_the_chain_meanwhile_is_undone_before_the_new_one() {
    let s = scene().await;
    let (dispute, penalty) = channel(1);
    let users = crash_after_the_first_chunk(&s, &dispute, &penalty).await;
    // While the tower is down the dispute's block is replaced by one without it.
    s.kv.set_failing(false);
    s.chain.disconnect_tip();
    s.chain.mine_empty(2);
    let s = s.restart();
    s.sync().await;
    assert!(users.iter().all(|u| s.tracker(u, &dispute).is_none()), "no tracker for a dispute not on chain");
    assert!(users.iter().all(|u| s.appointment(u, &dispute).is_some()), "still watched");
    assert_eq!(s.store.partial_block().unwrap(), None);
}

#[tokio::test]
async fn late_checks_at_older_blocks_are_served_first_and_a_flood_loses_none() {
    let s = scene().await;
    s.register(&user(1));
    // A flood: many late checks at an old block (appointments whose blobs are garbage).
    let (old_dispute, _) = channel(50);
    let (victim_dispute, victim_penalty) = channel(51);
    s.mine(vec![old_dispute.clone()]).await;
    s.mine(vec![victim_dispute.clone()]).await;
    let flood = crowd_blobs(&s, 600, &old_dispute);
    assert!(s.add_appointment(&user(1), &victim_dispute, &victim_penalty));
    assert_eq!(s.store.late_check_blocks(10).unwrap().iter().map(|h| h.height).collect::<Vec<_>>(), vec![1, 2]);
    s.sync().await;
    assert!(s.store.late_checks(1).unwrap().is_empty(), "every check answered in one round");
    assert!(s.tracker(&user(1), &victim_dispute).is_some());
    assert!(flood.iter().all(|u| s.appointment(u, &old_dispute).is_none()), "the garbage is dropped");
}

/// `n` users with a garbage appointment at `dispute`'s locator, each queued as a late check.
fn crowd_blobs(s: &Scene, n: u32, dispute: &Transaction) -> Vec<UserId> {
    (0..n)
        .map(|i| {
            let user = crate::test_utils::numbered_user(2, i);
            s.register(&user);
            assert!(s.store_appointment(&user, appointment(dispute, vec![9; 64])), "a late check");
            user
        })
        .collect()
}

#[tokio::test]
async fn a_dispute_in_the_mempool_gets_its_penalty_sent_at_once_and_its_tracker_when_mined() {
    let s = scene().await;
    s.register(&user(1));
    let (dispute, penalty) = channel(1);
    s.add_appointment(&user(1), &dispute, &penalty);
    s.chain.add_to_mempool(dispute.clone());
    s.sync().await;
    assert_eq!(s.broadcaster.sent(), vec![penalty.compute_txid()], "sent before any block");
    assert!(s.tracker(&user(1), &dispute).is_none(), "nothing written: still watched");
    // Seen once: the next rounds do not send it again.
    s.sync().await;
    assert_eq!(s.broadcaster.sends_of(&penalty.compute_txid()), 1);
    // Mined: the block makes the tracker (the penalty is sent again; bitcoind knows it already).
    s.mine(vec![dispute.clone()]).await;
    assert_eq!(s.tracker(&user(1), &dispute).unwrap().dispute_height, 1);
}

#[tokio::test]
async fn a_dispute_that_leaves_the_mempool_unmined_leaves_its_appointment_watched() {
    let s = scene().await;
    s.register(&user(1));
    let (dispute, penalty) = channel(1);
    s.add_appointment(&user(1), &dispute, &penalty);
    s.chain.add_to_mempool(dispute.clone());
    s.sync().await;
    s.chain.evict(&dispute.compute_txid());
    s.mine_empty(3).await;
    assert!(s.tracker(&user(1), &dispute).is_none());
    assert!(s.appointment(&user(1), &dispute).is_some(), "watched like any other");
    // When it is mined after all, it is answered as usual.
    s.mine(vec![dispute.clone()]).await;
    assert!(s.tracker(&user(1), &dispute).is_some());
}

#[tokio::test]
async fn mempool_transactions_of_no_appointment_cost_a_probe_and_nothing_more() {
    let s = scene().await;
    s.register(&user(1));
    for seed in 100..150u8 {
        s.chain.add_to_mempool(channel(seed).0);
    }
    let (dispute, penalty) = channel(1);
    s.add_appointment(&user(1), &dispute, &penalty);
    // A garbage blob at another locator in the mempool: probed, decrypted, refused, not sent.
    let (other, _) = channel(2);
    s.store_appointment(&user(1), appointment(&other, vec![5; 80]));
    s.chain.add_to_mempool(other);
    s.sync().await;
    assert!(s.broadcaster.sent().is_empty());
    assert!(s.appointment(&user(1), &dispute).is_some());
}

#[tokio::test]
async fn a_crowded_locator_in_the_mempool_hides_no_other_dispute() {
    let s = scene().await;
    // The crowded dispute's locator sorts first, so a page of matches would be all of it.
    let (mut a, mut b) = (channel(1), channel(2));
    if Locator::from_txid(&a.0.compute_txid()) > Locator::from_txid(&b.0.compute_txid()) {
        std::mem::swap(&mut a, &mut b);
    }
    crowd(&s, BREACH_CHUNK as u32 + 1, &a.0, &a.1);
    s.register(&user(1));
    s.add_appointment(&user(1), &b.0, &b.1);
    s.chain.add_to_mempool(a.0.clone());
    s.chain.add_to_mempool(b.0.clone());
    s.sync().await;
    assert_eq!(s.broadcaster.sends_of(&b.1.compute_txid()), 1, "the lone dispute is answered too");
    assert!(s.broadcaster.sends_of(&a.1.compute_txid()) >= 1);
}

/// A python-teos user (display byte order) and a rust-teos user, both breached in one block.
#[tokio::test]
async fn python_and_rust_users_breached_in_the_same_block_are_both_answered() {
    let s = scene().await;
    s.register(&user(1));
    s.register_as(&user(2), Dialect::Python);
    let ((rust_dispute, rust_penalty), (python_dispute, python_penalty)) = (channel(1), channel(2));
    s.add_appointment(&user(1), &rust_dispute, &rust_penalty);
    s.add_appointment_as(&user(2), &python_dispute, &python_penalty, Dialect::Python);
    s.mine(vec![rust_dispute.clone(), python_dispute.clone()]).await;
    assert_eq!(s.tracker(&user(1), &rust_dispute).unwrap().dispute_height, 1);
    assert_eq!(s.tracker(&user(2), &python_dispute).unwrap().dispute_height, 1);
    assert_eq!(s.broadcaster.sent(), vec![rust_penalty.compute_txid(), python_penalty.compute_txid()]);
}

#[tokio::test]
async fn python_locators_are_searched_only_once_a_python_user_registered_and_from_then_on() {
    let s = scene().await;
    s.register(&user(1));
    let (dispute, penalty) = channel(1);
    // A python-ordered appointment on a tower with no python user: not looked for.
    s.add_appointment_as(&user(1), &dispute, &penalty, Dialect::Python);
    s.mine(vec![dispute.clone()]).await;
    assert!(s.broadcaster.sent().is_empty());
    assert!(!s.store.has_python_users());

    s.register_as(&user(2), Dialect::Python);
    let s = s.restart();
    assert!(s.store.has_python_users(), "remembered across restarts");
    let (dispute, penalty) = channel(2);
    s.add_appointment_as(&user(2), &dispute, &penalty, Dialect::Python);
    s.mine(vec![dispute.clone()]).await;
    assert_eq!(s.broadcaster.sent(), vec![penalty.compute_txid()]);
}

#[tokio::test]
async fn a_late_python_appointment_is_answered_and_a_reorged_python_dispute_is_answered_again() {
    let s = scene().await;
    s.register_as(&user(1), Dialect::Python);
    let (dispute, penalty) = channel(1);
    s.mine(vec![dispute.clone()]).await;
    assert!(s.add_appointment_as(&user(1), &dispute, &penalty, Dialect::Python), "a late check is queued");
    s.sync().await;
    assert_eq!(s.tracker(&user(1), &dispute).expect("answered").dispute_height, 1);

    s.chain.disconnect_tip();
    s.chain.mine_empty(2);
    s.sync().await;
    assert!(s.tracker(&user(1), &dispute).is_none());
    assert!(s.appointment(&user(1), &dispute).is_some(), "watched again");
    s.mine(vec![dispute.clone()]).await;
    assert_eq!(s.tracker(&user(1), &dispute).unwrap().dispute_height, 3);
}

#[tokio::test]
async fn a_python_dispute_in_the_mempool_gets_its_penalty_sent_at_once() {
    let s = scene().await;
    s.register_as(&user(1), Dialect::Python);
    let (dispute, penalty) = channel(1);
    s.add_appointment_as(&user(1), &dispute, &penalty, Dialect::Python);
    s.chain.add_to_mempool(dispute.clone());
    s.sync().await;
    assert_eq!(s.broadcaster.sent(), vec![penalty.compute_txid()]);
}

#[tokio::test]
async fn a_user_keeps_the_dialect_it_registered_with() {
    let s = scene().await;
    s.register_as(&user(1), Dialect::Python);
    let gatekeeper = s.watcher.gatekeeper();
    let refused = gatekeeper.register(&user(1), s.height(), Dialect::Rust).unwrap_err();
    assert!(matches!(refused, SubscriptionError::OtherDialect { registered: Dialect::Python }), "{refused:?}");
    let renewed = gatekeeper.register(&user(1), s.height(), Dialect::Python).unwrap();
    assert_eq!(renewed.dialect, Dialect::Python);
}
