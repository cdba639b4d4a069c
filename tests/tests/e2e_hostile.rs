//! End to end: the real `teosd` under attack from strangers who pay nothing. Half-open
//! connections beyond the caps while an honest client still gets receipts; idle keep-alive
//! connections closed; the rate limit and its code; the user cap; a data directory on a small
//! file system filled by public writes while breaches keep being answered; and a full disk at
//! start, a clear non-zero exit that a restart recovers from once there is room.
//!
//! The small file system is a tmpfs mounted for the test; where mounting is not allowed (not
//! root, no CAP_SYS_ADMIN) those two tests say so and pass without running, and the same
//! behaviour is covered in memory by `teosd`'s follower tests (`FailingKv`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bitcoin::Transaction;
use teos_tests::backend::Bitcoind;
use teos_tests::tower::{TowerProcess, TowerUser};
use teos_tests::wallet::{commitment_tx, penalty_tx, Funding};
use teosd::protocol::Locator;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const TEST_TIMEOUT: Duration = Duration::from_secs(170);

async fn bounded(test: impl std::future::Future<Output = ()>) {
    tokio::time::timeout(TEST_TIMEOUT, test).await.expect("test timed out");
}

/// A node with 101 blocks, coins to make channels from, and a tower started with `extra` in
/// `datadir`.
async fn scene(datadir: &Path, extra: &[&str]) -> (Bitcoind, Funding, TowerProcess) {
    let bitcoind = Bitcoind::start().await.expect("bitcoind");
    let mut funding = Funding::new();
    funding.mine(&bitcoind, 101).await.expect("mining");
    let tower = TowerProcess::start(&bitcoind, datadir, extra);
    (bitcoind, funding, tower)
}

async fn channel(bitcoind: &Bitcoind, funding: &mut Funding, n: u64) -> (Transaction, Transaction) {
    let coin = funding.next_coin(bitcoind).await.expect("coin");
    let commitment = commitment_tx(&coin, 2, 2, n).expect("commitment");
    let penalty = penalty_tx(&commitment, 0, 3).expect("penalty");
    (commitment, penalty)
}

/// A connection from `source` (any 127.x.y.z: loopback answers them all) to `api_url`.
async fn connect_from(source: &str, api_url: &str) -> TcpStream {
    let target: SocketAddr = api_url.trim_start_matches("http://").parse().expect("api address");
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind(format!("{source}:0").parse().expect("source")).expect("bind");
    socket.connect(target).await.expect("connect")
}

/// Whether the server closes `stream` within `within` (reads EOF or a reset).
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 512];
    loop {
        match tokio::time::timeout(within, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue, // an answer (408, say); the close follows
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn half_open_connections_beyond_the_caps_are_closed_and_honest_clients_still_get_receipts() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let limits = ["--httpmaxconnectionsperip", "16", "--httpmaxconnections", "64", "--httpheadertimeout", "4"];
        let (bitcoind, mut funding, tower) = scene(&dir.path().join("teos"), &limits).await;
        // 300 connections from one address, each sending half a request head, then nothing.
        let mut attack = Vec::new();
        let opened = Instant::now();
        for _ in 0..300 {
            let mut stream = connect_from("127.0.0.2", &tower.api_url).await;
            let _ = stream.write_all(b"POST /register HTTP/1.1\r\nHost: x\r\n").await;
            attack.push(stream);
        }
        // The last is over the address's cap: held a second, unread, then closed (closing it at
        // once would let the client reopen it at once, tens of thousands of times a second).
        let last = attack.last_mut().unwrap();
        let since = Instant::now();
        assert!(closed_within(last, Duration::from_secs(10)).await, "a refused connection is closed");
        let held = since.duration_since(opened) + since.elapsed();
        assert!(held >= Duration::from_millis(900), "closed after {held:?}, before the hold");
        // An honest client (another address) is served meanwhile.
        let user = TowerUser::new(1, &tower.api_url);
        let (status, registration) = user.register().await;
        assert_eq!(status, 200, "{registration}");
        let (dispute, penalty) = channel(&bitcoind, &mut funding, 1).await;
        let (status, receipt) = user.add_appointment(&dispute.compute_txid(), &penalty).await;
        assert_eq!(status, 200, "{receipt}");

        // Beyond the per-address cap they were closed after the hold; the 16 let in go at the
        // header timeout.
        let started = Instant::now();
        let mut closed_early = 0;
        for stream in attack.iter_mut() {
            if closed_within(stream, Duration::from_millis(100)).await {
                closed_early += 1;
            }
        }
        assert!(closed_early >= 300 - 16, "{closed_early} closed after the hold, before the header timeout");
        for stream in attack.iter_mut() {
            assert!(closed_within(stream, Duration::from_secs(5)).await, "held past the header timeout");
        }
        assert!(started.elapsed() < Duration::from_secs(8), "{:?}", started.elapsed());

        // From many addresses at once, past the total cap: the newest evict the longest idle, and
        // an honest client still gets its receipt.
        let mut swarm = Vec::new();
        let swarm_opened = Instant::now();
        for source in 10..20 {
            for _ in 0..16 {
                let mut stream = connect_from(&format!("127.0.0.{source}"), &tower.api_url).await;
                let _ = stream.write_all(b"POST /add_appointment HTTP/1.1\r\nHost: x\r\n").await;
                swarm.push(stream);
            }
        }
        let (dispute, penalty) = channel(&bitcoind, &mut funding, 2).await;
        let (status, receipt) = user.add_appointment(&dispute.compute_txid(), &penalty).await;
        assert_eq!(status, 200, "{receipt}");
        // Evicted at once, or refused and held a second first; those let in stay until the header
        // timeout (4 s).
        let mut evicted = 0;
        let deadline = swarm_opened + Duration::from_millis(2500);
        for stream in swarm.iter_mut() {
            if closed_within(stream, deadline.saturating_duration_since(Instant::now())).await {
                evicted += 1;
            }
        }
        assert!(evicted >= 160 - 64, "{evicted} of 160 closed to stay within 64");
        drop(swarm);

        // A keep-alive connection that goes quiet after its answer is closed too.
        let mut idle = connect_from("127.0.0.3", &tower.api_url).await;
        idle.write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut head = [0u8; 64];
        let n = idle.read(&mut head).await.unwrap();
        assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 200"));
        let idled = Instant::now();
        assert!(closed_within(&mut idle, Duration::from_secs(6)).await, "an idle keep-alive connection stays");
        assert!(idled.elapsed() >= Duration::from_millis(1500), "{:?}", idled.elapsed());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn registrations_over_the_rate_limit_get_429_and_code_7_and_a_full_tower_refuses_new_users() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let (_bitcoind, _funding, tower) = scene(&dir.path().join("teos"), &["--maxusers", "3"]).await;
        let mut statuses = Vec::new();
        for n in 1..=12u8 {
            let (status, body) = TowerUser::new(1 + n % 2, &tower.api_url).register().await;
            statuses.push(status);
            if status == 429 {
                assert_eq!(body["error_code"], 7, "{body}");
                break;
            }
        }
        assert_eq!(statuses[..10], [200; 10], "10 per minute are allowed");
        assert_eq!(statuses.get(10), Some(&429));

        // The user cap: a third user fits, a fourth does not (from another source, under its own
        // rate limit: X-Real-IP is not trusted without --behindproxy, so use a fresh tower).
        let dir = tempfile::tempdir().unwrap();
        let (_bitcoind, _funding, tower) = scene(&dir.path().join("teos"), &["--maxusers", "2"]).await;
        assert_eq!(TowerUser::new(1, &tower.api_url).register().await.0, 200);
        assert_eq!(TowerUser::new(2, &tower.api_url).register().await.0, 200);
        let (status, body) = TowerUser::new(3, &tower.api_url).register().await;
        assert_eq!((status, body["error_code"].as_u64()), (503, Some(65)), "{body}");
        assert_eq!(TowerUser::new(1, &tower.api_url).register().await.0, 200, "registered users renew");
    })
    .await;
}

/// A tmpfs of `mib` MiB mounted at a new directory, unmounted on drop; `None` where mounting is
/// not allowed.
struct SmallDisk {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl SmallDisk {
    fn mount(mib: u32) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().ok()?;
        let path = dir.path().join("small");
        std::fs::create_dir(&path).ok()?;
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(&path)
            .output()
            .is_ok_and(|out| out.status.success());
        if !mounted {
            eprintln!("cannot mount a tmpfs here (not root?): small-disk test skipped; see teosd's follower tests");
            return None;
        }
        Some(SmallDisk { _dir: dir, path })
    }

    /// Fills the file system but for `leave` bytes.
    fn fill_leaving(&self, leave: u64) -> PathBuf {
        let free = {
            let stat = Command::new("df").args(["-B1", "--output=avail"]).arg(&self.path).output().expect("df");
            let text = String::from_utf8_lossy(&stat.stdout).into_owned();
            text.lines().nth(1).and_then(|l| l.trim().parse::<u64>().ok()).expect("free bytes")
        };
        let filler = self.path.join("filler");
        let size = free.saturating_sub(leave);
        std::fs::write(&filler, vec![0u8; size as usize]).expect("filler");
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn public_writes_stop_at_the_disk_reserve_and_breaches_are_still_answered() {
    let Some(disk) = SmallDisk::mount(48) else { return };
    bounded(async {
        let datadir = disk.path.join("teos");
        let options = ["--diskreservemib", "24", "--appointmentspersecond", "0", "--maxblobsize", "2048"];
        let (bitcoind, mut funding, tower) = scene(&datadir, &options).await;
        let (victim, attacker) = (TowerUser::new(1, &tower.api_url), TowerUser::new(2, &tower.api_url));
        assert_eq!(victim.register().await.0, 200);
        assert_eq!(attacker.register().await.0, 200);
        let (dispute, penalty) = channel(&bitcoind, &mut funding, 1).await;
        assert_eq!(victim.add_appointment(&dispute.compute_txid(), &penalty).await.0, 200);

        // The attacker fills the disk with 2 kB blobs (incompressible) until the tower refuses
        // (507, code 7).
        let mut accepted = 0u32;
        let mut noise = 0x9e37_79b9_7f4a_7c15u64;
        let refusal = loop {
            let blob: Vec<u8> = (0..2000)
                .map(|_| {
                    noise ^= noise << 13;
                    noise ^= noise >> 7;
                    noise ^= noise << 17;
                    noise as u8
                })
                .collect();
            let mut locator = [7u8; 16];
            locator[..4].copy_from_slice(&accepted.to_be_bytes());
            let locator = Locator::from_slice(&locator).unwrap();
            let (status, body) = attacker.try_add_blob(locator, blob).await.expect("tower answers");
            if status != 200 {
                break (status, body);
            }
            accepted += 1;
            assert!(accepted < 20_000, "the reserve never stopped the writes");
        };
        assert_eq!((refusal.0, refusal.1["error_code"].as_u64()), (507, Some(7)), "{}", refusal.1);
        assert!(accepted > 100, "{accepted} accepted before the reserve");
        let (status, health) = tower.health().await;
        assert_eq!(status, 200, "still following the chain: {health}");

        // Blocks keep being processed, and the victim's breach is answered.
        bitcoind.mine_block_with(std::slice::from_ref(&dispute)).await.unwrap();
        victim.wait_for_status(&dispute.compute_txid(), "dispute_responded").await;
        assert!(bitcoind.mempool_contains(&penalty.compute_txid()).await.unwrap());
        funding.mine(&bitcoind, 3).await.unwrap();
        let tip = bitcoind.tip().await.unwrap().0;
        tower.wait_for_height(tip).await;
        // The store took every block. Whether the disk is still below the reserve depends on
        // what RocksDB has reclaimed since (a memtable flush deletes its write-ahead log): the
        // report must agree with the free space it shows.
        let info = tower.info().await;
        assert_eq!(info["store_ok"].as_bool(), Some(true), "{info}");
        let free = info["disk_free_bytes"].as_u64().expect("disk_free_bytes");
        assert_eq!(info["disk_above_reserve"].as_bool(), Some(free >= 24 << 20), "{info}");
    })
    .await;
}

/// RocksDB preallocates its write-ahead log, so a disk filled under a running tower does not fail
/// the next (small) block commit at once; that running-tower path (health false, gettowerinfo's
/// `last_error`, the non-zero exit after `--commitfailureexit`) is covered in memory by teosd's
/// follower, health and API tests. Here: the disk fills while the tower is down.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_at_start_is_a_clear_non_zero_exit_and_freeing_it_lets_the_tower_catch_up() {
    let Some(disk) = SmallDisk::mount(48) else { return };
    bounded(async {
        let datadir = disk.path.join("teos");
        let (bitcoind, mut funding, mut tower) = scene(&datadir, &["--diskreservemib", "1"]).await;
        let user = TowerUser::new(1, &tower.api_url);
        assert_eq!(user.register().await.0, 200);
        let (dispute, penalty) = channel(&bitcoind, &mut funding, 1).await;
        assert_eq!(user.add_appointment(&dispute.compute_txid(), &penalty).await.0, 200);
        assert!(tower.stop().success());

        // Something else fills the disk; meanwhile the dispute is mined.
        let filler = disk.fill_leaving(0);
        bitcoind.mine_block_with(std::slice::from_ref(&dispute)).await.unwrap();
        let tip = bitcoind.tip().await.unwrap().0;
        let mut blocked = TowerProcess::launch(&bitcoind, &datadir, &["--diskreservemib", "1"]);
        let status = blocked.wait_for_exit();
        // An error, or (Debian's RocksDB is built with assertions) an abort on the failed write:
        // either way non-zero, and the operator was told why first.
        assert!(!status.success(), "{status:?}");
        assert!(blocked.logged("disk space below the reserve"), "{}", blocked.tail());

        // Room again: it starts, catches up and answers the breach.
        std::fs::remove_file(filler).unwrap();
        tower.restart();
        tower.wait_for_height(tip).await;
        assert_eq!(user.get_appointment(&dispute.compute_txid()).await.1["status"], "dispute_responded");
        assert!(bitcoind.mempool_contains(&penalty.compute_txid()).await.unwrap());
        assert_eq!(tower.health().await.0, 200);
    })
    .await;
}
