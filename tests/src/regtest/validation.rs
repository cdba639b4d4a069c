//! Transaction and block checks, as bitcoind 27 does them, minus scripts and signatures.
//!
//! Reject reasons are bitcoind's (`bad-txns-inputs-missingorspent`, `txn-mempool-conflict`, ...),
//! with the same debug suffixes where they carry numbers.

use std::collections::{HashMap, HashSet};

use bitcoin::blockdata::opcodes::all::OP_RETURN;
use bitcoin::{Amount, Block, OutPoint, Script, Target, Transaction, Txid};

use super::chain::{is_unspendable, BlockUndo, Chain, Coin};
use super::mempool::Mempool;
use super::{block_subsidy, COINBASE_MATURITY, REGTEST_BITS};

const MAX_MONEY: u64 = 21_000_000 * 100_000_000;
const LOCKTIME_THRESHOLD: u32 = 500_000_000;
const SEQUENCE_FINAL: u32 = 0xffff_ffff;
const SEQUENCE_LOCKTIME_DISABLE_FLAG: u32 = 1 << 31;
const SEQUENCE_LOCKTIME_TYPE_FLAG: u32 = 1 << 22;
const SEQUENCE_LOCKTIME_MASK: u32 = 0x0000_ffff;
const MAX_BLOCK_WEIGHT: u64 = 4_000_000;
const MAX_STANDARD_TX_WEIGHT: u64 = 400_000;
const MIN_STANDARD_TX_NONWITNESS_SIZE: usize = 65;
const MAX_STANDARD_SCRIPTSIG_SIZE: usize = 1650;
const MAX_OP_RETURN_RELAY: usize = 83;
const MAX_REPLACEMENT_CANDIDATES: usize = 100;
/// The default minimum relay fee rate (`-minrelaytxfee`), in sat/kvB.
pub(crate) const DEFAULT_MIN_RELAY_FEE_RATE: u64 = 1_000;
/// The incremental relay fee rate (`-incrementalrelayfee`), in sat/kvB.
pub(crate) const INCREMENTAL_RELAY_FEE_RATE: u64 = 1_000;

/// Why a transaction was refused. The variant decides bitcoind's error code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reject {
    /// An input is neither an unspent output of the chain nor of the mempool (-25).
    MissingInputs,
    /// Any other refusal (-26), with bitcoind's reason.
    Invalid(String),
}

impl Reject {
    pub fn reason(&self) -> String {
        match self {
            Reject::MissingInputs => "bad-txns-inputs-missingorspent".to_string(),
            Reject::Invalid(reason) => reason.clone(),
        }
    }
}

impl From<String> for Reject {
    fn from(reason: String) -> Self {
        Reject::Invalid(reason)
    }
}

/// bitcoind's `FormatMoney`: at least two decimals, trailing zeros trimmed.
pub(crate) fn format_money(sats: u64) -> String {
    let mut s = format!("{}.{:08}", sats / 100_000_000, sats % 100_000_000);
    let dot = s.len() - 9;
    while s.len() > dot + 3 && s.ends_with('0') {
        s.pop();
    }
    s
}

/// bitcoind's `CFeeRate::ToString`.
fn format_fee_rate(sat_per_kvb: u64) -> String {
    format!("{}.{:08} BTC/kvB", sat_per_kvb / 100_000_000, sat_per_kvb % 100_000_000)
}

/// A fee rate's fee for `vsize` (bitcoind's `CFeeRate::GetFee`, rounding up).
pub(crate) fn fee_for(sat_per_kvb: u64, vsize: u64) -> u64 {
    (sat_per_kvb * vsize).div_ceil(1000)
}

/// Context-free consensus checks (`CheckTransaction`).
pub(crate) fn check_transaction(tx: &Transaction) -> Result<(), String> {
    if tx.input.is_empty() {
        return Err("bad-txns-vin-empty".into());
    }
    if tx.output.is_empty() {
        return Err("bad-txns-vout-empty".into());
    }
    if tx.base_size() as u64 * 4 > MAX_BLOCK_WEIGHT {
        return Err("bad-txns-oversize".into());
    }
    let mut total = 0u64;
    for output in &tx.output {
        let value = output.value.to_sat();
        if value > MAX_MONEY {
            return Err("bad-txns-vout-toolarge".into());
        }
        total += value;
        if total > MAX_MONEY {
            return Err("bad-txns-txouttotal-toolarge".into());
        }
    }
    let mut seen = HashSet::new();
    if !tx.input.iter().all(|i| seen.insert(i.previous_output)) {
        return Err("bad-txns-inputs-duplicate".into());
    }
    if tx.is_coinbase() {
        let len = tx.input[0].script_sig.len();
        if !(2..=100).contains(&len) {
            return Err("bad-cb-length".into());
        }
    } else if tx.input.iter().any(|i| i.previous_output.is_null()) {
        return Err("bad-txns-prevout-null".into());
    }
    Ok(())
}

/// Absolute lock time (`IsFinalTx`) for a block at `height` whose lock time reference is `time`.
pub(crate) fn is_final_tx(tx: &Transaction, height: u32, time: u32) -> bool {
    let lock_time = tx.lock_time.to_consensus_u32();
    if lock_time == 0 {
        return true;
    }
    let reference = if lock_time < LOCKTIME_THRESHOLD { height } else { time };
    lock_time < reference || tx.input.iter().all(|i| i.sequence.0 == SEQUENCE_FINAL)
}

/// BIP68 relative lock times, for a block at `height` on top of the active tip whose median time
/// past is `prev_mtp`. `prev_heights` are the heights of the blocks that created the inputs.
fn sequence_locks_ok(chain: &Chain, tx: &Transaction, prev_heights: &[u32], height: u32, prev_mtp: u32) -> bool {
    if tx.version.0 < 2 {
        return true;
    }
    let mut min_height: i64 = -1;
    let mut min_time: i64 = -1;
    for (input, &coin_height) in tx.input.iter().zip(prev_heights) {
        let sequence = input.sequence.0;
        if sequence & SEQUENCE_LOCKTIME_DISABLE_FLAG != 0 {
            continue;
        }
        let value = i64::from(sequence & SEQUENCE_LOCKTIME_MASK);
        if sequence & SEQUENCE_LOCKTIME_TYPE_FLAG != 0 {
            let coin_time = i64::from(chain.median_time_past_at(coin_height.saturating_sub(1)));
            min_time = min_time.max(coin_time + (value << 9) - 1);
        } else {
            min_height = min_height.max(i64::from(coin_height) + value - 1);
        }
    }
    min_height < i64::from(height) && min_time < i64::from(prev_mtp)
}

/// Input amounts and coinbase maturity (`Consensus::CheckTxInputs`); returns the fee.
fn check_tx_inputs(tx: &Transaction, coins: &[Coin], spend_height: u32) -> Result<Amount, String> {
    let mut value_in = 0u64;
    for coin in coins {
        if coin.is_coinbase && spend_height.saturating_sub(coin.height) < COINBASE_MATURITY {
            return Err(format!(
                "bad-txns-premature-spend-of-coinbase, tried to spend coinbase at depth {}",
                spend_height.saturating_sub(coin.height)
            ));
        }
        value_in += coin.txout.value.to_sat();
        if value_in > MAX_MONEY {
            return Err("bad-txns-inputvalues-outofrange".into());
        }
    }
    let value_out: u64 = tx.output.iter().map(|o| o.value.to_sat()).sum();
    if value_in < value_out {
        return Err(format!(
            "bad-txns-in-belowout, value in ({}) < value out ({})",
            format_money(value_in),
            format_money(value_out)
        ));
    }
    Ok(Amount::from_sat(value_in - value_out))
}

/// bitcoind's output script classes (`GetTxnOutputType`).
pub(crate) fn script_type(script: &Script) -> &'static str {
    if script.is_p2pk() {
        "pubkey"
    } else if script.is_p2pkh() {
        "pubkeyhash"
    } else if script.is_p2sh() {
        "scripthash"
    } else if script.is_p2wpkh() {
        "witness_v0_keyhash"
    } else if script.is_p2wsh() {
        "witness_v0_scripthash"
    } else if script.is_p2tr() {
        "witness_v1_taproot"
    } else if script.is_witness_program() {
        if script.as_bytes()[0] == 0 {
            "nonstandard"
        } else {
            "witness_unknown"
        }
    } else if script.is_op_return() && Script::from_bytes(&script.as_bytes()[1..]).is_push_only() {
        "nulldata"
    } else if script.is_multisig() {
        "multisig"
    } else {
        "nonstandard"
    }
}

fn is_standard_script(script: &Script) -> bool {
    match script_type(script) {
        "nonstandard" => false,
        "nulldata" => script.len() <= MAX_OP_RETURN_RELAY,
        "multisig" => {
            let bytes = script.as_bytes();
            let required = bytes[0].wrapping_sub(0x50);
            let keys = bytes[bytes.len() - 2].wrapping_sub(0x50);
            (1..=3).contains(&keys) && (1..=keys).contains(&required)
        }
        _ => true,
    }
}

/// Standardness (`IsStandardTx` and the small-size check that follows it).
fn check_standard(tx: &Transaction) -> Result<(), String> {
    if !(1..=2).contains(&tx.version.0) {
        return Err("version".into());
    }
    if tx.weight().to_wu() > MAX_STANDARD_TX_WEIGHT {
        return Err("tx-size".into());
    }
    for input in &tx.input {
        if input.script_sig.len() > MAX_STANDARD_SCRIPTSIG_SIZE {
            return Err("scriptsig-size".into());
        }
        if !input.script_sig.is_push_only() {
            return Err("scriptsig-not-pushonly".into());
        }
    }
    let mut data_outputs = 0;
    for output in &tx.output {
        if !is_standard_script(&output.script_pubkey) {
            return Err("scriptpubkey".into());
        }
        if output.script_pubkey.is_op_return() {
            data_outputs += 1;
        } else if output.value < output.script_pubkey.minimal_non_dust() {
            return Err("dust".into());
        }
    }
    if data_outputs > 1 {
        return Err("multi-op-return".into());
    }
    if tx.base_size() < MIN_STANDARD_TX_NONWITNESS_SIZE {
        return Err("tx-size-small".into());
    }
    Ok(())
}

/// What accepting a transaction to the mempool would do.
#[derive(Debug, Clone)]
pub(crate) struct Accepted {
    pub fee: Amount,
    pub vsize: u64,
    /// Mempool transactions it replaces (direct conflicts and their descendants).
    pub replaced: Vec<Txid>,
}

/// The fee rates a transaction must pay to enter the mempool, in sat/kvB. Test controls set
/// them at runtime (see [`RegtestNode::set_min_relay_fee`](super::RegtestNode::set_min_relay_fee)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FeePolicy {
    /// bitcoind's `-minrelaytxfee`.
    pub min_relay: u64,
    /// The rolling minimum fee rate of a full mempool; 0 when the mempool is not full.
    pub mempool_min: u64,
}

impl Default for FeePolicy {
    fn default() -> Self {
        FeePolicy { min_relay: DEFAULT_MIN_RELAY_FEE_RATE, mempool_min: 0 }
    }
}

impl FeePolicy {
    /// bitcoind's `CTxMemPool::GetMinFee`: 0 when the mempool is not full, else the rolling
    /// minimum but never below the incremental relay fee rate.
    pub fn mempool_min_fee_rate(&self) -> u64 {
        match self.mempool_min {
            0 => 0,
            rate => rate.max(INCREMENTAL_RELAY_FEE_RATE),
        }
    }

    /// `mempoolminfee` as `getmempoolinfo` reports it: the larger of the two.
    pub fn reported_mempool_min_fee_rate(&self) -> u64 {
        self.mempool_min_fee_rate().max(self.min_relay)
    }

    /// bitcoind's `MemPoolAccept::CheckFeeRate`: the full mempool's minimum first, then the
    /// minimum relay fee, each as the fee for `vsize` (rounded up).
    fn check(&self, fee: Amount, vsize: u64) -> Result<(), Reject> {
        let fee = fee.to_sat();
        let mempool_reject_fee = fee_for(self.mempool_min_fee_rate(), vsize);
        if mempool_reject_fee > 0 && fee < mempool_reject_fee {
            return Err(Reject::Invalid(format!("mempool min fee not met, {fee} < {mempool_reject_fee}")));
        }
        let min_fee = fee_for(self.min_relay, vsize);
        if fee < min_fee {
            return Err(Reject::Invalid(format!("min relay fee not met, {fee} < {min_fee}")));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct AcceptOptions {
    /// Skip the fee checks (transactions coming back from disconnected blocks).
    pub bypass_limits: bool,
    /// Allow BIP125 replacements of signalling mempool transactions.
    pub allow_replacement: bool,
    /// The fee rates to meet, unless `bypass_limits`.
    pub fees: FeePolicy,
}

/// Mempool acceptance (`MemPoolAccept::PreChecks` and `ReplacementChecks`), without scripts.
pub(crate) fn check_mempool_accept(
    chain: &Chain,
    mempool: &Mempool,
    tx: &Transaction,
    opts: AcceptOptions,
) -> Result<Accepted, Reject> {
    let txid = tx.compute_txid();
    check_transaction(tx)?;
    if tx.is_coinbase() {
        return Err(Reject::Invalid("coinbase".into()));
    }
    check_standard(tx)?;
    let next_height = chain.height() + 1;
    let tip_mtp = chain.median_time_past(&chain.tip().hash);
    if !is_final_tx(tx, next_height, tip_mtp) {
        return Err(Reject::Invalid("non-final".into()));
    }
    if mempool.contains(&txid) {
        return Err(Reject::Invalid("txn-already-in-mempool".into()));
    }

    let mut conflicts = HashSet::new();
    for input in &tx.input {
        if let Some(conflict) = mempool.spender(&input.previous_output) {
            let entry = mempool.get(&conflict).expect("spends are indexed by mempool txid");
            if !opts.allow_replacement || !entry.signals_rbf() {
                return Err(Reject::Invalid("txn-mempool-conflict".into()));
            }
            conflicts.insert(conflict);
        }
    }

    let mut coins = Vec::with_capacity(tx.input.len());
    let mut prev_heights = Vec::with_capacity(tx.input.len());
    for input in &tx.input {
        if let Some(coin) = chain.coin(&input.previous_output) {
            prev_heights.push(coin.height);
            coins.push(coin.clone());
        } else if let Some(txout) = mempool.output(&input.previous_output) {
            prev_heights.push(next_height);
            coins.push(Coin { txout: txout.clone(), height: next_height, is_coinbase: false });
        } else if chain.has_unspent_outputs(tx) {
            return Err(Reject::Invalid("txn-already-known".into()));
        } else {
            return Err(Reject::MissingInputs);
        }
    }
    if !sequence_locks_ok(chain, tx, &prev_heights, next_height, tip_mtp) {
        return Err(Reject::Invalid("non-BIP68-final".into()));
    }
    let fee = check_tx_inputs(tx, &coins, next_height)?;
    let vsize = tx.vsize() as u64;
    if !opts.bypass_limits {
        opts.fees.check(fee, vsize)?;
    }

    let replaced =
        if conflicts.is_empty() { Vec::new() } else { check_replacement(mempool, tx, &txid, fee, vsize, &conflicts)? };
    Ok(Accepted { fee, vsize, replaced })
}

/// BIP125 rules as bitcoind 27 applies them; returns every transaction to evict.
fn check_replacement(
    mempool: &Mempool,
    tx: &Transaction,
    txid: &Txid,
    fee: Amount,
    vsize: u64,
    conflicts: &HashSet<Txid>,
) -> Result<Vec<Txid>, Reject> {
    let insufficient = |debug: String| Reject::Invalid(format!("insufficient fee, {debug}"));
    // The replacement may not spend what it replaces.
    let mut ancestors = HashSet::new();
    for input in &tx.input {
        let parent = input.previous_output.txid;
        if mempool.contains(&parent) {
            ancestors.insert(parent);
            ancestors.extend(mempool.ancestors(&parent));
        }
    }
    if let Some(conflict) = ancestors.intersection(conflicts).next() {
        return Err(Reject::Invalid(format!(
            "bad-txns-spends-conflicting-tx, {txid} spends conflicting transaction {conflict}"
        )));
    }
    // A higher fee rate than each direct conflict.
    let new_rate = fee.to_sat() * 1000 / vsize.max(1);
    for conflict in conflicts {
        let entry = mempool.get(conflict).expect("conflicts are mempool txs");
        let old_rate = entry.fee.to_sat() * 1000 / entry.vsize.max(1);
        if new_rate <= old_rate {
            return Err(insufficient(format!(
                "rejecting replacement {txid}; new feerate {} <= old feerate {}",
                format_fee_rate(new_rate),
                format_fee_rate(old_rate)
            )));
        }
    }
    // At most 100 evictions.
    let mut all: HashSet<Txid> = conflicts.clone();
    for conflict in conflicts {
        all.extend(mempool.descendants(conflict));
    }
    if all.len() > MAX_REPLACEMENT_CANDIDATES {
        return Err(Reject::Invalid(format!(
            "too many potential replacements, rejecting replacement {txid}; too many potential \
             replacements ({} > {MAX_REPLACEMENT_CANDIDATES})",
            all.len()
        )));
    }
    // No new unconfirmed inputs.
    let conflict_parents: HashSet<Txid> = conflicts
        .iter()
        .filter_map(|c| mempool.get(c))
        .flat_map(|e| e.tx.input.iter().map(|i| i.previous_output.txid))
        .collect();
    for (index, input) in tx.input.iter().enumerate() {
        let parent = input.previous_output.txid;
        if mempool.contains(&parent) && !conflict_parents.contains(&parent) {
            return Err(Reject::Invalid(format!(
                "replacement-adds-unconfirmed, replacement {txid} adds unconfirmed input, idx {index}"
            )));
        }
    }
    // Pays for what it evicts, and for its own relay.
    let original: u64 = all.iter().filter_map(|t| mempool.get(t)).map(|e| e.fee.to_sat()).sum();
    if fee.to_sat() < original {
        return Err(insufficient(format!(
            "rejecting replacement {txid}, less fees than conflicting txs; {} < {}",
            format_money(fee.to_sat()),
            format_money(original)
        )));
    }
    let additional = fee.to_sat() - original;
    let relay = fee_for(INCREMENTAL_RELAY_FEE_RATE, vsize);
    if additional < relay {
        return Err(insufficient(format!(
            "rejecting replacement {txid}, not enough additional fees to relay; {} < {}",
            format_money(additional),
            format_money(relay)
        )));
    }
    Ok(all.into_iter().collect())
}

/// The UTXO set of the active chain with the changes of a block being built or checked.
struct Overlay<'a> {
    chain: &'a Chain,
    added: HashMap<OutPoint, Coin>,
    spent: HashSet<OutPoint>,
}

impl<'a> Overlay<'a> {
    fn new(chain: &'a Chain) -> Self {
        Overlay { chain, added: HashMap::new(), spent: HashSet::new() }
    }

    fn get(&self, outpoint: &OutPoint) -> Option<Coin> {
        if let Some(coin) = self.added.get(outpoint) {
            return Some(coin.clone());
        }
        if self.spent.contains(outpoint) {
            return None;
        }
        self.chain.coin(outpoint).cloned()
    }

    fn spend(&mut self, outpoint: &OutPoint) {
        if self.added.remove(outpoint).is_none() {
            self.spent.insert(*outpoint);
        }
    }

    fn add(&mut self, tx: &Transaction, height: u32, is_coinbase: bool) {
        let txid = tx.compute_txid();
        for (vout, txout) in tx.output.iter().enumerate() {
            if !is_unspendable(txout) {
                let outpoint = OutPoint { txid, vout: vout as u32 };
                let coin = Coin { txout: txout.clone(), height, is_coinbase };
                self.added.insert(outpoint, coin);
            }
        }
    }

    /// Checks a non-coinbase transaction of a block at `height` and applies it; returns the
    /// coins it spent and its fee.
    fn connect_tx(&mut self, tx: &Transaction, height: u32, prev_mtp: u32) -> Result<(Vec<Coin>, Amount), String> {
        check_transaction(tx)?;
        if tx.is_coinbase() {
            return Err("bad-cb-multiple".into());
        }
        if !is_final_tx(tx, height, prev_mtp) {
            return Err("bad-txns-nonfinal".into());
        }
        let coins = tx
            .input
            .iter()
            .map(|i| self.get(&i.previous_output))
            .collect::<Option<Vec<Coin>>>()
            .ok_or_else(|| "bad-txns-inputs-missingorspent".to_string())?;
        let fee = check_tx_inputs(tx, &coins, height)?;
        let heights: Vec<u32> = coins.iter().map(|c| c.height).collect();
        if !sequence_locks_ok(self.chain, tx, &heights, height, prev_mtp) {
            return Err("bad-txns-nonfinal".into());
        }
        for input in &tx.input {
            self.spend(&input.previous_output);
        }
        self.add(tx, height, false);
        Ok((coins, fee))
    }
}

/// Picks, in order, the `candidates` that can go in a block on top of the active tip. With
/// `strict`, the first that cannot is an error; otherwise it is left out. Returns them and
/// their total fee.
pub(crate) fn select_block_txs(
    chain: &Chain,
    candidates: Vec<Transaction>,
    strict: bool,
) -> Result<(Vec<Transaction>, Amount), String> {
    let height = chain.height() + 1;
    let prev_mtp = chain.median_time_past(&chain.tip().hash);
    let mut overlay = Overlay::new(chain);
    let mut fees = Amount::ZERO;
    let mut weight = 4_000u64; // header and coinbase
    let mut selected = Vec::new();
    for tx in candidates {
        let tx_weight = tx.weight().to_wu();
        if weight + tx_weight > MAX_BLOCK_WEIGHT {
            if strict {
                return Err("bad-blk-weight".into());
            }
            continue;
        }
        match overlay.connect_tx(&tx, height, prev_mtp) {
            Ok((_, fee)) => {
                fees += fee;
                weight += tx_weight;
                selected.push(tx);
            }
            Err(reason) if strict => return Err(reason),
            Err(_) => {}
        }
    }
    Ok((selected, fees))
}

/// Context-free block checks (`CheckBlock`): proof of work, merkle root, coinbase placement.
pub(crate) fn check_block_sanity(block: &Block) -> Result<(), String> {
    let target = Target::from_compact(bitcoin::CompactTarget::from_consensus(REGTEST_BITS));
    if block.header.bits.to_consensus() != REGTEST_BITS {
        return Err("bad-diffbits".into());
    }
    if block.header.validate_pow(target).is_err() {
        return Err("high-hash".into());
    }
    if !block.check_merkle_root() {
        return Err("bad-txnmrklroot".into());
    }
    let mut txids = HashSet::new();
    if !block.txdata.iter().all(|tx| txids.insert(tx.compute_txid())) {
        return Err("bad-txns-duplicate".into());
    }
    match block.txdata.first() {
        Some(coinbase) if coinbase.is_coinbase() => {}
        _ => return Err("bad-cb-missing".into()),
    }
    if block.txdata.iter().skip(1).any(Transaction::is_coinbase) {
        return Err("bad-cb-multiple".into());
    }
    if block.weight().to_wu() > MAX_BLOCK_WEIGHT {
        return Err("bad-blk-length".into());
    }
    for tx in &block.txdata {
        check_transaction(tx)?;
    }
    Ok(())
}

/// The coinbase script sig prefix that BIP34 requires at `height` (`CScript() << height`).
pub(crate) fn bip34_prefix(height: u32) -> bitcoin::ScriptBuf {
    bitcoin::script::Builder::new().push_int(i64::from(height)).into_script()
}

/// The witness commitment output's index in the coinbase, if any.
pub(crate) fn witness_commitment_index(coinbase: &Transaction) -> Option<usize> {
    const MAGIC: [u8; 6] = [OP_RETURN.to_u8(), 0x24, 0xaa, 0x21, 0xa9, 0xed];
    coinbase.output.iter().rposition(|o| o.script_pubkey.len() >= 38 && o.script_pubkey.as_bytes()[..6] == MAGIC)
}

/// Full validation of a block extending the active tip (`CheckBlock`, `ContextualCheckBlock*`
/// and `ConnectBlock` without scripts). Returns the spent coins for the undo data.
pub(crate) fn check_block(chain: &Chain, block: &Block) -> Result<BlockUndo, String> {
    let tip = chain.tip();
    if block.header.prev_blockhash != tip.hash {
        return Err("prev-blk-not-tip".into());
    }
    check_block_sanity(block)?;
    let height = tip.height + 1;
    let prev_mtp = chain.median_time_past(&tip.hash);
    if block.header.time <= prev_mtp {
        return Err("time-too-old".into());
    }
    if block.header.version.to_consensus() < 4 {
        return Err(format!("bad-version(0x{:08x})", block.header.version.to_consensus()));
    }
    let coinbase = &block.txdata[0];
    if !is_final_tx(coinbase, height, prev_mtp) {
        return Err("bad-txns-nonfinal".into());
    }
    if !coinbase.input[0].script_sig.as_bytes().starts_with(bip34_prefix(height).as_bytes()) {
        return Err("bad-cb-height".into());
    }
    match witness_commitment_index(coinbase) {
        Some(_) => {
            let witness = &coinbase.input[0].witness;
            if witness.len() != 1 || witness.iter().any(|item| item.len() != 32) {
                return Err("bad-witness-nonce-size".into());
            }
            if !block.check_witness_commitment() {
                return Err("bad-witness-merkle-match".into());
            }
        }
        None => {
            if block.txdata.iter().any(|tx| tx.input.iter().any(|i| !i.witness.is_empty())) {
                return Err("unexpected-witness".into());
            }
        }
    }

    let mut overlay = Overlay::new(chain);
    let mut undo = Vec::with_capacity(block.txdata.len().saturating_sub(1));
    let mut fees = Amount::ZERO;
    for tx in block.txdata.iter().skip(1) {
        let (coins, fee) = overlay.connect_tx(tx, height, prev_mtp)?;
        fees += fee;
        undo.push(coins);
    }
    let reward: u64 = coinbase.output.iter().map(|o| o.value.to_sat()).sum();
    if reward > (block_subsidy(height) + fees).to_sat() {
        return Err("bad-cb-amount".into());
    }
    Ok(undo)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_money_like_bitcoind() {
        assert_eq!(format_money(0), "0.00");
        assert_eq!(format_money(5_000_000_000), "50.00");
        assert_eq!(format_money(10_000), "0.0001");
        assert_eq!(format_money(12_345_678), "0.12345678");
        assert_eq!(format_money(150_000_000), "1.50");
    }

    #[test]
    fn fee_checks_in_bitcoinds_order() {
        let check = |min_relay, mempool_min, fee, vsize| {
            FeePolicy { min_relay, mempool_min }.check(Amount::from_sat(fee), vsize).map_err(|r| r.reason())
        };
        assert_eq!(check(1000, 0, 110, 110), Ok(()));
        assert_eq!(check(1000, 0, 109, 110), Err("min relay fee not met, 109 < 110".into()));
        assert_eq!(check(5000, 0, 500, 110), Err("min relay fee not met, 500 < 550".into()));
        // A full mempool's minimum is checked first, and never below the incremental relay fee.
        assert_eq!(check(1000, 3000, 300, 110), Err("mempool min fee not met, 300 < 330".into()));
        assert_eq!(check(1000, 3000, 100, 110), Err("mempool min fee not met, 100 < 330".into()));
        assert_eq!(check(0, 1, 100, 110), Err("mempool min fee not met, 100 < 110".into()));
        assert_eq!(check(0, 0, 0, 110), Ok(()));
        assert_eq!(FeePolicy { min_relay: 2000, mempool_min: 500 }.reported_mempool_min_fee_rate(), 2000);
        assert_eq!(FeePolicy { min_relay: 1000, mempool_min: 0 }.reported_mempool_min_fee_rate(), 1000);
        assert_eq!(FeePolicy { min_relay: 0, mempool_min: 500 }.reported_mempool_min_fee_rate(), 1000);
    }

    #[test]
    fn fee_for_rounds_up() {
        assert_eq!(fee_for(1000, 110), 110);
        assert_eq!(fee_for(1500, 3), 5);
        assert_eq!(fee_for(0, 3), 0);
    }
}
