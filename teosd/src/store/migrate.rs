//! Upgrades of the store's layout, run once at open. Each rewrites the records of the previous
//! version in batches (a crash halfway leaves a store that the next open finishes upgrading: the
//! version is written last, and every step recognises what it already rewrote).

use bitcoin::hashes::Hash;
use bitcoin::BlockHash;

use super::kv::{Cf, Kv, Op};
use super::recent::{late_check_key, LATE_KEY_LEN};
use super::records::{be_u32, TrackerRecord, UserRecord};
use super::{corrupt, Batch, RecentHit, StoreError, META_SCHEMA_VERSION};
use crate::protocol::{Locator, UserId, LOCATOR_LEN, USER_ID_LEN};

/// Records rewritten per batch.
const PAGE: usize = 1000;

/// Version 2 → 3: trackers no longer keep the dispute transaction (only its id), and late checks
/// are keyed by the block they wait for (`height ‖ hash ‖ locator ‖ user_id`), oldest first.
pub(super) fn v2_to_v3(kv: &dyn Kv) -> Result<(), StoreError> {
    rewrite_trackers(kv)?;
    rekey_late_checks(kv)?;
    kv.write(vec![Op::Put(Cf::Meta, META_SCHEMA_VERSION.to_vec(), 3u32.to_be_bytes().to_vec())])?;
    tracing::info!("store upgraded from schema version 2 to 3");
    Ok(())
}

/// Version 3 → 4: the store's counts are kept in the `meta` key `counts` (added to by every
/// batch): counted once here, written with the version in one batch. An older teosd refuses a
/// version-4 store, so it never writes batches that would leave the counts behind.
pub(super) fn v3_to_v4(kv: &dyn Kv) -> Result<(), StoreError> {
    let counted = super::counts::recount(kv)?;
    let version = Op::Put(Cf::Meta, META_SCHEMA_VERSION.to_vec(), 4u32.to_be_bytes().to_vec());
    kv.write(vec![super::counts::put_counts(&counted), version])?;
    tracing::info!("store upgraded from schema version 3 to 4 (its counts kept in the store)");
    Ok(())
}

fn rewrite_trackers(kv: &dyn Kv) -> Result<(), StoreError> {
    let mut from = Vec::new();
    loop {
        let rows = kv.range(Cf::Trackers, &from, &[0xff; LOCATOR_LEN + USER_ID_LEN + 1], PAGE)?;
        let Some((last, _)) = rows.last() else { return Ok(()) };
        from = last.clone();
        from.push(0);
        let mut batch = Batch::default();
        for (key, value) in rows {
            // Already rewritten (an upgrade interrupted halfway) if it decodes as version 3.
            if TrackerRecord::decode(&value).is_ok() {
                continue;
            }
            let (locator, user) = super::trackers::split_key(Cf::Trackers, &key)?;
            let to_self_delay = appointment_to_self_delay(kv, &locator, &user)?.unwrap_or(0);
            let tracker = TrackerRecord::decode_v2(&value, to_self_delay)
                .map_err(|source| StoreError::Corrupt { cf: Cf::Trackers.name(), source })?;
            // Every index again (the same keys for the old ones, and the new `tracker_inputs`).
            batch.put_tracker(&locator, &user, &tracker, None);
        }
        kv.write(batch.ops)?;
    }
}

/// The `to_self_delay` of `user`'s appointment at `locator`, read from version 2's records.
fn appointment_to_self_delay(kv: &dyn Kv, locator: &Locator, user: &UserId) -> Result<Option<u32>, StoreError> {
    let Some(record) = kv.get(Cf::Users, &user.to_bytes())? else { return Ok(None) };
    let record = UserRecord::decode(&record).map_err(|source| StoreError::Corrupt { cf: Cf::Users.name(), source })?;
    let key = [locator.as_bytes().as_slice(), &record.number.to_be_bytes()].concat();
    Ok(kv.get(Cf::Appointments, &key)?.and_then(|v| be_u32(&v, 0)))
}

fn rekey_late_checks(kv: &dyn Kv) -> Result<(), StoreError> {
    let mut from = Vec::new();
    loop {
        let rows = kv.range(Cf::LateChecks, &from, &[0xff; LATE_KEY_LEN + 1], PAGE)?;
        let Some((last, _)) = rows.last() else { return Ok(()) };
        from = last.clone();
        from.push(0);
        let mut ops = Vec::new();
        // Version 2's keys are `locator ‖ user_id` with `height ‖ hash` as the value; version 3's
        // (already moved) are longer and have no value.
        for (key, value) in rows.into_iter().filter(|(k, _)| k.len() == LOCATOR_LEN + USER_ID_LEN) {
            let height = be_u32(&value, 0).filter(|_| value.len() == 36);
            let height = height.ok_or_else(|| corrupt(Cf::LateChecks, "value", "not 36 bytes"))?;
            let block_hash =
                BlockHash::from_slice(&value[4..]).map_err(|e| corrupt(Cf::LateChecks, "hash", e.to_string()))?;
            let (locator, user) = super::trackers::split_key(Cf::LateChecks, &key)?;
            let hit = RecentHit { height, block_hash };
            ops.push(Op::Put(Cf::LateChecks, late_check_key(&hit, &locator, &user), Vec::new()));
            ops.push(Op::Delete(Cf::LateChecks, key));
        }
        kv.write(ops)?;
    }
}

#[cfg(test)]
mod tests {
    use bitcoin::consensus::serialize;

    use super::*;
    use crate::store::{MemoryKv, PenaltyStatus, Store};
    use crate::test_utils::{channel, user};

    #[test]
    fn a_version_2_store_is_upgraded_at_open_and_keeps_its_trackers_and_late_checks() {
        let kv = std::sync::Arc::new(MemoryKv::new());
        let (dispute, penalty) = channel(3);
        let locator = crate::protocol::Locator::from_txid(&dispute.compute_txid());
        // A version-2 tracker: status ‖ heights ‖ penalty_len ‖ penalty ‖ dispute.
        let mut v2 = vec![1u8];
        v2.extend_from_slice(&105u32.to_be_bytes());
        v2.extend_from_slice(&104u32.to_be_bytes());
        let encoded = serialize(&penalty);
        v2.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
        v2.extend_from_slice(&encoded);
        v2.extend_from_slice(&serialize(&dispute));
        let tracker_key = [locator.as_bytes().as_slice(), &user(1).to_bytes()].concat();
        let mut late_value = 101u32.to_be_bytes().to_vec();
        late_value.extend_from_slice(&[7; 32]);
        kv.write(vec![
            Op::Put(Cf::Meta, META_SCHEMA_VERSION.to_vec(), 2u32.to_be_bytes().to_vec()),
            Op::Put(Cf::Trackers, tracker_key, v2),
            Op::Put(Cf::LateChecks, [locator.as_bytes().as_slice(), &user(2).to_bytes()].concat(), late_value),
        ])
        .unwrap();

        let store = Store::with_kv(kv.clone()).unwrap();
        let tracker = store.tracker(&locator, &user(1)).unwrap().expect("kept");
        assert_eq!(tracker.dispute_txid, dispute.compute_txid());
        assert_eq!(
            (tracker.penalty, tracker.dispute_height, tracker.status),
            (penalty, 104, PenaltyStatus::Confirmed(105))
        );
        let hit = RecentHit { height: 101, block_hash: BlockHash::from_byte_array([7; 32]) };
        assert_eq!(store.late_checks(10).unwrap(), vec![(locator, user(2), hit)]);
        assert_eq!(kv.get(Cf::Meta, META_SCHEMA_VERSION).unwrap(), Some(4u32.to_be_bytes().to_vec()));
        assert_eq!(store.stored_counts().trackers, [0, 0, 1, 0], "counted on the way to version 4");
        // Opening again changes nothing.
        let again = Store::with_kv(kv).unwrap();
        assert_eq!(again.late_checks(10).unwrap().len(), 1);
    }
}
