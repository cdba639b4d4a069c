//! RocksDB behind [`Kv`]: synced WAL writes (RocksDB groups concurrent writers into one sync),
//! bloom filters on lookup prefixes, one bounded block cache.

use std::path::{Path, PathBuf};

use rocksdb::checkpoint::Checkpoint;
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, Direction, IteratorMode, Options, ReadOptions, SliceTransform,
    WriteBatch, WriteOptions, DB,
};

use super::kv::{Cf, Entries, Kv, KvError, Op};

/// Errors opening the database directory.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The directory exists and has files, but no RocksDB `CURRENT` file.
    #[error("{0} is not empty and holds no database (no CURRENT file): refusing to create one over it")]
    NotADatabase(PathBuf),
    /// RocksDB refused to open it (corruption, lock held by another teosd, I/O error).
    #[error("cannot open the store at {path}: {message}")]
    Rocks {
        /// The directory.
        path: PathBuf,
        /// RocksDB's message.
        message: String,
    },
    /// The database has column families this build does not know: another teosd version wrote it.
    #[error(
        "the store at {path} has column families this teosd does not know ({names}): it was written by \
         another teosd version; the data was left untouched"
    )]
    UnknownColumnFamilies {
        /// The directory.
        path: PathBuf,
        /// Their names.
        names: String,
    },
    /// File system error.
    #[error("cannot prepare {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// A RocksDB database with teosd's column families.
pub struct RocksKv {
    db: DB,
    sync: WriteOptions,
}

impl std::fmt::Debug for RocksKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksKv").field("path", &self.db.path()).finish()
    }
}

/// All column families' memtables together are flushed before they hold more than this (each
/// column family's alone at 8 MiB, two of them at most): a bound on memory under a sustained
/// load, for a flush every ~3 s at 5000 appointments/s (docs/performance.md).
const MEMTABLES_TOTAL: usize = 8 << 20;

fn cf_options(cf: Cf, cache: &Cache) -> Options {
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    table.set_bloom_filter(10.0, false);
    table.set_cache_index_and_filter_blocks(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    let mut opts = Options::default();
    if let Some(len) = cf.prefix_len() {
        opts.set_prefix_extractor(SliceTransform::create_fixed_prefix(len));
        table.set_whole_key_filtering(true);
    }
    match cf {
        // The column families that grow with the appointments (docs/performance.md, "10 million
        // appointments"). `appointments`: point reads go by `locator ‖ user number`, whose prefix
        // (the locator) is all but unique, so the prefix filter answers them as well as a
        // whole-key one would: half the filter; and a Ribbon filter with a Bloom filter's false
        // positive rate at 10 bits per key: ~30% fewer bits, for more CPU when a compaction
        // builds it. 16 KiB blocks: a quarter of the index (an appointment is ~360 bytes; a hit
        // reads one block). Its memtables alone get a prefix bloom filter (0.1 of 8 MiB, zeroed
        // when each memtable is made, so resident): a block's 2000 probes meet it; the other
        // prefix column families hold a few trackers, or are not on a block's path.
        Cf::Appointments => {
            opts.set_memtable_prefix_bloom_ratio(0.1);
            table.set_whole_key_filtering(false);
            table.set_ribbon_filter(10.0);
            table.set_block_size(16 << 10);
        }
        // `user_locators` is only scanned by user (its prefix): no whole-key filter; restarts
        // every 64 keys rather than 16 (a restart stores the whole 49-byte key, the others only
        // the locator that follows the shared user id).
        Cf::UserLocators => {
            table.set_whole_key_filtering(false);
            table.set_block_restart_interval(64);
        }
        _ => {}
    }
    opts.set_block_based_table_factory(&table);
    opts.set_write_buffer_size(8 << 20);
    opts.set_max_write_buffer_number(2);
    if cf == Cf::Meta {
        // `Op::AddCounters`: the store's counts, added to by every batch that changes them.
        opts.set_merge_operator_associative("teos_add_counters", add_counters_merge);
    }
    opts
}

/// RocksDB's merge of [`Op::AddCounters`] operands (full and partial merges alike: the addition
/// is associative). `None` (a corrupt operand or value) makes the read fail, not guess.
fn add_counters_merge(_key: &[u8], existing: Option<&[u8]>, operands: &rocksdb::MergeOperands) -> Option<Vec<u8>> {
    let mut sum = existing.map(<[u8]>::to_vec);
    for operand in operands {
        sum = Some(super::kv::add_counters(sum.as_deref(), operand)?);
    }
    sum
}

impl RocksKv {
    /// Opens (or, in a missing or empty directory, creates) the database.
    pub fn open(path: &Path, cache_mib: usize) -> Result<RocksKv, OpenError> {
        let exists = has_files(path)?;
        if exists && !path.join("CURRENT").exists() {
            return Err(OpenError::NotADatabase(path.to_path_buf()));
        }
        if exists {
            // Checked before opening: opening would add our column families to it.
            let found = DB::list_cf(&Options::default(), path)
                .map_err(|e| OpenError::Rocks { path: path.to_path_buf(), message: e.into_string() })?;
            let known: Vec<&str> = Cf::ALL.iter().map(|cf| cf.name()).collect();
            let unknown: Vec<String> =
                found.into_iter().filter(|name| name != "default" && !known.contains(&name.as_str())).collect();
            if !unknown.is_empty() {
                return Err(OpenError::UnknownColumnFamilies { path: path.to_path_buf(), names: unknown.join(", ") });
            }
        }
        std::fs::create_dir_all(path).map_err(|source| OpenError::Io { path: path.to_path_buf(), source })?;
        let cache = Cache::new_lru_cache(cache_mib.max(1) << 20)
            .map_err(|e| OpenError::Rocks { path: path.to_path_buf(), message: e.into_string() })?;
        let mut opts = Options::default();
        opts.create_if_missing(!exists);
        opts.create_missing_column_families(true);
        opts.set_paranoid_checks(true);
        opts.set_max_open_files(256);
        opts.set_keep_log_file_num(4);
        opts.set_max_total_wal_size(64 << 20);
        opts.set_db_write_buffer_size(MEMTABLES_TOTAL);
        let cfs = Cf::ALL.iter().map(|cf| ColumnFamilyDescriptor::new(cf.name(), cf_options(*cf, &cache)));
        let db = DB::open_cf_descriptors(&opts, path, cfs)
            .map_err(|e| OpenError::Rocks { path: path.to_path_buf(), message: e.into_string() })?;
        let mut sync = WriteOptions::default();
        sync.set_sync(true);
        Ok(RocksKv { db, sync })
    }

    /// Opens the database at `path` read-only (a backup, to check it and read its tip): nothing
    /// in the directory is changed, and a teosd running on it is not disturbed.
    pub fn open_read_only(path: &Path) -> Result<RocksKv, OpenError> {
        if !path.join("CURRENT").exists() {
            return Err(OpenError::NotADatabase(path.to_path_buf()));
        }
        let cache = Cache::new_lru_cache(8 << 20)
            .map_err(|e| OpenError::Rocks { path: path.to_path_buf(), message: e.into_string() })?;
        let mut opts = Options::default();
        opts.set_paranoid_checks(true);
        let cfs = Cf::ALL.iter().map(|cf| ColumnFamilyDescriptor::new(cf.name(), cf_options(*cf, &cache)));
        let db = DB::open_cf_descriptors_read_only(&opts, path, cfs, false)
            .map_err(|e| OpenError::Rocks { path: path.to_path_buf(), message: e.into_string() })?;
        Ok(RocksKv { db, sync: WriteOptions::default() })
    }

    fn handle(&self, cf: Cf) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(cf.name()).expect("every column family is created at open")
    }

    /// Every entry under each of `prefixes` (sorted, of the column family's prefix length), with
    /// one iterator in prefix mode: each seek consults the prefix bloom filters, and the iterator
    /// over the memtables and every level is built once rather than per probe.
    fn probe_sorted(&self, cf: Cf, prefixes: &[&[u8]], after: Option<&[u8]>, limit: usize) -> Result<Entries, KvError> {
        let mut read = ReadOptions::default();
        read.set_prefix_same_as_start(true);
        let mut iter = self.db.raw_iterator_cf_opt(self.handle(cf), read);
        let mut out = Entries::new();
        for prefix in prefixes {
            let Some(from) = super::kv::page_start(prefix, after) else { continue };
            iter.seek(&from);
            while let (Some(k), Some(v)) = (iter.key(), iter.value()) {
                if !k.starts_with(prefix) || out.len() == limit {
                    break;
                }
                if after.is_none_or(|a| k > a) {
                    out.push((k.to_vec(), v.to_vec()));
                }
                iter.next();
            }
            iter.status().map_err(backend)?;
            if out.len() == limit {
                break;
            }
        }
        Ok(out)
    }

    fn collect(&self, cf: Cf, from: &[u8], upper: Option<Vec<u8>>, limit: usize) -> Result<Entries, KvError> {
        let mut read = ReadOptions::default();
        read.set_total_order_seek(true);
        // Ranges walk data once (listings, pages of a user's locators, expiry): they should not
        // push the hot blocks (the locator probes') out of the cache.
        read.fill_cache(false);
        if let Some(upper) = upper {
            read.set_iterate_upper_bound(upper);
        }
        let iter = self.db.iterator_cf_opt(self.handle(cf), read, IteratorMode::From(from, Direction::Forward));
        let mut out = Vec::new();
        for item in iter.take(limit) {
            let (k, v) = item.map_err(backend)?;
            out.push((k.into_vec(), v.into_vec()));
        }
        Ok(out)
    }
}

fn has_files(path: &Path) -> Result<bool, OpenError> {
    match std::fs::read_dir(path) {
        Ok(mut entries) => Ok(entries.next().is_some()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(OpenError::Io { path: path.to_path_buf(), source }),
    }
}

fn backend(e: rocksdb::Error) -> KvError {
    KvError::Backend(e.into_string())
}

/// The smallest key greater than every key that starts with `prefix`, if any.
fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut upper = prefix.to_vec();
    while let Some(last) = upper.pop() {
        if last < u8::MAX {
            upper.push(last + 1);
            return Some(upper);
        }
    }
    None
}

impl Kv for RocksKv {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        self.db.get_cf(self.handle(cf), key).map_err(backend)
    }

    fn write(&self, ops: Vec<Op>) -> Result<(), KvError> {
        let mut batch = WriteBatch::default();
        for op in ops {
            match op {
                Op::Put(cf, k, v) => batch.put_cf(self.handle(cf), k, v),
                Op::Delete(cf, k) => batch.delete_cf(self.handle(cf), k),
                Op::AddCounters(cf, k, v) => batch.merge_cf(self.handle(cf), k, v),
            }
        }
        self.db.write_opt(batch, &self.sync).map_err(backend)
    }

    fn scan(&self, cf: Cf, prefix: &[u8], from: &[u8], limit: usize) -> Result<Entries, KvError> {
        if cf.prefix_len() == Some(prefix.len()) {
            // Let the prefix bloom filters skip files that cannot hold the prefix; and, as a walk
            // over data read once, keep it out of the cache.
            let mut read = ReadOptions::default();
            read.set_prefix_same_as_start(true);
            read.fill_cache(false);
            let iter = self.db.iterator_cf_opt(self.handle(cf), read, IteratorMode::From(from, Direction::Forward));
            let mut out = Vec::new();
            for item in iter {
                let (k, v) = item.map_err(backend)?;
                if !k.starts_with(prefix) || out.len() == limit {
                    break;
                }
                out.push((k.into_vec(), v.into_vec()));
            }
            return Ok(out);
        }
        self.collect(cf, from, prefix_successor(prefix), limit)
    }

    fn scan_prefixes(
        &self,
        cf: Cf,
        prefixes: &[&[u8]],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Entries, KvError> {
        if prefixes.iter().any(|p| Some(p.len()) != cf.prefix_len()) {
            let mut out = Entries::new();
            for prefix in prefixes {
                out.extend(self.scan(cf, prefix, prefix, usize::MAX)?);
            }
            out.sort_unstable();
            out.dedup();
            out.retain(|(k, _)| after.is_none_or(|a| k.as_slice() > a));
            out.truncate(limit);
            return Ok(out);
        }
        let mut sorted = prefixes.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        self.probe_sorted(cf, &sorted, after, limit)
    }

    fn prefixes_present(&self, cf: Cf, prefixes: &[&[u8]]) -> Result<Vec<bool>, KvError> {
        if prefixes.iter().any(|p| Some(p.len()) != cf.prefix_len()) {
            return prefixes.iter().map(|p| Ok(!self.scan(cf, p, p, 1)?.is_empty())).collect();
        }
        let mut read = ReadOptions::default();
        read.set_prefix_same_as_start(true);
        let mut iter = self.db.raw_iterator_cf_opt(self.handle(cf), read);
        let mut present = Vec::with_capacity(prefixes.len());
        for prefix in prefixes {
            iter.seek(prefix);
            present.push(iter.key().is_some_and(|k| k.starts_with(prefix)));
            iter.status().map_err(backend)?;
        }
        Ok(present)
    }

    fn compact(&self) -> Result<(), KvError> {
        for cf in Cf::ALL {
            self.db.compact_range_cf(self.handle(cf), None::<&[u8]>, None::<&[u8]>);
        }
        Ok(())
    }

    /// RocksDB's checkpoint: the memtables are flushed, the table files hard-linked (copied across
    /// file systems), the MANIFEST and the live WAL copied, all as of one sequence number, so a
    /// batch committing meanwhile is either wholly in the copy or not at all.
    fn checkpoint(&self, dir: &Path) -> Result<(), KvError> {
        Checkpoint::new(&self.db).and_then(|c| c.create_checkpoint(dir)).map_err(backend)
    }

    fn range(&self, cf: Cf, from: &[u8], to: &[u8], limit: usize) -> Result<Entries, KvError> {
        if from >= to {
            return Ok(Vec::new());
        }
        self.collect(cf, from, Some(to.to_vec()), limit)
    }

    /// Counted on a raw iterator, nothing copied out.
    fn count(&self, cf: Cf, from: &[u8], to: &[u8]) -> Result<u64, KvError> {
        if from >= to {
            return Ok(0);
        }
        let mut read = ReadOptions::default();
        read.set_total_order_seek(true);
        read.fill_cache(false);
        read.set_iterate_upper_bound(to.to_vec());
        let mut iter = self.db.raw_iterator_cf_opt(self.handle(cf), read);
        iter.seek(from);
        let mut count = 0u64;
        while iter.valid() {
            count += 1;
            iter.next();
        }
        iter.status().map_err(backend)?;
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_successor;

    #[test]
    fn prefix_successor_carries() {
        assert_eq!(prefix_successor(&[1, 2]), Some(vec![1, 3]));
        assert_eq!(prefix_successor(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_successor(&[0xff, 0xff]), None);
    }
}
