//! A bitcoind-compatible regtest node, in process.
//!
//! [`RegtestNode`] serves bitcoind's JSON-RPC interface over HTTP (basic auth with a
//! `__cookie__` cookie file and an optional configured user) and keeps a real regtest chain:
//! consensus-encoded blocks that chain off the real regtest genesis block, with a correct merkle
//! root, proof of work against regtest's target (`bits` 0x207fffff), the BIP34 height in the
//! coinbase, a witness commitment, and a coinbase paying the subsidy (50 BTC, halving every 150
//! blocks) plus fees. A daemon that talks to bitcoind over JSON-RPC cannot tell the difference for
//! the methods implemented here (listed in `rpc.rs`). Replies follow bitcoind 27 (JSON-RPC 1.0
//! framing; HTTP 500 on errors, 404 for an unknown method, 200 for batches; 401 with an empty
//! body on bad credentials).
//!
//! # What is checked, and what is not
//!
//! Transactions entering the mempool or a block are checked as bitcoind 27 does for everything
//! that does not need a script interpreter:
//!
//! * context-free consensus rules (empty inputs/outputs, duplicate inputs, amounts out of range),
//! * standardness (version 1 or 2, size, output script types, dust, push-only script sigs,
//!   at most one `OP_RETURN`),
//! * fees: the minimum relay fee rate (1 sat/vB unless
//!   [`RegtestNode::set_min_relay_fee`] changes it) and, when
//!   [`RegtestNode::set_mempool_min_fee`] makes the mempool behave as full, its minimum fee rate,
//!   with bitcoind's -26 refusals (`min relay fee not met, <fee> < <min>`, `mempool min fee not
//!   met, <fee> < <min>`),
//! * inputs: unspent outputs of the active chain or of mempool transactions, coinbase maturity
//!   (100 confirmations), amounts (outputs not above inputs), absolute lock time (BIP113) and
//!   relative lock times (BIP68),
//! * conflicts with the mempool, with BIP125 opt-in replace-by-fee as in bitcoind 27 (the
//!   replacement must pay more, in rate and in total, than what it evicts).
//!
//! **Scripts and signatures are NOT validated**: any witness or script sig spends any output.
//! Tests must therefore only build transactions that a real bitcoind would accept too; the
//! [`wallet`](crate::wallet) helpers use anyone-can-spend outputs (P2WSH of `OP_TRUE`) for that.
//! Mempool ancestor/descendant limits, package relay and the mempool size limit are not enforced
//! (a full mempool is simulated by its minimum fee rate only: nothing is evicted for room).
//! Blocks are not subject to relay policy: [`RegtestNode::mine_block_with`] (`generateblock`)
//! takes any valid transactions, whatever their fee, and a block spending an output that a
//! mempool transaction spends evicts that transaction (and its descendants) when it connects.
//!
//! # Reorgs
//!
//! `invalidateblock` disconnects a block and its descendants; their non-coinbase transactions go
//! back to the mempool when still valid, as in bitcoind, and the best valid chain becomes active
//! (usually the parent of the invalidated block, on which mining then builds a new branch).
//! Stale blocks stay queryable by hash. `reconsiderblock` clears the invalid flags and switches
//! back to the reconsidered branch when it has more work than the active one.
//!
//! # ZMQ
//!
//! With [`NodeOptions::zmq_hashblock_port`] the node publishes bitcoind's ZMQ `hashblock`,
//! `rawblock` and `rawtx` notifications on one endpoint (and `getzmqnotifications` lists it);
//! see [`zmq`].

mod chain;
mod http;
mod json;
mod mempool;
mod miner;
mod node;
mod params;
mod persist;
mod rpc;
mod state;
mod validation;
pub mod zmq;

pub use node::{NodeError, NodeOptions, RegtestNode};

use std::fmt;

/// Regtest's proof of work limit, in compact form (also the `bits` of every regtest block).
pub const REGTEST_BITS: u32 = 0x207f_ffff;
/// Confirmations a coinbase output needs before it can be spent.
pub const COINBASE_MATURITY: u32 = 100;
/// Regtest halves the block subsidy every 150 blocks.
pub const SUBSIDY_HALVING_INTERVAL: u32 = 150;
/// The `version` that `getnetworkinfo` reports (bitcoind 27.0).
pub const NODE_VERSION: u64 = 270_000;
/// The `subversion` that `getnetworkinfo` reports.
pub const NODE_SUBVERSION: &str = "/Satoshi:27.0.0/";

/// The block subsidy at `height` on regtest.
pub fn block_subsidy(height: u32) -> bitcoin::Amount {
    let halvings = height / SUBSIDY_HALVING_INTERVAL;
    if halvings >= 64 {
        return bitcoin::Amount::ZERO;
    }
    bitcoin::Amount::from_sat((50 * 100_000_000u64) >> halvings)
}

/// An error as bitcoind's JSON-RPC interface returns it: a code and a message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, thiserror::Error)]
pub struct RpcError {
    pub code: i32,
    pub message: String,
}

impl RpcError {
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        RpcError { code, message: message.into() }
    }
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RPC error {}: {}", self.code, self.message)
    }
}

/// bitcoind's RPC error codes (`src/rpc/protocol.h`).
pub mod codes {
    pub const RPC_INVALID_REQUEST: i32 = -32600;
    pub const RPC_METHOD_NOT_FOUND: i32 = -32601;
    pub const RPC_PARSE_ERROR: i32 = -32700;
    pub const RPC_MISC_ERROR: i32 = -1;
    pub const RPC_TYPE_ERROR: i32 = -3;
    pub const RPC_INVALID_ADDRESS_OR_KEY: i32 = -5;
    pub const RPC_INVALID_PARAMETER: i32 = -8;
    pub const RPC_DESERIALIZATION_ERROR: i32 = -22;
    pub const RPC_VERIFY_ERROR: i32 = -25;
    pub const RPC_VERIFY_REJECTED: i32 = -26;
    pub const RPC_VERIFY_ALREADY_IN_CHAIN: i32 = -27;
    pub const RPC_IN_WARMUP: i32 = -28;
    pub const RPC_TRANSACTION_ERROR: i32 = RPC_VERIFY_ERROR;
    pub const RPC_TRANSACTION_REJECTED: i32 = RPC_VERIFY_REJECTED;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subsidy_halves_every_150_blocks() {
        let btc = |sats: u64| bitcoin::Amount::from_sat(sats * 100_000_000);
        assert_eq!(block_subsidy(0), btc(50));
        assert_eq!(block_subsidy(149), btc(50));
        assert_eq!(block_subsidy(150), btc(25));
        assert_eq!(block_subsidy(300), bitcoin::Amount::from_sat(1_250_000_000));
        assert_eq!(block_subsidy(150 * 64), bitcoin::Amount::ZERO);
    }
}
