//! Mempool policy, coinbase maturity, reorgs and the commitment → penalty flow, through JSON-RPC
//! and through the [`Bitcoind`] backend (ours, or a real bitcoind with `BITCOIND_EXE`).

mod common;

use bitcoin::consensus::encode::serialize_hex;
use bitcoin::hashes::Hash;
use bitcoin::{Amount, OutPoint, Txid};
use common::{bounded, btc, coinbase_utxo, node, rpc_error};
use serde_json::json;
use teos_tests::backend::Bitcoind;
use teos_tests::rpc_client::RpcClient;
use teos_tests::wallet::{self, Funding, Utxo};

/// Mines `n` blocks over RPC and returns the coinbase outputs, by height (index 0 = height 1).
async fn mine_coins(rpc: &RpcClient, n: u32) -> anyhow::Result<Vec<Utxo>> {
    let start = rpc.get_block_count().await?;
    let hashes = rpc.generate_to_address(n, &wallet::anyone_can_spend_address()).await?;
    let mut coins = Vec::new();
    for (i, hash) in hashes.iter().enumerate() {
        coins.push(coinbase_utxo(&rpc.get_block(hash).await?, start + i as u32 + 1));
    }
    Ok(coins)
}

#[tokio::test]
async fn mempool_rejections_match_bitcoind() -> anyhow::Result<()> {
    bounded(async {
        let (_node, rpc) = node().await?;
        // Tip at 101: the coinbases of heights 1 and 2 are mature for the next block, 3 is not.
        let coins = mine_coins(&rpc, 101).await?;

        let immature = wallet::spend_tx(&[coins[2]], 1, 1)?;
        let error = rpc_error(rpc.send_raw_transaction(&immature).await);
        assert_eq!(error.code, -26);
        assert_eq!(error.message, "bad-txns-premature-spend-of-coinbase, tried to spend coinbase at depth 99");

        let mut missing = wallet::spend_tx(&[coins[0]], 1, 1)?;
        missing.input[0].previous_output = OutPoint { txid: Txid::all_zeros(), vout: 3 };
        let error = rpc_error(rpc.send_raw_transaction(&missing).await);
        assert_eq!((error.code, error.message.as_str()), (-25, "bad-txns-inputs-missingorspent"));

        let mut too_much = wallet::spend_tx(&[coins[0]], 1, 1)?;
        too_much.output[0].value = btc(51);
        let error = rpc_error(rpc.send_raw_transaction(&too_much).await);
        assert_eq!(error.code, -26);
        assert_eq!(error.message, "bad-txns-in-belowout, value in (50.00) < value out (51.00)");

        let mut no_fee = wallet::spend_tx(&[coins[0]], 1, 1)?;
        no_fee.output[0].value = btc(50);
        let error = rpc_error(rpc.send_raw_transaction(&no_fee).await);
        assert_eq!(error.code, -26);
        assert!(error.message.starts_with("min relay fee not met, 0 < "), "{error}");

        let mut dust = wallet::spend_tx(&[coins[0]], 2, 1)?;
        dust.output[1].value = Amount::from_sat(100);
        assert_eq!(rpc_error(rpc.send_raw_transaction(&dust).await).message, "dust");

        let first = wallet::spend_tx(&[coins[0]], 1, 1)?;
        let txid = rpc.send_raw_transaction(&first).await?;
        assert_eq!(rpc.send_raw_transaction(&first).await?, txid, "re-sending is fine");
        let conflict = wallet::spend_tx(&[coins[0]], 2, 5)?;
        let error = rpc_error(rpc.send_raw_transaction(&conflict).await);
        assert_eq!((error.code, error.message.as_str()), (-26, "txn-mempool-conflict"));
        let entry = rpc.call_value("getmempoolentry", vec![json!(txid)]).await?;
        assert_eq!(entry["vsize"], first.vsize());
        assert_eq!(entry["bip125-replaceable"], false);
        assert_eq!(entry["ancestorcount"], 1);

        rpc.generate_to_address(1, &wallet::anyone_can_spend_address()).await?;
        assert!(rpc.get_raw_mempool().await?.is_empty(), "mined transactions leave the mempool");
        let error = rpc_error(rpc.send_raw_transaction(&first).await);
        assert_eq!((error.code, error.message.as_str()), (-27, "Transaction outputs already in utxo set"));
        let error = rpc_error(rpc.send_raw_transaction(&conflict).await);
        assert_eq!(error.code, -25, "its input is now spent in the chain");

        let accept = rpc.call_value("testmempoolaccept", vec![json!([serialize_hex(&conflict)])]).await?;
        assert_eq!(accept[0]["allowed"], false);
        assert_eq!(accept[0]["reject-reason"], "missing-inputs");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn bip125_replacement_of_signalling_transactions() -> anyhow::Result<()> {
    bounded(async {
        let (_node, rpc) = node().await?;
        let coins = mine_coins(&rpc, 101).await?;
        // Commitments signal replaceability through their sequence (0x80 upper byte).
        let original = wallet::commitment_tx(&coins[0], 2, 2, 1)?;
        let original_txid = rpc.send_raw_transaction(&original).await?;
        let entry = rpc.call_value("getmempoolentry", vec![json!(original_txid)]).await?;
        assert_eq!(entry["bip125-replaceable"], true);

        let same_fee = wallet::commitment_tx(&coins[0], 1, 2, 2)?;
        let error = rpc_error(rpc.send_raw_transaction(&same_fee).await);
        assert_eq!(error.code, -26);
        assert!(error.message.starts_with("insufficient fee"), "{error}");

        let replacement = wallet::commitment_tx(&coins[0], 1, 10, 3)?;
        let txid = rpc.send_raw_transaction(&replacement).await?;
        assert_eq!(rpc.get_raw_mempool().await?, vec![txid]);
        Ok(())
    })
    .await
}

#[tokio::test]
async fn mined_conflicts_evict_mempool_transactions() -> anyhow::Result<()> {
    bounded(async {
        let (_node, rpc) = node().await?;
        let coins = mine_coins(&rpc, 101).await?;
        let in_mempool = wallet::spend_tx(&[coins[0]], 1, 1)?;
        let child = wallet::spend_tx(&[Utxo::of(&in_mempool, 0)], 1, 1)?;
        rpc.send_raw_transaction(&in_mempool).await?;
        rpc.send_raw_transaction(&child).await?;
        assert_eq!(rpc.get_raw_mempool().await?.len(), 2);

        let conflict = wallet::spend_tx(&[coins[0]], 2, 3)?;
        let hash = rpc.generate_block(&wallet::anyone_can_spend_address(), std::slice::from_ref(&conflict)).await?;
        let block = rpc.get_block(&hash).await?;
        assert_eq!(block.txdata[1..], [conflict]);
        assert!(rpc.get_raw_mempool().await?.is_empty(), "the conflict and its child are evicted");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn coinbase_needs_100_confirmations() -> anyhow::Result<()> {
    bounded(async {
        let (_node, rpc) = node().await?;
        let coins = mine_coins(&rpc, 99).await?;
        let spend = wallet::commitment_tx(&coins[0], 1, 1, 9)?;
        let error = rpc_error(rpc.send_raw_transaction(&spend).await);
        assert_eq!(error.code, -26);
        assert!(error.message.starts_with("bad-txns-premature-spend-of-coinbase"), "{error}");
        let address = wallet::anyone_can_spend_address();
        let error = rpc_error(rpc.generate_block(&address, std::slice::from_ref(&spend)).await);
        assert_eq!(error.code, -25);
        assert!(error.message.starts_with("TestBlockValidity failed: bad-txns-premature-spend-of-coinbase"), "{error}");
        let out = rpc.call_value("gettxout", vec![json!(coins[0].outpoint.txid), json!(0)]).await?;
        assert_eq!(out["coinbase"], true);
        assert_eq!(out["confirmations"], 99);

        rpc.generate_to_address(1, &address).await?;
        let txid = rpc.send_raw_transaction(&spend).await?;
        assert_eq!(txid, spend.compute_txid());
        Ok(())
    })
    .await
}

#[tokio::test]
async fn invalidateblock_returns_transactions_and_a_new_branch_wins() -> anyhow::Result<()> {
    bounded(async {
        let (_node, rpc) = node().await?;
        let address = wallet::anyone_can_spend_address();
        let coins = mine_coins(&rpc, 101).await?;
        let parent = rpc.get_best_block_hash().await?;
        let commitment = wallet::commitment_tx(&coins[0], 2, 1, 5)?;
        let txid = rpc.send_raw_transaction(&commitment).await?;
        let stale = rpc.generate_to_address(1, &address).await?[0];
        assert!(rpc.get_raw_mempool().await?.is_empty());

        rpc.invalidate_block(&stale).await?;
        assert_eq!(rpc.get_best_block_hash().await?, parent);
        assert_eq!(rpc.get_block_count().await?, 101);
        assert_eq!(rpc.get_raw_mempool().await?, vec![txid], "back to the mempool");
        let header = rpc.get_block_header_info(&stale).await?;
        assert_eq!(header["confirmations"], -1);
        assert_eq!(rpc.get_block(&stale).await?.txdata[1], commitment, "stale blocks stay queryable");
        assert!(rpc.get_block_header_info(&parent).await?.get("nextblockhash").is_none());
        assert!(rpc.get_raw_transaction_info(&txid).await?.get("blockhash").is_none());

        let branch = rpc.generate_to_address(2, &address).await?;
        assert_ne!(branch[0], stale);
        assert_eq!(rpc.get_block(&branch[0]).await?.header.prev_blockhash, parent);
        assert_eq!(rpc.get_best_block_hash().await?, branch[1]);
        let info = rpc.get_raw_transaction_info(&txid).await?;
        assert_eq!(info["blockhash"], json!(branch[0]));
        assert_eq!(info["confirmations"], 2);
        let tips = rpc.call_value("getchaintips", vec![]).await?;
        let stale_tip =
            tips.as_array().and_then(|t| t.iter().find(|t| t["hash"] == json!(stale))).cloned().unwrap_or_default();
        assert_eq!(stale_tip["status"], "invalid");
        assert_eq!(stale_tip["branchlen"], 1);

        // Reconsidered, the stale block has less work: the branch stays.
        rpc.reconsider_block(&stale).await?;
        assert_eq!(rpc.get_best_block_hash().await?, branch[1]);
        // Invalidating the branch makes the reconsidered block the best valid chain.
        rpc.invalidate_block(&branch[0]).await?;
        assert_eq!(rpc.get_best_block_hash().await?, stale);
        assert_eq!(rpc.get_block_header_info(&branch[0]).await?["confirmations"], -1);
        assert_eq!(rpc.get_raw_transaction_info(&txid).await?["blockhash"], json!(stale));
        assert!(rpc.get_raw_mempool().await?.is_empty());
        Ok(())
    })
    .await
}

async fn commitment_then_penalty(bitcoind: &Bitcoind) -> anyhow::Result<()> {
    let mut funding = Funding::new();
    let coin = funding.next_coin(bitcoind).await?;
    let commitment = wallet::commitment_tx(&coin, 2, 2, 0x00ab_cdef_0123)?;
    let penalty = wallet::penalty_tx(&commitment, 1, 2)?;
    assert!(penalty.output[0].value > wallet::p2wsh_dust_limit());
    let commitment_txid = bitcoind.send_raw_transaction(&commitment).await?;
    let penalty_txid = bitcoind.send_raw_transaction(&penalty).await?;
    assert!(bitcoind.mempool_contains(&commitment_txid).await?);
    assert!(bitcoind.mempool_contains(&penalty_txid).await?);
    assert_eq!(bitcoind.tx_confirmations(&penalty_txid).await?, Some(0));
    bitcoind.mine(1).await?;
    assert_eq!(bitcoind.tx_confirmations(&commitment_txid).await?, Some(1));
    assert_eq!(bitcoind.tx_confirmations(&penalty_txid).await?, Some(1));

    // The same, mining exactly the transactions given.
    let coin = funding.next_coin(bitcoind).await?;
    let commitment = wallet::commitment_tx(&coin, 1, 1, 77)?;
    let hash = bitcoind.mine_block_with(std::slice::from_ref(&commitment)).await?;
    assert_eq!(bitcoind.block(&hash).await?.txdata[1], commitment);
    let penalty = wallet::penalty_tx(&commitment, 0, 1)?;
    bitcoind.mine_block_with(std::slice::from_ref(&penalty)).await?;
    assert_eq!(bitcoind.tx_confirmations(&commitment.compute_txid()).await?, Some(2));
    assert_eq!(bitcoind.tx_confirmations(&penalty.compute_txid()).await?, Some(1));
    let info = bitcoind.rpc_client().get_raw_transaction_info(&penalty.compute_txid()).await?;
    assert_eq!(info["confirmations"], 1);

    // A reorg takes the penalty back to the mempool; a new branch confirms it again.
    let (height, tip) = bitcoind.tip().await?;
    bitcoind.invalidate(&tip).await?;
    assert_eq!(bitcoind.tip().await?.0, height - 1);
    assert!(bitcoind.mempool_contains(&penalty.compute_txid()).await?);
    let branch = bitcoind.mine(1).await?;
    assert_ne!(branch[0], tip);
    assert_eq!(bitcoind.tx_confirmations(&penalty.compute_txid()).await?, Some(1));
    Ok(())
}

async fn down_and_back(bitcoind: &Bitcoind) -> anyhow::Result<()> {
    let rpc = bitcoind.rpc_client();
    bitcoind.mine(2).await?;
    let cookie = std::fs::read_to_string(bitcoind.cookie_path())?;
    let port = bitcoind.rpc_port();
    bitcoind.go_down().await?;
    assert!(rpc.get_block_count().await.is_err());
    assert!(tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err());
    bitcoind.come_back().await?;
    assert_eq!(bitcoind.rpc_port(), port);
    assert_ne!(std::fs::read_to_string(bitcoind.cookie_path())?, cookie);
    assert_eq!(rpc.get_block_count().await?, 2);
    assert_eq!(bitcoind.tip().await?.0, 2);
    Ok(())
}

/// Through [`Bitcoind::start`]: our node, or a real bitcoind with `BITCOIND_EXE`.
#[tokio::test]
async fn commitment_then_penalty_through_the_backend() -> anyhow::Result<()> {
    bounded(async { commitment_then_penalty(&Bitcoind::start().await?).await }).await
}

#[tokio::test]
async fn backend_goes_down_and_comes_back() -> anyhow::Result<()> {
    bounded(async { down_and_back(&Bitcoind::start().await?).await }).await
}

/// The child-process path of the backend (what runs with `BITCOIND_EXE`), exercised with our
/// binary standing in for bitcoind: spawned with bitcoind's command line, driven over RPC only,
/// stopped with `stop`, respawned on the same datadir.
#[tokio::test]
async fn the_process_backend_with_our_binary_as_bitcoind() -> anyhow::Result<()> {
    bounded(async {
        let bitcoind = Bitcoind::real(env!("CARGO_BIN_EXE_teos-regtest-node")).await?;
        assert!(bitcoind.is_real());
        down_and_back(&bitcoind).await?;
        commitment_then_penalty(&bitcoind).await?;
        bitcoind.go_down().await?;
        Ok(())
    })
    .await
}
