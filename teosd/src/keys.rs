//! The tower's signing key: created from the OS RNG on first start, kept in the store, rotated
//! with `--overwritekey` (every old key stays in the store).

use bitcoin::secp256k1::rand::rngs::OsRng;
use bitcoin::secp256k1::SecretKey;

use crate::protocol::TowerSigner;
use crate::store::{Store, StoreError};

/// Loads the current tower key, creating one if there is none or if `rotate` is set.
pub fn load_or_create_tower_key(store: &Store, rotate: bool) -> Result<TowerSigner, StoreError> {
    let keys = store.tower_keys()?;
    match keys.last() {
        Some(current) if !rotate => Ok(TowerSigner::new(*current)),
        _ => {
            let secret = SecretKey::new(&mut OsRng);
            let index = u32::try_from(keys.len()).unwrap_or(u32::MAX);
            let mut batch = store.batch();
            batch.put_tower_key(index, &secret);
            store.commit(batch)?;
            if keys.is_empty() {
                tracing::info!("created a new tower key");
            } else {
                tracing::warn!(
                    previous_keys = keys.len(),
                    "rotated the tower key; previous keys are kept in the store"
                );
            }
            Ok(TowerSigner::new(secret))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_start_creates_then_reuses_then_rotates_keeping_old_keys() {
        let store = Store::in_memory();
        let first = load_or_create_tower_key(&store, false).unwrap();
        assert_eq!(load_or_create_tower_key(&store, false).unwrap().tower_id(), first.tower_id());
        let rotated = load_or_create_tower_key(&store, true).unwrap();
        assert_ne!(rotated.tower_id(), first.tower_id());
        assert_eq!(store.tower_keys().unwrap().len(), 2);
        assert_eq!(load_or_create_tower_key(&store, false).unwrap().tower_id(), rotated.tower_id());
    }
}
