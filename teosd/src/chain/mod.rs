//! The chain seam. The tower reads the chain through a [`BlockSource`] and sends transactions
//! through a [`Broadcaster`]; bitcoind implements both (in the `bitcoind` module), tests implement
//! them in memory. The [`follower::ChainFollower`] walks the best chain and shows every block to
//! the domain's [`ChainListener`]s (Watcher, Responder, Gatekeeper, in that order), which add
//! their writes to the block's [`BlockBatch`]; the follower commits it with the new tip.
//!
//! What one block's batch holds (and so what a crash before its commit replays, whole): new
//! trackers and the appointments dropped because their penalty was invalid (Watcher);
//! confirmations, rebroadcast results, completed trackers and given-up penalties (Responder);
//! slot refunds and expired users (Gatekeeper); the block's record, its `recent_blocks` record,
//! the records leaving their windows, and the tip (follower). Broadcasts happen before the commit:
//! a replay sends the same penalties again, which bitcoind answers as already known.

mod block;
mod check;
pub mod follower;
pub mod mempool;
mod status;

use async_trait::async_trait;
use bitcoin::{Block, BlockHash, Transaction, Txid};

pub use block::{BlockBatch, ConnectedBlock};
pub use follower::ChainFollower;
pub use status::ChainStatus;

use crate::store::StoreError;
use crate::task::TaskFailed;
use follower::BLOCKS_KEPT;

/// Why following the chain stopped.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// The block source or the broadcaster failed.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// bitcoind serves another network.
    #[error("bitcoind is running on {found} but teosd is set to run on {expected}")]
    WrongNetwork {
        /// bitcoind's chain.
        found: String,
        /// Ours.
        expected: String,
    },
    /// A block failed validation.
    #[error("block {hash} is invalid: {reason}")]
    InvalidBlock {
        /// The block.
        hash: BlockHash,
        /// What was wrong.
        reason: String,
    },
    /// The fork point is older than the blocks the tower remembers.
    #[error("reorg deeper than {BLOCKS_KEPT} blocks: cannot find the fork point")]
    ReorgTooDeep,
    /// A blocking task failed.
    #[error(transparent)]
    Task(#[from] TaskFailed),
}

impl ChainError {
    /// Whether the chain source was unreachable (retry later; nothing was decided).
    pub fn is_transient(&self) -> bool {
        matches!(self, ChainError::Source(e) if e.is_transient())
    }
}

/// A failure of the chain backend.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// No answer (down, restarting, warming up): retry later; nothing was decided.
    #[error("bitcoind unreachable: {0}")]
    Unreachable(String),
    /// The backend does not know the block or transaction asked for.
    #[error("not found: {0}")]
    NotFound(String),
    /// The block was pruned away.
    #[error("bitcoind no longer has block {0} (pruned): the tower fell too far behind")]
    Pruned(BlockHash),
    /// Any other failure (refused credentials, an answer that does not decode, ...).
    #[error("{0}")]
    Failed(String),
}

impl SourceError {
    /// Whether retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, SourceError::Unreachable(_))
    }
}

/// What the backend says about the chain it follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainInfo {
    /// The chain's name as bitcoind spells it (`main`, `test`, `testnet4`, `signet`, `regtest`).
    pub chain: String,
    /// Height of its best block.
    pub height: u32,
}

/// A header on the backend's best chain or a branch of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderInfo {
    /// The block's hash.
    pub hash: BlockHash,
    /// Its height.
    pub height: u32,
    /// Its parent (absent for genesis).
    pub prev: Option<BlockHash>,
}

/// A block as the source delivered it.
#[derive(Debug, Clone)]
pub struct FetchedBlock {
    /// The block (not yet checked: the follower checks it against its header).
    pub block: Block,
    /// How it came (`rpc`, `zmq`, ...), for the `block connected` log line.
    pub origin: &'static str,
}

/// Where the chain is read from. Every call may fail with [`SourceError::Unreachable`], after
/// which the follower retries the whole round later.
#[async_trait]
pub trait BlockSource: Send + Sync + std::fmt::Debug {
    /// Which chain the backend follows, and how far.
    async fn chain_info(&self) -> Result<ChainInfo, SourceError>;
    /// The hash of the best block.
    async fn best_block_hash(&self) -> Result<BlockHash, SourceError>;
    /// The header of `hash`.
    async fn header(&self, hash: &BlockHash) -> Result<HeaderInfo, SourceError>;
    /// The block `hash` ([`SourceError::NotFound`] if unknown, [`SourceError::Pruned`] if gone).
    async fn block(&self, hash: &BlockHash) -> Result<FetchedBlock, SourceError>;

    /// The ids of the unconfirmed transactions the source holds (its mempool).
    async fn mempool_txids(&self) -> Result<Vec<Txid>, SourceError>;

    /// The unconfirmed transaction `txid`, if the source still holds it.
    async fn mempool_transaction(&self, txid: &Txid) -> Result<Option<Transaction>, SourceError>;
}

/// What the backend did with a transaction it was asked to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BroadcastOutcome {
    /// In the mempool (now or already).
    Accepted,
    /// Already in the chain.
    AlreadyConfirmed,
    /// Refused (missing or spent inputs, policy such as the fee, a decode failure, anything
    /// else): the Responder keeps the tracker and tries again later.
    Rejected {
        /// The backend's code (bitcoind's RPC error code).
        code: i64,
        /// Its message.
        message: String,
    },
}

impl BroadcastOutcome {
    /// Why the backend refused the transaction, as a label from a fixed set
    /// ([`crate::metrics::REFUSAL_REASONS`]), by bitcoind's code: -25 (an input missing or
    /// spent), -26 (policy: the fee, a full mempool, a conflict), -22 (it does not decode),
    /// anything else. `None` if it was not refused.
    pub fn refusal_reason(&self) -> Option<&'static str> {
        match self {
            BroadcastOutcome::Rejected { code: -25, .. } => Some("inputs_missing_or_spent"),
            BroadcastOutcome::Rejected { code: -26, .. } => Some("policy"),
            BroadcastOutcome::Rejected { code: -22, .. } => Some("decode"),
            BroadcastOutcome::Rejected { .. } => Some("other"),
            _ => None,
        }
    }
}

/// Sends transactions. Blocking: called from the domain's block pass, which runs on a blocking
/// thread. An `Err` means the backend could not be asked (see [`SourceError::is_transient`]): the
/// block is then retried (what is not committed yet), so no broadcast is lost.
pub trait Broadcaster: Send + Sync + std::fmt::Debug {
    /// Sends `tx` and classifies the answer.
    fn broadcast(&self, tx: &Transaction) -> Result<BroadcastOutcome, SourceError>;

    /// Sends every one of `txs` (some at once, at the implementation's discretion) and returns
    /// their answers in the same order.
    fn broadcast_all(&self, txs: &[&Transaction]) -> Vec<Result<BroadcastOutcome, SourceError>> {
        txs.iter().map(|tx| self.broadcast(tx)).collect()
    }
}

/// A recent block a listener wants to see again, with what it saw there before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Revisit {
    /// The block's height.
    pub height: u32,
    /// The block.
    pub hash: BlockHash,
}

/// A part of the domain that follows the chain block by block (the shape of LDK's
/// `chain::Listen`). Calls are blocking and come from the follower, one at a time, in chain order;
/// each adds its writes to the batch, which the follower commits (or drops, if any call fails,
/// and replays the block later).
pub trait ChainListener: Send + Sync + std::fmt::Debug {
    /// `block` extends the chain.
    fn block_connected(&self, block: &ConnectedBlock, batch: &mut BlockBatch<'_>) -> Result<(), ChainError>;

    /// The block at `height` left the chain (the tip first, then its parent, ...).
    fn block_disconnected(&self, height: u32, batch: &mut BlockBatch<'_>) -> Result<(), ChainError>;

    /// Recent blocks this listener wants shown again (appointments that arrived after their
    /// dispute was mined), oldest first, at most `limit`.
    fn blocks_to_revisit(&self, _limit: usize) -> Result<Vec<Revisit>, ChainError> {
        Ok(Vec::new())
    }

    /// Of these unconfirmed transactions (new in the source's mempool), the ones this listener
    /// wants to see whole.
    fn mempool_interest(&self, _txids: &[Txid]) -> Result<Vec<Txid>, ChainError> {
        Ok(Vec::new())
    }

    /// Unconfirmed transactions it asked for. A listener may act at once (send a penalty), but
    /// writes nothing: blocks stay the source of truth, and a transaction seen here may never be
    /// mined.
    fn mempool_transactions(&self, _txs: &[Transaction]) -> Result<(), ChainError> {
        Ok(())
    }

    /// One of them again: `block` is `None` if it left the chain or the source no longer has it.
    /// `tip` is the height of the chain's tip now.
    fn revisit(
        &self,
        _revisit: Revisit,
        _block: Option<&ConnectedBlock>,
        _tip: u32,
        _batch: &mut BlockBatch<'_>,
    ) -> Result<(), ChainError> {
        Ok(())
    }
}
