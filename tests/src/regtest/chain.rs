//! The block index (every block ever accepted, active or stale), the active chain, its UTXO set
//! and a transaction index over all stored blocks.

use std::collections::HashMap;

use bitcoin::blockdata::constants::genesis_block;
use bitcoin::pow::Work;
use bitcoin::{Block, BlockHash, Network, OutPoint, Transaction, TxOut, Txid};

/// An unspent output of the active chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Coin {
    pub txout: TxOut,
    /// Height of the block that created it.
    pub height: u32,
    pub is_coinbase: bool,
}

/// What connecting a block spent: for each non-coinbase transaction, the coins of its inputs.
pub(crate) type BlockUndo = Vec<Vec<Coin>>;

#[derive(Debug)]
pub(crate) struct BlockEntry {
    pub block: Block,
    pub hash: BlockHash,
    pub height: u32,
    /// Total work of the chain up to and including this block.
    pub chainwork: Work,
    /// Arrival order, used to break ties between branches of equal work.
    pub seq: u64,
    /// Marked invalid by `invalidateblock` or by a failed connection (descendants inherit it).
    pub invalid: bool,
    /// Set once the block has been connected (it then is known valid, and fees are known).
    pub undo: Option<BlockUndo>,
    /// Serialized size of the block.
    pub size: usize,
}

impl BlockEntry {
    /// The parent's hash, `None` for the genesis block.
    pub fn prev(&self) -> Option<BlockHash> {
        (self.height > 0).then_some(self.block.header.prev_blockhash)
    }
}

/// Whether an output can ever be spent (bitcoind keeps the others out of the UTXO set).
pub(crate) fn is_unspendable(txout: &TxOut) -> bool {
    txout.script_pubkey.is_op_return() || txout.script_pubkey.len() > 10_000
}

#[derive(Debug)]
pub(crate) struct Chain {
    blocks: HashMap<BlockHash, BlockEntry>,
    active: Vec<BlockHash>,
    utxos: HashMap<OutPoint, Coin>,
    /// Every block holding a transaction (the genesis coinbase excluded, as in bitcoind).
    tx_index: HashMap<Txid, Vec<BlockHash>>,
    next_seq: u64,
}

impl Chain {
    /// A chain holding only the regtest genesis block (whose coinbase is unspendable).
    pub fn new() -> Self {
        let genesis = genesis_block(Network::Regtest);
        let hash = genesis.block_hash();
        let entry = BlockEntry {
            size: bitcoin::consensus::serialize(&genesis).len(),
            chainwork: genesis.header.work(),
            block: genesis,
            hash,
            height: 0,
            seq: 0,
            invalid: false,
            undo: Some(Vec::new()),
        };
        Chain {
            blocks: HashMap::from([(hash, entry)]),
            active: vec![hash],
            utxos: HashMap::new(),
            tx_index: HashMap::new(),
            next_seq: 1,
        }
    }

    pub fn tip(&self) -> &BlockEntry {
        let hash = self.active.last().expect("the active chain holds at least genesis");
        &self.blocks[hash]
    }

    pub fn height(&self) -> u32 {
        (self.active.len() - 1) as u32
    }

    pub fn genesis_hash(&self) -> BlockHash {
        self.active[0]
    }

    pub fn hash_at(&self, height: u32) -> Option<BlockHash> {
        self.active.get(height as usize).copied()
    }

    pub fn get(&self, hash: &BlockHash) -> Option<&BlockEntry> {
        self.blocks.get(hash)
    }

    pub fn is_active(&self, hash: &BlockHash) -> bool {
        self.blocks.get(hash).is_some_and(|e| self.active.get(e.height as usize) == Some(hash))
    }

    /// bitcoind's `confirmations` of a block: depth in the active chain, -1 when not in it.
    pub fn confirmations(&self, hash: &BlockHash) -> i64 {
        match self.blocks.get(hash) {
            Some(e) if self.is_active(hash) => i64::from(self.height()) - i64::from(e.height) + 1,
            _ => -1,
        }
    }

    /// The active block after `hash`, if `hash` is active and not the tip.
    pub fn next_active(&self, hash: &BlockHash) -> Option<BlockHash> {
        let entry = self.blocks.get(hash)?;
        if !self.is_active(hash) {
            return None;
        }
        self.hash_at(entry.height + 1)
    }

    /// Median time of the 11 blocks ending at `hash` (BIP113).
    pub fn median_time_past(&self, hash: &BlockHash) -> u32 {
        let mut times = Vec::with_capacity(11);
        let mut cursor = self.blocks.get(hash);
        while let Some(entry) = cursor {
            times.push(entry.block.header.time);
            if times.len() == 11 {
                break;
            }
            cursor = entry.prev().and_then(|p| self.blocks.get(&p));
        }
        times.sort_unstable();
        times.get(times.len() / 2).copied().unwrap_or(0)
    }

    /// Median time past of the active block at `height`.
    pub fn median_time_past_at(&self, height: u32) -> u32 {
        let height = height.min(self.height());
        self.median_time_past(&self.active[height as usize])
    }

    pub fn coin(&self, outpoint: &OutPoint) -> Option<&Coin> {
        self.utxos.get(outpoint)
    }

    /// Whether some output of `txid` is unspent in the active chain.
    pub fn has_unspent_outputs(&self, tx: &Transaction) -> bool {
        let txid = tx.compute_txid();
        (0..tx.output.len() as u32).any(|vout| self.utxos.contains_key(&OutPoint { txid, vout }))
    }

    /// The blocks (active or stale) holding `txid`.
    pub fn blocks_with_tx(&self, txid: &Txid) -> &[BlockHash] {
        self.tx_index.get(txid).map(Vec::as_slice).unwrap_or(&[])
    }

    /// `txid` in the active chain: the transaction and its block.
    pub fn find_active_tx(&self, txid: &Txid) -> Option<(&Transaction, &BlockEntry)> {
        self.blocks_with_tx(txid).iter().filter(|h| self.is_active(h)).find_map(|h| self.find_tx_in_block(txid, h))
    }

    /// `txid` in the given block, active or not.
    pub fn find_tx_in_block(&self, txid: &Txid, hash: &BlockHash) -> Option<(&Transaction, &BlockEntry)> {
        let entry = self.blocks.get(hash)?;
        let tx = entry.block.txdata.iter().find(|tx| tx.compute_txid() == *txid)?;
        Some((tx, entry))
    }

    /// Stores a block whose parent is known; returns its hash. Storing a known block is a no-op.
    pub fn add_block(&mut self, block: Block) -> Result<BlockHash, String> {
        let hash = block.block_hash();
        if self.blocks.contains_key(&hash) {
            return Ok(hash);
        }
        let parent = self.blocks.get(&block.header.prev_blockhash).ok_or_else(|| "prev-blk-not-found".to_string())?;
        let height = parent.height + 1;
        let chainwork = parent.chainwork + block.header.work();
        let invalid = parent.invalid;
        for tx in &block.txdata {
            let hashes = self.tx_index.entry(tx.compute_txid()).or_default();
            if !hashes.contains(&hash) {
                hashes.push(hash);
            }
        }
        let entry = BlockEntry {
            size: bitcoin::consensus::serialize(&block).len(),
            block,
            hash,
            height,
            chainwork,
            seq: self.next_seq,
            invalid,
            undo: None,
        };
        self.next_seq += 1;
        self.blocks.insert(hash, entry);
        Ok(hash)
    }

    /// Connects a stored child of the tip, whose transactions were checked and spent `undo`.
    pub fn connect_tip(&mut self, hash: &BlockHash, undo: BlockUndo) {
        let entry = self.blocks.get_mut(hash).expect("connecting a stored block");
        debug_assert_eq!(entry.block.header.prev_blockhash, self.active[self.active.len() - 1]);
        let height = entry.height;
        for (i, tx) in entry.block.txdata.iter().enumerate() {
            if i > 0 {
                for input in &tx.input {
                    self.utxos.remove(&input.previous_output);
                }
            }
            let txid = tx.compute_txid();
            for (vout, txout) in tx.output.iter().enumerate() {
                if is_unspendable(txout) {
                    continue;
                }
                let coin = Coin { txout: txout.clone(), height, is_coinbase: i == 0 };
                self.utxos.insert(OutPoint { txid, vout: vout as u32 }, coin);
            }
        }
        entry.undo = Some(undo);
        self.active.push(*hash);
    }

    /// Disconnects the tip (never genesis); returns the disconnected block's hash.
    pub fn disconnect_tip(&mut self) -> BlockHash {
        assert!(self.active.len() > 1, "cannot disconnect the genesis block");
        let hash = self.active.pop().expect("checked above");
        let entry = &self.blocks[&hash];
        let undo = entry.undo.as_ref().expect("an active block was connected");
        for (i, tx) in entry.block.txdata.iter().enumerate().rev() {
            let txid = tx.compute_txid();
            for vout in 0..tx.output.len() as u32 {
                self.utxos.remove(&OutPoint { txid, vout });
            }
            if i > 0 {
                for (input, coin) in tx.input.iter().zip(&undo[i - 1]) {
                    self.utxos.insert(input.previous_output, coin.clone());
                }
            }
        }
        hash
    }

    /// The most recent common block of `hash`'s branch and the active chain.
    pub fn fork_point(&self, hash: &BlockHash) -> BlockHash {
        let mut cursor = *hash;
        while !self.is_active(&cursor) {
            cursor = self.blocks[&cursor].block.header.prev_blockhash;
        }
        cursor
    }

    /// The blocks after `ancestor` up to and including `hash`, in ascending height.
    pub fn path_from(&self, ancestor: &BlockHash, hash: &BlockHash) -> Vec<BlockHash> {
        let mut path = Vec::new();
        let mut cursor = *hash;
        while cursor != *ancestor {
            path.push(cursor);
            cursor = self.blocks[&cursor].block.header.prev_blockhash;
        }
        path.reverse();
        path
    }

    /// Whether `descendant` is `ancestor` or builds on it.
    pub fn descends_from(&self, descendant: &BlockHash, ancestor: &BlockHash) -> bool {
        let Some(target) = self.blocks.get(ancestor) else {
            return false;
        };
        let mut cursor = self.blocks.get(descendant);
        while let Some(entry) = cursor {
            if entry.height < target.height {
                return false;
            }
            if entry.hash == *ancestor {
                return true;
            }
            cursor = entry.prev().and_then(|p| self.blocks.get(&p));
        }
        false
    }

    /// Marks `hash` and all its descendants invalid.
    pub fn mark_invalid(&mut self, hash: &BlockHash) {
        let descendants: Vec<BlockHash> = self.blocks.keys().filter(|h| self.descends_from(h, hash)).copied().collect();
        for h in descendants {
            if let Some(e) = self.blocks.get_mut(&h) {
                e.invalid = true;
            }
        }
    }

    /// Clears the invalid flag of `hash`, its ancestors and its descendants (`reconsiderblock`).
    pub fn clear_invalid(&mut self, hash: &BlockHash) {
        let related: Vec<BlockHash> = self
            .blocks
            .keys()
            .filter(|h| self.descends_from(h, hash) || self.descends_from(hash, h))
            .copied()
            .collect();
        for h in related {
            if let Some(e) = self.blocks.get_mut(&h) {
                e.invalid = false;
            }
        }
    }

    /// The valid block with the most work; the current tip wins ties, then the first received.
    pub fn best_valid_tip(&self) -> BlockHash {
        let tip = self.tip().hash;
        self.blocks
            .values()
            .filter(|e| !e.invalid)
            .max_by_key(|e| {
                let preference = if e.hash == tip { u64::MAX } else { u64::MAX - 1 - e.seq };
                (e.chainwork, preference)
            })
            .map_or(self.genesis_hash(), |e| e.hash)
    }

    /// The stored blocks that no stored block builds on.
    pub fn leaves(&self) -> Vec<&BlockEntry> {
        let parents: std::collections::HashSet<BlockHash> = self.blocks.values().filter_map(|e| e.prev()).collect();
        self.blocks.values().filter(|e| !parents.contains(&e.hash)).collect()
    }

    /// Total serialized size of the stored blocks.
    pub fn size_on_disk(&self) -> u64 {
        self.blocks.values().map(|e| e.size as u64).sum()
    }
}
