//! Many appointments stored: filling a store directly (teosd stopped), then teosd's start-up
//! time, resident memory and bytes on disk.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use bitcoin::secp256k1::{PublicKey, Secp256k1, SecretKey};
use teosd::protocol::{Appointment, Locator, UserId, LOCATOR_LEN, SIGNATURE_ZBASE32_LEN};
use teosd::store::{Store, StoredAppointment, UserRecord};

use super::api::{load, prepare, register_all, BenchUser};
use super::daemon::Daemon;
use super::{disk_usage, median, rss_bytes, BLOB_SIZE};
use crate::backend::Bitcoind;

/// Appointments per user in a filled store, and per committed batch.
const PER_USER: usize = 1000;
const PER_BATCH: usize = 10_000;
/// Requests of the light load run before the second memory reading.
const LOAD_REQUESTS: usize = 1000;

/// A fast deterministic generator (splitmix64) for the filler's incompressible bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

/// The RocksDB directory of a regtest tower.
pub fn db_dir(datadir: &Path) -> PathBuf {
    datadir.join("regtest").join("db")
}

/// Writes `n` appointments (blobs of [`BLOB_SIZE`] bytes, zbase32-shaped signatures) for
/// `n / 1000` users straight into the store of `datadir`, which teosd must have created and
/// must not be running on. Each user's record and its appointments go in the same batches
/// teosd would write, [`PER_BATCH`] appointments per synced commit.
pub fn fill(datadir: &Path, n: usize, seed: u64) -> Result<Duration> {
    let started = Instant::now();
    let store = Store::open(&db_dir(datadir), 32)?;
    let tip = store.tip()?.map(|(h, _)| h).unwrap_or(0);
    let secp = Secp256k1::new();
    let mut rng = Rng(seed);
    const ZBASE32: &[u8] = b"ybndrfg8ejkmcpqxot1uwisza345h769";
    let mut batch = store.batch();
    let mut in_batch = 0;
    for first in (0..n).step_by(PER_USER) {
        let mut key = [0u8; 32];
        key[0] = 2;
        key[24..].copy_from_slice(&(seed ^ first as u64).to_be_bytes());
        let user = UserId(PublicKey::from_secret_key(&secp, &SecretKey::from_slice(&key)?));
        let count = PER_USER.min(n - first);
        let record = UserRecord {
            available_slots: 10_000 - count as u32,
            subscription_start: tip,
            subscription_expiry: tip + 4320,
            number: store.new_user_number().ok_or_else(|| anyhow!("user numbers exhausted"))?,
            dialect: Default::default(),
        };
        batch.put_user(&user, None, &record);
        for _ in 0..count {
            let locator = Locator::from_slice(&rng.bytes(LOCATOR_LEN)).map_err(|e| anyhow!("{e}"))?;
            let signature: String =
                rng.bytes(SIGNATURE_ZBASE32_LEN).iter().map(|b| ZBASE32[(b % 32) as usize] as char).collect();
            let appointment = Appointment { locator, encrypted_blob: rng.bytes(BLOB_SIZE), to_self_delay: 42 };
            batch.put_appointment(
                &user,
                &record,
                &StoredAppointment { appointment, user_signature: signature, start_block: tip },
                true,
            );
            in_batch += 1;
            if in_batch == PER_BATCH {
                store.commit(std::mem::replace(&mut batch, store.batch()))?;
                in_batch = 0;
            }
        }
    }
    store.commit(batch)?;
    // Settled, as a long-running tower's store is: no compaction left to run under the measures.
    store.compact()?;
    drop(store);
    Ok(started.elapsed())
}

/// What one store size measured.
#[derive(Debug, Clone)]
pub struct SizePoint {
    pub stored: usize,
    pub fill: Duration,
    /// Median time from spawn to `/ping` answering, over the restarts.
    pub ready: Duration,
    /// VmRSS right after start, and after a light load (register, 1000 add_appointment).
    pub rss_ready: u64,
    pub rss_loaded: u64,
    /// Disk usage of the db directory after a restart (its WAL replayed into tables).
    pub disk: u64,
    pub datadir: PathBuf,
}

/// Fresh tower at `datadir`, `n` appointments filled in, then measured. The tower is left
/// stopped with its data in place.
pub async fn measure(bitcoind: &Bitcoind, datadir: &Path, n: usize, restarts: usize, salt: u32) -> Result<SizePoint> {
    let mut daemon = Daemon::start(bitcoind, datadir, &[]).await?;
    daemon.stop()?;
    let fill_time = if n > 0 {
        let dir = datadir.to_path_buf();
        tokio::task::spawn_blocking(move || fill(&dir, n, u64::from(salt))).await??
    } else {
        Duration::ZERO
    };
    // One start and stop so the WAL is replayed into tables, then the footprint on disk.
    let mut daemon = Daemon::start(bitcoind, datadir, &[]).await?;
    daemon.stop()?;
    let disk = disk_usage(&db_dir(datadir));
    let mut readies = Vec::new();
    for _ in 1..restarts.max(1) {
        let mut daemon = Daemon::spawn(bitcoind, datadir, &[])?;
        readies.push(daemon.until_ping().await?.as_secs_f64());
        daemon.stop()?;
    }
    let mut daemon = Daemon::spawn(bitcoind, datadir, &[])?;
    readies.push(daemon.until_ping().await?.as_secs_f64());
    let pid = daemon.pid();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_ready = rss_bytes(pid).ok_or_else(|| anyhow!("no VmRSS"))?;
    let users: Vec<BenchUser> = (0..16).map(|i| BenchUser::new(salt, i)).collect();
    register_all(&daemon.api_url, &users).await?;
    let bodies = prepare(salt, LOAD_REQUESTS, &users);
    load(&daemon.api_url, pid, bodies, 16).await?;
    let rss_loaded = rss_bytes(pid).ok_or_else(|| anyhow!("no VmRSS"))?;
    daemon.stop()?;
    Ok(SizePoint {
        stored: n,
        fill: fill_time,
        ready: Duration::from_secs_f64(median(&mut readies)),
        rss_ready,
        rss_loaded,
        disk,
        datadir: datadir.to_path_buf(),
    })
}
