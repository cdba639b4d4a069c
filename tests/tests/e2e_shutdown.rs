//! End to end: SIGTERM in the middle of a stream of add_appointment requests loses no
//! acknowledged appointment and exits 0; kill -9 in the middle of a burst loses no receipt and
//! never splits a slot charge from its appointment; JSON logs; no blob ever reaches the log.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bitcoin::hashes::Hash;
use bitcoin::{absolute, transaction, Amount, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Txid, Witness};
use teos_tests::backend::Bitcoind;
use teos_tests::tower::{TowerProcess, TowerUser};

const TEST_TIMEOUT: Duration = Duration::from_secs(170);

fn penalty_for(dispute: Txid) -> Transaction {
    Transaction {
        version: transaction::Version::TWO,
        lock_time: absolute::LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint { txid: dispute, vout: 0 },
            script_sig: ScriptBuf::new(),
            sequence: Sequence::MAX,
            witness: Witness::new(),
        }],
        output: vec![TxOut { value: Amount::from_sat(10_000), script_pubkey: ScriptBuf::new() }],
    }
}

fn dispute_txid(writer: u8, n: u32) -> Txid {
    let mut bytes = [writer; 32];
    bytes[..4].copy_from_slice(&n.to_be_bytes());
    Txid::from_byte_array(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_during_a_stream_of_appointments_loses_no_acknowledged_one() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let bitcoind = Bitcoind::start().await.unwrap();
        bitcoind.mine(101).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        // As fast as it takes them: no per-source rate limit for this one client.
        let unlimited = ["--appointmentspersecond", "0"];
        let mut tower = TowerProcess::start(&bitcoind, &dir.path().join("teos"), &unlimited);
        let acked = Arc::new(Mutex::new(Vec::new()));
        let enough = Arc::new(tokio::sync::Notify::new());
        let stopped = Arc::new(AtomicBool::new(false));
        let mut writers = Vec::new();
        for writer in 1..=8u8 {
            let user = TowerUser::new(writer, &tower.api_url);
            assert_eq!(user.register().await.0, 200);
            let (acked, enough, stopped) = (acked.clone(), enough.clone(), stopped.clone());
            writers.push(tokio::spawn(async move {
                for n in 0.. {
                    let txid = dispute_txid(writer, n);
                    let Ok((status, _)) = user.try_add_appointment(&txid, &penalty_for(txid)).await else { break };
                    if status != 200 {
                        // Only a refusal while shutting down is acceptable.
                        assert!(stopped.load(Ordering::SeqCst), "status {status} before shutdown");
                        break;
                    }
                    let mut acked = acked.lock().unwrap();
                    acked.push((writer, txid));
                    if acked.len() == 200 {
                        enough.notify_one();
                    }
                }
            }));
        }
        enough.notified().await;
        stopped.store(true, Ordering::SeqCst);
        let status = tokio::task::block_in_place(|| tower.stop());
        assert_eq!(status.code(), Some(0), "{}", tower.tail());
        for writer in writers {
            writer.await.unwrap();
        }
        let acked = acked.lock().unwrap().clone();
        assert!(acked.len() >= 200);
        tower.restart();
        for (writer, txid) in &acked {
            let user = TowerUser::new(*writer, &tower.api_url);
            let (status, body) = user.get_appointment(txid).await;
            assert_eq!((status, body["status"].as_str()), (200, Some("being_watched")), "{txid}: {body}");
        }
        let order = [
            "1/3 closing the public API",
            "2/3 stopping the chain follower",
            "3/3 closing the store",
            "Shutdown complete",
        ];
        let positions: Vec<usize> = order
            .iter()
            .map(|step| tower.tail_all().iter().position(|l| l.contains(step)).unwrap_or_else(|| panic!("no `{step}`")))
            .collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "shutdown steps out of order: {positions:?}");
    })
    .await
    .expect("test timed out");
}

/// Four users with 64 requests in flight each (so the intake's groups hold several appointments of
/// one user), cut by kill -9 after 150 receipts: after a restart every receipted appointment is
/// there, and each user's slots spent equal the appointments it has (no charge without its
/// appointment, no appointment without its charge).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_during_a_burst_keeps_every_receipt_and_every_charge_with_its_appointment() {
    const IN_FLIGHT: u32 = 64;
    tokio::time::timeout(TEST_TIMEOUT, async {
        let bitcoind = Bitcoind::start().await.unwrap();
        bitcoind.mine(101).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let unlimited = ["--appointmentspersecond", "0", "--httpmaxconnectionsperip", "0"];
        let mut tower = TowerProcess::start(&bitcoind, &dir.path().join("teos"), &unlimited);
        let acked = Arc::new(Mutex::new(Vec::new()));
        let enough = Arc::new(tokio::sync::Notify::new());
        let mut users = Vec::new();
        let mut requests = Vec::new();
        for writer in 21..=24u8 {
            let user = Arc::new(TowerUser::new(writer, &tower.api_url));
            let (status, registered) = user.register().await;
            assert_eq!(status, 200);
            users.push((writer, user.clone(), registered["available_slots"].as_u64().unwrap()));
            for first in 0..IN_FLIGHT {
                let (user, acked, enough) = (user.clone(), acked.clone(), enough.clone());
                requests.push(tokio::spawn(async move {
                    for n in (first..).step_by(IN_FLIGHT as usize) {
                        let txid = dispute_txid(writer, n);
                        let Ok((status, body)) = user.try_add_appointment(&txid, &penalty_for(txid)).await else {
                            break;
                        };
                        assert_eq!(status, 200, "{body}");
                        let mut acked = acked.lock().unwrap();
                        acked.push((writer, txid));
                        if acked.len() == 150 {
                            enough.notify_one();
                        }
                    }
                }));
            }
        }
        enough.notified().await;
        tokio::task::block_in_place(|| tower.kill9());
        for request in requests {
            request.await.unwrap();
        }
        let acked = acked.lock().unwrap().clone();
        tower.restart();
        for (writer, txid) in &acked {
            let user = TowerUser::new(*writer, &tower.api_url);
            let (status, body) = user.get_appointment(txid).await;
            assert_eq!((status, body["status"].as_str()), (200, Some("being_watched")), "{txid}: {body}");
        }
        for (writer, user, slots) in users {
            let (status, info) = user.subscription_info().await;
            assert_eq!(status, 200, "{info}");
            let stored = info["locators"].as_array().unwrap().len() as u64;
            let receipted = acked.iter().filter(|(w, _)| *w == writer).count() as u64;
            assert!(stored >= receipted, "user {writer}: {stored} stored, {receipted} receipted");
            assert_eq!(slots - info["available_slots"].as_u64().unwrap(), stored, "user {writer}: slots spent");
        }
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn json_logs_carry_fields_and_never_a_blob() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let bitcoind = Bitcoind::start().await.unwrap();
        bitcoind.mine(101).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut tower = TowerProcess::start(&bitcoind, &dir.path().join("teos"), &["--logjson", "--debug"]);
        let user = TowerUser::new(5, &tower.api_url);
        assert_eq!(user.register().await.0, 200);
        let txid = dispute_txid(5, 1);
        let penalty = penalty_for(txid);
        assert_eq!(user.add_appointment(&txid, &penalty).await.0, 200);
        let line = tower.wait_for("appointment accepted");
        let value: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_eq!(value["fields"]["message"], "appointment accepted");
        assert_eq!(value["fields"]["user_id"], user.user_id);
        assert_eq!(value["fields"]["locator"], teosd::protocol::Locator::from_txid(&txid).to_string());
        assert_eq!(tower.stop().code(), Some(0));
        let blob = hex::encode(teosd::protocol::encrypt_penalty(&penalty, &txid));
        for line in tower.tail_all() {
            assert!(serde_json::from_str::<serde_json::Value>(line).is_ok(), "not JSON: {line}");
            assert!(!line.contains(&blob[..32]), "blob in the log: {line}");
        }
    })
    .await
    .expect("test timed out");
}
