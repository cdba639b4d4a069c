//! End to end: the real `teosd` binary against the regtest node (or `BITCOIND_EXE`), driven as
//! a Lightning client would drive it. Register → appointment for a commitment-shaped
//! transaction → the dispute is mined → the penalty reaches the mempool → is mined → is buried
//! 100 blocks deep → the tracker completes. Plus late appointments, reorgs and crashes.

use std::time::Duration;

use bitcoin::Transaction;
use teos_tests::backend::Bitcoind;
use teos_tests::tower::{Fixture, TowerProcess, TowerUser};
use teos_tests::wallet::{commitment_tx, penalty_tx, Funding};

const TEST_TIMEOUT: Duration = Duration::from_secs(170);

struct Scene {
    bitcoind: Bitcoind,
    funding: Funding,
    tower: TowerProcess,
    _dir: tempfile::TempDir,
}

async fn scene(extra: &[&str]) -> Scene {
    let Fixture { bitcoind, funding, tower, dir } = Fixture::start(extra).await;
    Scene { bitcoind, funding, tower, _dir: dir }
}

impl Scene {
    /// A commitment-shaped dispute and the penalty spending its first output.
    async fn channel(&mut self, n: u64) -> (Transaction, Transaction) {
        let coin = self.funding.next_coin(&self.bitcoind).await.expect("coin");
        let commitment = commitment_tx(&coin, 2, 2, n).expect("commitment");
        let penalty = penalty_tx(&commitment, 0, 3).expect("penalty");
        (commitment, penalty)
    }

    async fn mine(&mut self, n: u32) -> u32 {
        self.funding.mine(&self.bitcoind, n).await.expect("mining");
        self.bitcoind.tip().await.expect("tip").0
    }

    /// Waits until the tower has processed the block at `height`.
    async fn wait_for_height(&self, height: u32) {
        self.tower.wait_for_height(height).await;
    }
}

async fn bounded(test: impl std::future::Future<Output = ()>) {
    tokio::time::timeout(TEST_TIMEOUT, test).await.expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn breach_is_answered_and_followed_until_irrevocable() {
    bounded(async {
        let mut s = scene(&[]).await;
        let user = TowerUser::new(7, &s.tower.api_url);
        let (status, registration) = user.register().await;
        assert_eq!(status, 200, "{registration}");
        let slots = registration["available_slots"].as_u64().unwrap();
        let (dispute, penalty) = s.channel(1).await;
        let (status, receipt) = user.add_appointment(&dispute.compute_txid(), &penalty).await;
        assert_eq!(status, 200, "{receipt}");
        assert_eq!(receipt["available_slots"].as_u64(), Some(slots - 1));
        assert_eq!(user.get_appointment(&dispute.compute_txid()).await.1["status"], "being_watched");

        // The dispute is mined: the tower broadcasts the penalty.
        let dispute_block = s.bitcoind.mine_block_with(std::slice::from_ref(&dispute)).await.expect("mine dispute");
        let dispute_height = s.bitcoind.tip().await.unwrap().0;
        let got = user.wait_for_status(&dispute.compute_txid(), "dispute_responded").await;
        assert!(s.bitcoind.mempool_contains(&penalty.compute_txid()).await.unwrap(), "{}", s.tower.tail());
        assert_eq!(got["appointment"]["dispute_txid"], dispute.compute_txid().to_string());
        assert_eq!(got["appointment"]["penalty_txid"], penalty.compute_txid().to_string());
        assert_eq!(got["appointment"]["penalty_rawtx"], bitcoin::consensus::encode::serialize_hex(&penalty));
        assert!(dispute_block != bitcoin::BlockHash::from_raw_hash(bitcoin::hashes::Hash::all_zeros()));

        // Mined, then buried: the tracker completes and the slot comes back.
        let h = s.mine(1).await;
        let tracker = s.tower.wait_for_tracker(&dispute.compute_txid(), &user.user_id, "confirmed").await;
        assert_eq!(tracker["status_height"], h, "{tracker}");
        assert_eq!(s.bitcoind.tx_confirmations(&penalty.compute_txid()).await.unwrap(), Some(1));
        let h = s.mine(99).await.max(h);
        s.wait_for_height(h).await;
        assert_eq!(user.get_appointment(&dispute.compute_txid()).await.1["status"], "dispute_responded");
        s.mine(1).await;
        user.wait_until_gone(&dispute.compute_txid()).await;
        let (_, info) = user.subscription_info().await;
        assert_eq!(info["available_slots"].as_u64(), Some(slots), "{info}");
        assert!(dispute_height > 101);
        assert_eq!(s.tower.stop().code(), Some(0));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn appointment_for_a_dispute_already_mined_is_answered_at_once() {
    bounded(async {
        let mut s = scene(&[]).await;
        let user = TowerUser::new(8, &s.tower.api_url);
        assert_eq!(user.register().await.0, 200);
        let (dispute, penalty) = s.channel(2).await;
        s.bitcoind.mine_block_with(std::slice::from_ref(&dispute)).await.unwrap();
        let h = s.mine(3).await;
        s.wait_for_height(h).await;
        let (status, receipt) = user.add_appointment(&dispute.compute_txid(), &penalty).await;
        assert_eq!(status, 200, "{receipt}");
        user.wait_for_status(&dispute.compute_txid(), "dispute_responded").await;
        assert!(s.bitcoind.mempool_contains(&penalty.compute_txid()).await.unwrap());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reorgs_resend_the_penalty_and_return_the_appointment_to_watching() {
    bounded(async {
        let mut s = scene(&[]).await;
        let user = TowerUser::new(9, &s.tower.api_url);
        assert_eq!(user.register().await.0, 200);
        let (dispute, penalty) = s.channel(3).await;
        assert_eq!(user.add_appointment(&dispute.compute_txid(), &penalty).await.0, 200);
        let txid = dispute.compute_txid();
        let dispute_block = s.bitcoind.mine_block_with(std::slice::from_ref(&dispute)).await.unwrap();
        user.wait_for_status(&txid, "dispute_responded").await;
        let penalty_block = s.bitcoind.mine_block_with(std::slice::from_ref(&penalty)).await.unwrap();
        s.tower.wait_for_tracker(&txid, &user.user_id, "confirmed").await;

        // The penalty's block goes: back to waiting, and sent again once the new branch grows.
        s.bitcoind.invalidate(&penalty_block).await.unwrap();
        s.tower.wait_for_tracker(&txid, &user.user_id, "broadcast").await;
        let h = s.mine(1).await;
        let tracker = s.tower.wait_for_tracker(&txid, &user.user_id, "confirmed").await;
        assert_eq!(tracker["status_height"], h, "{tracker}");
        assert_eq!(s.bitcoind.tx_confirmations(&penalty.compute_txid()).await.unwrap(), Some(1));

        // The dispute's block goes too: the appointment is watched again, then answered again.
        s.bitcoind.invalidate(&dispute_block).await.unwrap();
        user.wait_for_status(&txid, "being_watched").await;
        s.bitcoind.mine_block_with(std::slice::from_ref(&dispute)).await.unwrap();
        user.wait_for_status(&txid, "dispute_responded").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_mid_response_resumes_after_restart() {
    bounded(async {
        let mut s = scene(&[]).await;
        let user = TowerUser::new(10, &s.tower.api_url);
        assert_eq!(user.register().await.0, 200);
        let (dispute, penalty) = s.channel(4).await;
        assert_eq!(user.add_appointment(&dispute.compute_txid(), &penalty).await.0, 200);
        s.tower.kill9();
        // While the tower is down: the dispute and 5 more blocks; the penalty must still go out.
        s.bitcoind.mine_block_with(std::slice::from_ref(&dispute)).await.unwrap();
        s.mine(5).await;
        s.tower.restart();
        // Ready means caught up: the breach was answered before the API opened.
        assert_eq!(user.get_appointment(&dispute.compute_txid()).await.1["status"], "dispute_responded");
        assert!(s.bitcoind.mempool_contains(&penalty.compute_txid()).await.unwrap());
        s.tower.kill9();
        s.mine(1).await;
        s.tower.restart();
        let tracker = s.tower.tracker(&dispute.compute_txid(), &user.user_id).await.expect("a tracker");
        assert_eq!(tracker["status"], "confirmed", "{tracker}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bitcoind_outage_delays_but_does_not_lose_the_penalty() {
    bounded(async {
        let mut s = scene(&[]).await;
        let user = TowerUser::new(11, &s.tower.api_url);
        assert_eq!(user.register().await.0, 200);
        let (dispute, penalty) = s.channel(5).await;
        s.bitcoind.go_down().await.unwrap();
        s.tower.wait_for_bitcoind_reachable(false).await;
        // Appointments are still accepted while bitcoind is away.
        let (status, receipt) = user.add_appointment(&dispute.compute_txid(), &penalty).await;
        assert_eq!(status, 200, "{receipt}");
        s.bitcoind.come_back().await.unwrap();
        s.tower.wait_for_bitcoind_reachable(true).await;
        s.bitcoind.mine_block_with(std::slice::from_ref(&dispute)).await.unwrap();
        user.wait_for_status(&dispute.compute_txid(), "dispute_responded").await;
        assert!(s.bitcoind.mempool_contains(&penalty.compute_txid()).await.unwrap());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_breaches_in_one_block() {
    bounded(async {
        let mut s = scene(&[]).await;
        let user = TowerUser::new(12, &s.tower.api_url);
        assert_eq!(user.register().await.0, 200);
        let coin = s.funding.next_coin(&s.bitcoind).await.unwrap();
        // One funding transaction with 100 outputs, each then spent by its own commitment.
        let split =
            teos_tests::wallet::split_tx(&[coin], 100, 2, bitcoin::Sequence::MAX, bitcoin::absolute::LockTime::ZERO)
                .unwrap();
        s.bitcoind.mine_block_with(std::slice::from_ref(&split)).await.unwrap();
        let mut disputes = Vec::new();
        for vout in 0..100u32 {
            let commitment = commitment_tx(&teos_tests::wallet::Utxo::of(&split, vout), 1, 2, u64::from(vout)).unwrap();
            let penalty = penalty_tx(&commitment, 0, 3).unwrap();
            assert_eq!(user.add_appointment(&commitment.compute_txid(), &penalty).await.0, 200);
            disputes.push((commitment, penalty));
        }
        let commitments: Vec<_> = disputes.iter().map(|(c, _)| c.clone()).collect();
        s.bitcoind.mine_block_with(&commitments).await.unwrap();
        let h = s.bitcoind.tip().await.unwrap().0;
        s.wait_for_height(h).await;
        assert_eq!(s.tower.info().await["n_responder_trackers"], 100);
        for (_, penalty) in &disputes {
            assert!(s.bitcoind.mempool_contains(&penalty.compute_txid()).await.unwrap());
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lapsed_users_are_removed_but_their_penalties_are_followed_to_the_end() {
    bounded(async {
        let mut s = scene(&["--subscriptionduration", "5", "--expirydelta", "2"]).await;
        let user = TowerUser::new(13, &s.tower.api_url);
        let (_, registration) = user.register().await;
        let expiry = registration["subscription_expiry"].as_u64().unwrap() as u32;
        let (dispute, penalty) = s.channel(6).await;
        let (idle, idle_penalty) = s.channel(7).await;
        assert_eq!(user.add_appointment(&dispute.compute_txid(), &penalty).await.0, 200);
        assert_eq!(user.add_appointment(&idle.compute_txid(), &idle_penalty).await.0, 200);
        // The funding coins above were mined: the subscription may already be near its end.
        s.bitcoind.mine_block_with(std::slice::from_ref(&dispute)).await.unwrap();
        user.wait_for_status(&dispute.compute_txid(), "dispute_responded").await;
        let h = s.mine(expiry.saturating_sub(s.bitcoind.tip().await.unwrap().0) + 3).await;
        s.wait_for_height(h).await;
        let removed =
            teos_tests::tower::teos_cli(&s.tower.datadir, s.tower.rpc_port, &["getuser", &user.user_id]).await;
        assert_eq!(removed.status.code(), Some(1), "the user is gone: {removed:?}");
        let (status, body) = user.subscription_info().await;
        assert_eq!((status, body["error_code"].as_u64()), (401, Some(7)), "{body}");
        // The penalty is still followed: it confirms and the tracker completes 100 blocks later.
        assert!(s.bitcoind.tx_confirmations(&penalty.compute_txid()).await.unwrap().is_some_and(|c| c >= 1));
        assert!(s.tower.tracker(&dispute.compute_txid(), &user.user_id).await.is_some());
        let h = s.mine(100).await;
        s.wait_for_height(h).await;
        assert!(s.tower.tracker(&dispute.compute_txid(), &user.user_id).await.is_none(), "completed");
        // The idle appointment went with the user: its dispute now triggers nothing.
        s.bitcoind.mine_block_with(std::slice::from_ref(&idle)).await.unwrap();
        let h = s.bitcoind.tip().await.unwrap().0;
        s.wait_for_height(h).await;
        assert!(s.tower.tracker(&idle.compute_txid(), &user.user_id).await.is_none());
        assert!(!s.bitcoind.mempool_contains(&idle_penalty.compute_txid()).await.unwrap());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_late_appointment_survives_a_bitcoind_outage_and_a_crash() {
    bounded(async {
        let mut s = scene(&[]).await;
        let user = TowerUser::new(14, &s.tower.api_url);
        assert_eq!(user.register().await.0, 200);
        let (dispute, penalty) = s.channel(8).await;
        s.bitcoind.mine_block_with(std::slice::from_ref(&dispute)).await.unwrap();
        let h = s.mine(2).await;
        s.wait_for_height(h).await;

        // bitcoind is away when the appointment arrives: it is accepted and queued.
        s.bitcoind.go_down().await.unwrap();
        s.tower.wait_for_bitcoind_reachable(false).await;
        let (status, receipt) = user.add_appointment(&dispute.compute_txid(), &penalty).await;
        assert_eq!(status, 200, "{receipt}");
        // The tower crashes before bitcoind comes back: the queued check is on disk.
        s.tower.kill9();
        s.bitcoind.come_back().await.unwrap();
        s.tower.restart();
        user.wait_for_status(&dispute.compute_txid(), "dispute_responded").await;
        assert!(s.bitcoind.mempool_contains(&penalty.compute_txid()).await.unwrap(), "{}", s.tower.tail());
    })
    .await;
}
