//! End to end: penalties through fee spikes, races and the mempool. The real `teosd` against the
//! regtest node: a dispute seen in the mempool is answered before it is mined; a dispute replaced
//! in the mempool leaves its appointment watched; the cheater's sweep buried first ends the
//! tracker as lost (slot refunded); a penalty refused for its fee for 150 blocks is sent and
//! buried once fees drop (the old rule dropped it at 100).

use std::time::Duration;

use bitcoin::Transaction;
use teos_tests::backend::Bitcoind;
use teos_tests::tower::{eventually, Fixture, TowerProcess, TowerUser};
use teos_tests::wallet::{commitment_tx, penalty_tx, spend_tx, Funding, Utxo};

const TEST_TIMEOUT: Duration = Duration::from_secs(170);

async fn bounded(test: impl std::future::Future<Output = ()>) {
    tokio::time::timeout(TEST_TIMEOUT, test).await.expect("test timed out");
}

struct Scene {
    bitcoind: Bitcoind,
    funding: Funding,
    tower: TowerProcess,
    user: TowerUser,
    _dir: tempfile::TempDir,
}

async fn scene(extra: &[&str]) -> Scene {
    let Fixture { bitcoind, funding, tower, dir } = Fixture::start(extra).await;
    let user = TowerUser::new(21, &tower.api_url);
    assert_eq!(user.register().await.0, 200);
    Scene { bitcoind, funding, tower, user, _dir: dir }
}

impl Scene {
    /// A commitment-shaped dispute spending a fresh coin, and its penalty (3 sat/vB).
    async fn channel(&mut self, n: u64) -> (Utxo, Transaction, Transaction) {
        let coin = self.funding.next_coin(&self.bitcoind).await.expect("coin");
        let dispute = commitment_tx(&coin, 2, 2, n).expect("commitment");
        let penalty = penalty_tx(&dispute, 0, 3).expect("penalty");
        (coin, dispute, penalty)
    }

    async fn mine(&mut self, n: u32) -> u32 {
        self.funding.mine(&self.bitcoind, n).await.expect("mining");
        let tip = self.bitcoind.tip().await.expect("tip").0;
        self.tower.wait_for_height(tip).await;
        tip
    }

    async fn in_mempool(&self, tx: &Transaction) {
        let txid = tx.compute_txid();
        eventually(&format!("{txid} in bitcoind's mempool"), || async {
            self.bitcoind.mempool_contains(&txid).await.unwrap().then_some(())
        })
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dispute_in_the_mempool_is_answered_before_it_is_mined_and_both_confirm_together() {
    bounded(async {
        let mut s = scene(&["--mempoolpoll", "1"]).await;
        let (_, dispute, penalty) = s.channel(1).await;
        assert_eq!(s.user.add_appointment(&dispute.compute_txid(), &penalty).await.0, 200);
        s.bitcoind.send_raw_transaction(&dispute).await.unwrap();
        // The tower sends the penalty as the dispute's child, before any block.
        s.in_mempool(&penalty).await;
        assert_eq!(s.user.get_appointment(&dispute.compute_txid()).await.1["status"], "being_watched");
        let height = s.mine(1).await;
        assert_eq!(s.bitcoind.tx_confirmations(&dispute.compute_txid()).await.unwrap(), Some(1));
        assert_eq!(s.bitcoind.tx_confirmations(&penalty.compute_txid()).await.unwrap(), Some(1), "in the same block");
        let tracker = s.tower.wait_for_tracker(&dispute.compute_txid(), &s.user.user_id, "confirmed").await;
        assert_eq!(
            (tracker["dispute_height"].as_u64(), tracker["status_height"].as_u64()),
            (Some(height.into()), Some(height.into()))
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dispute_replaced_in_the_mempool_leaves_its_appointment_watched() {
    bounded(async {
        let mut s = scene(&["--mempoolpoll", "1"]).await;
        let (coin, dispute, penalty) = s.channel(2).await;
        assert_eq!(s.user.add_appointment(&dispute.compute_txid(), &penalty).await.0, 200);
        s.bitcoind.send_raw_transaction(&dispute).await.unwrap();
        s.in_mempool(&penalty).await;
        // The dispute (it signals BIP125, as commitments do) is replaced by a richer spend of its
        // coin: the penalty, its child, goes with it.
        let replacement = spend_tx(&[coin], 1, 20).unwrap();
        s.bitcoind.send_raw_transaction(&replacement).await.unwrap();
        assert!(!s.bitcoind.mempool_contains(&dispute.compute_txid()).await.unwrap());
        s.mine(2).await;
        assert_eq!(s.bitcoind.tx_confirmations(&replacement.compute_txid()).await.unwrap(), Some(2));
        assert_eq!(s.user.get_appointment(&dispute.compute_txid()).await.1["status"], "being_watched");
        assert!(s.tower.tracker(&dispute.compute_txid(), &s.user.user_id).await.is_none());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cheaters_sweep_buried_first_ends_the_tracker_as_lost_and_refunds_the_slot() {
    bounded(async {
        let mut s = scene(&[]).await;
        let (_, dispute, penalty) = s.channel(3).await;
        assert_eq!(s.user.add_appointment(&dispute.compute_txid(), &penalty).await.0, 200);
        let slots = s.user.subscription_info().await.1["available_slots"].as_u64().unwrap();
        s.bitcoind.mine_block_with(std::slice::from_ref(&dispute)).await.unwrap();
        s.user.wait_for_status(&dispute.compute_txid(), "dispute_responded").await;
        // The cheater's sweep of the same output gets mined first.
        let sweep = penalty_tx(&dispute, 0, 50).unwrap();
        assert_ne!(sweep.compute_txid(), penalty.compute_txid());
        s.bitcoind.mine_block_with(std::slice::from_ref(&sweep)).await.unwrap();
        let tracker = s.tower.wait_for_tracker(&dispute.compute_txid(), &s.user.user_id, "conflicted").await;
        assert_eq!(tracker["conflicting_txid"], sweep.compute_txid().to_string());
        assert_eq!(tracker["at_risk"], true);
        s.mine(6).await;
        s.user.wait_until_gone(&dispute.compute_txid()).await;
        let info = s.tower.info().await;
        assert_eq!((info["n_penalties_lost"].as_u64(), info["n_penalties_won"].as_u64()), (Some(1), Some(0)), "{info}");
        assert_eq!(s.user.subscription_info().await.1["available_slots"].as_u64(), Some(slots + 1));
        assert!(s.tower.logged("penalty lost"), "{}", s.tower.tail());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_penalty_refused_for_its_fee_for_150_blocks_is_sent_and_buried_once_fees_drop() {
    bounded(async {
        let mut s = scene(&[]).await;
        if s.bitcoind.is_real() {
            eprintln!("skipped: a fee spike at runtime needs the in-process regtest node");
            return;
        }
        let (_, dispute, penalty) = s.channel(4).await;
        let (status, _) = s.user.try_add_appointment_delayed(&dispute.compute_txid(), &penalty, 200).await.unwrap();
        assert_eq!(status, 200);
        // Fees spike above the penalty's 3 sat/vB before the dispute is mined.
        s.bitcoind.set_min_relay_fee(10_000).await.unwrap();
        s.bitcoind.mine_block_with(std::slice::from_ref(&dispute)).await.unwrap();
        let tracker = s.tower.wait_for_tracker(&dispute.compute_txid(), &s.user.user_id, "refused").await;
        assert_eq!(tracker["at_risk"], true, "{tracker}");
        // 150 blocks of refusals: the old rule gave up after 100; this tower keeps trying.
        s.mine(150).await;
        let tracker = s.tower.tracker(&dispute.compute_txid(), &s.user.user_id).await.expect("still tracked");
        assert_eq!(
            (tracker["status"].as_str(), tracker["at_risk"].as_bool()),
            (Some("refused"), Some(true)),
            "{tracker}"
        );
        assert!(!s.bitcoind.mempool_contains(&penalty.compute_txid()).await.unwrap());
        assert!(s.tower.info().await["n_trackers_at_risk"].as_u64() >= Some(1));
        // Fees drop: the next block's retry gets the penalty in, the one after mines it.
        s.bitcoind.set_min_relay_fee(1_000).await.unwrap();
        s.mine(1).await;
        s.in_mempool(&penalty).await;
        s.mine(1).await;
        s.tower.wait_for_tracker(&dispute.compute_txid(), &s.user.user_id, "confirmed").await;
        s.mine(100).await;
        s.user.wait_until_gone(&dispute.compute_txid()).await;
        let info = s.tower.info().await;
        assert_eq!((info["n_penalties_won"].as_u64(), info["n_penalties_lost"].as_u64()), (Some(1), Some(0)), "{info}");
        assert_eq!(info["n_trackers_at_risk"].as_u64(), Some(0), "{info}");
        assert_eq!(s.bitcoind.tx_confirmations(&penalty.compute_txid()).await.unwrap(), Some(101));
    })
    .await;
}
