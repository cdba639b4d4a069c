//! One suite, run against both backends; then RocksDB-only cases (schema, damage, concurrency).

use std::sync::Arc;

use bitcoin::secp256k1::{PublicKey, Secp256k1, SecretKey};

use super::*;
use crate::protocol::Appointment;

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
    UserRecord { available_slots: slots, subscription_start: 100, subscription_expiry: expiry }
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
        let mut batch = store.batch();
        batch.put_user(&alice, None, &record(9, 600));
        batch.put_appointment(&alice, &appointment(locator(7), b"a"));
        batch.put_appointment(&alice, &appointment(locator(8), b"b"));
        batch.put_appointment(&bob, &appointment(locator(7), b"c"));
        store.commit(batch).unwrap();

        assert_eq!(store.appointment(&locator(7), &alice).unwrap(), Some(appointment(locator(7), b"a")));
        assert_eq!(store.appointment(&locator(8), &bob).unwrap(), None);
        let at_seven = store.appointments_at(&locator(7)).unwrap();
        assert_eq!(at_seven.len(), 2);
        assert!(at_seven.contains(&(bob, appointment(locator(7), b"c"))));
        assert!(store.appointments_at(&locator(9)).unwrap().is_empty());
        assert_eq!(store.user_locators(&alice).unwrap(), vec![locator(7), locator(8)]);

        // An update overwrites in place; a delete removes both the row and the user's index.
        let mut batch = store.batch();
        batch.put_appointment(&alice, &appointment(locator(7), b"updated"));
        batch.delete_appointment(&alice, &locator(8));
        store.commit(batch).unwrap();
        assert_eq!(store.appointment(&locator(7), &alice).unwrap(), Some(appointment(locator(7), b"updated")));
        assert_eq!(store.user_locators(&alice).unwrap(), vec![locator(7)]);
    });
}

#[test]
fn locator_prefixes_do_not_leak_into_neighbours() {
    with_each_backend(|store| {
        let mut batch = store.batch();
        let mut near = [7u8; 16];
        near[15] = 8;
        batch.put_appointment(&user(1), &appointment(Locator::from_slice(&near).unwrap(), b"x"));
        batch.put_appointment(&user(1), &appointment(locator(6), b"x"));
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
        batch.put_appointment(&user(1), &appointment(locator(1), b"blob"));
        store.commit(batch).unwrap();
    }
    let store = Store::open(&path, 8).unwrap();
    assert_eq!(store.user(&user(1)).unwrap(), Some(record(3, 600)));
    assert_eq!(store.appointment(&locator(1), &user(1)).unwrap(), Some(appointment(locator(1), b"blob")));
}

#[test]
fn newer_schema_version_is_refused_and_untouched() {
    let kv = Arc::new(MemoryKv::new());
    kv.write(vec![Op::Put(Cf::Meta, META_SCHEMA_VERSION.to_vec(), 2u32.to_be_bytes().to_vec())]).unwrap();
    kv.write(vec![Op::Put(Cf::Users, vec![1], vec![2])]).unwrap();
    let err = Store::with_kv(kv.clone()).unwrap_err();
    assert!(matches!(err, StoreError::SchemaVersion { found: 2 }), "{err}");
    assert_eq!(kv.get(Cf::Meta, META_SCHEMA_VERSION).unwrap(), Some(2u32.to_be_bytes().to_vec()));
    assert_eq!(kv.get(Cf::Users, &[1]).unwrap(), Some(vec![2]));
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
        Op::Put(Cf::Appointments, appointment_key(&locator(1), &user(1)), vec![0; 5]),
        Op::Put(Cf::Meta, META_TIP.to_vec(), vec![0; 3]),
        Op::Put(Cf::Meta, join(META_TOWER_KEY, &[0, 0, 0, 0]), vec![0; 32]),
    ])
    .unwrap();
    assert!(matches!(store.user(&user(1)), Err(StoreError::Corrupt { .. })));
    assert!(matches!(store.appointment(&locator(1), &user(1)), Err(StoreError::Corrupt { .. })));
    assert!(matches!(store.appointments_at(&locator(1)), Err(StoreError::Corrupt { .. })));
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
                    batch.put_user(&user(t + 1), None, &record(u32::from(i), 600));
                    batch.put_appointment(&user(t + 1), &appointment(Locator::from_slice(&loc).unwrap(), &[i]));
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
