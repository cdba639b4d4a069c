//! A guided tour of the tower on a fresh machine: against the bundled regtest node (or
//! `BITCOIND_EXE`), a Lightning user registers, hands the tower an appointment for a real
//! commitment-shaped transaction, the counterparty cheats, and the tower's penalty reaches the
//! chain. Run it with `./scripts/walkthrough`.

use anyhow::{ensure, Context};
use bitcoin::consensus::encode::serialize_hex;
use teos_tests::backend::Bitcoind;
use teos_tests::tower::{TowerProcess, TowerUser};
use teos_tests::wallet::{commitment_tx, penalty_tx, Funding};
use teosd::protocol::{encrypt_penalty, Locator};

fn step(n: u32, text: &str) {
    println!("\n== {n}. {text}");
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> anyhow::Result<()> {
    step(1, "Starting a regtest bitcoind and mining 101 blocks");
    let bitcoind = Bitcoind::start().await.context("starting bitcoind")?;
    let mut funding = Funding::new();
    funding.mine(&bitcoind, 101).await?;
    println!(
        "bitcoind RPC at {} ({})",
        bitcoind.rpc_url(),
        if bitcoind.is_real() { "real bitcoind" } else { "bundled regtest node" }
    );

    step(2, "Starting teosd against it");
    let dir = tempfile::tempdir()?;
    let mut tower = TowerProcess::start(&bitcoind, &dir.path().join("teos"), &[]);
    let key_line = tower.tail().lines().find(|l| l.contains("tower_id=")).unwrap_or_default().to_string();
    println!("tower ready at {}: {}", tower.api_url, key_line.split("tower key loaded").nth(1).unwrap_or("").trim());

    step(3, "A Lightning user registers (POST /register)");
    let user = TowerUser::new(0x42, &tower.api_url);
    let (status, receipt) = user.register().await;
    ensure!(status == 200, "register failed: {receipt}");
    println!("{receipt:#}");

    step(4, "A channel update: the user revokes a commitment and builds its penalty");
    let coin = funding.next_coin(&bitcoind).await?;
    let commitment = commitment_tx(&coin, 2, 2, 1)?;
    let penalty = penalty_tx(&commitment, 0, 3)?;
    let dispute_txid = commitment.compute_txid();
    println!("revoked commitment txid {dispute_txid}");
    println!("penalty txid            {}", penalty.compute_txid());
    println!("locator                 {}", Locator::from_txid(&dispute_txid));
    println!("encrypted blob          {} bytes", encrypt_penalty(&penalty, &dispute_txid).len());

    step(5, "The user hands the tower the appointment (POST /add_appointment)");
    let (status, receipt) = user.add_appointment(&dispute_txid, &penalty).await;
    ensure!(status == 200, "add_appointment failed: {receipt}");
    println!("{receipt:#}");
    println!("get_appointment: {:#}", user.get_appointment(&dispute_txid).await.1);

    step(6, "The counterparty cheats: the revoked commitment is mined");
    let block = bitcoind.mine_block_with(std::slice::from_ref(&commitment)).await?;
    println!("breach in block {block}");
    println!("tower: {}", tower.wait_for("New tracker added"));
    ensure!(bitcoind.mempool_contains(&penalty.compute_txid()).await?, "penalty not in the mempool");
    println!("the penalty {} is in bitcoind's mempool", penalty.compute_txid());

    step(7, "The next block confirms the penalty");
    funding.mine(&bitcoind, 1).await?;
    println!("tower: {}", tower.wait_for("penalty confirmed"));
    let confirmations = bitcoind.tx_confirmations(&penalty.compute_txid()).await?;
    println!("penalty confirmations: {confirmations:?}");
    let (_, state) = user.get_appointment(&dispute_txid).await;
    println!("get_appointment: {state:#}");
    ensure!(state["appointment"]["penalty_rawtx"] == serialize_hex(&penalty), "unexpected tracker");

    step(8, "Done: the cheater's output went to the user. The tower follows the penalty for 100 blocks.");
    ensure!(tower.stop().success(), "teosd did not stop cleanly");
    Ok(())
}
