//! An in-memory [`Kv`] for tests: the same semantics as RocksDB, no durability.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::kv::{Cf, Entries, Kv, KvError, Op};

type Table = BTreeMap<Vec<u8>, Vec<u8>>;

/// A [`Kv`] in a `BTreeMap` per column family.
#[derive(Debug, Default)]
pub struct MemoryKv {
    tables: Mutex<BTreeMap<Cf, Table>>,
}

impl MemoryKv {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Kv for MemoryKv {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        let tables = self.tables.lock().expect("memory kv lock");
        Ok(tables.get(&cf).and_then(|t| t.get(key)).cloned())
    }

    fn write(&self, ops: Vec<Op>) -> Result<(), KvError> {
        let mut tables = self.tables.lock().expect("memory kv lock");
        // All or nothing: a batch whose counters cannot be added is refused before any op applies
        // (sums of whole words are whole words, so checking the stored values and operands does).
        for op in &ops {
            if let Op::AddCounters(cf, k, operand) = op {
                let stored = tables.get(cf).and_then(|t| t.get(k));
                if super::kv::add_counters(stored.map(Vec::as_slice), operand).is_none() {
                    return Err(KvError::Backend(format!("counters in `{}` are not 8-byte words", cf.name())));
                }
            }
        }
        for op in ops {
            match op {
                Op::Put(cf, k, v) => {
                    tables.entry(cf).or_default().insert(k, v);
                }
                Op::Delete(cf, k) => {
                    tables.entry(cf).or_default().remove(&k);
                }
                Op::AddCounters(cf, k, operand) => {
                    let table = tables.entry(cf).or_default();
                    if let Some(sum) = super::kv::add_counters(table.get(&k).map(Vec::as_slice), &operand) {
                        table.insert(k, sum);
                    }
                }
            }
        }
        Ok(())
    }

    fn scan(&self, cf: Cf, prefix: &[u8], from: &[u8], limit: usize) -> Result<Entries, KvError> {
        let tables = self.tables.lock().expect("memory kv lock");
        let Some(table) = tables.get(&cf) else {
            return Ok(Vec::new());
        };
        Ok(table
            .range(from.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn scan_prefixes(
        &self,
        cf: Cf,
        prefixes: &[&[u8]],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Entries, KvError> {
        let mut sorted = prefixes.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let mut out = Entries::new();
        for prefix in sorted {
            let Some(from) = super::kv::page_start(prefix, after) else { continue };
            let rows = self.scan(cf, prefix, &from, (limit - out.len()).saturating_add(1))?;
            out.extend(
                rows.into_iter().filter(|(k, _)| after.is_none_or(|a| k.as_slice() > a)).take(limit - out.len()),
            );
            if out.len() == limit {
                break;
            }
        }
        Ok(out)
    }

    fn compact(&self) -> Result<(), KvError> {
        Ok(())
    }

    fn range(&self, cf: Cf, from: &[u8], to: &[u8], limit: usize) -> Result<Entries, KvError> {
        let tables = self.tables.lock().expect("memory kv lock");
        let Some(table) = tables.get(&cf) else {
            return Ok(Vec::new());
        };
        if from >= to {
            return Ok(Vec::new());
        }
        Ok(table.range(from.to_vec()..to.to_vec()).take(limit).map(|(k, v)| (k.clone(), v.clone())).collect())
    }
}
