//! One suite, run against both backends; then RocksDB-only cases (schema, damage, concurrency).

use std::sync::Arc;

use bitcoin::secp256k1::{PublicKey, Secp256k1, SecretKey};

use super::*;
use crate::protocol::{Appointment, Dialect};

fn user(n: u8) -> UserId {
    let sk = SecretKey::from_slice(&[n.max(1); 32]).unwrap();
    UserId(PublicKey::from_secret_key(&Secp256k1::signing_only(), &sk))
}

fn locator(n: u8) -> Locator {
    Locator::from_slice(&[n; 16]).unwrap()
}

fn appointment(loc: Locator, blob: &[u8]) -> StoredAppointment {
    StoredAppointment {
        appointment: Appointment { locator: loc, encrypted_blob: blob.to_vec(), to_self_delay: 42 },
        user_signature: "s".repeat(104),
        start_block: 100,
    }
}

fn record(slots: u32, expiry: u32) -> UserRecord {
    UserRecord {
        available_slots: slots,
        subscription_start: 100,
        subscription_expiry: expiry,
        number: 1,
        dialect: Dialect::Rust,
    }
}

/// The record of `user(n)`, numbered `n`.
fn num(n: u8) -> UserRecord {
    UserRecord { number: u32::from(n), ..record(10, 600) }
}

/// Registers `user(n)` for each `n`, numbered `n`.
fn register(store: &Store, users: &[u8]) {
    let mut batch = store.batch();
    for &n in users {
        batch.put_user(&user(n), None, &num(n));
    }
    store.commit(batch).unwrap();
}

fn with_each_backend(test: impl Fn(Store)) {
    test(Store::in_memory());
    let dir = tempfile::tempdir().unwrap();
    test(Store::open(&dir.path().join("db"), 8).unwrap());
}

#[test]
fn users_and_expiry_index() {
    with_each_backend(|store| {
        let (alice, bob) = (user(1), user(2));
        let mut batch = store.batch();
        batch.put_user(&alice, None, &record(10, 600));
        batch.put_user(&bob, None, &record(10, 700));
        store.commit(batch).unwrap();
        assert_eq!(store.user(&alice).unwrap(), Some(record(10, 600)));
        assert_eq!(store.user(&user(3)).unwrap(), None);
        assert_eq!(store.users_expiring_before(601, 10).unwrap(), vec![(600, alice)]);

        let mut batch = store.batch();
        batch.put_user(&alice, Some(&record(10, 600)), &record(20, 1100));
        store.commit(batch).unwrap();
        assert_eq!(store.users_expiring_before(701, 10).unwrap(), vec![(700, bob)]);
        assert_eq!(store.users_expiring_before(u32::MAX, 10).unwrap(), vec![(700, bob), (1100, alice)]);
    });
}

#[test]
fn appointments_by_user_and_locator() {
    with_each_backend(|store| {
        let (alice, bob) = (user(1), user(2));
        register(&store, &[2]);
        let mut batch = store.batch();
        batch.put_user(&alice, None, &record(9, 600));
        batch.put_appointment(&alice, &num(1), &appointment(locator(7), b"a"), true);
        batch.put_appointment(&alice, &num(1), &appointment(locator(8), b"b"), true);
        batch.put_appointment(&bob, &num(2), &appointment(locator(7), b"c"), true);
        store.commit(batch).unwrap();

        assert_eq!(store.appointment(&locator(7), &num(1)).unwrap(), Some(appointment(locator(7), b"a")));
        assert_eq!(store.appointment(&locator(8), &num(2)).unwrap(), None);
        let at_seven = store.appointments_at(&locator(7)).unwrap();
        assert_eq!(at_seven.len(), 2);
        assert!(at_seven.contains(&(bob, appointment(locator(7), b"c"))));
        assert!(store.appointments_at(&locator(9)).unwrap().is_empty());
        assert_eq!(store.user_locators(&alice).unwrap(), vec![locator(7), locator(8)]);
        // One probe per locator, in the order asked, whoever holds it and however many do.
        let asked = [locator(9), locator(8), locator(7), locator(6), locator(7)];
        assert_eq!(store.locators_held(&asked).unwrap(), vec![locator(8), locator(7), locator(7)]);
        assert!(store.locators_held(&[]).unwrap().is_empty());

        // An update overwrites in place; a delete removes both the row and the user's index.
        let mut batch = store.batch();
        batch.put_appointment(&alice, &num(1), &appointment(locator(7), b"updated"), false);
        batch.delete_appointment(&alice, &num(1), &locator(8));
        store.commit(batch).unwrap();
        assert_eq!(store.appointment(&locator(7), &num(1)).unwrap(), Some(appointment(locator(7), b"updated")));
        assert_eq!(store.user_locators(&alice).unwrap(), vec![locator(7)]);
    });
}

#[test]
fn locator_prefixes_do_not_leak_into_neighbours() {
    with_each_backend(|store| {
        register(&store, &[1]);
        let mut batch = store.batch();
        let mut near = [7u8; 16];
        near[15] = 8;
        batch.put_appointment(&user(1), &num(1), &appointment(Locator::from_slice(&near).unwrap(), b"x"), true);
        batch.put_appointment(&user(1), &num(1), &appointment(locator(6), b"x"), true);
        store.commit(batch).unwrap();
        assert!(store.appointments_at(&locator(7)).unwrap().is_empty());
    });
}

#[test]
fn tower_keys_and_tip() {
    with_each_backend(|store| {
        assert!(store.tower_keys().unwrap().is_empty());
        assert_eq!(store.tip().unwrap(), None);
        let (k1, k2) = (SecretKey::from_slice(&[1; 32]).unwrap(), SecretKey::from_slice(&[2; 32]).unwrap());
        let mut batch = store.batch();
        batch.put_tower_key(0, &k1);
        batch.put_tower_key(1, &k2);
        let hash = BlockHash::from_byte_array([5; 32]);
        batch.set_tip(101, &hash);
        store.commit(batch).unwrap();
        assert_eq!(store.tower_keys().unwrap(), vec![k1, k2]);
        assert_eq!(store.tip().unwrap(), Some((101, hash)));
    });
}

#[test]
fn reopen_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    {
        let store = Store::open(&path, 8).unwrap();
        let mut batch = store.batch();
        batch.put_user(&user(1), None, &record(3, 600));
        batch.put_appointment(&user(1), &num(1), &appointment(locator(1), b"blob"), true);
        store.commit(batch).unwrap();
    }
    let store = Store::open(&path, 8).unwrap();
    assert_eq!(store.user(&user(1)).unwrap(), Some(record(3, 600)));
    assert_eq!(store.appointment(&locator(1), &num(1)).unwrap(), Some(appointment(locator(1), b"blob")));
}

#[test]
fn other_schema_versions_are_refused_and_untouched() {
    for version in [1, SCHEMA_VERSION + 1] {
        let kv = Arc::new(MemoryKv::new());
        kv.write(vec![Op::Put(Cf::Meta, META_SCHEMA_VERSION.to_vec(), version.to_be_bytes().to_vec())]).unwrap();
        kv.write(vec![Op::Put(Cf::Users, vec![1], vec![2])]).unwrap();
        let err = Store::with_kv(kv.clone()).unwrap_err();
        assert!(matches!(err, StoreError::SchemaVersion { found } if found == version), "{err}");
        assert_eq!(kv.get(Cf::Meta, META_SCHEMA_VERSION).unwrap(), Some(version.to_be_bytes().to_vec()));
        assert_eq!(kv.get(Cf::Users, &[1]).unwrap(), Some(vec![2]));
    }
}

#[test]
fn data_without_schema_version_is_refused() {
    let kv = Arc::new(MemoryKv::new());
    kv.write(vec![Op::Put(Cf::Users, vec![1], vec![2])]).unwrap();
    assert!(matches!(Store::with_kv(kv.clone()), Err(StoreError::MissingSchemaVersion)));
    assert_eq!(kv.get(Cf::Meta, META_SCHEMA_VERSION).unwrap(), None);
}

#[test]
fn corrupt_records_are_errors_not_panics() {
    let kv = Arc::new(MemoryKv::new());
    let store = Store::with_kv(kv.clone()).unwrap();
    kv.write(vec![
        Op::Put(Cf::Users, user(1).to_bytes().to_vec(), vec![1, 2, 3]),
        Op::Put(Cf::Appointments, numbered_key(&locator(1), 1), vec![0; 5]),
        Op::Put(Cf::Appointments, appointment_key(&locator(2), &user(1)), vec![0; 5]),
        Op::Put(Cf::Meta, META_TIP.to_vec(), vec![0; 3]),
        Op::Put(Cf::Meta, join(META_TOWER_KEY, &[0, 0, 0, 0]), vec![0; 32]),
    ])
    .unwrap();
    assert!(matches!(store.user(&user(1)), Err(StoreError::Corrupt { .. })));
    assert!(matches!(store.appointment(&locator(1), &num(1)), Err(StoreError::Corrupt { .. })));
    assert!(matches!(store.appointments_at(&locator(1)), Err(StoreError::Corrupt { .. })));
    assert!(matches!(store.appointments_at(&locator(2)), Err(StoreError::Corrupt { .. })));
    assert!(matches!(store.tip(), Err(StoreError::Corrupt { .. })));
    assert!(matches!(store.tower_keys(), Err(StoreError::Corrupt { .. })));
}

#[test]
fn damaged_database_is_a_clean_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    drop(Store::open(&path, 8).unwrap());
    let manifest = std::fs::read_dir(&path)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("MANIFEST"))
        .unwrap();
    std::fs::write(&manifest, b"this is not a manifest").unwrap();
    let err = Store::open(&path, 8).unwrap_err();
    assert!(matches!(err, StoreError::Open(OpenError::Rocks { .. })), "{err}");
    // Nothing was rewritten over the damage.
    assert_eq!(std::fs::read(&manifest).unwrap(), b"this is not a manifest");
}

#[test]
fn a_directory_of_other_files_is_not_turned_into_a_store() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("precious.txt"), b"data").unwrap();
    let err = Store::open(dir.path(), 8).unwrap_err();
    assert!(matches!(err, StoreError::Open(OpenError::NotADatabase(_))), "{err}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn a_store_of_another_version_is_refused_before_anything_is_added() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    {
        // Column families of schema version 1 that this build no longer has.
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        rocksdb::DB::open_cf(&opts, &path, ["meta", "recent_txs", "recent_txs_by_height"]).unwrap();
    }
    let err = Store::open(&path, 8).unwrap_err();
    assert!(
        matches!(&err, StoreError::Open(OpenError::UnknownColumnFamilies { names, .. }) if names.contains("recent_txs")),
        "{err}"
    );
    let mut families = rocksdb::DB::list_cf(&rocksdb::Options::default(), &path).unwrap();
    families.sort();
    assert_eq!(families, ["default", "meta", "recent_txs", "recent_txs_by_height"]);
}

#[test]
fn a_second_opener_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let _first = Store::open(&path, 8).unwrap();
    assert!(matches!(Store::open(&path, 8), Err(StoreError::Open(OpenError::Rocks { .. }))));
}

#[test]
fn concurrent_writers_all_land() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("db"), 8).unwrap();
    let threads: Vec<_> = (0..8u8)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..25u8 {
                    let mut batch = store.batch();
                    let mut loc = [t; 16];
                    loc[15] = i;
                    batch.put_user(
                        &user(t + 1),
                        None,
                        &UserRecord { number: u32::from(t + 1), ..record(u32::from(i), 600) },
                    );
                    batch.put_appointment(
                        &user(t + 1),
                        &num(t + 1),
                        &appointment(Locator::from_slice(&loc).unwrap(), &[i]),
                        true,
                    );
                    store.commit(batch).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    for t in 0..8u8 {
        assert_eq!(store.user_locators(&user(t + 1)).unwrap().len(), 25);
        assert_eq!(store.user(&user(t + 1)).unwrap().unwrap().available_slots, 24);
    }
}

fn txid(n: u8, tail: u8) -> bitcoin::Txid {
    let mut bytes = [n; 32];
    bytes[31] = tail;
    bitcoin::Txid::from_byte_array(bytes)
}

#[test]
fn a_blocks_probes_find_every_appointment_at_its_locators_in_one_pass() {
    let fill = |store: &Store| {
        register(store, &[1, 2]);
        let mut batch = store.batch();
        batch.put_appointment(&user(1), &num(1), &appointment(locator(3), b"a"), true);
        batch.put_appointment(&user(2), &num(2), &appointment(locator(3), b"b"), true);
        batch.put_appointment(&user(1), &num(1), &appointment(locator(5), b"c"), true);
        batch.put_appointment(&user(1), &num(1), &appointment(locator(6), b"d"), true);
        store.commit(batch).unwrap();
    };
    let check = |store: &Store| {
        let found = store.appointments_at_any(&[locator(9), locator(5), locator(3), locator(4), locator(5)]).unwrap();
        let found: Vec<(Locator, UserId, Vec<u8>)> =
            found.into_iter().map(|(l, u, a)| (l, u, a.appointment.encrypted_blob)).collect();
        let mut expected = vec![
            (locator(3), user(1), b"a".to_vec()),
            (locator(3), user(2), b"b".to_vec()),
            (locator(5), user(1), b"c".to_vec()),
        ];
        // In (locator, user number) order: user(n) is numbered n.
        expected.sort_by_key(|(l, u, _)| (*l, u32::from(*u != user(1))));
        assert_eq!(found, expected);
        assert!(store.appointments_at_any(&[]).unwrap().is_empty());
    };
    let memory = Store::in_memory();
    fill(&memory);
    check(&memory);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let store = Store::open(&path, 8).unwrap();
    fill(&store);
    // From the memtable, then (reopened: flushed to a table file) through the bloom filters.
    check(&store);
    drop(store);
    check(&Store::open(&path, 8).unwrap());
}

#[test]
fn recent_blocks_are_indexed_probed_and_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let store = Store::open(&path, 8).unwrap();
    let (hash_a, hash_b) = (BlockHash::from_byte_array([0xa; 32]), BlockHash::from_byte_array([0xb; 32]));
    let block_a = [txid(1, 0), txid(2, 0)];
    let block_b = [txid(3, 0)];
    for (height, hash, txids) in [(10, hash_a, &block_a[..]), (11, hash_b, &block_b[..])] {
        store.index_recent_block(height, hash, txids);
        let mut batch = store.batch();
        batch.put_recent_block(height, &hash, txids);
        store.commit(batch).unwrap();
    }
    let of = |t: &bitcoin::Txid| Locator::from_txid(t);
    let hit_a = RecentHit { height: 10, block_hash: hash_a };
    assert_eq!(store.recent().blocks_with(&of(&block_a[1]), Dialect::Rust), vec![hit_a]);
    assert_eq!(
        store.recent().blocks_with(&of(&block_b[0]), Dialect::Rust),
        vec![RecentHit { height: 11, block_hash: hash_b }]
    );
    assert!(store.recent().blocks_with(&locator(7), Dialect::Rust).is_empty());
    // Only 8 of the 16 bytes are in memory: the Watcher compares the rest in the block itself.
    let mut near = *of(&block_a[0]).as_bytes();
    near[15] ^= 1;
    let near = Locator::from_slice(&near).unwrap();
    assert_eq!(store.recent().blocks_with(&near, Dialect::Rust), vec![hit_a]);
    // Reopened: the index is rebuilt from the records.
    drop(store);
    let store = Store::open(&path, 8).unwrap();
    assert_eq!(store.recent().blocks_with(&of(&block_a[0]), Dialect::Rust), vec![hit_a]);
    assert_eq!(store.recent_blocks_below(11), vec![10]);
    // Leaving the window: the record goes in a batch, then the index entry.
    let mut batch = store.batch();
    batch.delete_recent_block(10);
    store.commit(batch).unwrap();
    store.unindex_recent_blocks(None, 11);
    assert!(store.recent().blocks_with(&of(&block_a[0]), Dialect::Rust).is_empty());
    assert_eq!(store.recent().blocks_with(&of(&block_b[0]), Dialect::Rust).len(), 1);
    store.unindex_recent_blocks(Some(11), 0);
    assert!(store.recent().blocks_with(&of(&block_b[0]), Dialect::Rust).is_empty());
}

#[test]
fn a_held_recent_guard_keeps_new_blocks_out_until_released() {
    let store = Store::in_memory();
    let guard = store.recent();
    let (done, finished) = std::sync::mpsc::channel();
    let indexer = {
        let store = store.clone();
        std::thread::spawn(move || {
            store.index_recent_block(1, BlockHash::all_zeros(), &[txid(1, 0)]);
            done.send(()).unwrap();
        })
    };
    // Still held: the block cannot be indexed (what an appointment between probe and commit sees).
    let waited = finished.recv_timeout(std::time::Duration::from_millis(100));
    assert!(waited.is_err(), "indexed while a guard was held");
    assert!(guard.blocks_with(&Locator::from_txid(&txid(1, 0)), Dialect::Rust).is_empty());
    drop(guard);
    finished.recv_timeout(std::time::Duration::from_secs(10)).expect("indexed once released");
    indexer.join().unwrap();
    assert_eq!(store.recent().blocks_with(&Locator::from_txid(&txid(1, 0)), Dialect::Rust).len(), 1);
}

#[test]
fn late_checks_round_trip() {
    with_each_backend(|store| {
        let hit = RecentHit { height: 7, block_hash: BlockHash::from_byte_array([7; 32]) };
        let mut batch = store.batch();
        batch.put_late_check(&locator(1), &user(1), &hit);
        store.commit(batch).unwrap();
        assert_eq!(store.late_checks(10).unwrap(), vec![(locator(1), user(1), hit)]);
        let mut batch = store.batch();
        batch.delete_late_check(&hit, &locator(1), &user(1));
        store.commit(batch).unwrap();
        assert!(store.late_checks(10).unwrap().is_empty());
    });
}

#[test]
fn user_numbers_resume_above_the_highest_stored() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let store = Store::open(&path, 8).unwrap();
    assert_eq!(store.new_user_number(), Some(1));
    let mut batch = store.batch();
    for (n, number) in [(1u8, 7u32), (2, 70_000), (3, 12)] {
        batch.put_user(&user(n), None, &UserRecord { number, ..record(1, 600) });
    }
    store.commit(batch).unwrap();
    assert_eq!(store.user_by_number(70_000).unwrap(), Some(user(2)));
    drop(store);
    let store = Store::open(&path, 8).unwrap();
    assert_eq!(store.new_user_number(), Some(70_001));
    assert_eq!(store.new_user_number(), Some(70_002));
    // A removed user's number goes with it.
    let mut batch = store.batch();
    batch.delete_user(&user(3), &UserRecord { number: 12, ..record(1, 600) });
    store.commit(batch).unwrap();
    assert_eq!(store.user_by_number(12).unwrap(), None);
    let memory = Store::in_memory();
    let mut batch = memory.batch();
    batch.put_user(&user(1), None, &UserRecord { number: u32::MAX - 1, ..record(1, 600) });
    memory.commit(batch).unwrap();
    assert_eq!(super::highest_user_number(memory.kv.as_ref()).unwrap(), Some(u32::MAX - 1));
    // Reopened at the top of the range: one number is left, then none; they never wrap to 0.
    let memory = Store::with_kv(memory.kv.clone()).unwrap();
    assert_eq!(memory.new_user_number(), Some(u32::MAX));
    assert_eq!(memory.new_user_number(), None);
    assert_eq!(memory.new_user_number(), None);
}

#[test]
fn the_counts_kept_by_batches_equal_a_recount() {
    use crate::test_utils::tracker;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let memory = Arc::new(MemoryKv::new());
    let reopen: [&dyn Fn() -> Store; 2] =
        [&|| Store::with_kv(memory.clone()).unwrap(), &|| Store::open(&path, 8).unwrap()];
    for open in reopen {
        let store = open();
        register(&store, &[1]);
        // More than a page of the default count's walk.
        let mut batch = store.batch();
        for i in 0..10_001u32 {
            let mut bytes = [0u8; 16];
            bytes[..4].copy_from_slice(&i.to_be_bytes());
            batch.put_appointment(&user(1), &num(1), &appointment(Locator::from_slice(&bytes).unwrap(), b"x"), true);
        }
        store.commit(batch).unwrap();
        let mut batch = store.batch();
        batch.put_appointment(&user(1), &num(1), &appointment(locator(0), b"updated"), false);
        batch.delete_appointment(&user(1), &num(1), &locator(0));
        let refused = tracker(2, 100, PenaltyStatus::Refused(101));
        batch.put_tracker(&locator(2), &user(1), &tracker(1, 100, PenaltyStatus::Broadcast(100)), None);
        batch.put_tracker(&locator(2), &user(2), &refused, None);
        batch.put_tracker(&locator(3), &user(1), &tracker(3, 100, PenaltyStatus::Confirmed(102)), None);
        store.commit(batch).unwrap();
        let mut batch = store.batch();
        let confirmed = tracker(2, 100, PenaltyStatus::Confirmed(103));
        batch.put_tracker(&locator(2), &user(2), &confirmed, Some(&refused));
        batch.delete_tracker(&locator(3), &user(1), &tracker(3, 100, PenaltyStatus::Confirmed(102)));
        store.commit(batch).unwrap();
        // A batch that fails changes nothing (here: none is committed at all).
        let mut dropped = store.batch();
        dropped.delete_appointment(&user(1), &num(1), &locator(5));
        drop(dropped);

        let kept = store.stored_counts();
        assert_eq!(kept, StoredCounts { users: 1, appointments: 10_000, trackers: [1, 0, 1, 0] });
        assert_eq!(store.recount().unwrap(), kept, "the same, counted again");
        drop(store);
        assert_eq!(open().stored_counts(), kept, "the same, read again at open");
    }
}

/// Random batches of every kind of change the counts follow (users registered and deleted with
/// their appointments, appointments added, updated and removed, trackers put, moved between states
/// and removed), checked against a recount after every batch, after reopening, and (RocksDB)
/// after the process's view is dropped mid-stream without a clean close of the batch in hand.
#[test]
fn kept_counts_equal_a_recount_after_random_batches_and_reopens() {
    use crate::test_utils::tracker;
    use std::collections::{BTreeMap, BTreeSet};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let memory = Arc::new(MemoryKv::new());
    let reopen: [&dyn Fn() -> Store; 2] =
        [&|| Store::with_kv(memory.clone()).unwrap(), &|| Store::open(&path, 8).unwrap()];
    for open in reopen {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = |below: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % below
        };
        // The model: registered users, their appointments' locators, trackers by (locator, user).
        let mut users: BTreeMap<u8, BTreeSet<u8>> = BTreeMap::new();
        let mut trackers: BTreeMap<(u8, u8), TrackerRecord> = BTreeMap::new();
        let mut store = open();
        assert_eq!(store.persisted_counts().unwrap(), Some(StoredCounts::default()), "written at creation");
        for round in 0..120 {
            let mut batch = store.batch();
            // Within one batch, each user is touched at most once (as teosd's user locks ensure).
            let mut touched = BTreeSet::new();
            for _ in 0..1 + next(6) {
                let n = 1 + next(8) as u8;
                if !touched.insert(n) {
                    continue;
                }
                match (users.contains_key(&n), next(6)) {
                    (false, _) => {
                        batch.put_user(&user(n), None, &num(n));
                        users.insert(n, BTreeSet::new());
                    }
                    (true, 0) => {
                        for l in users.remove(&n).unwrap_or_default() {
                            batch.delete_appointment(&user(n), &num(n), &locator(l));
                        }
                        batch.delete_user(&user(n), &num(n));
                    }
                    (true, 1 | 2) => {
                        let l = next(20) as u8;
                        let is_new = users.get_mut(&n).is_some_and(|ls| ls.insert(l));
                        batch.put_appointment(&user(n), &num(n), &appointment(locator(l), &[round as u8]), is_new);
                    }
                    (true, 3) => {
                        let l = next(20) as u8;
                        if users.get_mut(&n).is_some_and(|ls| ls.remove(&l)) {
                            batch.delete_appointment(&user(n), &num(n), &locator(l));
                        }
                    }
                    (true, _) => {
                        let l = next(20) as u8;
                        let status = match next(4) {
                            0 => PenaltyStatus::Broadcast(100 + round),
                            1 => PenaltyStatus::Refused(100 + round),
                            2 => PenaltyStatus::Confirmed(100 + round),
                            _ => PenaltyStatus::Conflicted { height: 100 + round, by: bitcoin::Txid::all_zeros() },
                        };
                        let old = trackers.get(&(l, n)).cloned();
                        if let Some(old) = old.as_ref().filter(|_| next(3) == 0) {
                            batch.delete_tracker(&locator(l), &user(n), old);
                            trackers.remove(&(l, n));
                        } else {
                            let new = tracker(l, 100, status);
                            batch.put_tracker(&locator(l), &user(n), &new, old.as_ref());
                            trackers.insert((l, n), new);
                        }
                    }
                }
            }
            store.commit(batch).unwrap();
            let kept = store.stored_counts();
            assert_eq!(store.recount().unwrap(), kept, "round {round}");
            assert_eq!(store.persisted_counts().unwrap(), Some(kept), "round {round}");
            assert_eq!(kept.users, users.len() as u64);
            assert_eq!(kept.appointments, users.values().map(|ls| ls.len() as u64).sum::<u64>());
            assert_eq!(kept.trackers.iter().sum::<u64>(), trackers.len() as u64);
            if round % 10 == 9 {
                // A batch built and never committed, then the store dropped: it counts nowhere.
                let mut abandoned = store.batch();
                abandoned.put_user(&user(200), None, &num(200));
                drop(abandoned);
                drop(store);
                store = open();
                assert_eq!(store.stored_counts(), kept, "round {round}: read again at open");
            }
        }
    }
}

/// A version-3 store (before the counts were kept: no `counts` key) is counted once at open and
/// upgraded to version 4, the key and the version in one batch; a read-only open of one counts
/// without writing.
#[test]
fn a_version_3_store_is_counted_once_and_upgraded() {
    let to_v3 = |kv: &dyn Kv| {
        kv.write(vec![
            Op::Delete(Cf::Meta, counts::META_COUNTS.to_vec()),
            Op::Put(Cf::Meta, META_SCHEMA_VERSION.to_vec(), 3u32.to_be_bytes().to_vec()),
        ])
        .unwrap();
    };
    let memory = Arc::new(MemoryKv::new());
    let store = Store::with_kv(memory.clone()).unwrap();
    register(&store, &[1, 2]);
    let mut batch = store.batch();
    batch.put_appointment(&user(1), &num(1), &appointment(locator(1), b"a"), true);
    store.commit(batch).unwrap();
    drop(store);
    to_v3(memory.as_ref());
    let store = Store::with_kv(memory.clone()).unwrap();
    let expected = StoredCounts { users: 2, appointments: 1, trackers: [0; 4] };
    assert_eq!(store.stored_counts(), expected);
    assert_eq!(store.persisted_counts().unwrap(), Some(expected));
    assert_eq!(memory.get(Cf::Meta, META_SCHEMA_VERSION).unwrap(), Some(4u32.to_be_bytes().to_vec()));

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let store = Store::open(&path, 8).unwrap();
    register(&store, &[3]);
    to_v3(store.kv.as_ref());
    drop(store);
    let read_only = Store::open_read_only(&path).unwrap();
    assert_eq!(read_only.stored_counts().users, 1);
    assert_eq!(read_only.persisted_counts().unwrap(), None, "a read-only open writes nothing");
    drop(read_only);
    let store = Store::open(&path, 8).unwrap();
    assert_eq!(store.persisted_counts().unwrap().map(|c| c.users), Some(1));
    assert_eq!(store.kv.get(Cf::Meta, META_SCHEMA_VERSION).unwrap(), Some(4u32.to_be_bytes().to_vec()));
}

/// Counters that are not whole 8-byte words are refused, and the batch with them changes nothing.
#[test]
fn malformed_counters_refuse_the_whole_batch() {
    let memory = MemoryKv::new();
    let refused =
        memory.write(vec![Op::Put(Cf::Users, vec![1], vec![2]), Op::AddCounters(Cf::Meta, b"c".to_vec(), vec![0; 7])]);
    assert!(refused.is_err());
    assert_eq!(memory.get(Cf::Users, &[1]).unwrap(), None);
    assert_eq!(
        kv::add_counters(Some(&[0, 0, 0, 0, 0, 0, 0, 1]), &[0; 16]),
        Some([&[0, 0, 0, 0, 0, 0, 0, 1][..], &[0; 8]].concat())
    );
    assert_eq!(kv::add_counters(None, &(-3i64).to_be_bytes()), Some((-3i64).to_be_bytes().to_vec()));
}
