//! bitcoind as the tower's chain backend: [`BitcoindSource`] reads blocks (from the ZMQ
//! `rawblock` feed when one was offered, else `getblock`) and [`BitcoindBroadcaster`] sends
//! penalties, classifying every `sendrawtransaction` answer.

use std::sync::Arc;

use async_trait::async_trait;
use bitcoin::{BlockHash, Transaction, Txid};

use super::rpc::{BitcoindRpc, RpcError};
use super::zmq::OfferedBlocks;
use crate::chain::{BlockSource, BroadcastOutcome, Broadcaster, ChainInfo, FetchedBlock, HeaderInfo, SourceError};

/// bitcoind's code for an unknown block or transaction.
const RPC_INVALID_ADDRESS_OR_KEY: i64 = -5;
/// bitcoind's code for "already in the chain" (`sendrawtransaction`).
const RPC_VERIFY_ALREADY_IN_CHAIN: i64 = -27;
/// bitcoind's code for a transaction refused by policy (`sendrawtransaction`).
const RPC_VERIFY_REJECTED: i64 = -26;

fn source_error(e: RpcError) -> SourceError {
    match e {
        e if e.is_transient() => SourceError::Unreachable(e.to_string()),
        RpcError::Rpc { code: RPC_INVALID_ADDRESS_OR_KEY, message } => SourceError::NotFound(message),
        other => SourceError::Failed(other.to_string()),
    }
}

/// Blocks and headers from bitcoind.
#[derive(Debug, Clone)]
pub struct BitcoindSource {
    rpc: Arc<BitcoindRpc>,
    offered: Arc<OfferedBlocks>,
}

impl BitcoindSource {
    /// A source over `rpc`, using the blocks the ZMQ `rawblock` subscriber leaves in `offered`.
    pub fn new(rpc: Arc<BitcoindRpc>, offered: Arc<OfferedBlocks>) -> Self {
        BitcoindSource { rpc, offered }
    }

    /// The block `hash` if it came whole over ZMQ (the follower checks it like any other).
    fn offered_block(&self, hash: &BlockHash) -> Option<bitcoin::Block> {
        let bytes = self.offered.take(hash)?;
        match bitcoin::consensus::deserialize(&bytes) {
            Ok(block) => Some(block),
            Err(error) => {
                tracing::warn!(%hash, %error, "block from ZMQ rawblock does not decode; fetching it over RPC");
                None
            }
        }
    }
}

#[async_trait]
impl BlockSource for BitcoindSource {
    async fn chain_info(&self) -> Result<ChainInfo, SourceError> {
        let info = self.rpc.blockchain_info().await.map_err(source_error)?;
        Ok(ChainInfo { chain: info.chain, height: info.blocks })
    }

    async fn best_block_hash(&self) -> Result<BlockHash, SourceError> {
        self.rpc.best_block_hash().await.map_err(source_error)
    }

    async fn header(&self, hash: &BlockHash) -> Result<HeaderInfo, SourceError> {
        let header = self.rpc.header_info(hash).await.map_err(source_error)?;
        Ok(HeaderInfo { hash: header.hash, height: header.height, prev: header.previousblockhash })
    }

    async fn block(&self, hash: &BlockHash) -> Result<FetchedBlock, SourceError> {
        if let Some(block) = self.offered_block(hash) {
            return Ok(FetchedBlock { block, origin: "zmq" });
        }
        match self.rpc.block(hash).await {
            Ok(block) => Ok(FetchedBlock { block, origin: "rpc" }),
            Err(RpcError::Rpc { code: -1, message }) if message.contains("pruned") => Err(SourceError::Pruned(*hash)),
            Err(e) => Err(source_error(e)),
        }
    }

    async fn mempool_txids(&self) -> Result<Vec<Txid>, SourceError> {
        self.rpc.mempool_txids().await.map_err(source_error)
    }

    async fn mempool_transaction(&self, txid: &Txid) -> Result<Option<Transaction>, SourceError> {
        match self.rpc.transaction(txid).await {
            Ok(tx) => Ok(Some(tx)),
            Err(RpcError::Rpc { code: RPC_INVALID_ADDRESS_OR_KEY, .. }) => Ok(None),
            Err(e) => Err(source_error(e)),
        }
    }
}

/// Sends penalties through bitcoind's `sendrawtransaction`.
#[derive(Debug, Clone)]
pub struct BitcoindBroadcaster {
    rpc: Arc<BitcoindRpc>,
    runtime: tokio::runtime::Handle,
}

impl BitcoindBroadcaster {
    /// A broadcaster over `rpc`, whose calls run on `runtime` (the caller blocks, off it).
    pub fn new(rpc: Arc<BitcoindRpc>, runtime: tokio::runtime::Handle) -> Self {
        BitcoindBroadcaster { rpc, runtime }
    }
}

/// `sendrawtransaction` calls in flight at once when a block has many penalties.
const BROADCASTS_AT_ONCE: usize = 8;

impl Broadcaster for BitcoindBroadcaster {
    fn broadcast(&self, tx: &Transaction) -> Result<BroadcastOutcome, SourceError> {
        classify(self.runtime.block_on(self.rpc.send_raw_transaction(tx)))
    }

    fn broadcast_all(&self, txs: &[&Transaction]) -> Vec<Result<BroadcastOutcome, SourceError>> {
        use futures_util::stream::{self, StreamExt};
        self.runtime.block_on(
            stream::iter(txs.iter().map(|tx| self.rpc.send_raw_transaction(tx)))
                .buffered(BROADCASTS_AT_ONCE)
                .map(classify)
                .collect(),
        )
    }
}

/// What each `sendrawtransaction` answer means for a penalty (see `docs/architecture.md`). A
/// transport failure is not an outcome: the block is retried.
pub fn classify(result: Result<Txid, RpcError>) -> Result<BroadcastOutcome, SourceError> {
    match result {
        Ok(_) => Ok(BroadcastOutcome::Accepted),
        Err(RpcError::Rpc { code: RPC_VERIFY_ALREADY_IN_CHAIN, .. }) => Ok(BroadcastOutcome::AlreadyConfirmed),
        Err(RpcError::Rpc { code: RPC_VERIFY_REJECTED, message }) if message.contains("already") => {
            Ok(BroadcastOutcome::Accepted)
        }
        Err(e) if e.is_transient() => Err(source_error(e)),
        Err(RpcError::Rpc { code, message }) => Ok(BroadcastOutcome::Rejected { code, message }),
        Err(e) => Err(source_error(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::hashes::Hash;

    fn rpc(code: i64, message: &str) -> Result<Txid, RpcError> {
        Err(RpcError::Rpc { code, message: message.into() })
    }

    #[test]
    fn every_sendrawtransaction_outcome_has_a_consequence() {
        assert_eq!(classify(Ok(Txid::all_zeros())).unwrap(), BroadcastOutcome::Accepted);
        assert_eq!(
            classify(rpc(-27, "Transaction outputs already in utxo set")).unwrap(),
            BroadcastOutcome::AlreadyConfirmed
        );
        assert_eq!(classify(rpc(-26, "txn-already-in-mempool")).unwrap(), BroadcastOutcome::Accepted);
        for (code, message) in [
            (-26, "txn-mempool-conflict"),
            (-25, "bad-txns-inputs-missingorspent"),
            (-22, "TX decode failed"),
            (-1, "anything"),
            (-32603, "internal"),
        ] {
            assert_eq!(
                classify(rpc(code, message)).unwrap(),
                BroadcastOutcome::Rejected { code, message: message.into() }
            );
        }
        // Not outcomes: bitcoind down or warming up (retried), credentials or garbage (surfaced).
        assert!(classify(Err(RpcError::Transport("connection refused".into()))).unwrap_err().is_transient());
        assert!(classify(rpc(-28, "Loading block index")).unwrap_err().is_transient());
        assert!(!classify(Err(RpcError::Unauthorized)).unwrap_err().is_transient());
        assert!(!classify(Err(RpcError::Decode("garbage".into()))).unwrap_err().is_transient());
    }

    #[test]
    fn rpc_failures_map_to_source_errors_by_kind() {
        assert!(source_error(RpcError::Transport("refused".into())).is_transient());
        assert!(source_error(RpcError::Rpc { code: -28, message: "warming up".into() }).is_transient());
        assert!(matches!(
            source_error(RpcError::Rpc { code: -5, message: "Block not found".into() }),
            SourceError::NotFound(_)
        ));
        assert!(matches!(source_error(RpcError::Unauthorized), SourceError::Failed(_)));
    }
}
