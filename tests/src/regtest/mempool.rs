//! The mempool: accepted transactions and the outpoints they spend.
//!
//! Acceptance rules live in [`validation`](super::validation); this is only storage and the
//! ancestor/descendant relations.

use std::collections::{BTreeMap, HashMap, HashSet};

use bitcoin::{Amount, OutPoint, Transaction, TxOut, Txid, Wtxid};

#[derive(Debug, Clone)]
pub(crate) struct MempoolEntry {
    pub tx: Transaction,
    pub txid: Txid,
    pub wtxid: Wtxid,
    pub fee: Amount,
    pub vsize: u64,
    pub weight: u64,
    /// Unix time of entry.
    pub time: u64,
    /// Active chain height when the transaction entered.
    pub height: u32,
    /// Entry order.
    pub seq: u64,
}

impl MempoolEntry {
    /// Whether the transaction signals BIP125 replaceability itself.
    pub fn signals_rbf(&self) -> bool {
        self.tx.input.iter().any(|i| i.sequence.0 < 0xffff_fffe)
    }
}

#[derive(Debug, Default)]
pub(crate) struct Mempool {
    entries: HashMap<Txid, MempoolEntry>,
    spends: HashMap<OutPoint, Txid>,
    next_seq: u64,
}

impl Mempool {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn contains(&self, txid: &Txid) -> bool {
        self.entries.contains_key(txid)
    }

    pub fn get(&self, txid: &Txid) -> Option<&MempoolEntry> {
        self.entries.get(txid)
    }

    /// The output `outpoint` of a mempool transaction, spent or not.
    pub fn output(&self, outpoint: &OutPoint) -> Option<&TxOut> {
        self.entries.get(&outpoint.txid)?.tx.output.get(outpoint.vout as usize)
    }

    /// The mempool transaction spending `outpoint`.
    pub fn spender(&self, outpoint: &OutPoint) -> Option<Txid> {
        self.spends.get(outpoint).copied()
    }

    pub fn insert(&mut self, tx: Transaction, fee: Amount, time: u64, height: u32) -> Txid {
        let txid = tx.compute_txid();
        for input in &tx.input {
            self.spends.insert(input.previous_output, txid);
        }
        let entry = MempoolEntry {
            txid,
            wtxid: tx.compute_wtxid(),
            fee,
            vsize: tx.vsize() as u64,
            weight: tx.weight().to_wu(),
            time,
            height,
            seq: self.next_seq,
            tx,
        };
        self.next_seq += 1;
        self.entries.insert(txid, entry);
        txid
    }

    /// Removes one transaction (not its descendants).
    pub fn remove(&mut self, txid: &Txid) -> Option<MempoolEntry> {
        let entry = self.entries.remove(txid)?;
        for input in &entry.tx.input {
            if self.spends.get(&input.previous_output) == Some(txid) {
                self.spends.remove(&input.previous_output);
            }
        }
        Some(entry)
    }

    /// Mempool transactions whose outputs `txid` spends.
    pub fn parents(&self, txid: &Txid) -> Vec<Txid> {
        let Some(entry) = self.entries.get(txid) else {
            return Vec::new();
        };
        let mut parents: Vec<Txid> =
            entry.tx.input.iter().map(|i| i.previous_output.txid).filter(|p| self.entries.contains_key(p)).collect();
        parents.sort_unstable();
        parents.dedup();
        parents
    }

    /// Mempool transactions spending outputs of `txid`.
    pub fn children(&self, txid: &Txid) -> Vec<Txid> {
        let Some(entry) = self.entries.get(txid) else {
            return Vec::new();
        };
        let mut children: Vec<Txid> = (0..entry.tx.output.len() as u32)
            .filter_map(|vout| self.spends.get(&OutPoint { txid: *txid, vout }).copied())
            .collect();
        children.sort_unstable();
        children.dedup();
        children
    }

    /// All in-mempool ancestors of `txid` (itself excluded).
    pub fn ancestors(&self, txid: &Txid) -> HashSet<Txid> {
        self.closure(txid, |t| self.parents(t))
    }

    /// All in-mempool descendants of `txid` (itself excluded).
    pub fn descendants(&self, txid: &Txid) -> HashSet<Txid> {
        self.closure(txid, |t| self.children(t))
    }

    fn closure(&self, txid: &Txid, next: impl Fn(&Txid) -> Vec<Txid>) -> HashSet<Txid> {
        let mut seen = HashSet::new();
        let mut todo = next(txid);
        while let Some(t) = todo.pop() {
            if seen.insert(t) {
                todo.extend(next(&t));
            }
        }
        seen
    }

    /// Entries with parents before children, otherwise in entry order.
    pub fn ordered(&self) -> Vec<&MempoolEntry> {
        let by_seq: BTreeMap<u64, &MempoolEntry> = self.entries.values().map(|e| (e.seq, e)).collect();
        let mut done = HashSet::new();
        let mut out = Vec::with_capacity(self.entries.len());
        for entry in by_seq.values() {
            self.visit(entry, &mut done, &mut out);
        }
        out
    }

    fn visit<'a>(&'a self, entry: &'a MempoolEntry, done: &mut HashSet<Txid>, out: &mut Vec<&'a MempoolEntry>) {
        if !done.insert(entry.txid) {
            return;
        }
        let mut parents: Vec<&MempoolEntry> =
            self.parents(&entry.txid).iter().filter_map(|p| self.entries.get(p)).collect();
        parents.sort_by_key(|p| p.seq);
        for parent in parents {
            self.visit(parent, done, out);
        }
        out.push(entry);
    }

    /// Empties the mempool, returning its entries with parents before children.
    pub fn drain_ordered(&mut self) -> Vec<MempoolEntry> {
        let order: Vec<Txid> = self.ordered().iter().map(|e| e.txid).collect();
        let mut entries = std::mem::take(&mut self.entries);
        self.spends.clear();
        order.iter().filter_map(|txid| entries.remove(txid)).collect()
    }

    pub fn total_fee(&self) -> Amount {
        self.entries.values().map(|e| e.fee).sum()
    }

    pub fn total_vsize(&self) -> u64 {
        self.entries.values().map(|e| e.vsize).sum()
    }
}
