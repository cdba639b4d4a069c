//! Value layouts of the store's records (see `docs/schema.md`). Decoding never panics: a value
//! that does not fit its layout is reported as corruption.

use bitcoin::consensus::{deserialize, serialize};
use bitcoin::hashes::Hash;
use bitcoin::{Transaction, Txid};

use crate::protocol::{zbase32, Appointment, Dialect, Locator};

/// A value did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {why}")]
pub struct DecodeError {
    /// The kind of record.
    pub what: &'static str,
    /// What was wrong.
    pub why: String,
}

fn err(what: &'static str, why: impl Into<String>) -> DecodeError {
    DecodeError { what, why: why.into() }
}

pub(crate) fn be_u32(bytes: &[u8], at: usize) -> Option<u32> {
    bytes.get(at..at + 4).and_then(|b| b.try_into().ok()).map(u32::from_be_bytes)
}

/// The 17th byte of a python-teos user's record.
const DIALECT_PYTHON: u8 = 1;

/// A user's subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserRecord {
    /// Slots left.
    pub available_slots: u32,
    /// Height of the first registration of the current subscription run.
    pub subscription_start: u32,
    /// Height at which the subscription ends.
    pub subscription_expiry: u32,
    /// The user's number in this store (given at first registration): appointments are keyed
    /// by it rather than by the 33-byte user id.
    pub number: u32,
    /// The client family it registered with (kept for life).
    pub dialect: Dialect,
}

impl UserRecord {
    /// `slots ‖ start ‖ expiry ‖ number`, u32 big-endian each, then `0x01` for a python-teos user
    /// (a rust-teos user's record has no 17th byte, as before dialects existed).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(17);
        out.extend_from_slice(&self.available_slots.to_be_bytes());
        out.extend_from_slice(&self.subscription_start.to_be_bytes());
        out.extend_from_slice(&self.subscription_expiry.to_be_bytes());
        out.extend_from_slice(&self.number.to_be_bytes());
        if self.dialect == Dialect::Python {
            out.push(DIALECT_PYTHON);
        }
        out
    }

    /// Inverse of [`UserRecord::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let dialect = match bytes.get(16..) {
            Some([]) => Dialect::Rust,
            Some([DIALECT_PYTHON]) => Dialect::Python,
            _ => return Err(err("user", format!("{} bytes, expected 16 or 16 and a dialect", bytes.len()))),
        };
        match (be_u32(bytes, 0), be_u32(bytes, 4), be_u32(bytes, 8), be_u32(bytes, 12)) {
            (Some(available_slots), Some(subscription_start), Some(subscription_expiry), Some(number)) => {
                Ok(UserRecord { available_slots, subscription_start, subscription_expiry, number, dialect })
            }
            _ => Err(err("user", format!("{} bytes, expected 16", bytes.len()))),
        }
    }
}

/// How a user signature is stored: the 65 bytes it encodes when its zbase32 text is canonical
/// (what every signer produces), else the text itself.
const SIG_RAW: u8 = 0;
const SIG_TEXT: u8 = 1;
const SIG_RAW_LEN: usize = 65;

fn encode_signature(signature: &str, out: &mut Vec<u8>) {
    if let Ok(raw) = zbase32().decode(signature.as_bytes()) {
        if raw.len() == SIG_RAW_LEN && zbase32().encode(&raw) == signature {
            out.push(SIG_RAW);
            out.extend_from_slice(&raw);
            return;
        }
    }
    let text = &signature.as_bytes()[..signature.len().min(255)];
    out.push(SIG_TEXT);
    out.push(text.len() as u8);
    out.extend_from_slice(text);
}

/// The signature and where the bytes after it start.
fn decode_signature(bytes: &[u8]) -> Result<(String, usize), DecodeError> {
    let bad = |why: &str| err("appointment", format!("signature: {why}"));
    match bytes.first() {
        Some(&SIG_RAW) => {
            let raw = bytes.get(1..1 + SIG_RAW_LEN).ok_or_else(|| bad("truncated"))?;
            Ok((zbase32().encode(raw), 1 + SIG_RAW_LEN))
        }
        Some(&SIG_TEXT) => {
            let len = *bytes.get(1).ok_or_else(|| bad("truncated"))? as usize;
            let text = bytes.get(2..2 + len).ok_or_else(|| bad("truncated"))?;
            let text = String::from_utf8(text.to_vec()).map_err(|_| bad("not ASCII"))?;
            Ok((text, 2 + len))
        }
        Some(other) => Err(bad(&format!("unknown form {other}"))),
        None => Err(bad("missing")),
    }
}

/// An appointment as the tower keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAppointment {
    /// What the user sent.
    pub appointment: Appointment,
    /// The user's zbase32 signature over it (evidence, and the receipt's input).
    pub user_signature: String,
    /// The tower's height when it accepted the appointment.
    pub start_block: u32,
}

impl StoredAppointment {
    /// `to_self_delay ‖ start_block ‖ signature ‖ blob`; the signature is `0 ‖ 65 bytes` (its
    /// canonical zbase32 text decoded) or `1 ‖ len(u8) ‖ text`; the locator lives in the key.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(10 + SIG_RAW_LEN + self.appointment.encrypted_blob.len());
        out.extend_from_slice(&self.appointment.to_self_delay.to_be_bytes());
        out.extend_from_slice(&self.start_block.to_be_bytes());
        encode_signature(&self.user_signature, &mut out);
        out.extend_from_slice(&self.appointment.encrypted_blob);
        out
    }

    /// Inverse of [`StoredAppointment::encode`].
    pub fn decode(locator: Locator, bytes: &[u8]) -> Result<Self, DecodeError> {
        let (Some(to_self_delay), Some(start_block)) = (be_u32(bytes, 0), be_u32(bytes, 4)) else {
            return Err(err("appointment", format!("{} bytes is too short", bytes.len())));
        };
        let (user_signature, used) = decode_signature(&bytes[8..])?;
        Ok(StoredAppointment {
            appointment: Appointment { locator, encrypted_blob: bytes[8 + used..].to_vec(), to_self_delay },
            user_signature,
            start_block,
        })
    }
}

/// Where a penalty stands (docs/architecture.md draws the states).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PenaltyStatus {
    /// Accepted by bitcoind at this height, not yet confirmed: sent again every
    /// `rebroadcast_after` blocks.
    Broadcast(u32),
    /// Refused by bitcoind at this height (its fee, a full mempool, a missing input...): sent
    /// again at every block.
    Refused(u32),
    /// Confirmed in the block at this height.
    Confirmed(u32),
    /// An output the penalty spends was spent by the confirmed transaction `by`, at this height:
    /// lost once that is buried, unless a reorg takes it out.
    Conflicted {
        /// The block height of the conflicting spend.
        height: u32,
        /// The conflicting transaction.
        by: Txid,
    },
}

impl PenaltyStatus {
    /// Its height (sent, refused, confirmed or conflicted at).
    pub fn height(&self) -> u32 {
        match *self {
            PenaltyStatus::Broadcast(h) | PenaltyStatus::Refused(h) | PenaltyStatus::Confirmed(h) => h,
            PenaltyStatus::Conflicted { height, .. } => height,
        }
    }
}

/// A triggered appointment: the dispute seen on chain and the penalty being followed. The dispute
/// itself is not kept (only its id): nothing needs it once its penalty is decrypted, and a
/// dispute of 100 kB matched by many users would otherwise be stored once per user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackerRecord {
    /// The dispute's txid.
    pub dispute_txid: Txid,
    /// The decrypted penalty.
    pub penalty: Transaction,
    /// Height of the block that held the dispute.
    pub dispute_height: u32,
    /// The appointment's `to_self_delay`: blocks after the dispute before the cheater may sweep
    /// (0 if unknown: a tracker from schema version 2 whose appointment was gone).
    pub to_self_delay: u32,
    /// Where the penalty stands.
    pub status: PenaltyStatus,
}

impl TrackerRecord {
    /// `status_kind(u8: 0 broadcast, 1 confirmed, 2 refused, 3 conflicted) ‖ status_height ‖
    /// dispute_height ‖ to_self_delay ‖ dispute_txid ‖ [conflicting txid, if conflicted] ‖
    /// penalty` (consensus-encoded, to the end).
    pub fn encode(&self) -> Vec<u8> {
        let penalty = serialize(&self.penalty);
        let (kind, by) = match self.status {
            PenaltyStatus::Broadcast(_) => (0u8, None),
            PenaltyStatus::Confirmed(_) => (1u8, None),
            PenaltyStatus::Refused(_) => (2u8, None),
            PenaltyStatus::Conflicted { by, .. } => (3u8, Some(by)),
        };
        let mut out = Vec::with_capacity(77 + penalty.len());
        out.push(kind);
        out.extend_from_slice(&self.status.height().to_be_bytes());
        out.extend_from_slice(&self.dispute_height.to_be_bytes());
        out.extend_from_slice(&self.to_self_delay.to_be_bytes());
        out.extend_from_slice(self.dispute_txid.as_byte_array());
        if let Some(by) = by {
            out.extend_from_slice(by.as_byte_array());
        }
        out.extend_from_slice(&penalty);
        out
    }

    /// Inverse of [`TrackerRecord::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let (Some(&kind), Some(height), Some(dispute_height), Some(to_self_delay)) =
            (bytes.first(), be_u32(bytes, 1), be_u32(bytes, 5), be_u32(bytes, 9))
        else {
            return Err(err("tracker", "too short"));
        };
        let txid_at = |at: usize| {
            let raw = bytes.get(at..at + 32).ok_or_else(|| err("tracker", "truncated txid"))?;
            Txid::from_slice(raw).map_err(|e| err("tracker", e.to_string()))
        };
        let dispute_txid = txid_at(13)?;
        let (status, penalty_at) = match kind {
            0 => (PenaltyStatus::Broadcast(height), 45),
            1 => (PenaltyStatus::Confirmed(height), 45),
            2 => (PenaltyStatus::Refused(height), 45),
            3 => (PenaltyStatus::Conflicted { height, by: txid_at(45)? }, 77),
            other => return Err(err("tracker", format!("unknown status {other}"))),
        };
        let penalty = bytes.get(penalty_at..).ok_or_else(|| err("tracker", "truncated penalty"))?;
        let penalty: Transaction = deserialize(penalty).map_err(|e| err("tracker", e.to_string()))?;
        Ok(TrackerRecord { dispute_txid, penalty, dispute_height, to_self_delay, status })
    }

    /// Decodes schema version 2's layout (`status(0 broadcast, 1 confirmed) ‖ status_height ‖
    /// dispute_height ‖ penalty_len(u32) ‖ penalty ‖ dispute`), for the upgrade to version 3;
    /// `to_self_delay` comes from the appointment, if it is still stored.
    pub(super) fn decode_v2(bytes: &[u8], to_self_delay: u32) -> Result<Self, DecodeError> {
        let (Some(&kind), Some(height), Some(dispute_height), Some(len)) =
            (bytes.first(), be_u32(bytes, 1), be_u32(bytes, 5), be_u32(bytes, 9))
        else {
            return Err(err("tracker", "too short"));
        };
        let status = match kind {
            0 => PenaltyStatus::Broadcast(height),
            1 => PenaltyStatus::Confirmed(height),
            other => return Err(err("tracker", format!("unknown status {other}"))),
        };
        let penalty_end = 13usize.saturating_add(len as usize);
        let penalty = bytes.get(13..penalty_end).ok_or_else(|| err("tracker", "truncated penalty"))?;
        let penalty: Transaction = deserialize(penalty).map_err(|e| err("tracker", e.to_string()))?;
        let dispute: Transaction = deserialize(&bytes[penalty_end..]).map_err(|e| err("tracker", e.to_string()))?;
        Ok(TrackerRecord { dispute_txid: dispute.compute_txid(), penalty, dispute_height, to_self_delay, status })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_reject_garbage() {
        let user = UserRecord {
            available_slots: 1,
            subscription_start: 2,
            subscription_expiry: 3,
            number: 4,
            dialect: Dialect::Rust,
        };
        assert_eq!(user.encode().len(), 16, "a rust user's record is as before dialects");
        assert_eq!(UserRecord::decode(&user.encode()), Ok(user));
        let python = UserRecord { dialect: Dialect::Python, ..user };
        assert_eq!(UserRecord::decode(&python.encode()), Ok(python));
        assert!(UserRecord::decode(&[0; 15]).is_err());
        assert!(UserRecord::decode(&[0; 18]).is_err());
        assert!(UserRecord::decode(&[[0; 16].as_slice(), &[2]].concat()).is_err());
        let locator = Locator::from_slice(&[9; 16]).unwrap();
        let stored = StoredAppointment {
            appointment: Appointment { locator, encrypted_blob: vec![1, 2, 3], to_self_delay: 42 },
            user_signature: "y".repeat(104),
            start_block: 100,
        };
        assert_eq!(StoredAppointment::decode(locator, &stored.encode()), Ok(stored.clone()));
        let encoded = stored.encode();
        // A canonical 104-character signature is kept as its 65 bytes.
        assert_eq!(encoded.len(), 8 + 1 + 65 + 3);
        for len in 0..8 + 1 + 65 {
            assert!(StoredAppointment::decode(locator, &encoded[..len]).is_err(), "{len}");
        }
        // Anything else is kept as it came, byte for byte.
        for odd in ["", "not zbase32!", &"y".repeat(103), &"y".repeat(105), &"Y".repeat(104)] {
            let stored = StoredAppointment { user_signature: odd.to_string(), ..stored.clone() };
            assert_eq!(StoredAppointment::decode(locator, &stored.encode()), Ok(stored));
        }
        assert!(StoredAppointment::decode(locator, &[0, 0, 0, 1, 0, 0, 0, 2, 9]).is_err());
    }

    #[test]
    fn real_signatures_are_stored_in_65_bytes_and_come_back_identical() {
        let key = bitcoin::secp256k1::SecretKey::from_slice(&[7; 32]).unwrap();
        for n in 0..50u8 {
            let signature = crate::protocol::sign_message(&[n; 40], &key);
            let locator = Locator::from_slice(&[n; 16]).unwrap();
            let stored = StoredAppointment {
                appointment: Appointment { locator, encrypted_blob: vec![n; 100], to_self_delay: 20 },
                user_signature: signature,
                start_block: 1,
            };
            let encoded = stored.encode();
            assert_eq!(encoded.len(), 8 + 1 + 65 + 100);
            assert_eq!(StoredAppointment::decode(locator, &encoded), Ok(stored));
        }
    }
}
