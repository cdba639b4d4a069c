//! Traffic for the demo tower (`./scripts/run-tower`), so that its metrics and the dashboard have
//! something to show: users registering, appointments arriving and being read, a few bad
//! requests, a block every few seconds, and now and then a breach (a revoked commitment sent to
//! the node and mined), one in three with a penalty too cheap for the node's relay fee (refused,
//! then sent again at every block).
//!
//! ```sh
//! cargo run -p teos-tests --example demo_traffic -- <public API url> <node RPC url> <cookie> [seconds]
//! # with run-tower's defaults:
//! cargo run -p teos-tests --example demo_traffic -- http://127.0.0.1:9814 http://127.0.0.1:18443 \
//!     .tower-demo/bitcoind/regtest/.cookie 300
//! ```

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bitcoin::hashes::Hash;
use bitcoin::{Block, Txid};
use serde_json::json;
use teos_tests::rpc_client::RpcClient;
use teos_tests::tower::TowerUser;
use teos_tests::wallet::{anyone_can_spend_address, commitment_tx, penalty_tx, Utxo};
use teosd::protocol::Locator;

/// The coinbase of the block at `height`, as a coin (run-tower mines to the anyone-can-spend
/// address).
async fn coinbase_coin(node: &RpcClient, height: u32) -> anyhow::Result<Utxo> {
    let hash: String = node.call("getblockhash", vec![json!(height)]).await?;
    let hex: String = node.call("getblock", vec![json!(hash), json!(0)]).await?;
    let block: Block = bitcoin::consensus::encode::deserialize_hex(&hex).context("decoding a block")?;
    let coinbase = block.txdata.first().context("a block without a coinbase")?;
    Ok(Utxo { coinbase_height: Some(height), ..Utxo::of(coinbase, 0) })
}

async fn mine(node: &RpcClient) -> anyhow::Result<()> {
    let _: Vec<String> =
        node.call("generatetoaddress", vec![json!(1), json!(anyone_can_spend_address().to_string())]).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [api, node_url, cookie, rest @ ..] = args.as_slice() else {
        bail!("usage: demo_traffic <public API url> <node RPC url> <cookie path> [seconds]");
    };
    let seconds: u64 = rest.first().map(|s| s.parse()).transpose().context("seconds")?.unwrap_or(300);
    let node = RpcClient::with_cookie(node_url.clone(), cookie.clone());
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
    let users: Vec<TowerUser> = (1..=6).map(|seed| TowerUser::new(0x60 + seed, api)).collect();
    let started = Instant::now();
    let mut coin_height = 1;
    let mut round = 0u64;
    while started.elapsed() < Duration::from_secs(seconds) {
        round += 1;
        // A user joins every few rounds.
        let joined = ((round / 3) as usize + 1).min(users.len());
        if round % 3 == 1 {
            users[joined - 1].register().await;
        }
        for (i, user) in users.iter().take(joined).enumerate() {
            for k in 0..(1 + (round + i as u64) % 4) {
                let mut locator = [0u8; 16];
                locator[..8].copy_from_slice(&round.to_be_bytes());
                locator[8] = i as u8;
                locator[9] = k as u8;
                let blob = vec![(round % 251) as u8; 120];
                user.try_add_blob(Locator::from_slice(&locator)?, blob).await?;
            }
            // Reads: one found, one not.
            user.get_appointment(&Txid::from_byte_array([round as u8; 32])).await;
        }
        if round.is_multiple_of(5) {
            // A client that knows no better.
            let _ = http.post(format!("{api}/appointments")).body("{}").send().await;
            let _ = http.get(format!("{api}/register")).send().await;
            let _ = http.get(format!("{api}/health")).send().await;
        }
        if round.is_multiple_of(4) {
            let user = &users[(round as usize / 4) % joined];
            let coin = coinbase_coin(&node, coin_height).await?;
            coin_height += 1;
            let dispute = commitment_tx(&coin, 2, 2, round)?;
            let fee = if round.is_multiple_of(12) { 0 } else { 3 };
            let penalty = penalty_tx(&dispute, 0, fee)?;
            user.add_appointment(&dispute.compute_txid(), &penalty).await;
            let _: String = node
                .call("sendrawtransaction", vec![json!(bitcoin::consensus::encode::serialize_hex(&dispute))])
                .await?;
        }
        if round.is_multiple_of(2) {
            mine(&node).await?;
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    println!("{round} rounds of traffic sent");
    Ok(())
}
