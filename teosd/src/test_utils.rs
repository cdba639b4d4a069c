//! Fixtures shared by the unit tests.

use bitcoin::hashes::Hash;
use bitcoin::{absolute, transaction, Amount, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Txid, Witness};

use crate::store::{PenaltyStatus, TrackerRecord};

/// A one-input, one-output transaction spending `prev`.
pub fn spending(prev: OutPoint) -> Transaction {
    Transaction {
        version: transaction::Version::TWO,
        lock_time: absolute::LockTime::ZERO,
        input: vec![TxIn {
            previous_output: prev,
            script_sig: ScriptBuf::new(),
            sequence: Sequence::MAX,
            witness: Witness::new(),
        }],
        output: vec![TxOut { value: Amount::from_sat(1000), script_pubkey: ScriptBuf::new() }],
    }
}

/// A tracker whose dispute is derived from `seed` and whose penalty spends the dispute's output 0.
pub fn tracker(seed: u8, dispute_height: u32, status: PenaltyStatus) -> TrackerRecord {
    let dispute = spending(OutPoint { txid: Txid::from_byte_array([seed; 32]), vout: 0 });
    let penalty = spending(OutPoint { txid: dispute.compute_txid(), vout: 0 });
    TrackerRecord { dispute_txid: dispute.compute_txid(), dispute, penalty, dispute_height, status }
}
