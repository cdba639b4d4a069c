//! Many appointments stored: filling a store directly (teosd stopped), then teosd's start-up
//! time, resident memory and bytes on disk.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use bitcoin::secp256k1::{PublicKey, Secp256k1, SecretKey};
use teosd::protocol::{Appointment, Locator, UserId, LOCATOR_LEN, SIGNATURE_ZBASE32_LEN};
use teosd::store::{Store, StoredAppointment, UserRecord};

use super::api::{load, prepare, register_all, BenchUser, LoadResult};
use super::daemon::Daemon;
use super::{disk_usage, hwm_bytes, median, mib, rss_bytes, Figure, BLOB_SIZE};
use crate::backend::Bitcoind;

/// Appointments per user in a filled store (the `sizes` section's), and per committed batch.
pub const PER_USER: usize = 1000;
const PER_BATCH: usize = 10_000;
/// Filled appointments kept as samples (a user's key and a locator) for `get_appointment`.
const SAMPLES: usize = 4096;

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

/// What [`fill`] wrote.
#[derive(Debug, Clone)]
pub struct Filled {
    pub took: Duration,
    /// Some of the appointments, spread over the users: the user's secret key and the locator.
    pub samples: Vec<(SecretKey, Locator)>,
}

/// Writes `n` appointments (blobs of [`BLOB_SIZE`] bytes, zbase32-shaped signatures) for
/// `n / per_user` users straight into the store of `datadir`, which teosd must have created and
/// must not be running on. Each user's record and its appointments go in the same batches
/// teosd would write, [`PER_BATCH`] appointments per synced commit.
pub fn fill(datadir: &Path, n: usize, per_user: usize, seed: u64) -> Result<Filled> {
    let started = Instant::now();
    let per_user = per_user.max(1);
    let sample_every = (n / per_user / SAMPLES).max(1);
    let mut samples = Vec::new();
    let store = Store::open(&db_dir(datadir), 32)?;
    let tip = store.tip()?.map(|(h, _)| h).unwrap_or(0);
    let secp = Secp256k1::new();
    let mut rng = Rng(seed);
    const ZBASE32: &[u8] = b"ybndrfg8ejkmcpqxot1uwisza345h769";
    let mut batch = store.batch();
    let mut in_batch = 0;
    for (index, first) in (0..n).step_by(per_user).enumerate() {
        let mut key = [0u8; 32];
        key[0] = 2;
        key[24..].copy_from_slice(&(seed ^ first as u64).to_be_bytes());
        let secret = SecretKey::from_slice(&key)?;
        let user = UserId(PublicKey::from_secret_key(&secp, &secret));
        let count = per_user.min(n - first);
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
            if index % sample_every == 0
                && samples.len() < SAMPLES
                && samples.last().is_none_or(|s: &(_, _)| s.0 != secret)
            {
                samples.push((secret, locator));
            }
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
    Ok(Filled { took: started.elapsed(), samples })
}

/// What one store size measured.
#[derive(Debug, Clone)]
pub struct SizePoint {
    pub stored: usize,
    /// Users the appointments were filled for.
    pub users: usize,
    pub fill: Duration,
    /// Median time from spawn to `/ping` answering, over the restarts.
    pub ready: Duration,
    /// VmRSS right after start, and after a light load (register, then add_appointment), and
    /// the peak (VmHWM) by then.
    pub rss_ready: u64,
    pub rss_loaded: u64,
    pub hwm_loaded: u64,
    /// That load (16 in flight).
    pub load: LoadResult,
    /// Filled appointments to ask for (see [`Filled::samples`]).
    pub samples: Vec<(SecretKey, Locator)>,
    /// Disk usage of the db directory after a restart (its WAL replayed into tables).
    pub disk: u64,
    pub datadir: PathBuf,
}

/// How [`measure`] fills and loads a store.
#[derive(Debug, Clone, Copy)]
pub struct SizeRun {
    pub per_user: usize,
    pub restarts: usize,
    /// add_appointment requests (16 in flight) before the second memory reading.
    pub load_requests: usize,
}

/// Fresh tower at `datadir`, `n` appointments filled in, then measured. The tower is left
/// stopped with its data in place.
pub async fn measure(bitcoind: &Bitcoind, datadir: &Path, n: usize, run: SizeRun, salt: u32) -> Result<SizePoint> {
    let mut daemon = Daemon::start(bitcoind, datadir, &[]).await?;
    daemon.stop()?;
    let filled = if n > 0 {
        let dir = datadir.to_path_buf();
        tokio::task::spawn_blocking(move || fill(&dir, n, run.per_user, u64::from(salt))).await??
    } else {
        Filled { took: Duration::ZERO, samples: Vec::new() }
    };
    // One start and stop so the WAL is replayed into tables, then the footprint on disk.
    let mut daemon = Daemon::start(bitcoind, datadir, &[]).await?;
    daemon.stop()?;
    let disk = disk_usage(&db_dir(datadir));
    let mut readies = Vec::new();
    for _ in 1..run.restarts.max(1) {
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
    let bodies = prepare(salt, run.load_requests, &users);
    let load = load(&daemon.api_url, pid, bodies, 16).await?;
    let rss_loaded = rss_bytes(pid).ok_or_else(|| anyhow!("no VmRSS"))?;
    let hwm_loaded = hwm_bytes(pid).ok_or_else(|| anyhow!("no VmHWM"))?;
    daemon.stop()?;
    Ok(SizePoint {
        stored: n,
        users: n.div_ceil(run.per_user.max(1)),
        fill: filled.took,
        samples: filled.samples,
        load,
        hwm_loaded,
        ready: Duration::from_secs_f64(median(&mut readies)),
        rss_ready,
        rss_loaded,
        disk,
        datadir: datadir.to_path_buf(),
    })
}

/// The figures of the filled stores `points`; the targets of issue 8 (`full`: at 1M), or with
/// `scale`, issue 18's (RSS < 96 MiB after start and at its peak under load, disk <= blob + 130 B).
pub fn size_figures(points: &[SizePoint], full: bool, scale: bool) -> Vec<Figure> {
    let mut figures = Vec::new();
    let largest = points.iter().map(|p| p.stored).max().unwrap_or(0);
    let how = "filled directly with teosd::store::Store (teosd stopped), 10k appointments per synced batch";
    for p in points {
        let n = p.stored;
        let mut ready = Figure::new(
            format!("ready (spawn -> /ping), {n} stored"),
            p.ready.as_secs_f64() * 1000.0,
            "ms",
            "median of restarts",
        );
        if n == largest {
            let target = match (scale, full) {
                (true, _) => "< 1000 ms",
                (false, true) => "< 1000 ms at 1M",
                (false, false) => "< 1000 ms at 1M (quick: at the largest size run)",
            };
            ready = ready.at_most(1000.0, target);
        }
        figures.push(ready);
        let mut after_start = Figure::new(
            format!("VmRSS after start, {n} stored"),
            mib(p.rss_ready),
            "MiB",
            "200 ms after /ping answered",
        );
        let requests = p.load.requests;
        let mut rss = Figure::new(
            format!("VmRSS after {requests} add_appointment, {n} stored"),
            mib(p.rss_loaded),
            "MiB",
            "16 users, 16 in flight",
        );
        let mut peak = Figure::new(
            format!("VmHWM (peak RSS) after {requests} add_appointment, {n} stored"),
            mib(p.hwm_loaded),
            "MiB",
            "start-up and the load",
        );
        if n == largest && scale {
            after_start = after_start.at_most(96.0, "< 96 MiB");
            rss = rss.at_most(96.0, "< 96 MiB");
            peak = peak.at_most(96.0, "< 96 MiB");
        } else if n == largest {
            rss = rss.at_most(64.0, "< 64 MiB at 1M");
        }
        figures.extend([after_start, rss, peak]);
        if n > 0 {
            let how = format!("{how}, {} appointments per user", p.stored / p.users.max(1));
            figures.push(Figure::new(format!("store fill time, {n}"), p.fill.as_secs_f64(), "s", how));
        }
    }
    if let (Some(empty), Some(big)) =
        (points.iter().find(|p| p.stored == 0), points.iter().find(|p| p.stored == largest))
    {
        if largest > 0 {
            let growth = mib(big.rss_loaded) - mib(empty.rss_loaded);
            let growth = Figure::new(
                format!("VmRSS growth, 0 -> {largest} stored"),
                growth,
                "MiB",
                "after the same load; flat = under 16 MiB",
            );
            figures.push(if scale { growth } else { growth.at_most(16.0, "flat (< 16 MiB growth)") });
            let per = (big.disk as f64 - empty.disk as f64) / largest as f64;
            let over = if scale { 130 } else { 150 };
            figures.push(
                Figure::new(
                    format!("disk per appointment ({largest} stored)"),
                    per,
                    "B",
                    format!("du of regtest/db after a restart, minus the empty store's, / count; blob {BLOB_SIZE} B"),
                )
                .at_most((BLOB_SIZE + over) as f64, &format!("<= blob + {over} = {} B", BLOB_SIZE + over)),
            );
        }
    }
    figures
}
