//! Wallet helpers for tests: anyone-can-spend outputs (P2WSH of `OP_TRUE`, which a real bitcoind
//! accepts too), coinbase funding, and Lightning-shaped transactions (a "commitment" and the
//! "penalty" that spends it).

use std::collections::VecDeque;

use bitcoin::absolute::LockTime;
use bitcoin::opcodes::OP_TRUE;
use bitcoin::script::{Builder, Instruction};
use bitcoin::transaction::Version;
use bitcoin::{Address, Amount, Block, Network, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Witness};

use crate::backend::{BackendError, Bitcoind};
use crate::regtest::COINBASE_MATURITY;

/// The witness script `OP_TRUE`.
pub fn op_true_script() -> ScriptBuf {
    Builder::new().push_opcode(OP_TRUE).into_script()
}

/// P2WSH(`OP_TRUE`): an output script anyone can spend with [`op_true_witness`].
pub fn anyone_can_spend_script() -> ScriptBuf {
    ScriptBuf::new_p2wsh(&op_true_script().wscript_hash())
}

/// The regtest (`bcrt1...`) address of [`anyone_can_spend_script`].
pub fn anyone_can_spend_address() -> Address {
    Address::p2wsh(&op_true_script(), Network::Regtest)
}

/// The witness spending a P2WSH(`OP_TRUE`) output: just the witness script.
pub fn op_true_witness() -> Witness {
    Witness::from_slice(&[op_true_script().into_bytes()])
}

/// The smallest value a P2WSH output may carry without being dust (330 sat).
pub fn p2wsh_dust_limit() -> Amount {
    anyone_can_spend_script().minimal_non_dust()
}

/// A spendable anyone-can-spend output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Utxo {
    pub outpoint: OutPoint,
    pub value: Amount,
    /// Height of the block whose coinbase created it, for coinbase outputs.
    pub coinbase_height: Option<u32>,
}

impl Utxo {
    /// Output `vout` of `tx` (assumed to pay to [`anyone_can_spend_script`]).
    pub fn of(tx: &Transaction, vout: u32) -> Utxo {
        Utxo {
            outpoint: OutPoint { txid: tx.compute_txid(), vout },
            value: tx.output[vout as usize].value,
            coinbase_height: None,
        }
    }

    /// Whether it may be spent by a transaction entering the mempool when the tip is at
    /// `tip_height` (coinbase outputs need 100 confirmations by the next block).
    pub fn is_mature(&self, tip_height: u32) -> bool {
        self.coinbase_height.is_none_or(|h| tip_height + 1 >= h + COINBASE_MATURITY)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WalletError {
    #[error("{available} cannot pay {needed} (outputs, fee and dust limit)")]
    InsufficientFunds { available: Amount, needed: Amount },
    #[error("output {0} does not exist")]
    NoSuchOutput(u32),
}

/// The BIP34 height of a block, read from its coinbase (`OP_1`..`OP_16` included).
pub fn coinbase_height(block: &Block) -> Option<u32> {
    let script_sig = &block.txdata.first()?.input.first()?.script_sig;
    match script_sig.instructions_minimal().next()?.ok()? {
        Instruction::PushBytes(bytes) => {
            let n = bitcoin::script::read_scriptint(bytes.as_bytes()).ok()?;
            u32::try_from(n).ok()
        }
        Instruction::Op(op) => {
            let byte = op.to_u8();
            (0x51..=0x60).contains(&byte).then(|| u32::from(byte - 0x50))
        }
    }
}

/// Lightning's commitment lock time and sequence from a 48-bit obscured commitment number:
/// `nLockTime = 0x20 << 24 | low 24 bits`, `nSequence = 0x80 << 24 | high 24 bits`.
pub fn commitment_locktime_and_sequence(obscured_commitment_number: u64) -> (LockTime, Sequence) {
    let low = (obscured_commitment_number & 0xff_ffff) as u32;
    let high = ((obscured_commitment_number >> 24) & 0xff_ffff) as u32;
    (LockTime::from_consensus(0x2000_0000 | low), Sequence(0x8000_0000 | high))
}

/// A transaction spending anyone-can-spend `inputs` to `outputs`, with `sequence` on each input.
fn build(inputs: &[OutPoint], sequence: Sequence, lock_time: LockTime, outputs: Vec<TxOut>) -> Transaction {
    Transaction {
        version: Version::TWO,
        lock_time,
        input: inputs
            .iter()
            .map(|outpoint| TxIn {
                previous_output: *outpoint,
                script_sig: ScriptBuf::new(),
                sequence,
                witness: op_true_witness(),
            })
            .collect(),
        output: outputs,
    }
}

/// The fee at `sat_per_vb` for `tx`'s virtual size.
pub fn fee_for(tx: &Transaction, sat_per_vb: u64) -> Amount {
    Amount::from_sat(tx.vsize() as u64 * sat_per_vb)
}

/// A version 2 transaction spending anyone-can-spend `inputs` (with `sequence` on each) to
/// `n_outputs` equal P2WSH(`OP_TRUE`) outputs, paying `sat_per_vb`.
pub fn split_tx(
    inputs: &[Utxo],
    n_outputs: usize,
    sat_per_vb: u64,
    sequence: Sequence,
    lock_time: LockTime,
) -> Result<Transaction, WalletError> {
    let n = n_outputs.max(1);
    let placeholder = TxOut { value: Amount::ZERO, script_pubkey: anyone_can_spend_script() };
    let outpoints: Vec<OutPoint> = inputs.iter().map(|u| u.outpoint).collect();
    let mut tx = build(&outpoints, sequence, lock_time, vec![placeholder; n]);
    let fee = fee_for(&tx, sat_per_vb);
    let available: Amount = inputs.iter().map(|u| u.value).sum();
    let each = available
        .checked_sub(fee)
        .map(|rest| rest / n as u64)
        .filter(|each| *each >= p2wsh_dust_limit())
        .ok_or(WalletError::InsufficientFunds { available, needed: fee + p2wsh_dust_limit() * n as u64 })?;
    for output in &mut tx.output {
        output.value = each;
    }
    Ok(tx)
}

/// A plain transaction spending `inputs` to `n_outputs` anyone-can-spend outputs: final
/// sequences (no BIP125 signalling), no lock time.
pub fn spend_tx(inputs: &[Utxo], n_outputs: usize, sat_per_vb: u64) -> Result<Transaction, WalletError> {
    split_tx(inputs, n_outputs, sat_per_vb, Sequence::MAX, LockTime::ZERO)
}

/// A commitment-shaped transaction: version 2, spending `input` (a mature coinbase or another
/// anyone-can-spend output) to `n_outputs` equal P2WSH(`OP_TRUE`) outputs, paying
/// `sat_per_vb`, with Lightning's lock time and sequence for `obscured_commitment_number`
/// (which signal BIP125 replaceability, as real commitments do).
pub fn commitment_tx(
    input: &Utxo,
    n_outputs: usize,
    sat_per_vb: u64,
    obscured_commitment_number: u64,
) -> Result<Transaction, WalletError> {
    let (lock_time, sequence) = commitment_locktime_and_sequence(obscured_commitment_number);
    split_tx(&[*input], n_outputs, sat_per_vb, sequence, lock_time)
}

/// A commitment-shaped transaction with the given output values; the fee is what is left.
pub fn commitment_tx_with_outputs(
    input: &Utxo,
    values: &[Amount],
    obscured_commitment_number: u64,
) -> Result<Transaction, WalletError> {
    let total: Amount = values.iter().copied().sum();
    if total > input.value {
        return Err(WalletError::InsufficientFunds { available: input.value, needed: total });
    }
    let (lock_time, sequence) = commitment_locktime_and_sequence(obscured_commitment_number);
    let outputs =
        values.iter().map(|value| TxOut { value: *value, script_pubkey: anyone_can_spend_script() }).collect();
    Ok(build(&[input.outpoint], sequence, lock_time, outputs))
}

/// A penalty transaction: spends output `vout` of `commitment` (witness `[OP_TRUE]`) to one
/// anyone-can-spend output, paying `sat_per_vb` (at least 1 for relay).
pub fn penalty_tx(commitment: &Transaction, vout: u32, sat_per_vb: u64) -> Result<Transaction, WalletError> {
    penalty_tx_to(commitment, &[vout], sat_per_vb, anyone_can_spend_script())
}

/// A penalty transaction spending outputs `vouts` of `commitment` to `destination`.
pub fn penalty_tx_to(
    commitment: &Transaction,
    vouts: &[u32],
    sat_per_vb: u64,
    destination: ScriptBuf,
) -> Result<Transaction, WalletError> {
    let txid = commitment.compute_txid();
    let mut available = Amount::ZERO;
    let mut inputs = Vec::with_capacity(vouts.len());
    for &vout in vouts {
        let output = commitment.output.get(vout as usize).ok_or(WalletError::NoSuchOutput(vout))?;
        available += output.value;
        inputs.push(OutPoint { txid, vout });
    }
    let dust = destination.minimal_non_dust();
    let output = TxOut { value: Amount::ZERO, script_pubkey: destination };
    let mut tx = build(&inputs, Sequence::MAX, LockTime::ZERO, vec![output]);
    let fee = fee_for(&tx, sat_per_vb);
    tx.output[0].value = available
        .checked_sub(fee)
        .filter(|value| *value >= dust)
        .ok_or(WalletError::InsufficientFunds { available, needed: fee + dust })?;
    Ok(tx)
}

/// Keeps track of the anyone-can-spend coinbase outputs mined so far, to fund test transactions.
#[derive(Debug, Clone, Default)]
pub struct Funding {
    coins: VecDeque<Utxo>,
}

impl Funding {
    pub fn new() -> Self {
        Funding::default()
    }

    /// Records `block`'s coinbase outputs that pay to [`anyone_can_spend_script`].
    pub fn record_block(&mut self, block: &Block) {
        let Some(height) = coinbase_height(block) else {
            return;
        };
        let Some(coinbase) = block.txdata.first() else {
            return;
        };
        let script = anyone_can_spend_script();
        for (vout, output) in coinbase.output.iter().enumerate() {
            if output.script_pubkey == script && output.value > Amount::ZERO {
                let mut utxo = Utxo::of(coinbase, vout as u32);
                utxo.coinbase_height = Some(height);
                self.coins.push_back(utxo);
            }
        }
    }

    /// Recorded coins not yet taken.
    pub fn len(&self) -> usize {
        self.coins.len()
    }

    pub fn is_empty(&self) -> bool {
        self.coins.is_empty()
    }

    /// Forgets coins of blocks above `height` (after a reorg disconnected them).
    pub fn forget_above(&mut self, height: u32) {
        self.coins.retain(|c| c.coinbase_height.is_none_or(|h| h <= height));
    }

    /// Takes the oldest coin that is spendable with the tip at `tip_height`.
    pub fn take_mature(&mut self, tip_height: u32) -> Option<Utxo> {
        let index = self.coins.iter().position(|c| c.is_mature(tip_height))?;
        self.coins.remove(index)
    }

    /// Mines `n` blocks to the anyone-can-spend address on `node`, recording their coinbases.
    pub async fn mine(&mut self, node: &Bitcoind, n: u32) -> Result<(), BackendError> {
        for hash in node.mine(n).await? {
            let block = node.block(&hash).await?;
            self.record_block(&block);
        }
        Ok(())
    }

    /// A mature coin, mining (and recording) as many blocks as it takes.
    pub async fn next_coin(&mut self, node: &Bitcoind) -> Result<Utxo, BackendError> {
        let (tip, _) = node.tip().await?;
        if let Some(coin) = self.take_mature(tip) {
            return Ok(coin);
        }
        let oldest = self.coins.iter().filter_map(|c| c.coinbase_height).min();
        let missing = match oldest {
            Some(height) => (height + COINBASE_MATURITY).saturating_sub(tip + 1),
            None => COINBASE_MATURITY,
        };
        self.mine(node, missing.max(1)).await?;
        let (tip, _) = node.tip().await?;
        self.take_mature(tip).ok_or_else(|| BackendError::Other("no mature coinbase after mining to maturity".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::hashes::Hash;

    fn coin(value: u64) -> Utxo {
        Utxo {
            outpoint: OutPoint { txid: bitcoin::Txid::all_zeros(), vout: 0 },
            value: Amount::from_sat(value),
            coinbase_height: Some(1),
        }
    }

    #[test]
    fn anyone_can_spend_address_is_p2wsh_of_op_true() {
        let address = anyone_can_spend_address();
        assert!(address.to_string().starts_with("bcrt1q"));
        assert_eq!(address.script_pubkey(), anyone_can_spend_script());
        assert_eq!(op_true_script().as_bytes(), &[0x51]);
    }

    #[test]
    fn commitment_is_lightning_shaped() {
        let tx = commitment_tx(&coin(100_000), 2, 2, 0x0123_4567_89ab).expect("enough funds");
        assert_eq!(tx.version, Version::TWO);
        assert_eq!(tx.lock_time.to_consensus_u32() >> 24, 0x20);
        assert_eq!(tx.input[0].sequence.0 >> 24, 0x80);
        assert_eq!(tx.lock_time.to_consensus_u32() & 0xff_ffff, 0x67_89ab);
        assert_eq!(tx.input[0].sequence.0 & 0xff_ffff, 0x01_2345);
        assert_eq!(tx.output.len(), 2);
        let fee = Amount::from_sat(100_000) - tx.output.iter().map(|o| o.value).sum::<Amount>();
        assert!(fee >= fee_for(&tx, 2));
    }

    #[test]
    fn penalty_pays_at_least_the_fee_rate() {
        let commitment = commitment_tx(&coin(100_000), 1, 1, 7).expect("enough funds");
        let penalty = penalty_tx(&commitment, 0, 3).expect("enough funds");
        let fee = commitment.output[0].value - penalty.output[0].value;
        assert_eq!(fee, fee_for(&penalty, 3));
        assert_eq!(penalty.input[0].witness, op_true_witness());
        assert!(penalty_tx(&commitment, 1, 1).is_err());
        assert!(commitment_tx(&coin(400), 1, 1, 7).is_err());
    }

    #[test]
    fn coinbase_maturity() {
        let c = coin(1);
        assert!(!c.is_mature(99));
        assert!(c.is_mature(100));
    }
}
