//! Counts and paged listings for the admin API. Nothing here loads a column family in full: counts
//! walk index keys in pages of `COUNT_PAGE`, and each listing returns one bounded page as
//! `(items, next)`, where `next` is the cursor to resume from (the last key read) or `None` after
//! the last page. A page may be short, even empty, and still have a successor when entries were
//! skipped.
//!
//! Costs: every count is a scan of one column family whose values are empty (`users_by_expiry`,
//! `user_locators`, `trackers_by_penalty`), so O(n) keys read from the block cache or disk, in
//! pages, with memory bounded by one page. A page costs one seek plus `limit` entries;
//! [`Store::watched_appointments_page`] adds one point lookup per appointment (answered by the
//! bloom filter when there is no tracker).

use super::kv::{Cf, Entries};
use super::{appointment_key, corrupt, decode_appointment, decode_tracker, numbered_key, split_numbered_key};
use super::{Store, StoreError, StoredAppointment};
use super::{TrackerRecord, UserRecord};
use crate::protocol::{Locator, UserId, LOCATOR_LEN, USER_ID_LEN};

/// Keys read per step when counting.
pub const COUNT_PAGE: usize = 4096;

const APPOINTMENT_KEY_LEN: usize = LOCATOR_LEN + USER_ID_LEN;
const PENALTY_INDEX_KEY_LEN: usize = 32 + APPOINTMENT_KEY_LEN;

/// Where a listing of trackers resumes: just after this `(locator, user)` key.
pub type AppointmentCursor = (Locator, UserId);

/// Where a listing of stored appointments resumes: just after this `(locator, user number)` key.
pub type StoredCursor = (Locator, u32);

/// One page of a listing: the items, in key order, and where the next page starts (`None` after
/// the last page).
pub type Page<T, C> = (Vec<T>, Option<C>);

/// Up to `limit` (at least 1) entries of `cf` after the key `after`, whose keys are all
/// `key_len` bytes long; and whether the page was full (there may be more).
fn range_after(
    store: &Store,
    cf: Cf,
    key_len: usize,
    after: Option<Vec<u8>>,
    limit: usize,
) -> Result<(Entries, bool), StoreError> {
    let limit = limit.max(1);
    // `k ‖ 0x00` is the smallest key above `k`; `0xff × (key_len + 1)` is above every key.
    let from = after.map(|mut key| {
        key.push(0);
        key
    });
    let rows = store.kv.range(cf, from.as_deref().unwrap_or(&[]), &vec![0xff; key_len + 1], limit)?;
    if let Some((key, _)) = rows.iter().find(|(k, _)| k.len() != key_len) {
        return Err(corrupt(cf, "key", format!("{} bytes, expected {key_len}", key.len())));
    }
    let full = rows.len() == limit;
    Ok((rows, full))
}

fn cursor_key(cursor: Option<&AppointmentCursor>) -> Option<Vec<u8>> {
    cursor.map(|(locator, user)| appointment_key(locator, user))
}

impl Store {
    /// Counts the keys of `cf` (all `key_len` bytes long), one [`COUNT_PAGE`] at a time.
    fn count_keys(&self, cf: Cf, key_len: usize) -> Result<u64, StoreError> {
        let mut count = 0u64;
        let mut after = None;
        loop {
            let (rows, full) = range_after(self, cf, key_len, after, COUNT_PAGE)?;
            count += rows.len() as u64;
            match (full, rows.into_iter().last()) {
                (true, Some((key, _))) => after = Some(key),
                _ => return Ok(count),
            }
        }
    }

    /// How many users are registered. Cost: a key scan of `users_by_expiry` (one empty-valued
    /// entry per user).
    pub fn count_users(&self) -> Result<u64, StoreError> {
        self.count_keys(Cf::UsersByExpiry, 4 + USER_ID_LEN)
    }

    /// How many appointments are stored, triggered or not. Cost: a key scan of `user_locators`
    /// (one empty-valued entry per appointment, written in the same batch).
    pub fn count_appointments(&self) -> Result<u64, StoreError> {
        self.count_keys(Cf::UserLocators, USER_ID_LEN + LOCATOR_LEN)
    }

    /// How many trackers exist. Cost: a key scan of `trackers_by_penalty`.
    pub fn count_trackers(&self) -> Result<u64, StoreError> {
        self.count_keys(Cf::TrackersByPenalty, PENALTY_INDEX_KEY_LEN)
    }

    /// How many appointments are still being watched (stored, without a tracker): the count of
    /// appointments less those of the trackers whose appointment is still stored. Cost: the two
    /// key scans plus one point lookup per tracker.
    pub fn count_watched_appointments(&self) -> Result<u64, StoreError> {
        Ok(self.count_appointments()?.saturating_sub(self.count_triggered_appointments()?))
    }

    /// How many trackers have their appointment still stored (a deleted user's went with it).
    /// Cost: a key scan of `trackers_by_penalty` plus two point lookups per tracker: it grows
    /// with the trackers, not the appointments.
    pub fn count_triggered_appointments(&self) -> Result<u64, StoreError> {
        let mut triggered = 0u64;
        let mut after = None;
        loop {
            let (rows, full) = range_after(self, Cf::TrackersByPenalty, PENALTY_INDEX_KEY_LEN, after, COUNT_PAGE)?;
            for (key, _) in &rows {
                let (locator, user) = super::trackers::split_key(Cf::TrackersByPenalty, &key[32..])?;
                // A removed user's appointments went with it.
                if let Some(record) = self.user(&user)? {
                    if self.appointment(&locator, &record)?.is_some() {
                        triggered += 1;
                    }
                }
            }
            match (full, rows.into_iter().last()) {
                (true, Some((key, _))) => after = Some(key),
                _ => return Ok(triggered),
            }
        }
    }

    /// Up to `limit` users after `after`, in id byte order, with their subscriptions.
    pub fn users_page(
        &self,
        after: Option<&UserId>,
        limit: usize,
    ) -> Result<Page<(UserId, UserRecord), UserId>, StoreError> {
        let after = after.map(|user| user.to_bytes().to_vec());
        let (rows, full) = range_after(self, Cf::Users, USER_ID_LEN, after, limit)?;
        let items = rows
            .iter()
            .map(|(k, v)| {
                let user = UserId::from_slice(k).map_err(|e| corrupt(Cf::Users, "key", e.to_string()))?;
                let record =
                    UserRecord::decode(v).map_err(|source| StoreError::Corrupt { cf: Cf::Users.name(), source })?;
                Ok((user, record))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let next = if full { items.last().map(|(user, _)| *user) } else { None };
        Ok((items, next))
    }

    /// Up to `limit` stored appointments after `after`, in `(locator, user)` order, triggered
    /// or not.
    pub fn appointments_page(
        &self,
        after: Option<&StoredCursor>,
        limit: usize,
    ) -> Result<Page<(UserId, StoredAppointment), StoredCursor>, StoreError> {
        let after = after.map(|(locator, number)| numbered_key(locator, *number));
        let (rows, full) = range_after(self, Cf::Appointments, LOCATOR_LEN + 4, after, limit)?;
        let mut items = Vec::with_capacity(rows.len());
        let mut next = None;
        for (k, v) in &rows {
            let (locator, number) = split_numbered_key(k)?;
            items.push((self.user_of_row(number)?, decode_appointment(locator, v)?));
            next = Some((locator, number));
        }
        Ok((items, next.filter(|_| full)))
    }

    /// Like [`Store::appointments_page`], without the appointments that have a tracker (those
    /// show up in [`Store::trackers_page`]). `limit` entries are scanned, so the page may be
    /// shorter; follow `next`.
    pub fn watched_appointments_page(
        &self,
        after: Option<&StoredCursor>,
        limit: usize,
    ) -> Result<Page<(UserId, StoredAppointment), StoredCursor>, StoreError> {
        let (items, next) = self.appointments_page(after, limit)?;
        let mut watched = Vec::with_capacity(items.len());
        for (user, stored) in items {
            if !self.has_tracker(&stored.appointment.locator, &user)? {
                watched.push((user, stored));
            }
        }
        Ok((watched, next))
    }

    /// Up to `limit` trackers after `after`, in `(locator, user)` order.
    pub fn trackers_page(
        &self,
        after: Option<&AppointmentCursor>,
        limit: usize,
    ) -> Result<Page<(Locator, UserId, TrackerRecord), AppointmentCursor>, StoreError> {
        let (rows, full) = range_after(self, Cf::Trackers, APPOINTMENT_KEY_LEN, cursor_key(after), limit)?;
        let items = rows
            .iter()
            .map(|(k, v)| {
                let (locator, user) = super::trackers::split_key(Cf::Trackers, k)?;
                Ok((locator, user, decode_tracker(v)?))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let next = if full { items.last().map(|(locator, user, _)| (*locator, *user)) } else { None };
        Ok((items, next))
    }

    /// Every user's tracker at `locator` (a prefix lookup, like [`Store::appointments_at`]).
    pub fn trackers_at(&self, locator: &Locator) -> Result<Vec<(UserId, TrackerRecord)>, StoreError> {
        let rows = self.kv.scan(Cf::Trackers, locator.as_bytes(), locator.as_bytes(), usize::MAX)?;
        rows.iter()
            .map(|(k, v)| {
                let (_, user) = super::trackers::split_key(Cf::Trackers, k)?;
                Ok((user, decode_tracker(v)?))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use bitcoin::secp256k1::{PublicKey, Secp256k1, SecretKey};

    use super::*;
    use crate::protocol::Appointment;
    use crate::store::PenaltyStatus;

    fn user(n: u8) -> UserId {
        let sk = SecretKey::from_slice(&[n.max(1); 32]).unwrap();
        UserId(PublicKey::from_secret_key(&Secp256k1::signing_only(), &sk))
    }

    fn locator(n: u16) -> Locator {
        let mut bytes = [7u8; 16];
        bytes[..2].copy_from_slice(&n.to_be_bytes());
        Locator::from_slice(&bytes).unwrap()
    }

    fn stored(loc: Locator) -> StoredAppointment {
        StoredAppointment {
            appointment: Appointment { locator: loc, encrypted_blob: vec![1, 2, 3], to_self_delay: 42 },
            user_signature: "s".repeat(104),
            start_block: 100,
        }
    }

    fn tracker(seed: u8) -> TrackerRecord {
        crate::test_utils::tracker(seed, 120, PenaltyStatus::Broadcast(120))
    }

    fn record(slots: u32) -> UserRecord {
        UserRecord {
            available_slots: slots,
            subscription_start: 100,
            subscription_expiry: 600,
            number: 1,
            dialect: Default::default(),
        }
    }

    /// `user(n)`'s record, numbered `n`, registered in `store`.
    fn registered(store: &Store, n: u8) -> UserRecord {
        let record = UserRecord { number: u32::from(n), ..record(10) };
        let mut batch = store.batch();
        batch.put_user(&user(n), None, &record);
        store.commit(batch).unwrap();
        record
    }

    fn num(n: u8) -> UserRecord {
        UserRecord { number: u32::from(n), ..record(10) }
    }

    fn with_each_backend(test: impl Fn(Store)) {
        test(Store::in_memory());
        let dir = tempfile::tempdir().unwrap();
        test(Store::open(&dir.path().join("db"), 8).unwrap());
    }

    #[test]
    fn an_empty_store_counts_and_lists_nothing() {
        with_each_backend(|store| {
            assert_eq!(store.count_users().unwrap(), 0);
            assert_eq!(store.count_appointments().unwrap(), 0);
            assert_eq!(store.count_trackers().unwrap(), 0);
            assert_eq!(store.count_watched_appointments().unwrap(), 0);
            assert_eq!(store.users_page(None, 10).unwrap(), (vec![], None));
            assert_eq!(store.appointments_page(None, 10).unwrap(), (vec![], None));
            assert_eq!(store.trackers_page(None, 10).unwrap(), (vec![], None));
            assert_eq!(store.trackers_at(&locator(1)).unwrap(), vec![]);
        });
    }

    #[test]
    fn users_are_paged_in_id_order_each_exactly_once() {
        with_each_backend(|store| {
            let mut batch = store.batch();
            let mut users: Vec<UserId> = (1..=7).map(user).collect();
            for (i, u) in users.iter().enumerate() {
                batch.put_user(u, None, &record(i as u32));
            }
            store.commit(batch).unwrap();
            users.sort_by_key(|u| u.to_bytes());
            assert_eq!(store.count_users().unwrap(), 7);

            let mut seen = Vec::new();
            let mut after = None;
            loop {
                let (items, next) = store.users_page(after.as_ref(), 3).unwrap();
                assert!(items.len() <= 3);
                seen.extend(items.iter().map(|(u, _)| *u));
                match next {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
            assert_eq!(seen, users);
            let (first, first_record) = store.users_page(None, 1).unwrap().0[0];
            assert_eq!(store.user(&first).unwrap(), Some(first_record));
            // A limit of 0 still makes progress.
            assert_eq!(store.users_page(None, 0).unwrap().0.len(), 1);
        });
    }

    #[test]
    fn appointments_are_paged_across_users_and_locators() {
        with_each_backend(|store| {
            registered(&store, 1);
            registered(&store, 2);
            let mut batch = store.batch();
            for n in 0..10u16 {
                batch.put_appointment(&user(1), &num(1), &stored(locator(n)), true);
            }
            batch.put_appointment(&user(2), &num(2), &stored(locator(3)), true);
            store.commit(batch).unwrap();
            assert_eq!(store.count_appointments().unwrap(), 11);

            let mut keys = Vec::new();
            let mut after = None;
            loop {
                let (items, next) = store.appointments_page(after.as_ref(), 4).unwrap();
                keys.extend(items.iter().map(|(u, a)| (a.appointment.locator, *u)));
                match next {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
            let mut expected: Vec<_> = (0..10u16).map(|n| (locator(n), user(1))).collect();
            expected.push((locator(3), user(2)));
            // In (locator, user number) order.
            expected.sort_by_key(|(l, u)| (*l, u32::from(*u != user(1))));
            assert_eq!(keys, expected);
        });
    }

    #[test]
    fn triggered_appointments_are_listed_as_trackers_only() {
        with_each_backend(|store| {
            let (alice, bob) = (user(1), user(2));
            registered(&store, 1);
            registered(&store, 2);
            let mut batch = store.batch();
            batch.put_appointment(&alice, &num(1), &stored(locator(1)), true);
            batch.put_appointment(&bob, &num(2), &stored(locator(1)), true);
            batch.put_appointment(&alice, &num(1), &stored(locator(2)), true);
            batch.put_tracker(&locator(1), &bob, &tracker(1), None);
            store.commit(batch).unwrap();

            assert_eq!(store.count_appointments().unwrap(), 3);
            assert_eq!(store.count_trackers().unwrap(), 1);
            assert_eq!(store.count_watched_appointments().unwrap(), 2);
            let (watched, next) = store.watched_appointments_page(None, 10).unwrap();
            let keys: Vec<_> = watched.iter().map(|(u, a)| (a.appointment.locator, *u)).collect();
            assert_eq!(keys, vec![(locator(1), alice), (locator(2), alice)]);
            assert_eq!(next, None);

            let trackers = store.trackers_page(None, 10).unwrap();
            assert_eq!(trackers, (vec![(locator(1), bob, tracker(1))], None));
            assert_eq!(store.trackers_at(&locator(1)).unwrap(), vec![(bob, tracker(1))]);
            assert_eq!(store.trackers_at(&locator(2)).unwrap(), vec![]);
        });
    }

    #[test]
    fn a_page_of_only_triggered_appointments_still_points_to_the_next() {
        let store = Store::in_memory();
        registered(&store, 1);
        let mut batch = store.batch();
        for n in 0..3u16 {
            batch.put_appointment(&user(1), &num(1), &stored(locator(n)), true);
        }
        batch.put_tracker(&locator(0), &user(1), &tracker(0), None);
        batch.put_tracker(&locator(1), &user(1), &tracker(1), None);
        store.commit(batch).unwrap();
        let (items, next) = store.watched_appointments_page(None, 2).unwrap();
        assert!(items.is_empty());
        assert_eq!(next, Some((locator(1), 1)));
        let (items, next) = store.watched_appointments_page(next.as_ref(), 2).unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].1.appointment.locator, locator(2));
        assert_eq!(next, None);
    }

    #[test]
    fn counts_span_several_count_pages() {
        let store = Store::in_memory();
        registered(&store, 1);
        let total = COUNT_PAGE as u16 * 2 + 5;
        for chunk in (0..total).collect::<Vec<_>>().chunks(1000) {
            let mut batch = store.batch();
            for n in chunk {
                batch.put_appointment(&user(1), &num(1), &stored(locator(*n)), true);
            }
            store.commit(batch).unwrap();
        }
        assert_eq!(store.count_appointments().unwrap(), u64::from(total));
        assert_eq!(store.count_watched_appointments().unwrap(), u64::from(total));
    }

    #[test]
    fn keys_of_the_wrong_length_are_corruption() {
        let store = Store::in_memory();
        store.kv.write(vec![crate::store::Op::Put(Cf::Users, vec![2; 5], record(1).encode())]).unwrap();
        assert!(matches!(store.users_page(None, 10), Err(StoreError::Corrupt { .. })));
    }
}
