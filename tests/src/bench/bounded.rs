//! Bounded work (issue 14): what a block or a request costs when an abuser shapes the store.
//!
//! * `crowd`: 10,000 users hold an appointment at the locator of one ~100 kB dispute; the block
//!   with the dispute: teosd's peak RSS (VmHWM) and the block's `took_ms`.
//! * `subscription`: one user with 1M locators asks `get_subscription_info`: teosd's peak RSS
//!   growth over the request, and its time.
//! * `expiry`: 100,000 users expire at one height, and a breach is mined in that very block: from
//!   mining it to `get_appointment` answering `dispute_responded`.
//! * `flooded block`: a 2000-transaction block with one breach while 64 clients send
//!   add_appointment, against the same block unloaded.
//!
//! The stores are filled directly with `teosd::store::Store` while teosd is stopped (as in
//! [`super::store`]).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use bitcoin::absolute::LockTime;
use bitcoin::{Sequence, Transaction};
use serde_json::json;
use teosd::protocol::{encrypt_penalty, sign_message, Appointment, Locator, UserId};
use teosd::store::{Store, StoredAppointment, UserRecord};

use super::api::{client, post, prepare, register_all, BenchUser};
use super::chain::block_processing;
use super::daemon::{field, Daemon};
use super::store::db_dir;
use super::{hwm_bytes, rss_bytes};
use crate::backend::Bitcoind;
use crate::wallet::{penalty_tx, split_tx, Funding};

/// Users per synced batch when filling.
const USERS_PER_BATCH: usize = 2000;

/// A dispute of about `kb` kB: one coin split into anyone-can-spend outputs (~43 bytes each).
async fn big_dispute(bitcoind: &Bitcoind, funding: &mut Funding, kb: usize) -> Result<Transaction> {
    let coin = funding.next_coin(bitcoind).await?;
    Ok(split_tx(&[coin], kb * 1000 / 43, 2, Sequence::MAX, LockTime::ZERO)?)
}

/// Opens the store of a stopped tower, runs `fill` on it and closes it.
fn with_store(datadir: &Path, fill: impl FnOnce(&Store) -> Result<()>) -> Result<()> {
    let store = Store::open(&db_dir(datadir), 32)?;
    fill(&store)?;
    store.compact()?;
    Ok(())
}

/// Writes `users` (with `record` less the number) and, for each, `appointment` if given.
fn put_users(
    store: &Store,
    users: impl Iterator<Item = UserId>,
    record: UserRecord,
    appointment: Option<&StoredAppointment>,
) -> Result<()> {
    let mut batch = store.batch();
    let mut in_batch = 0;
    for user in users {
        let number = store.new_user_number().ok_or_else(|| anyhow!("user numbers exhausted"))?;
        let record = UserRecord { number, ..record };
        batch.put_user(&user, None, &record);
        if let Some(stored) = appointment {
            batch.put_appointment(&user, &record, stored, true);
        }
        in_batch += 1;
        if in_batch == USERS_PER_BATCH {
            store.commit(std::mem::replace(&mut batch, store.batch()))?;
            in_batch = 0;
        }
    }
    store.commit(batch)?;
    Ok(())
}

fn user_ids(salt: u32, n: u32) -> impl Iterator<Item = UserId> {
    (0..n).map(move |i| BenchUser::new(salt, i).user_id.parse().expect("a user id"))
}

/// A fresh tower at `datadir` with `extra`, stopped, for filling.
async fn created(bitcoind: &Bitcoind, datadir: &Path) -> Result<u32> {
    let mut daemon = Daemon::start(bitcoind, datadir, &[]).await?;
    daemon.stop()?;
    Ok(bitcoind.tip().await?.0)
}

/// What the crowd run measured: the block's `took_ms`, teosd's VmHWM after it, and the
/// dispute's size.
#[derive(Debug, Clone)]
pub struct Crowd {
    pub users: u32,
    pub dispute_bytes: usize,
    pub took_ms: f64,
    pub hwm: u64,
    pub hwm_before: u64,
}

/// `users` users with an appointment at the locator of one dispute of ~`kb` kB; the block.
pub async fn crowd(bitcoind: &Bitcoind, funding: &mut Funding, datadir: &Path, users: u32, kb: usize) -> Result<Crowd> {
    let dispute = big_dispute(bitcoind, funding, kb).await?;
    let penalty = penalty_tx(&dispute, 0, 3)?;
    let txid = dispute.compute_txid();
    let tip = created(bitcoind, datadir).await?;
    let stored = StoredAppointment {
        appointment: Appointment {
            locator: Locator::from_txid(&txid),
            encrypted_blob: encrypt_penalty(&penalty, &txid),
            to_self_delay: 42,
        },
        user_signature: "x".repeat(104),
        start_block: tip,
    };
    let record = UserRecord {
        available_slots: 9999,
        subscription_start: tip,
        subscription_expiry: tip + 4320,
        number: 0,
        dialect: Default::default(),
    };
    let dir = datadir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        with_store(&dir, |store| put_users(store, user_ids(800, users), record, Some(&stored)))
    })
    .await??;
    let mut daemon = Daemon::start(bitcoind, datadir, &[]).await?;
    let hwm_before = hwm_bytes(daemon.pid()).unwrap_or(0);
    bitcoind.mine_block_with(std::slice::from_ref(&dispute)).await?;
    let line = daemon.wait_for(&format!("block connected height={} ", tip + 1))?;
    let took_ms = field(&line, "took_ms").ok_or_else(|| anyhow!("no took_ms in `{line}`"))?;
    let breaches = field(&line, "breaches").unwrap_or(0.0) as u32;
    if breaches != users {
        bail!("the block answered {breaches} breaches, not {users}");
    }
    let hwm = hwm_bytes(daemon.pid()).ok_or_else(|| anyhow!("no VmHWM"))?;
    daemon.stop()?;
    Ok(Crowd { users, dispute_bytes: bitcoin::consensus::serialize(&dispute).len(), took_ms, hwm, hwm_before })
}

/// What the subscription run measured.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub locators: usize,
    /// VmHWM after the request less the larger of VmHWM and VmRSS before it.
    pub growth: u64,
    pub took: Duration,
}

/// One user with `n` locators asks for its subscription once.
pub async fn subscription(bitcoind: &Bitcoind, datadir: &Path, n: usize) -> Result<Subscription> {
    let tip = created(bitcoind, datadir).await?;
    let user = BenchUser::new(801, 0);
    let id: UserId = user.user_id.parse()?;
    let record = UserRecord {
        available_slots: 1,
        subscription_start: tip,
        subscription_expiry: tip + 4320,
        number: 0,
        dialect: Default::default(),
    };
    let dir = datadir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        with_store(&dir, |store| {
            put_users(store, std::iter::once(id), record, None)?;
            let record = store.user(&id)?.ok_or_else(|| anyhow!("the user"))?;
            let mut batch = store.batch();
            for i in 0..n as u64 {
                let mut bytes = [0u8; 16];
                bytes[..8].copy_from_slice(&i.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_be_bytes());
                let appointment = Appointment {
                    locator: Locator::from_slice(&bytes).map_err(|e| anyhow!("{e}"))?,
                    encrypted_blob: vec![7; 32],
                    to_self_delay: 42,
                };
                let stored = StoredAppointment { appointment, user_signature: "x".repeat(104), start_block: tip };
                batch.put_appointment(&id, &record, &stored, true);
                if (i + 1) % 20_000 == 0 {
                    store.commit(std::mem::replace(&mut batch, store.batch()))?;
                }
            }
            store.commit(batch)?;
            Ok(())
        })
    })
    .await??;
    let mut daemon = Daemon::start(bitcoind, datadir, &[]).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pid = daemon.pid();
    let before = hwm_bytes(pid).unwrap_or(0).max(rss_bytes(pid).unwrap_or(0));
    let signature = sign_message(b"get subscription info", &user.secret);
    let started = Instant::now();
    let body = serde_json::to_vec(&json!({ "signature": signature }))?;
    let response = client(1)
        .post(format!("{}/get_subscription_info", daemon.api_url))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await?;
    let status = response.status();
    let text = response.bytes().await?;
    let took = started.elapsed();
    if !status.is_success() {
        bail!("get_subscription_info: {status}");
    }
    let locators = serde_json::from_slice::<serde_json::Value>(&text)?["locators"].as_array().map_or(0, Vec::len);
    if locators != n {
        bail!("{locators} locators listed, not {n}");
    }
    let after = hwm_bytes(pid).ok_or_else(|| anyhow!("no VmHWM"))?;
    daemon.stop()?;
    Ok(Subscription { locators, growth: after.saturating_sub(before), took })
}

/// `n` users expire at the next block, which also holds a breach: milliseconds from mining it to
/// `dispute_responded` (teosd on the node's ZMQ `hashblock` feed), and the block's `took_ms`.
pub async fn expiry_wave(bitcoind: &Bitcoind, funding: &mut Funding, datadir: &Path, n: u32) -> Result<(f64, f64)> {
    let endpoint = bitcoind.zmq_hashblock_endpoint().ok_or_else(|| anyhow!("no ZMQ endpoint"))?;
    let tip = created(bitcoind, datadir).await?;
    // teosd's default expiry_delta is 6: users whose subscription ended 6 blocks before the next
    // block are removed in it.
    let record = UserRecord {
        available_slots: 1,
        subscription_start: 1,
        subscription_expiry: tip + 1 - 6,
        number: 0,
        dialect: Default::default(),
    };
    let dir = datadir.to_path_buf();
    tokio::task::spawn_blocking(move || with_store(&dir, |store| put_users(store, user_ids(802, n), record, None)))
        .await??;
    // Told of blocks over ZMQ, as docs/operations.md recommends (with polling every second, the
    // poll's phase would dominate).
    let before = bitcoind.regtest_node().map_or(0, |node| node.zmq_subscriptions());
    let mut daemon = Daemon::start(bitcoind, datadir, &["--zmqpubhashblock", &endpoint]).await?;
    super::chain::wait_subscribed(bitcoind, before + 1).await?;
    let victim = BenchUser::new(803, 0);
    register_all(&daemon.api_url, std::slice::from_ref(&victim)).await?;
    let coin = funding.next_coin(bitcoind).await?;
    let dispute = crate::wallet::commitment_tx(&coin, 2, 2, 1)?;
    let penalty = penalty_tx(&dispute, 0, 3)?;
    let http = client(2);
    let txid = dispute.compute_txid();
    let appointment = Appointment {
        locator: Locator::from_txid(&txid),
        encrypted_blob: encrypt_penalty(&penalty, &txid),
        to_self_delay: 42,
    };
    let (status, reply) = post(
        &http,
        &format!("{}/add_appointment", daemon.api_url),
        super::api::add_appointment_body(&appointment, &victim),
    )
    .await?;
    if status != 200 {
        bail!("add_appointment: {status} {reply}");
    }
    let (tip, _) = bitcoind.tip().await?;
    daemon.wait_height(tip)?;
    let locator = appointment.locator.to_string();
    let signature = sign_message(format!("get appointment {locator}").as_bytes(), &victim.secret);
    let get_body = serde_json::to_vec(&json!({"locator": locator, "signature": signature}))?;
    let mined = Instant::now();
    bitcoind.mine_block_with(std::slice::from_ref(&dispute)).await?;
    loop {
        let (status, reply) = post(&http, &format!("{}/get_appointment", daemon.api_url), get_body.clone()).await?;
        if status == 200 && reply["status"] == "dispute_responded" {
            break;
        }
        if mined.elapsed() > Duration::from_secs(60) {
            bail!("no dispute_responded 60 s after the breach was mined");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let answered_ms = mined.elapsed().as_secs_f64() * 1000.0;
    let line = daemon.wait_for(&format!("block connected height={} ", tip + 1))?;
    let took_ms = field(&line, "took_ms").unwrap_or(f64::NAN);
    daemon.stop()?;
    Ok((answered_ms, took_ms))
}

/// A 2000-tx block with one breach, unloaded and then while 64 clients flood add_appointment, on
/// one tower: the two `took_ms`.
pub async fn flooded_block(bitcoind: &Bitcoind, funding: &mut Funding, datadir: &Path) -> Result<(f64, f64)> {
    let mut daemon = Daemon::start(bitcoind, datadir, &[]).await?;
    let quiet = block_processing(bitcoind, funding, &mut daemon, &[1], 810).await?;
    let users: Vec<BenchUser> = (0..64).map(|i| BenchUser::new(811, i)).collect();
    register_all(&daemon.api_url, &users).await?;
    let bodies = Arc::new(tokio::task::spawn_blocking(move || prepare(811, 20_000, &users)).await?);
    let stop = Arc::new(AtomicBool::new(false));
    let http = client(64);
    let url = format!("{}/add_appointment", daemon.api_url);
    let mut flood = Vec::new();
    for task in 0..64usize {
        let (http, url, bodies, stop) = (http.clone(), url.clone(), bodies.clone(), stop.clone());
        flood.push(tokio::spawn(async move {
            let mut j = task;
            while !stop.load(Ordering::Relaxed) {
                let _ = post(&http, &url, bodies[j % bodies.len()].clone()).await;
                j += 64;
            }
        }));
    }
    let loaded = block_processing(bitcoind, funding, &mut daemon, &[1], 812).await;
    stop.store(true, Ordering::Relaxed);
    for task in flood {
        let _ = task.await;
    }
    daemon.stop()?;
    let loaded = loaded?;
    Ok((quiet[0].took_ms, loaded[0].took_ms))
}
