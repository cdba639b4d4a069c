//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use bitcoin::{Amount, OutPoint, Transaction};
use teos_tests::regtest::{NodeOptions, RegtestNode, RpcError};
use teos_tests::rpc_client::{ClientError, RpcClient};
use teos_tests::wallet::Utxo;

/// Every test runs within this bound.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs `test` within [`TEST_TIMEOUT`].
pub async fn bounded<F: Future<Output = anyhow::Result<()>>>(test: F) -> anyhow::Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, test)
        .await
        .map_err(|_| anyhow::anyhow!("test timed out after {TEST_TIMEOUT:?}"))?
}

/// A node on a free port and a cookie-authenticated client for it.
pub async fn node() -> anyhow::Result<(RegtestNode, RpcClient)> {
    let node = RegtestNode::start(NodeOptions::default()).await?;
    let client = RpcClient::with_cookie(node.rpc_url(), node.cookie_path());
    Ok((node, client))
}

/// The JSON-RPC error of a call that must fail with one.
pub fn rpc_error<T: std::fmt::Debug>(result: Result<T, ClientError>) -> RpcError {
    match result {
        Err(ClientError::Rpc(error)) => error,
        other => panic!("expected a JSON-RPC error, got {other:?}"),
    }
}

/// Output 0 of the coinbase of `block` (assumed to pay to the anyone-can-spend script).
pub fn coinbase_utxo(block: &bitcoin::Block, height: u32) -> Utxo {
    let coinbase: &Transaction = &block.txdata[0];
    Utxo {
        outpoint: OutPoint { txid: coinbase.compute_txid(), vout: 0 },
        value: coinbase.output[0].value,
        coinbase_height: Some(height),
    }
}

pub fn btc(n: u64) -> Amount {
    Amount::from_sat(n * 100_000_000)
}
