//! The node's state: the chain and the mempool, and the operations that keep them consistent
//! (mining, transaction relay, reorgs).

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use bitcoin::{Block, BlockHash, ScriptBuf, Transaction, Txid};

use super::chain::Chain;
use super::codes::*;
use super::mempool::Mempool;
use super::miner::assemble_block;
use super::persist::{ChainLog, Record};
use super::validation::{
    check_block, check_block_sanity, check_mempool_accept, fee_for, select_block_txs, AcceptOptions, Accepted,
    FeePolicy, Reject,
};
use std::sync::Arc;

use super::zmq::{Notification, Notifier};
use super::{block_subsidy, RpcError};

/// Blocks disconnected by `invalidateblock` whose transactions still go back to the mempool
/// (bitcoind stops at 10: deeper invalidations leave the mempool alone).
const MAX_INVALIDATE_RESURRECT: usize = 10;

pub(crate) fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Maps a mempool refusal to bitcoind's `sendrawtransaction` error.
pub(crate) fn reject_to_rpc(reject: Reject) -> RpcError {
    match reject {
        Reject::MissingInputs => RpcError::new(RPC_TRANSACTION_ERROR, reject.reason()),
        Reject::Invalid(reason) => RpcError::new(RPC_TRANSACTION_REJECTED, reason),
    }
}

/// Transactions of disconnected blocks, by block height.
type Disconnected = Vec<(u32, Vec<Transaction>)>;

#[derive(Debug)]
pub(crate) struct NodeState {
    pub chain: Chain,
    pub mempool: Mempool,
    /// The fee rates mempool acceptance asks for (test controls change them at runtime).
    pub fees: FeePolicy,
    log: Option<ChainLog>,
    /// Told what to announce over ZMQ: new tips and transactions (see [`zmq`](super::zmq)).
    notifier: Option<Notifier>,
}

impl NodeState {
    pub fn new() -> Self {
        NodeState {
            chain: Chain::new(),
            mempool: Mempool::default(),
            fees: FeePolicy::default(),
            log: None,
            notifier: None,
        }
    }

    /// A node whose chain is kept in (and first replayed from) the log at `path`.
    pub fn with_log(path: &Path) -> io::Result<Self> {
        let (log, records) = ChainLog::open(path)?;
        let mut state = NodeState::new();
        for record in records {
            let outcome = match record {
                Record::Block(block) => state.submit_block(block),
                Record::Invalidate(hash) => state.invalidate(&hash).map_err(|e| e.message),
                Record::Reconsider(hash) => state.reconsider(&hash).map_err(|e| e.message),
            };
            if let Err(reason) = outcome {
                tracing::debug!(%reason, "replayed a log record");
            }
        }
        state.log = Some(log);
        Ok(state)
    }

    /// Sends every notification from now on to `notifier` (the ZMQ publisher).
    pub fn set_notifier(&mut self, notifier: Option<Notifier>) {
        self.notifier = notifier;
    }

    fn notify(&self, notifications: impl IntoIterator<Item = Notification>) {
        if let Some(notifier) = &self.notifier {
            for notification in notifications {
                // The publisher may be gone (node going down): then nobody listens.
                let _ = notifier.send(notification);
            }
        }
    }

    /// A transaction accepted to the mempool, as bitcoind's `TransactionAddedToMempool`
    /// announces it (ZMQ `rawtx`).
    fn notify_tx(&self, tx: &Transaction) {
        if self.notifier.is_some() {
            self.notify([tx_notification(tx)]);
        }
    }

    /// A new tip, as bitcoind's `UpdatedBlockTip` announces it (ZMQ `hashblock`, `rawblock`).
    /// Nothing without a publisher.
    fn tip_notification(&self, hash: BlockHash) -> Option<Notification> {
        self.notifier.as_ref()?;
        let raw = self.chain.get(&hash).map(|entry| bitcoin::consensus::serialize(&entry.block));
        Some(Notification::Block { hash, raw: Arc::new(raw.unwrap_or_default()) })
    }

    /// Every transaction of a block being connected or disconnected, as bitcoind's
    /// `BlockConnected` and `BlockDisconnected` announce them (ZMQ `rawtx`).
    fn block_tx_notifications(&self, hash: &BlockHash) -> Vec<Notification> {
        match (&self.notifier, self.chain.get(hash)) {
            (Some(_), Some(entry)) => entry.block.txdata.iter().map(tx_notification).collect(),
            _ => Vec::new(),
        }
    }

    /// Where confirmations of `txid` stand: `Some(0)` in the mempool, `Some(n)` confirmed `n`
    /// times in the active chain, `None` unknown.
    pub fn tx_confirmations(&self, txid: &Txid) -> Option<u32> {
        if self.mempool.contains(txid) {
            return Some(0);
        }
        let (_, entry) = self.chain.find_active_tx(txid)?;
        Some(self.chain.height() - entry.height + 1)
    }

    /// Checks `tx` for the mempool without adding it.
    pub fn test_accept(&self, tx: &Transaction) -> Result<Accepted, Reject> {
        check_mempool_accept(
            &self.chain,
            &self.mempool,
            tx,
            AcceptOptions { bypass_limits: false, allow_replacement: true, fees: self.fees },
        )
    }

    /// `sendrawtransaction`: `max_fee_rate` in sat/kvB, 0 for no limit.
    pub fn send_raw_transaction(&mut self, tx: Transaction, max_fee_rate: u64) -> Result<Txid, RpcError> {
        let txid = tx.compute_txid();
        if self.chain.has_unspent_outputs(&tx) {
            return Err(RpcError::new(RPC_VERIFY_ALREADY_IN_CHAIN, "Transaction outputs already in utxo set"));
        }
        if self.mempool.contains(&txid) {
            return Ok(txid);
        }
        let accepted = self.test_accept(&tx).map_err(reject_to_rpc)?;
        if max_fee_rate > 0 && accepted.fee.to_sat() > fee_for(max_fee_rate, accepted.vsize) {
            return Err(RpcError::new(
                RPC_TRANSACTION_ERROR,
                "Fee exceeds maximum configured by user (e.g. -maxtxfee, maxfeerate)",
            ));
        }
        for replaced in &accepted.replaced {
            self.mempool.remove(replaced);
        }
        let height = self.chain.height();
        self.notify_tx(&tx);
        self.mempool.insert(tx, accepted.fee, unix_now(), height);
        Ok(txid)
    }

    fn next_block_time(&self) -> u32 {
        let tip = self.chain.tip();
        let mtp = self.chain.median_time_past(&tip.hash);
        let now = u32::try_from(unix_now()).unwrap_or(u32::MAX);
        now.max(tip.block.header.time + 1).max(mtp + 1)
    }

    /// A block on the tip holding `txs` (already checked to fit), paying to `payout`.
    fn build_block(&self, txs: Vec<Transaction>, fees: bitcoin::Amount, payout: ScriptBuf) -> Block {
        let height = self.chain.height() + 1;
        let mut time = self.next_block_time();
        loop {
            let block = assemble_block(
                self.chain.tip().hash,
                height,
                time,
                txs.clone(),
                payout.clone(),
                block_subsidy(height) + fees,
            );
            // Re-mining what an invalidated block held within the same second would give that
            // very block again: a later time makes a new one, so that a new branch grows.
            if self.chain.get(&block.block_hash()).is_none() {
                return block;
            }
            time += 1;
        }
    }

    /// Stores, checks and connects a block built on the tip.
    fn connect_new_block(&mut self, block: Block) -> Result<BlockHash, RpcError> {
        let undo = check_block(&self.chain, &block)
            .map_err(|reason| RpcError::new(RPC_VERIFY_ERROR, format!("ConnectBlock: {reason}")))?;
        self.log(|| Record::Block(block.clone()));
        let hash = self.chain.add_block(block).map_err(|reason| RpcError::new(RPC_MISC_ERROR, reason))?;
        self.chain.connect_tip(&hash, undo);
        self.notify(self.block_tx_notifications(&hash));
        self.notify(self.tip_notification(hash));
        self.update_mempool(Vec::new());
        Ok(hash)
    }

    fn log(&mut self, record: impl FnOnce() -> Record) {
        if let Some(log) = &mut self.log {
            if let Err(error) = log.append(&record()) {
                tracing::warn!(path = %log.path().display(), %error, "could not log the chain");
            }
        }
    }

    /// `generatetoaddress`: `n` blocks holding the mempool's transactions.
    pub fn generate(&mut self, n: u32, payout: &ScriptBuf) -> Result<Vec<BlockHash>, RpcError> {
        let mut hashes = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let candidates = self.mempool.ordered().into_iter().map(|e| e.tx.clone()).collect();
            let (txs, fees) = select_block_txs(&self.chain, candidates, false)
                .map_err(|reason| RpcError::new(RPC_MISC_ERROR, reason))?;
            let block = self.build_block(txs, fees, payout.clone());
            hashes.push(self.connect_new_block(block)?);
        }
        Ok(hashes)
    }

    /// `generateblock`: a block holding exactly `txs`, connected when `submit`.
    pub fn generate_block(
        &mut self,
        payout: &ScriptBuf,
        txs: Vec<Transaction>,
        submit: bool,
    ) -> Result<Block, RpcError> {
        let (txs, fees) = select_block_txs(&self.chain, txs, true)
            .map_err(|reason| RpcError::new(RPC_VERIFY_ERROR, format!("TestBlockValidity failed: {reason}")))?;
        let block = self.build_block(txs, fees, payout.clone());
        if submit {
            self.connect_new_block(block.clone())?;
        }
        Ok(block)
    }

    /// `submitblock`: `Ok` when the block became the tip, else bitcoind's result string.
    pub fn submit_block(&mut self, block: Block) -> Result<(), String> {
        check_block_sanity(&block)?;
        let hash = block.block_hash();
        if let Some(entry) = self.chain.get(&hash) {
            return Err(if entry.invalid { "duplicate-invalid" } else { "duplicate" }.into());
        }
        match self.chain.get(&block.header.prev_blockhash) {
            None => return Err("prev-blk-not-found".into()),
            Some(parent) if parent.invalid => return Err("bad-prevblk".into()),
            Some(_) => {}
        }
        self.log(|| Record::Block(block.clone()));
        self.chain.add_block(block)?;
        let failures = self.activate_best_chain(Vec::new());
        if let Some(reason) = failures.get(&hash) {
            return Err(reason.clone());
        }
        if !self.chain.is_active(&hash) {
            return Err("inconclusive".into());
        }
        Ok(())
    }

    /// `invalidateblock`.
    pub fn invalidate(&mut self, hash: &BlockHash) -> Result<(), RpcError> {
        let entry = self.chain.get(hash).ok_or_else(|| RpcError::new(RPC_INVALID_ADDRESS_OR_KEY, "Block not found"))?;
        if entry.height == 0 {
            return Err(RpcError::new(RPC_INVALID_PARAMETER, "The genesis block cannot be invalidated"));
        }
        // As bitcoind's `InvalidateBlock`: the mempool is brought in line after each block
        // disconnected (its transactions going back), before a new best chain is looked for.
        let mut disconnected = 0;
        while self.chain.is_active(hash) {
            let gone = self.chain.disconnect_tip();
            self.notify(self.block_tx_notifications(&gone));
            disconnected += 1;
            let resurrected =
                if disconnected <= MAX_INVALIDATE_RESURRECT { self.block_txs(&gone).1 } else { Vec::new() };
            self.update_mempool(resurrected);
        }
        self.chain.mark_invalid(hash);
        self.activate_best_chain(Vec::new());
        self.log(|| Record::Invalidate(*hash));
        Ok(())
    }

    /// `reconsiderblock`.
    pub fn reconsider(&mut self, hash: &BlockHash) -> Result<(), RpcError> {
        if self.chain.get(hash).is_none() {
            return Err(RpcError::new(RPC_INVALID_ADDRESS_OR_KEY, "Block not found"));
        }
        self.chain.clear_invalid(hash);
        self.activate_best_chain(Vec::new());
        self.log(|| Record::Reconsider(*hash));
        Ok(())
    }

    fn block_txs(&self, hash: &BlockHash) -> (u32, Vec<Transaction>) {
        let entry = self.chain.get(hash).expect("a stored block");
        (entry.height, entry.block.txdata.iter().skip(1).cloned().collect())
    }

    /// Moves the active chain to the best valid branch, then brings the mempool in line.
    /// Returns the blocks that failed to connect, with the reason.
    ///
    /// Announces new tips as bitcoind does: each connected block holding more work than the tip
    /// had when this began (so a reorg announces the blocks past the old tip's work, not the ones
    /// that only catch up with it), and the final tip if a connection brought it there without
    /// it being announced (a branch that failed to connect part-way). The transactions of
    /// disconnected blocks are announced as they go, those of connected blocks and the tips once
    /// the mempool is updated (after the transactions going back to it), in bitcoind's order.
    fn activate_best_chain(&mut self, mut disconnected: Disconnected) -> HashMap<BlockHash, String> {
        let mut failures = HashMap::new();
        let mut connected = Vec::new();
        let (start_tip, start_work) = (self.chain.tip().hash, self.chain.tip().chainwork);
        let (mut announced, mut last_connected) = (None, None);
        loop {
            let best = self.chain.best_valid_tip();
            if best == self.chain.tip().hash {
                break;
            }
            let fork = self.chain.fork_point(&best);
            while self.chain.tip().hash != fork {
                let gone = self.chain.disconnect_tip();
                self.notify(self.block_tx_notifications(&gone));
                disconnected.push(self.block_txs(&gone));
            }
            for hash in self.chain.path_from(&fork, &best) {
                let block = &self.chain.get(&hash).expect("a stored block").block;
                match check_block(&self.chain, block) {
                    Ok(undo) => {
                        self.chain.connect_tip(&hash, undo);
                        connected.extend(self.block_tx_notifications(&hash));
                        last_connected = Some(hash);
                        if self.chain.tip().chainwork > start_work {
                            connected.extend(self.tip_notification(hash));
                            announced = Some(hash);
                        }
                    }
                    Err(reason) => {
                        tracing::debug!(%hash, %reason, "block failed to connect");
                        self.chain.mark_invalid(&hash);
                        failures.insert(hash, reason);
                        break;
                    }
                }
            }
        }
        let tip = self.chain.tip().hash;
        if tip != start_tip && last_connected == Some(tip) && announced != Some(tip) {
            connected.extend(self.tip_notification(tip));
        }
        disconnected.sort_by_key(|(height, _)| *height);
        self.update_mempool(disconnected.into_iter().flat_map(|(_, txs)| txs).collect());
        self.notify(connected);
        failures
    }

    /// Re-checks the mempool against the active chain, after `resurrected` transactions (from
    /// disconnected blocks, parents first). Mined and conflicting transactions drop out; the
    /// resurrected ones accepted are announced (ZMQ `rawtx`), as new mempool entries.
    fn update_mempool(&mut self, resurrected: Vec<Transaction>) {
        let old = self.mempool.drain_ordered();
        let opts = AcceptOptions { bypass_limits: true, allow_replacement: false, fees: self.fees };
        let height = self.chain.height();
        let now = unix_now();
        let candidates = resurrected
            .into_iter()
            .map(|tx| (tx, now, height, true))
            .chain(old.into_iter().map(|e| (e.tx, e.time, e.height, false)));
        for (tx, time, height, is_new) in candidates {
            match check_mempool_accept(&self.chain, &self.mempool, &tx, opts) {
                Ok(accepted) => {
                    if is_new {
                        self.notify_tx(&tx);
                    }
                    self.mempool.insert(tx, accepted.fee, time, height);
                }
                Err(reject) => {
                    tracing::trace!(txid = %tx.compute_txid(), reason = %reject.reason(), "left the mempool");
                }
            }
        }
    }
}

/// A transaction's ZMQ `rawtx` notification.
fn tx_notification(tx: &Transaction) -> Notification {
    Notification::Tx(bitcoin::consensus::serialize(tx))
}
