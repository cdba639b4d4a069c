//! Crash test: a child process streams acknowledged batches from several threads and is
//! killed with SIGKILL at a random point; after reopening, every acknowledged batch is there and
//! no batch is half-applied, and the store's kept counts equal a recount. `TEOS_CRASH_CYCLES` sets the number of cycles (default 50; raise it
//! for a soak).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bitcoin::secp256k1::{PublicKey, Secp256k1, SecretKey};
use teosd::protocol::{Appointment, Locator, UserId};
use teosd::store::{Store, StoredAppointment, UserRecord};

const WRITERS: u8 = 4;
const CHILD_ENV: &str = "TEOS_CRASH_CHILD_DIR";

fn user(t: u8) -> UserId {
    let sk = SecretKey::from_slice(&[t + 1; 32]).unwrap();
    UserId(PublicKey::from_secret_key(&Secp256k1::signing_only(), &sk))
}

fn locator(t: u8, seq: u32) -> Locator {
    let mut bytes = [t; 16];
    bytes[12..].copy_from_slice(&seq.to_be_bytes());
    Locator::from_slice(&bytes).unwrap()
}

fn stored(t: u8, seq: u32) -> StoredAppointment {
    StoredAppointment {
        appointment: Appointment { locator: locator(t, seq), encrypted_blob: vec![t; 300], to_self_delay: seq },
        user_signature: "x".repeat(104),
        start_block: seq,
    }
}

/// Each writer's batch `seq` sets its user's slots to `seq` and adds appointment `seq`, so the
/// user record and the appointments must always agree.
fn write_forever(store: &Store, t: u8) {
    let me = user(t);
    let mut old = store.user(&me).unwrap();
    let mut seq = old.map_or(0, |r| r.available_slots + 1);
    loop {
        let number = u32::from(t) + 1;
        let record = UserRecord {
            available_slots: seq,
            subscription_start: 0,
            subscription_expiry: seq,
            number,
            dialect: Default::default(),
        };
        let mut batch = store.batch();
        batch.put_user(&me, old.as_ref(), &record);
        batch.put_appointment(&me, &record, &stored(t, seq), true);
        store.commit(batch).unwrap();
        println!("ack {t} {seq}");
        old = Some(record);
        seq += 1;
    }
}

#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let store = Store::open(Path::new(&dir), 8).unwrap();
    println!("ready");
    let threads: Vec<_> = (0..WRITERS)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || write_forever(&store, t))
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

/// Runs one child until it has acknowledged `kill_after` batches, then SIGKILLs it.
fn run_child_and_kill(dir: &Path, kill_after: usize) -> Vec<(u8, u32)> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut acked = Vec::new();
    while acked.len() < kill_after {
        let line = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).expect("child stalled");
        acked.extend(parse_ack(&line));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // Acks already printed when the kill landed are acknowledged too.
    acked.extend(rx.try_iter().filter_map(|line| parse_ack(&line)));
    acked
}

fn parse_ack(line: &str) -> Option<(u8, u32)> {
    let mut parts = line.split_whitespace();
    if parts.next() != Some("ack") {
        return None;
    }
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

fn check_consistent(store: &Store, acked: &[(u8, u32)]) {
    for t in 0..WRITERS {
        let locators = store.user_locators(&user(t)).unwrap();
        let Some(record) = store.user(&user(t)).unwrap() else {
            assert!(locators.is_empty(), "appointments without their user record");
            assert!(acked.iter().all(|(w, _)| *w != t), "acknowledged batch lost");
            continue;
        };
        let last = record.available_slots;
        assert_eq!(locators.len() as u32, last + 1, "writer {t}: user record and appointments disagree");
        for seq in 0..=last {
            assert_eq!(store.appointment(&locator(t, seq), &record).unwrap(), Some(stored(t, seq)));
        }
        assert_eq!(
            store.users_expiring_before(u32::MAX, 100).unwrap().iter().filter(|(_, u)| *u == user(t)).count(),
            1
        );
        let max_acked = acked.iter().filter(|(w, _)| *w == t).map(|(_, s)| *s).max();
        assert!(max_acked.is_none_or(|m| m <= last), "writer {t}: acknowledged {max_acked:?} but store has {last}");
    }
}

#[test]
fn acknowledged_batches_survive_sigkill() {
    let cycles: usize = std::env::var("TEOS_CRASH_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(50);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for cycle in 0..cycles {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let kill_after = 1 + (seed % 60) as usize;
        let acked = run_child_and_kill(&path, kill_after);
        let store = Store::open(&path, 8).unwrap_or_else(|e| panic!("cycle {cycle}: reopen failed: {e}"));
        check_consistent(&store, &acked);
        // The kept counts (one key, added to by each batch) survived the kill exactly.
        assert_eq!(store.stored_counts(), store.recount().unwrap(), "cycle {cycle}: counts differ from a recount");
        assert_eq!(store.persisted_counts().unwrap(), Some(store.stored_counts()), "cycle {cycle}");
    }
}
