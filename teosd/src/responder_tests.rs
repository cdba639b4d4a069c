//! The Responder's life cycle of a tracker, block by block, through the real follower and domain
//! over an in-memory chain, broadcaster and store: no node, no sockets, no sleeps.

use std::sync::Arc;

use bitcoin::OutPoint;

use super::*;
use crate::protocol::Locator;
use crate::store::PenaltyStatus;
use crate::test_utils::{channel, policy, spending, user, FakeChain, Scene};

async fn scene() -> Scene {
    Scene::new(Arc::new(FakeChain::new())).await
}

/// A registered user with an appointment for channel `seed`; returns the dispute and penalty.
fn watched(scene: &Scene, n: u8, seed: u8) -> (Transaction, Transaction) {
    scene.register(&user(n));
    let (dispute, penalty) = channel(seed);
    assert!(!scene.add_appointment(&user(n), &dispute, &penalty));
    (dispute, penalty)
}

#[tokio::test]
async fn a_breach_in_a_block_is_answered_with_its_penalty_and_tracked() {
    let s = scene().await;
    let (dispute, penalty) = watched(&s, 1, 1);
    s.mine_empty(2).await;
    s.mine(vec![dispute.clone()]).await;

    let tracker = s.tracker(&user(1), &dispute).expect("a tracker");
    assert_eq!(tracker.penalty, penalty);
    assert_eq!(tracker.dispute_txid, dispute.compute_txid());
    assert_eq!((tracker.dispute_height, tracker.status), (3, PenaltyStatus::Broadcast(3)));
    assert_eq!(s.broadcaster.sent(), vec![penalty.compute_txid()]);
    // The appointment stays (it is what get_appointment answers for) and its slot stays spent.
    assert!(s.appointment(&user(1), &dispute).is_some());
    assert_eq!(s.user(&user(1)).unwrap().available_slots, policy().subscription_slots - 1);
}

#[tokio::test]
async fn every_broadcast_outcome_leaves_the_tracker_in_its_state() {
    let s = scene().await;
    let cases = [
        (1, BroadcastOutcome::Accepted, PenaltyStatus::Broadcast(1)),
        (2, BroadcastOutcome::AlreadyConfirmed, PenaltyStatus::Confirmed(1)),
        (
            3,
            BroadcastOutcome::Rejected { code: -26, message: "min relay fee not met".into() },
            PenaltyStatus::Refused(1),
        ),
        (
            4,
            BroadcastOutcome::Rejected { code: -25, message: "bad-txns-inputs-missingorspent".into() },
            PenaltyStatus::Refused(1),
        ),
    ];
    let mut disputes = Vec::new();
    for (n, outcome, _) in &cases {
        let (dispute, penalty) = watched(&s, *n, *n);
        s.broadcaster.answer(penalty.compute_txid(), [outcome.clone()]);
        disputes.push(dispute);
    }
    s.mine(disputes.clone()).await;
    for ((n, _, status), dispute) in cases.iter().zip(&disputes) {
        assert_eq!(s.tracker(&user(*n), dispute).expect("tracked whatever the answer").status, *status, "user {n}");
    }
}

#[tokio::test]
async fn a_block_is_not_committed_while_the_broadcaster_is_unreachable_and_is_replayed_after() {
    let s = scene().await;
    let (dispute, penalty) = watched(&s, 1, 1);
    s.broadcaster.set_down(true);
    s.chain.mine(vec![dispute.clone()]);
    let err = s.follower.sync_round().await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert_eq!(s.store.tip().unwrap().unwrap().0, 0, "nothing of the block is committed");
    assert!(s.tracker(&user(1), &dispute).is_none());

    s.broadcaster.set_down(false);
    s.sync().await;
    assert_eq!(s.tracker(&user(1), &dispute).unwrap().status, PenaltyStatus::Broadcast(1));
    assert_eq!(s.broadcaster.sends_of(&penalty.compute_txid()), 1);
}

#[tokio::test]
async fn a_crash_between_broadcast_and_commit_replays_the_block_to_the_same_result() {
    let s = scene().await;
    let (dispute, penalty) = watched(&s, 1, 1);
    s.kv.set_failing(true);
    s.chain.mine(vec![dispute.clone()]);
    assert!(s.follower.sync_round().await.is_err(), "the commit fails");
    assert_eq!(s.broadcaster.sends_of(&penalty.compute_txid()), 1, "sent before the commit");

    // A new tower over the same store: the block was never committed, so it is processed again.
    s.kv.set_failing(false);
    let s = s.restart();
    s.sync().await;
    let tracker = s.tracker(&user(1), &dispute).expect("tracked once");
    assert_eq!((tracker.dispute_height, tracker.status), (1, PenaltyStatus::Broadcast(1)));
    assert_eq!(s.broadcaster.sends_of(&penalty.compute_txid()), 2, "sent again: bitcoind knows it already");
    assert_eq!(s.user(&user(1)).unwrap().available_slots, policy().subscription_slots - 1);
}

#[tokio::test]
async fn an_unconfirmed_penalty_is_sent_again_every_rebroadcast_after_blocks() {
    let s = scene().await;
    let (dispute, penalty) = watched(&s, 1, 1);
    s.mine(vec![dispute.clone()]).await;
    let every = policy().rebroadcast_after;
    let mut expected = 1;
    for _ in 0..3 {
        s.mine_empty(every - 1).await;
        assert_eq!(s.broadcaster.sends_of(&penalty.compute_txid()), expected, "not yet due");
        s.mine_empty(1).await;
        expected += 1;
        assert_eq!(s.broadcaster.sends_of(&penalty.compute_txid()), expected, "due");
        assert_eq!(s.tracker(&user(1), &dispute).unwrap().status, PenaltyStatus::Broadcast(s.height()));
    }
}

#[tokio::test]
async fn a_buried_penalty_completes_its_tracker_and_gives_the_slot_back() {
    let s = scene().await;
    let (dispute, penalty) = watched(&s, 1, 1);
    s.mine(vec![dispute.clone()]).await;
    s.mine(vec![penalty.clone()]).await;
    assert_eq!(s.tracker(&user(1), &dispute).unwrap().status, PenaltyStatus::Confirmed(2));

    s.mine_empty(IRREVOCABLY_RESOLVED - 1).await;
    assert!(s.tracker(&user(1), &dispute).is_some(), "not yet irrevocable");
    assert_eq!(s.broadcaster.sends_of(&penalty.compute_txid()), 1, "a confirmed penalty is not sent again");
    s.mine_empty(1).await;
    assert!(s.tracker(&user(1), &dispute).is_none());
    assert!(s.appointment(&user(1), &dispute).is_none());
    assert_eq!(s.user(&user(1)).unwrap().available_slots, policy().subscription_slots);
}

#[tokio::test]
async fn two_trackers_of_one_user_completing_in_one_block_give_back_both_slots() {
    let s = scene().await;
    let (dispute_a, penalty_a) = watched(&s, 1, 1);
    let (dispute_b, penalty_b) = channel(2);
    s.add_appointment(&user(1), &dispute_b, &penalty_b);
    s.mine(vec![dispute_a, dispute_b]).await;
    s.mine(vec![penalty_a, penalty_b]).await;
    s.mine_empty(IRREVOCABLY_RESOLVED).await;
    assert_eq!(s.user(&user(1)).unwrap().available_slots, policy().subscription_slots);
}

#[tokio::test]
async fn a_refused_penalty_is_sent_again_at_every_block_and_abandoned_only_past_its_horizon() {
    let s = scene().await;
    let (dispute, penalty) = watched(&s, 1, 1);
    let refused = BroadcastOutcome::Rejected { code: -26, message: "min relay fee not met".into() };
    s.broadcaster.answer(penalty.compute_txid(), std::iter::repeat_n(refused, 5000));
    s.mine(vec![dispute.clone()]).await;
    s.mine_empty(10).await;
    assert_eq!(s.broadcaster.sends_of(&penalty.compute_txid()), 11, "once per block");
    let tracker = s.tracker(&user(1), &dispute).unwrap();
    assert_eq!(tracker.status, PenaltyStatus::Refused(11));
    assert!(at_risk(&tracker, 11));
    // Far past the old 100-block rule, it is still being tried...
    let horizon = horizon(&tracker);
    assert_eq!(horizon, 1 + IRREVOCABLY_RESOLVED.max(42) + ABANDON_AFTER_DEADLINE);
    s.mine_empty(horizon - s.height()).await;
    assert!(s.tracker(&user(1), &dispute).is_some(), "tried up to the horizon");
    // ... and abandoned after it, the slot given back and the end counted.
    s.mine_empty(1).await;
    assert!(s.tracker(&user(1), &dispute).is_none());
    assert_eq!(s.user(&user(1)).unwrap().available_slots, policy().subscription_slots);
    assert_eq!(s.store.outcome_counts().unwrap().abandoned, 1);
}

#[tokio::test]
async fn a_penalty_refused_through_a_fee_spike_longer_than_100_blocks_is_won_when_fees_drop() {
    let s = scene().await;
    s.register(&user(1));
    let (dispute, penalty) = channel(1);
    let txid = dispute.compute_txid();
    let appointment = crate::protocol::Appointment {
        locator: Locator::from_txid(&txid),
        encrypted_blob: crate::protocol::encrypt_penalty(&penalty, &txid),
        to_self_delay: 200,
    };
    s.store_appointment(&user(1), appointment);
    let refused = BroadcastOutcome::Rejected { code: -26, message: "mempool min fee not met".into() };
    s.broadcaster.answer(penalty.compute_txid(), std::iter::repeat_n(refused, 150));
    s.mine(vec![dispute.clone()]).await;
    s.mine_empty(150).await;
    // Fees drop: the next send is accepted, then it is mined and buried.
    assert_eq!(s.tracker(&user(1), &dispute).unwrap().status, PenaltyStatus::Broadcast(151));
    s.mine(vec![penalty.clone()]).await;
    s.mine_empty(IRREVOCABLY_RESOLVED).await;
    assert!(s.tracker(&user(1), &dispute).is_none());
    assert_eq!(s.store.outcome_counts().unwrap().won, 1);
    assert_eq!(s.user(&user(1)).unwrap().available_slots, policy().subscription_slots);
}

#[tokio::test]
async fn a_buried_sweep_by_the_cheater_ends_the_tracker_as_lost_and_refunds_the_slot() {
    let s = scene().await;
    let (dispute, penalty) = watched(&s, 1, 1);
    s.mine(vec![dispute.clone()]).await;
    // The cheater's sweep: another transaction spending the output the penalty takes.
    let mut sweep = spending(penalty.input[0].previous_output);
    sweep.output[0].value = bitcoin::Amount::from_sat(999);
    s.mine(vec![sweep.clone()]).await;
    let tracker = s.tracker(&user(1), &dispute).unwrap();
    assert_eq!(tracker.status, PenaltyStatus::Conflicted { height: 2, by: sweep.compute_txid() });
    let sends = s.broadcaster.sends_of(&penalty.compute_txid());
    s.mine_empty(CONFLICT_BURIED - 1).await;
    assert!(s.tracker(&user(1), &dispute).is_some(), "not buried yet");
    assert_eq!(s.broadcaster.sends_of(&penalty.compute_txid()), sends, "a conflicted penalty is not sent");
    s.mine_empty(1).await;
    assert!(s.tracker(&user(1), &dispute).is_none());
    assert_eq!(s.store.outcome_counts().unwrap().lost, 1);
    assert_eq!(s.user(&user(1)).unwrap().available_slots, policy().subscription_slots);
}

#[tokio::test]
async fn a_sweep_reorged_out_before_it_is_buried_sends_the_penalty_again() {
    let s = scene().await;
    let (dispute, penalty) = watched(&s, 1, 1);
    s.mine(vec![dispute.clone()]).await;
    let mut sweep = spending(penalty.input[0].previous_output);
    sweep.output[0].value = bitcoin::Amount::from_sat(999);
    s.mine(vec![sweep]).await;
    assert!(matches!(s.tracker(&user(1), &dispute).unwrap().status, PenaltyStatus::Conflicted { .. }));
    s.chain.disconnect_tip();
    s.mine_empty(2).await;
    assert_eq!(s.tracker(&user(1), &dispute).unwrap().status, PenaltyStatus::Broadcast(3), "sent again");
}

#[test]
fn a_penalty_is_at_risk_when_refused_conflicted_late_or_near_its_deadline() {
    let (_, penalty) = channel(1);
    let tracker = |status, to_self_delay| TrackerRecord {
        dispute_txid: bitcoin::hashes::Hash::all_zeros(),
        penalty: penalty.clone(),
        dispute_height: 100,
        to_self_delay,
        status,
    };
    assert!(!at_risk(&tracker(PenaltyStatus::Broadcast(100), 144), 101));
    assert!(at_risk(&tracker(PenaltyStatus::Broadcast(100), 144), 100 + AT_RISK_UNCONFIRMED));
    assert!(at_risk(&tracker(PenaltyStatus::Broadcast(100), 15), 104), "within 12 blocks of the deadline");
    assert!(at_risk(&tracker(PenaltyStatus::Refused(101), 144), 101));
    let by = bitcoin::hashes::Hash::all_zeros();
    assert!(at_risk(&tracker(PenaltyStatus::Conflicted { height: 101, by }, 144), 101));
    assert!(!at_risk(&tracker(PenaltyStatus::Confirmed(101), 144), 500));
    assert_eq!(deadline(&tracker(PenaltyStatus::Broadcast(100), 144)), Some(244));
    assert_eq!(deadline(&tracker(PenaltyStatus::Broadcast(100), 0)), None);
}

#[tokio::test]
async fn a_dispute_reorged_out_returns_its_appointment_to_watching_and_is_answered_again() {
    let s = scene().await;
    let (dispute, penalty) = watched(&s, 1, 1);
    s.mine(vec![dispute.clone()]).await;
    assert!(s.tracker(&user(1), &dispute).is_some());

    s.chain.disconnect_tip();
    s.mine_empty(2).await;
    assert!(s.tracker(&user(1), &dispute).is_none(), "the dispute is no longer on chain");
    assert!(s.appointment(&user(1), &dispute).is_some(), "watched again");

    s.mine(vec![dispute.clone()]).await;
    assert_eq!(s.tracker(&user(1), &dispute).unwrap().dispute_height, 3);
    assert_eq!(s.broadcaster.sends_of(&penalty.compute_txid()), 2);
}

#[tokio::test]
async fn a_penalty_reorged_out_goes_back_to_waiting_and_is_sent_again() {
    let s = scene().await;
    let (dispute, penalty) = watched(&s, 1, 1);
    s.mine(vec![dispute.clone()]).await;
    s.mine(vec![penalty.clone()]).await;
    assert_eq!(s.tracker(&user(1), &dispute).unwrap().status, PenaltyStatus::Confirmed(2));

    s.chain.disconnect_tip();
    s.mine_empty(2).await;
    // Back to waiting at the reorg, then sent again at the first block where it is due.
    assert_eq!(s.broadcaster.sends_of(&penalty.compute_txid()), 2);
    assert_eq!(s.tracker(&user(1), &dispute).unwrap().status, PenaltyStatus::Broadcast(3));
    s.mine(vec![penalty.clone()]).await;
    assert_eq!(s.tracker(&user(1), &dispute).unwrap().status, PenaltyStatus::Confirmed(4));
}

#[tokio::test]
async fn a_penalty_mined_with_its_dispute_is_confirmed_at_once() {
    let s = scene().await;
    let (dispute, penalty) = watched(&s, 1, 1);
    s.mine(vec![dispute.clone(), penalty]).await;
    assert_eq!(s.tracker(&user(1), &dispute).unwrap().status, PenaltyStatus::Confirmed(1));
}

/// User 1's dispute mined (and its penalty) just before the user expires and is removed; returns
/// the dispute, whose penalty is still followed.
async fn removed_while_its_tracker_is_followed(s: &Scene) -> Transaction {
    let (dispute, penalty) = watched(s, 1, 1);
    let gone = policy().subscription_duration + policy().expiry_delta;
    s.mine_empty(gone - 5).await;
    s.mine(vec![dispute.clone()]).await;
    s.mine(vec![penalty]).await;
    s.mine_empty(gone - s.height()).await;
    assert!(s.user(&user(1)).is_none(), "expired and removed");
    dispute
}

#[tokio::test]
async fn a_tracker_outlives_its_users_removal_and_completes_without_a_refund() {
    let s = scene().await;
    let dispute = removed_while_its_tracker_is_followed(&s).await;
    assert!(s.tracker(&user(1), &dispute).is_some(), "the penalty is still followed");
    s.mine_empty(IRREVOCABLY_RESOLVED).await;
    assert!(s.tracker(&user(1), &dispute).is_none());
    assert!(s.user(&user(1)).is_none(), "no refund brings it back");
}

#[tokio::test]
async fn the_kept_counts_match_a_recount_when_a_removed_user_comes_back_before_its_tracker_ends() {
    let s = scene().await;
    let dispute = removed_while_its_tracker_is_followed(&s).await;
    // Back under a new number, with a new appointment, while the old tracker is still followed.
    s.register(&user(1));
    let (other_dispute, other_penalty) = channel(2);
    assert!(!s.add_appointment(&user(1), &other_dispute, &other_penalty));
    s.mine_empty(IRREVOCABLY_RESOLVED).await;
    assert!(s.tracker(&user(1), &dispute).is_none());
    let kept = s.store.stored_counts();
    assert_eq!((kept.appointments, kept.trackers), (1, [0; 4]));
    assert_eq!(s.restart().store.stored_counts(), kept);
}

#[test]
fn a_penalty_spending_another_transaction_is_not_this_disputes() {
    let (dispute, penalty) = channel(1);
    let txid = dispute.compute_txid();
    let unrelated = spending(OutPoint { txid: bitcoin::hashes::Hash::all_zeros(), vout: 7 });
    assert_eq!(
        crate::watcher::penalty_for(
            &crate::protocol::encrypt_penalty(&penalty, &txid),
            &txid,
            crate::protocol::Dialect::Rust
        ),
        Ok(penalty)
    );
    let err = crate::watcher::penalty_for(
        &crate::protocol::encrypt_penalty(&unrelated, &txid),
        &txid,
        crate::protocol::Dialect::Rust,
    )
    .unwrap_err();
    assert!(err.contains("spends no output"), "{err}");
}
