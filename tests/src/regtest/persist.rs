//! An append-only log of what changes a node's chain, so that a node restarted on the same
//! datadir (the binary, run by hand) finds its chain again: every stored block, and every
//! `invalidateblock`/`reconsiderblock`. The mempool is not kept (as with bitcoind's
//! `-persistmempool=0`).
//!
//! Each record is a tag byte (`B` block, `I` invalidate, `R` reconsider), a payload length (u32,
//! little endian) and the payload: a consensus-encoded block, or a block hash.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use bitcoin::hashes::Hash;
use bitcoin::{Block, BlockHash};

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Record {
    Block(Block),
    Invalidate(BlockHash),
    Reconsider(BlockHash),
}

impl Record {
    fn encode(&self) -> Vec<u8> {
        let (tag, payload) = match self {
            Record::Block(block) => (b'B', bitcoin::consensus::serialize(block)),
            Record::Invalidate(hash) => (b'I', hash.to_byte_array().to_vec()),
            Record::Reconsider(hash) => (b'R', hash.to_byte_array().to_vec()),
        };
        let mut bytes = Vec::with_capacity(payload.len() + 5);
        bytes.push(tag);
        bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&payload);
        bytes
    }

    fn decode(tag: u8, payload: &[u8]) -> Option<Record> {
        let hash = || BlockHash::from_slice(payload).ok();
        match tag {
            b'B' => bitcoin::consensus::deserialize(payload).ok().map(Record::Block),
            b'I' => hash().map(Record::Invalidate),
            b'R' => hash().map(Record::Reconsider),
            _ => None,
        }
    }
}

#[derive(Debug)]
pub(crate) struct ChainLog {
    path: PathBuf,
    file: File,
}

impl ChainLog {
    /// Opens (creating it if needed) the log at `path`; returns it and the records it holds. A
    /// damaged tail (a crash mid-write) is dropped.
    pub fn open(path: &Path) -> io::Result<(ChainLog, Vec<Record>)> {
        let mut records = Vec::new();
        let mut valid_len = 0u64;
        if path.exists() {
            let mut bytes = Vec::new();
            File::open(path)?.read_to_end(&mut bytes)?;
            let mut rest = bytes.as_slice();
            while rest.len() >= 5 {
                let len = u32::from_le_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
                let Some(record) = rest.get(5..5 + len).and_then(|payload| Record::decode(rest[0], payload)) else {
                    break;
                };
                records.push(record);
                rest = &rest[5 + len..];
                valid_len += 5 + len as u64;
            }
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        file.set_len(valid_len)?;
        let log = ChainLog { path: path.to_path_buf(), file };
        Ok((log, records))
    }

    pub fn append(&mut self, record: &Record) -> io::Result<()> {
        self.file.write_all(&record.encode())?;
        self.file.flush()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::blockdata::constants::genesis_block;
    use bitcoin::Network;

    #[test]
    fn records_round_trip_and_a_torn_tail_is_dropped() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("chain.log");
        let genesis = genesis_block(Network::Regtest);
        let records = vec![
            Record::Block(genesis.clone()),
            Record::Invalidate(genesis.block_hash()),
            Record::Reconsider(genesis.block_hash()),
        ];
        {
            let (mut log, found) = ChainLog::open(&path)?;
            assert!(found.is_empty());
            for record in &records {
                log.append(record)?;
            }
            log.file.write_all(&[b'B', 200, 0, 0, 0, 1, 2])?;
        }
        let (mut log, found) = ChainLog::open(&path)?;
        assert_eq!(found, records);
        log.append(&Record::Invalidate(genesis.block_hash()))?;
        let (_, found) = ChainLog::open(&path)?;
        assert_eq!(found.len(), 4);
        Ok(())
    }
}
