//! Relay policy set at runtime: a fee spike (the minimum relay fee raised) and a full mempool
//! (its minimum fee rate), with bitcoind's refusals; and blocks, which no relay policy binds,
//! confirming a spend that conflicts with the mempool.

mod common;

use bitcoin::consensus::encode::serialize_hex;
use bitcoin::Transaction;
use common::{bounded, node, rpc_error};
use serde_json::{json, Value};
use teos_tests::backend::Bitcoind;
use teos_tests::regtest::RegtestNode;
use teos_tests::rpc_client::RpcClient;
use teos_tests::wallet::{self, Funding, Utxo};

/// Mines 101 blocks and returns the coinbase outputs of heights 1 to `n` (mature).
async fn mature_coins(node: &RegtestNode, n: usize) -> Vec<Utxo> {
    let hashes = node.mine(101);
    hashes[..n]
        .iter()
        .enumerate()
        .map(|(i, hash)| common::coinbase_utxo(&node.block(hash).expect("mined"), i as u32 + 1))
        .collect()
}

/// The fee `tx` pays, given the coins it spends.
fn fee_of(tx: &Transaction, coins: &[Utxo]) -> u64 {
    let value_in: u64 = coins.iter().map(|c| c.value.to_sat()).sum();
    value_in - tx.output.iter().map(|o| o.value.to_sat()).sum::<u64>()
}

/// bitcoind's fee for `vsize` at `sat_per_kvb`, rounded up.
fn fee_at(sat_per_kvb: u64, vsize: usize) -> u64 {
    (sat_per_kvb * vsize as u64).div_ceil(1000)
}

async fn reject_reason(rpc: &RpcClient, tx: &Transaction) -> anyhow::Result<Value> {
    let result = rpc.call_value("testmempoolaccept", vec![json!([serialize_hex(tx)])]).await?;
    Ok(result[0]["reject-reason"].clone())
}

#[tokio::test]
async fn a_raised_min_relay_fee_refuses_until_lowered() -> anyhow::Result<()> {
    bounded(async {
        let (node, rpc) = node().await?;
        let coins = mature_coins(&node, 2).await;
        let tx = wallet::spend_tx(&coins[..1], 1, 2)?; // 2 sat/vB
        let (fee, vsize) = (fee_of(&tx, &coins[..1]), tx.vsize());
        assert_eq!(fee, 2 * vsize as u64);

        // A fee spike: 5 sat/vB.
        node.set_min_relay_fee(5_000);
        let error = rpc_error(rpc.send_raw_transaction(&tx).await);
        assert_eq!(error.code, -26);
        assert_eq!(error.message, format!("min relay fee not met, {fee} < {}", fee_at(5_000, vsize)));
        assert_eq!(
            node.send_raw_transaction(&tx).map_err(|e| e.message),
            Err(format!("min relay fee not met, {fee} < {}", 5 * vsize))
        );
        assert_eq!(reject_reason(&rpc, &tx).await?, "min relay fee not met");
        let mempool = rpc.call_value("getmempoolinfo", vec![]).await?;
        assert_eq!((&mempool["minrelaytxfee"], &mempool["mempoolminfee"]), (&json!(0.00005), &json!(0.00005)));
        assert_eq!(rpc.call_value("getnetworkinfo", vec![]).await?["relayfee"], json!(0.00005));
        assert!(rpc.get_raw_mempool().await?.is_empty());

        // Blocks are not bound by relay policy.
        let cheap = wallet::spend_tx(&coins[1..], 1, 1)?;
        let hash = node.mine_block_with(std::slice::from_ref(&cheap))?;
        assert_eq!(node.block(&hash).expect("mined").txdata[1], cheap);

        // The spike passes: the very same transaction goes in.
        node.set_min_relay_fee(2_000);
        assert_eq!(rpc.send_raw_transaction(&tx).await?, tx.compute_txid());
        assert_eq!(rpc.get_raw_mempool().await?, vec![tx.compute_txid()]);
        let mempool = rpc.call_value("getmempoolinfo", vec![]).await?;
        assert_eq!(mempool["minrelaytxfee"], json!(0.00002));
        Ok(())
    })
    .await
}

#[tokio::test]
async fn a_full_mempool_refuses_below_its_minimum_fee() -> anyhow::Result<()> {
    bounded(async {
        let (node, rpc) = node().await?;
        let coins = mature_coins(&node, 2).await;
        let tx = wallet::spend_tx(&coins[..1], 1, 2)?; // 2 sat/vB
        let (fee, vsize) = (fee_of(&tx, &coins[..1]), tx.vsize());

        node.set_mempool_min_fee(3_000);
        let error = rpc_error(rpc.send_raw_transaction(&tx).await);
        assert_eq!(error.code, -26);
        assert_eq!(error.message, format!("mempool min fee not met, {fee} < {}", fee_at(3_000, vsize)));
        assert_eq!(reject_reason(&rpc, &tx).await?, "mempool min fee not met");
        let mempool = rpc.call_value("getmempoolinfo", vec![]).await?;
        assert_eq!((&mempool["minrelaytxfee"], &mempool["mempoolminfee"]), (&json!(0.00001), &json!(0.00003)));
        // Checked before the minimum relay fee, as bitcoind does.
        node.set_min_relay_fee(4_000);
        let error = rpc_error(rpc.send_raw_transaction(&tx).await);
        assert_eq!(error.message, format!("mempool min fee not met, {fee} < {}", fee_at(3_000, vsize)));
        node.set_min_relay_fee(1_000);
        // Never below the incremental relay fee (1 sat/vB).
        let mut no_fee = tx.clone();
        no_fee.output[0].value = coins[0].value;
        node.set_mempool_min_fee(1);
        let error = rpc_error(rpc.send_raw_transaction(&no_fee).await);
        assert_eq!(error.message, format!("mempool min fee not met, 0 < {}", fee_at(1_000, no_fee.vsize())));

        // Paying the minimum gets in; so does everything once the mempool has room again.
        node.set_mempool_min_fee(3_000);
        let rich = wallet::spend_tx(&coins[1..], 1, 3)?;
        rpc.send_raw_transaction(&rich).await?;
        node.set_mempool_min_fee(0);
        assert_eq!(rpc.send_raw_transaction(&tx).await?, tx.compute_txid());
        let mut mempool = rpc.get_raw_mempool().await?;
        mempool.sort();
        let mut expected = vec![tx.compute_txid(), rich.compute_txid()];
        expected.sort();
        assert_eq!(mempool, expected);
        assert_eq!(rpc.call_value("getmempoolinfo", vec![]).await?["mempoolminfee"], json!(0.00001));
        Ok(())
    })
    .await
}

/// Through the backend; skipped against a real bitcoind, which has no such controls.
#[tokio::test]
async fn fee_controls_through_the_backend() -> anyhow::Result<()> {
    bounded(async {
        let bitcoind = Bitcoind::start().await?;
        if let Err(error) = bitcoind.set_min_relay_fee(10_000).await {
            assert!(bitcoind.is_real() && error.needs_regtest_node(), "{error}");
            assert!(bitcoind.set_mempool_min_fee(10_000).await.is_err_and(|e| e.needs_regtest_node()));
            eprintln!("skipped: {error}");
            return Ok(());
        }
        let mut funding = Funding::new();
        let coin = funding.next_coin(&bitcoind).await?;
        let tx = wallet::spend_tx(&[coin], 1, 5)?;
        let error = bitcoind.send_raw_transaction(&tx).await.expect_err("below 10 sat/vB");
        let error = error.rpc_error().expect("an RPC error");
        assert_eq!(error.code, -26);
        assert!(error.message.starts_with("min relay fee not met, "), "{error}");
        bitcoind.set_min_relay_fee(1_000).await?;
        bitcoind.set_mempool_min_fee(6_000).await?;
        let error = bitcoind.send_raw_transaction(&tx).await.expect_err("below 6 sat/vB");
        assert!(error.rpc_error().is_some_and(|e| e.message.starts_with("mempool min fee not met, ")), "{error}");
        bitcoind.set_mempool_min_fee(0).await?;
        bitcoind.send_raw_transaction(&tx).await?;
        assert!(bitcoind.mempool_contains(&tx.compute_txid()).await?);

        // The real-bitcoind path refuses, as it does with `BITCOIND_EXE` (here our binary stands in).
        let process = Bitcoind::real(env!("CARGO_BIN_EXE_teos-regtest-node")).await?;
        for refused in [process.set_min_relay_fee(10_000).await, process.set_mempool_min_fee(10_000).await] {
            let error = refused.expect_err("no such control over a process's RPC");
            assert!(error.needs_regtest_node(), "{error}");
            assert!(error.to_string().ends_with("needs the in-process regtest node"), "{error}");
        }
        process.go_down().await?;
        Ok(())
    })
    .await
}

/// A block confirming a spend that conflicts with a mempool transaction evicts that transaction
/// and its descendants, as bitcoind does when the block connects (our node, or a real bitcoind
/// with `BITCOIND_EXE`).
#[tokio::test]
async fn a_mined_competing_spend_evicts_the_mempool_transaction() -> anyhow::Result<()> {
    bounded(async {
        let bitcoind = Bitcoind::start().await?;
        let mut funding = Funding::new();
        let coin = funding.next_coin(&bitcoind).await?;
        let in_mempool = wallet::spend_tx(&[coin], 1, 10)?;
        let child = wallet::spend_tx(&[Utxo::of(&in_mempool, 0)], 1, 10)?;
        bitcoind.send_raw_transaction(&in_mempool).await?;
        bitcoind.send_raw_transaction(&child).await?;

        // Lower fee, no replacement signalled: the mempool would refuse it, a block takes it.
        let competing = wallet::spend_tx(&[coin], 2, 1)?;
        let refused = bitcoind.send_raw_transaction(&competing).await.expect_err("a conflict");
        assert_eq!(refused.rpc_error().map(|e| (e.code, e.message.as_str())), Some((-26, "txn-mempool-conflict")));
        let hash = bitcoind.mine_block_with(std::slice::from_ref(&competing)).await?;
        assert_eq!(&bitcoind.block(&hash).await?.txdata[1..], std::slice::from_ref(&competing));
        assert_eq!(bitcoind.tx_confirmations(&competing.compute_txid()).await?, Some(1));
        for evicted in [&in_mempool, &child] {
            assert!(!bitcoind.mempool_contains(&evicted.compute_txid()).await?);
            assert_eq!(bitcoind.tx_confirmations(&evicted.compute_txid()).await?, None);
        }
        // Gone for good: its input is spent in the chain.
        let error = bitcoind.send_raw_transaction(&in_mempool).await.expect_err("spent");
        assert_eq!(error.rpc_error().map(|e| e.code), Some(-25));
        Ok(())
    })
    .await
}
