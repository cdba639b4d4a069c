//! Value layouts of the store's records (see `docs/schema.md`). Decoding never panics: a value
//! that does not fit its layout is reported as corruption.

use bitcoin::consensus::{deserialize, serialize};
use bitcoin::{Transaction, Txid};

use crate::protocol::{Appointment, Locator};

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

/// A user's subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserRecord {
    /// Slots left.
    pub available_slots: u32,
    /// Height of the first registration of the current subscription run.
    pub subscription_start: u32,
    /// Height at which the subscription ends.
    pub subscription_expiry: u32,
}

impl UserRecord {
    /// `slots ‖ start ‖ expiry`, u32 big-endian each.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(12);
        out.extend_from_slice(&self.available_slots.to_be_bytes());
        out.extend_from_slice(&self.subscription_start.to_be_bytes());
        out.extend_from_slice(&self.subscription_expiry.to_be_bytes());
        out
    }

    /// Inverse of [`UserRecord::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        match (bytes.len(), be_u32(bytes, 0), be_u32(bytes, 4), be_u32(bytes, 8)) {
            (12, Some(available_slots), Some(subscription_start), Some(subscription_expiry)) => {
                Ok(UserRecord { available_slots, subscription_start, subscription_expiry })
            }
            (len, ..) => Err(err("user", format!("{len} bytes, expected 12"))),
        }
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
    /// `to_self_delay ‖ start_block ‖ sig_len(u8) ‖ signature ‖ blob`; the locator lives in the key.
    pub fn encode(&self) -> Vec<u8> {
        let sig = self.user_signature.as_bytes();
        let mut out = Vec::with_capacity(9 + sig.len() + self.appointment.encrypted_blob.len());
        out.extend_from_slice(&self.appointment.to_self_delay.to_be_bytes());
        out.extend_from_slice(&self.start_block.to_be_bytes());
        out.push(u8::try_from(sig.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(&sig[..sig.len().min(255)]);
        out.extend_from_slice(&self.appointment.encrypted_blob);
        out
    }

    /// Inverse of [`StoredAppointment::encode`].
    pub fn decode(locator: Locator, bytes: &[u8]) -> Result<Self, DecodeError> {
        let (Some(to_self_delay), Some(start_block), Some(&sig_len)) =
            (be_u32(bytes, 0), be_u32(bytes, 4), bytes.get(8))
        else {
            return Err(err("appointment", format!("{} bytes is too short", bytes.len())));
        };
        let sig_end = 9 + sig_len as usize;
        let sig = bytes.get(9..sig_end).ok_or_else(|| err("appointment", "truncated signature"))?;
        let user_signature =
            String::from_utf8(sig.to_vec()).map_err(|_| err("appointment", "signature is not ASCII"))?;
        Ok(StoredAppointment {
            appointment: Appointment { locator, encrypted_blob: bytes[sig_end..].to_vec(), to_self_delay },
            user_signature,
            start_block,
        })
    }
}

/// Where a penalty stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PenaltyStatus {
    /// Sent to bitcoind at this height, not yet confirmed.
    Broadcast(u32),
    /// Confirmed in the block at this height.
    Confirmed(u32),
}

/// A triggered appointment: the dispute seen on chain and the penalty being followed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackerRecord {
    /// The dispute transaction.
    pub dispute: Transaction,
    /// Its txid.
    pub dispute_txid: Txid,
    /// The decrypted penalty.
    pub penalty: Transaction,
    /// Height of the block that held the dispute.
    pub dispute_height: u32,
    /// Where the penalty stands.
    pub status: PenaltyStatus,
}

impl TrackerRecord {
    /// `status_kind(u8: 0 broadcast, 1 confirmed) ‖ status_height ‖ dispute_height ‖ penalty_len(u32)
    /// ‖ penalty ‖ dispute` (transactions consensus-encoded).
    pub fn encode(&self) -> Vec<u8> {
        let penalty = serialize(&self.penalty);
        let dispute = serialize(&self.dispute);
        let (kind, height) = match self.status {
            PenaltyStatus::Broadcast(h) => (0u8, h),
            PenaltyStatus::Confirmed(h) => (1u8, h),
        };
        let mut out = Vec::with_capacity(9 + penalty.len() + dispute.len());
        out.push(kind);
        out.extend_from_slice(&height.to_be_bytes());
        out.extend_from_slice(&self.dispute_height.to_be_bytes());
        out.extend_from_slice(&u32::try_from(penalty.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(&penalty);
        out.extend_from_slice(&dispute);
        out
    }

    /// Inverse of [`TrackerRecord::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
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
        Ok(TrackerRecord { dispute_txid: dispute.compute_txid(), dispute, penalty, dispute_height, status })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_reject_garbage() {
        let user = UserRecord { available_slots: 1, subscription_start: 2, subscription_expiry: 3 };
        assert_eq!(UserRecord::decode(&user.encode()), Ok(user));
        assert!(UserRecord::decode(&[0; 11]).is_err());
        let locator = Locator::from_slice(&[9; 16]).unwrap();
        let stored = StoredAppointment {
            appointment: Appointment { locator, encrypted_blob: vec![1, 2, 3], to_self_delay: 42 },
            user_signature: "y".repeat(104),
            start_block: 100,
        };
        assert_eq!(StoredAppointment::decode(locator, &stored.encode()), Ok(stored.clone()));
        let encoded = stored.encode();
        for len in 0..113 {
            assert!(StoredAppointment::decode(locator, &encoded[..len]).is_err(), "{len}");
        }
    }
}
