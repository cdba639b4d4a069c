//! End to end: an online backup and a restore, as docs/operations.md tells the operator to do
//! them. The real `teosd` against the regtest node: `teos-cli backup` while the tower runs, more
//! appointments and blocks after it, the store lost, the backup put in its place, teosd started
//! again: it catches up from the backup's tip through the blocks mined meanwhile, answering the
//! breach it missed there, and answers a later breach of an appointment from before the backup.

use std::path::Path;
use std::time::Duration;

use bitcoin::Transaction;
use teos_tests::tower::{teos_cli, Fixture, TowerUser};
use teos_tests::wallet::{commitment_tx, penalty_tx, Funding};

const TEST_TIMEOUT: Duration = Duration::from_secs(170);

async fn bounded(test: impl std::future::Future<Output = ()>) {
    tokio::time::timeout(TEST_TIMEOUT, test).await.expect("test timed out");
}

/// A commitment-shaped dispute spending a fresh coin, and its penalty.
async fn channel(
    funding: &mut Funding,
    bitcoind: &teos_tests::backend::Bitcoind,
    n: u64,
) -> (Transaction, Transaction) {
    let coin = funding.next_coin(bitcoind).await.expect("coin");
    let dispute = commitment_tx(&coin, 2, 2, n).expect("commitment");
    let penalty = penalty_tx(&dispute, 0, 3).expect("penalty");
    (dispute, penalty)
}

/// `cp -a from to`, for a directory of files (a RocksDB checkpoint).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("creating the copy");
    for entry in std::fs::read_dir(from).expect("reading the backup") {
        let entry = entry.expect("entry");
        assert!(entry.file_type().expect("type").is_file(), "{:?}", entry.path());
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copying");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restored_backup_catches_up_and_answers_the_breaches_of_appointments_from_before_it() {
    bounded(async {
        let Fixture { bitcoind, mut funding, mut tower, dir } = Fixture::start(&[]).await;
        let user = TowerUser::new(31, &tower.api_url);
        assert_eq!(user.register().await.0, 200);
        // Before the backup: one channel breached while the tower is down after the restore, one
        // breached once it runs again.
        let (missed, missed_penalty) = channel(&mut funding, &bitcoind, 1).await;
        let (later, later_penalty) = channel(&mut funding, &bitcoind, 2).await;
        for (dispute, penalty) in [(&missed, &missed_penalty), (&later, &later_penalty)] {
            assert_eq!(user.add_appointment(&dispute.compute_txid(), penalty).await.0, 200);
        }
        let (tip, tip_hash) = bitcoind.tip().await.expect("tip");
        tower.wait_for_height(tip).await;

        // The backup, taken while the tower runs.
        let backup_dir = dir.path().join("backups/first");
        let backup = tower.cli(&["backup", backup_dir.to_str().expect("utf-8 path")]).await;
        assert_eq!(backup["tip_height"].as_u64(), Some(u64::from(tip)), "{backup}");
        assert_eq!(backup["tip_hash"], tip_hash.to_string());
        assert_eq!(backup["dir"], backup_dir.to_str().expect("utf-8 path"));
        assert!(backup["size_bytes"].as_u64() > Some(0), "{backup}");
        let files = backup["files"].as_array().expect("files").clone();
        assert!(files.iter().any(|f| f == "client-key.pem") && files.iter().any(|f| f == "ca.pem"), "{backup}");
        assert!(backup_dir.join("db/CURRENT").exists());
        // The same directory again is refused: it is not empty any more.
        let again = teos_cli(&tower.datadir, tower.rpc_port, &["backup", backup_dir.to_str().expect("path")]).await;
        assert_eq!(again.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&again.stderr).contains("is not an empty directory"), "{again:?}");

        // After the backup: another appointment and more blocks; then the data directory's store
        // is lost and the backup restored, as docs/operations.md says.
        let (after, after_penalty) = channel(&mut funding, &bitcoind, 3).await;
        assert_eq!(user.add_appointment(&after.compute_txid(), &after_penalty).await.0, 200);
        funding.mine(&bitcoind, 3).await.expect("mining");
        tower.wait_for_height(bitcoind.tip().await.expect("tip").0).await;
        assert!(tower.stop().success(), "{}", tower.tail());
        let db = tower.datadir.join("regtest/db");
        std::fs::remove_dir_all(&db).expect("losing the store");
        copy_dir(&backup_dir.join("db"), &db);

        // While the tower is down, the missed channel's dispute is mined, then more blocks.
        bitcoind.mine_block_with(std::slice::from_ref(&missed)).await.expect("mining the dispute");
        funding.mine(&bitcoind, 2).await.expect("mining");
        let (down_tip, _) = bitcoind.tip().await.expect("tip");

        tower.restart();
        // Ready means caught up: every block from the backup's tip on was processed.
        assert_eq!(tower.info().await["tip_height"].as_u64(), Some(u64::from(down_tip)));
        let tracker = tower.tracker(&missed.compute_txid(), &user.user_id).await.expect("the missed breach answered");
        assert_eq!(tracker["penalty_txid"], missed_penalty.compute_txid().to_string());
        assert_eq!(tracker["dispute_height"].as_u64(), Some(u64::from(down_tip - 2)), "{tracker}");
        user.wait_for_status(&missed.compute_txid(), "dispute_responded").await;
        assert!(bitcoind.mempool_contains(&missed_penalty.compute_txid()).await.expect("mempool"));
        // The appointment accepted after the backup is gone (docs/operations.md says so).
        assert_eq!(user.get_appointment(&after.compute_txid()).await.0, 404);

        // A breach after the restore, of an appointment from before the backup, is answered.
        bitcoind.mine_block_with(std::slice::from_ref(&later)).await.expect("mining the dispute");
        user.wait_for_status(&later.compute_txid(), "dispute_responded").await;
        funding.mine(&bitcoind, 1).await.expect("mining");
        tower.wait_for_height(bitcoind.tip().await.expect("tip").0).await;
        for (dispute, penalty) in [(&missed, &missed_penalty), (&later, &later_penalty)] {
            tower.wait_for_tracker(&dispute.compute_txid(), &user.user_id, "confirmed").await;
            assert!(bitcoind.tx_confirmations(&penalty.compute_txid()).await.expect("confirmations") >= Some(1));
        }
        assert!(tower.logged("admin: backup taken"), "{}", tower.tail());
    })
    .await;
}
