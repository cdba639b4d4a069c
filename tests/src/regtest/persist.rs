//! An append-only log of the blocks a node stores, so that a node restarted on the same datadir
//! (the binary, run by hand) finds its chain again. Each record is the block's consensus
//! encoding prefixed by its length (u32, little endian).
//!
//! Only blocks are kept: `invalidateblock` marks and the mempool are not persisted.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use bitcoin::Block;

#[derive(Debug)]
pub(crate) struct BlockLog {
    path: PathBuf,
    file: File,
}

impl BlockLog {
    /// Opens (creating it if needed) the log at `path`; returns it and the blocks it holds.
    /// A truncated last record (a crash mid-write) is dropped.
    pub fn open(path: &Path) -> io::Result<(BlockLog, Vec<Block>)> {
        let mut blocks = Vec::new();
        let mut valid_len = 0u64;
        if path.exists() {
            let mut bytes = Vec::new();
            File::open(path)?.read_to_end(&mut bytes)?;
            let mut rest = bytes.as_slice();
            while rest.len() >= 4 {
                let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                let Some(record) = rest.get(4..4 + len) else {
                    break;
                };
                match bitcoin::consensus::deserialize::<Block>(record) {
                    Ok(block) => blocks.push(block),
                    Err(_) => break,
                }
                rest = &rest[4 + len..];
                valid_len += 4 + len as u64;
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        file.set_len(valid_len)?;
        Ok((
            BlockLog {
                path: path.to_path_buf(),
                file,
            },
            blocks,
        ))
    }

    pub fn append(&mut self, block: &Block) -> io::Result<()> {
        let bytes = bitcoin::consensus::serialize(block);
        let mut record = Vec::with_capacity(bytes.len() + 4);
        record.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        record.extend_from_slice(&bytes);
        self.file.write_all(&record)?;
        self.file.flush()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}
