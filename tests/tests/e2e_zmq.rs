//! End to end: the real `teosd` hears of new blocks through bitcoind's ZMQ `hashblock`
//! notifications. Polling is slowed to once an hour (`--pollingdelta 3600`: one poll at start,
//! then none within the test), so ZMQ is the only thing that can make the tower notice a block;
//! through a reorg and a bitcoind restart too. The latency from `mine` returning to the tower's
//! "block connected" line is printed (informational: not asserted). With `--zmqpubrawtx` and
//! mempool polling off, a dispute entering the mempool is answered over ZMQ alone.

use std::time::{Duration, Instant};

use teos_tests::backend::Bitcoind;
use teos_tests::tower::{eventually, TowerProcess, TowerUser};
use teos_tests::wallet::{commitment_tx, penalty_tx, Funding};

const TEST_TIMEOUT: Duration = Duration::from_secs(170);

async fn bounded(test: impl std::future::Future<Output = ()>) {
    tokio::time::timeout(TEST_TIMEOUT, test).await.expect("test timed out");
}

/// Waits until the in-process node has received `n` `hashblock` subscriptions, after which it
/// delivers every notification to the tower (a publisher drops what it sends before a
/// subscription reaches it). A real bitcoind does not tell; there the tower's log line is all
/// there is.
async fn subscribed(bitcoind: &Bitcoind, n: u64) {
    if let Some(node) = bitcoind.regtest_node() {
        node.wait_for_zmq_subscriptions(n).await;
    }
}

/// The tower on `dir`, polling once an hour, fed by ZMQ with `flag` (`--zmqpubhashblock` or
/// `--zmqpubrawblock`) on `endpoint`.
fn zmq_tower(bitcoind: &Bitcoind, dir: &std::path::Path, flag: &str, endpoint: &str) -> TowerProcess {
    TowerProcess::start(bitcoind, &dir.join("teos"), &["--pollingdelta", "3600", flag, endpoint])
}

/// Waits for `needle`, which may already have been logged.
fn wait_logged(tower: &mut TowerProcess, needle: &str) {
    if !tower.logged(needle) {
        tower.wait_for(needle);
    }
}

/// Mines one block and waits for the tower to log it connected; returns the time from `mine`
/// returning to that line.
async fn mine_and_time(bitcoind: &Bitcoind, tower: &mut TowerProcess) -> Duration {
    let (height, _) = bitcoind.tip().await.unwrap();
    let hash = bitcoind.mine(1).await.unwrap()[0];
    let mined = Instant::now();
    let line = tower.wait_for(&format!("block connected height={} ", height + 1));
    let latency = mined.elapsed();
    assert!(line.contains(&format!("hash={hash}")), "{line}");
    latency
}

fn report(what: &str, latencies: &[Duration]) {
    let ms: Vec<String> = latencies.iter().map(|d| format!("{:.1}", d.as_secs_f64() * 1000.0)).collect();
    println!("ZMQ notification latency, mine() returned -> tower's `block connected` ({what}): [{}] ms", ms.join(", "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blocks_are_noticed_through_zmq_alone_and_after_a_bitcoind_restart() {
    bounded(async {
        let bitcoind = Bitcoind::start_with_zmq().await.unwrap();
        bitcoind.mine(1).await.unwrap();
        let endpoint = bitcoind.zmq_hashblock_endpoint().expect("ZMQ enabled");
        let dir = tempfile::tempdir().unwrap();
        let mut tower = zmq_tower(&bitcoind, dir.path(), "--zmqpubhashblock", &endpoint);
        wait_logged(&mut tower, "ZMQ hashblock feed connected");
        subscribed(&bitcoind, 1).await;

        let mut latencies = Vec::new();
        for _ in 0..5 {
            latencies.push(mine_and_time(&bitcoind, &mut tower).await);
        }
        report("5 blocks", &latencies);

        // A reorg: the stale tip goes, the longer branch comes, all on notifications.
        let (height, stale) = bitcoind.tip().await.unwrap();
        bitcoind.invalidate(&stale).await.unwrap();
        let branch = bitcoind.mine(2).await.unwrap();
        tower.wait_for(&format!("block connected height={} hash={}", height + 1, branch[1]));
        assert!(tower.logged(&format!("block disconnected (reorg) height={height} hash={stale}")), "{}", tower.tail());

        // bitcoind restarts: the feed is lost, comes back by itself, and carries blocks again.
        bitcoind.go_down().await.unwrap();
        tower.wait_for("ZMQ hashblock feed lost");
        bitcoind.come_back().await.unwrap();
        tower.wait_for("ZMQ hashblock feed back");
        subscribed(&bitcoind, 2).await;
        let after_restart = mine_and_time(&bitcoind, &mut tower).await;
        report("after the restart", &[after_restart]);
        assert!(tower.logged("ZMQ hashblock feed lost"));
        assert_eq!(tower.stop().code(), Some(0));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreachable_zmq_endpoint_leaves_polling_in_charge() {
    bounded(async {
        let bitcoind = Bitcoind::start().await.unwrap();
        bitcoind.mine(1).await.unwrap();
        // Nobody publishes on this port.
        let endpoint = format!("tcp://127.0.0.1:{}", teos_tests::backend::free_port().unwrap());
        let dir = tempfile::tempdir().unwrap();
        let mut tower = TowerProcess::start(&bitcoind, &dir.path().join("teos"), &["--zmqpubhashblock", &endpoint]);
        wait_logged(&mut tower, "ZMQ hashblock feed unavailable");
        let (height, _) = bitcoind.tip().await.unwrap();
        bitcoind.mine(1).await.unwrap();
        tower.wait_for(&format!("block connected height={} ", height + 1));
        assert_eq!(tower.stop().code(), Some(0));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn whole_blocks_come_over_zmq_rawblock_and_missing_ones_over_rpc() {
    bounded(async {
        let bitcoind = Bitcoind::start_with_zmq().await.unwrap();
        bitcoind.mine(1).await.unwrap();
        // bitcoind given -zmqpubhashblock and -zmqpubrawblock on the same endpoint.
        let endpoint = bitcoind.zmq_hashblock_endpoint().expect("ZMQ enabled");
        let dir = tempfile::tempdir().unwrap();
        let mut tower = zmq_tower(&bitcoind, dir.path(), "--zmqpubrawblock", &endpoint);
        wait_logged(&mut tower, "ZMQ rawblock feed connected");
        subscribed(&bitcoind, 1).await;

        // Each new tip arrives whole: no getblock.
        for _ in 0..3 {
            let (height, _) = bitcoind.tip().await.unwrap();
            let hash = bitcoind.mine(1).await.unwrap()[0];
            let line = tower.wait_for(&format!("block connected height={} hash={hash}", height + 1));
            assert!(line.contains("source=\"zmq\"") || line.contains("source=zmq"), "{line}");
        }

        // Blocks found while the tower was down were offered to nobody: fetched with getblock.
        assert_eq!(tower.stop().code(), Some(0));
        let (height, _) = bitcoind.tip().await.unwrap();
        let missed = bitcoind.mine(2).await.unwrap();
        let mut tower = zmq_tower(&bitcoind, dir.path(), "--zmqpubrawblock", &endpoint);
        // (Caught up before the tower is ready: these lines may already be behind us.)
        for (i, hash) in missed.iter().enumerate() {
            let height = height + 1 + i as u32;
            wait_logged(&mut tower, &format!("block connected height={height} hash={hash} breaches=0 source=\"rpc\""));
        }
        assert_eq!(tower.stop().code(), Some(0));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dispute_heard_over_zmq_rawtx_is_answered_with_mempool_polling_off() {
    bounded(async {
        let bitcoind = Bitcoind::start_with_zmq().await.unwrap();
        let mut funding = Funding::new();
        funding.mine(&bitcoind, 101).await.unwrap();
        let endpoint = bitcoind.zmq_hashblock_endpoint().expect("ZMQ enabled");
        let dir = tempfile::tempdir().unwrap();
        // Blocks by polling (once an hour), the mempool by ZMQ alone: never polled.
        let args = ["--pollingdelta", "3600", "--mempoolpoll", "0", "--zmqpubrawtx", &endpoint];
        let mut tower = TowerProcess::start(&bitcoind, &dir.path().join("teos"), &args);
        wait_logged(&mut tower, "ZMQ rawtx feed connected");
        subscribed(&bitcoind, 1).await;

        let user = TowerUser::new(7, &tower.api_url);
        assert_eq!(user.register().await.0, 200);
        let coin = funding.next_coin(&bitcoind).await.unwrap();
        let dispute = commitment_tx(&coin, 2, 2, 9).unwrap();
        let penalty = penalty_tx(&dispute, 0, 3).unwrap();
        assert_eq!(user.add_appointment(&dispute.compute_txid(), &penalty).await.0, 200);

        let sent = Instant::now();
        bitcoind.send_raw_transaction(&dispute).await.unwrap();
        let txid = penalty.compute_txid();
        eventually(&format!("penalty {txid} in bitcoind's mempool"), || async {
            bitcoind.mempool_contains(&txid).await.unwrap().then_some(())
        })
        .await;
        println!("dispute sent -> penalty in the mempool over ZMQ rawtx: {:.1} ms", sent.elapsed().as_secs_f64() * 1e3);
        // No block was mined: the tower still watches, and both confirm in the next block.
        assert_eq!(user.get_appointment(&dispute.compute_txid()).await.1["status"], "being_watched");
        bitcoind.mine(1).await.unwrap();
        assert_eq!(bitcoind.tx_confirmations(&txid).await.unwrap(), Some(1));
        assert_eq!(tower.stop().code(), Some(0));
    })
    .await;
}
