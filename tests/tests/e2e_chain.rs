//! End to end: the real `teosd` following the chain through reorgs of depth 1 to 10, a
//! 50-block catch-up after downtime, and bitcoind restarts with a new cookie.

use std::time::Duration;

use teos_tests::backend::Bitcoind;
use teos_tests::tower::{TowerProcess, TowerUser};

const TEST_TIMEOUT: Duration = Duration::from_secs(170);

async fn bounded(test: impl std::future::Future<Output = ()>) {
    tokio::time::timeout(TEST_TIMEOUT, test).await.expect("test timed out");
}

async fn tip(bitcoind: &Bitcoind) -> (u32, bitcoin::BlockHash) {
    bitcoind.tip().await.expect("tip")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn follows_reorgs_of_depth_one_to_ten() {
    bounded(async {
        let bitcoind = Bitcoind::start().await.unwrap();
        bitcoind.mine(101).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut tower = TowerProcess::start(&bitcoind, &dir.path().join("teos"), &[]);
        for depth in 1..=10u32 {
            let hashes = bitcoind.mine(depth).await.unwrap();
            let (height, hash) = tip(&bitcoind).await;
            tower.wait_for(&format!("height={height} hash={hash}"));
            // Replace the last `depth` blocks with a longer branch.
            bitcoind.invalidate(&hashes[0]).await.unwrap();
            bitcoind.mine(depth + 1).await.unwrap();
            let (new_height, new_hash) = tip(&bitcoind).await;
            assert_eq!(new_height, height + 1);
            let line = tower.wait_for(&format!("height={new_height} hash={new_hash}"));
            assert!(line.contains("block connected"), "{line}");
            let disconnected = (height - depth + 1..=height)
                .filter(|h| tower.logged(&format!("block disconnected (reorg) height={h} ")))
                .count();
            assert_eq!(disconnected as u32, depth, "depth {depth}: {}", tower.tail());
        }
        assert_eq!(tower.stop().code(), Some(0));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn catches_up_fifty_blocks_missed_while_down_before_serving() {
    bounded(async {
        let bitcoind = Bitcoind::start().await.unwrap();
        bitcoind.mine(101).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut tower = TowerProcess::start(&bitcoind, &dir.path().join("teos"), &[]);
        let user = TowerUser::new(3, &tower.api_url);
        assert_eq!(user.register().await.0, 200);
        assert_eq!(tower.stop().code(), Some(0));
        bitcoind.mine(50).await.unwrap();
        let (height, _) = tip(&bitcoind).await;
        tower.restart();
        // Every missed block was processed, in order, before "Tower ready".
        for h in height - 49..=height {
            assert!(tower.logged(&format!("block connected height={h} ")), "{h}: {}", tower.tail());
        }
        let ready = tower.tail();
        assert!(ready.contains(&format!("Tower ready height={height}")), "{ready}");
        assert_eq!(user.subscription_info().await.0, 200);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bitcoind_restart_with_a_new_cookie_is_followed() {
    bounded(async {
        let bitcoind = Bitcoind::start().await.unwrap();
        bitcoind.mine(101).await.unwrap();
        let old_cookie = std::fs::read_to_string(bitcoind.cookie_path()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let tower = TowerProcess::start(&bitcoind, &dir.path().join("teos"), &[]);
        for _ in 0..2 {
            bitcoind.go_down().await.unwrap();
            tower.wait_for_bitcoind_reachable(false).await;
            bitcoind.come_back().await.unwrap();
            assert_ne!(std::fs::read_to_string(bitcoind.cookie_path()).unwrap(), old_cookie);
            tower.wait_for_bitcoind_reachable(true).await;
            bitcoind.mine(1).await.unwrap();
            let (height, _) = tip(&bitcoind).await;
            tower.wait_for_height(height).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waits_for_bitcoind_at_start_then_starts() {
    bounded(async {
        let bitcoind = Bitcoind::start().await.unwrap();
        bitcoind.mine(101).await.unwrap();
        bitcoind.go_down().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut tower = TowerProcess::launch(&bitcoind, &dir.path().join("teos"), &[]);
        tower.wait_for("waiting for bitcoind");
        bitcoind.come_back().await.unwrap();
        tower.wait_for("Tower ready");
        assert_eq!(tower.stop().code(), Some(0));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refuses_a_bitcoind_on_another_network() {
    bounded(async {
        let bitcoind = Bitcoind::start().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let teosd = teos_tests::tower::binaries_dir().join("teosd");
        let output = tokio::process::Command::new(teosd)
            .arg("--datadir")
            .arg(dir.path())
            .args(["--btcnetwork", "testnet", "--btcrpcconnect", "127.0.0.1", "--apiport", "0", "--rpcport", "0"])
            .args(["--btcrpcport", &bitcoind.rpc_port().to_string(), "--btcrpccookie"])
            .arg(bitcoind.cookie_path())
            .output()
            .await
            .unwrap();
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("bitcoind is running on regtest but teosd is set to run on test"), "{stderr}");
    })
    .await;
}
