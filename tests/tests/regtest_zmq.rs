//! The regtest node's ZMQ publisher (bitcoind's `-zmqpubhashblock`, `-zmqpubrawblock` and
//! `-zmqpubrawtx` on one endpoint): bitcoind's message layout and sequence numbers, what is
//! announced in reorgs, going down and coming back with the node, the binary's flag; and
//! teosd's subscriber against it.

mod common;

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bitcoin::consensus::encode::{deserialize, serialize};
use bitcoin::hashes::Hash;
use bitcoin::{Block, BlockHash, Transaction, Txid};
use common::bounded;
use serde_json::json;
use teos_tests::regtest::{NodeOptions, RegtestNode};
use teos_tests::rpc_client::RpcClient;
use teos_tests::wallet;
use teosd::bitcoind::zmq::Feed;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use zeromq::{Socket, SocketRecv, SubSocket};

async fn zmq_node() -> anyhow::Result<RegtestNode> {
    Ok(RegtestNode::start(NodeOptions { zmq_hashblock_port: Some(0), ..NodeOptions::default() }).await?)
}

/// A subscriber to `hashblock`, returned once the node has its subscription (from then on it
/// hears every notification).
async fn subscriber(node: &RegtestNode) -> anyhow::Result<SubSocket> {
    subscriber_to(node, "hashblock").await
}

/// A subscriber to the topics starting with `prefix`, once the node has its subscription.
async fn subscriber_to(node: &RegtestNode, prefix: &str) -> anyhow::Result<SubSocket> {
    let before = node.zmq_subscriptions();
    let mut socket = SubSocket::new();
    socket.connect(&node.zmq_hashblock_endpoint().expect("ZMQ on")).await?;
    socket.subscribe(prefix).await?;
    node.wait_for_zmq_subscriptions(before + 1).await;
    Ok(socket)
}

/// The next message: its topic, its body and its sequence (bitcoind's three parts).
async fn next_message(socket: &mut SubSocket) -> anyhow::Result<(String, Vec<u8>, u32)> {
    let message = socket.recv().await?;
    let parts: Vec<&[u8]> = message.iter().map(|p| p.as_ref()).collect();
    let [topic, body, sequence] = parts[..] else {
        anyhow::bail!("{} parts", parts.len());
    };
    let sequence = u32::from_le_bytes(sequence.try_into()?);
    Ok((String::from_utf8(topic.to_vec())?, body.to_vec(), sequence))
}

/// The next message, a `rawtx`: `[b"rawtx", consensus-encoded transaction, sequence]`.
async fn next_rawtx(socket: &mut SubSocket) -> anyhow::Result<(Transaction, u32)> {
    let (topic, body, sequence) = next_message(socket).await?;
    anyhow::ensure!(topic == "rawtx", "topic {topic}");
    let tx: Transaction = deserialize(&body)?;
    anyhow::ensure!(serialize(&tx) == body, "witnesses and all");
    Ok((tx, sequence))
}

/// The next `n` `rawtx` messages: their txids, and the first sequence after checking that they
/// follow each other.
async fn next_rawtxs(socket: &mut SubSocket, n: usize) -> anyhow::Result<(Vec<Txid>, u32)> {
    let mut txids = Vec::new();
    let mut first = None;
    for i in 0..n {
        let (tx, sequence) = next_rawtx(socket).await?;
        let first = *first.get_or_insert(sequence);
        anyhow::ensure!(sequence == first + i as u32, "sequence {sequence} after {first} + {i}");
        txids.push(tx.compute_txid());
    }
    Ok((txids, first.unwrap_or_default()))
}

fn txids(block: &Block) -> Vec<Txid> {
    block.txdata.iter().map(Transaction::compute_txid).collect()
}

/// Mines 101 blocks and returns the (mature) coinbase outputs of heights 1 to 3.
fn mature_coins(node: &RegtestNode) -> Vec<wallet::Utxo> {
    let hashes = node.mine(101);
    (0..3).map(|i| common::coinbase_utxo(&node.block(&hashes[i]).expect("mined"), i as u32 + 1)).collect()
}

/// The next notification, checked against bitcoind's layout: `[b"hashblock", hash in display
/// order, sequence as 4 little-endian bytes]`.
async fn next(socket: &mut SubSocket) -> anyhow::Result<(BlockHash, u32)> {
    let message = socket.recv().await?;
    let parts: Vec<&[u8]> = message.iter().map(|p| p.as_ref()).collect();
    anyhow::ensure!(parts.len() == 3, "{} parts", parts.len());
    anyhow::ensure!(parts[0] == b"hashblock", "topic {:?}", parts[0]);
    anyhow::ensure!(parts[1].len() == 32 && parts[2].len() == 4, "sizes {} and {}", parts[1].len(), parts[2].len());
    let hash: BlockHash = hex::encode(parts[1]).parse()?;
    Ok((hash, u32::from_le_bytes(parts[2].try_into()?)))
}

#[tokio::test]
async fn publishes_every_new_tip_in_bitcoinds_layout() -> anyhow::Result<()> {
    bounded(async {
        let node = zmq_node().await?;
        let endpoint = node.zmq_hashblock_endpoint().expect("ZMQ on");
        assert!(endpoint.starts_with("tcp://127.0.0.1:"), "{endpoint}");
        let rpc = RpcClient::with_cookie(node.rpc_url(), node.cookie_path());
        let notifications = rpc.call_value("getzmqnotifications", vec![]).await?;
        assert_eq!(
            notifications,
            json!([
                { "type": "pubhashblock", "address": endpoint, "hwm": 1000 },
                { "type": "pubrawblock", "address": endpoint, "hwm": 1000 },
                { "type": "pubrawtx", "address": endpoint, "hwm": 1000 },
            ])
        );

        node.mine(1); // sequence 0, heard by nobody
        let mut socket = subscriber(&node).await?;
        let mined = node.mine(3);
        for (i, hash) in mined.iter().enumerate() {
            assert_eq!(next(&mut socket).await?, (*hash, 1 + i as u32));
        }
        let generated = node.mine_block_with(&[])?;
        assert_eq!(next(&mut socket).await?, (generated, 4));
        let over_rpc = rpc.generate_to_address(1, &wallet::anyone_can_spend_address()).await?;
        assert_eq!(next(&mut socket).await?, (over_rpc[0], 5));

        let plain = RegtestNode::start(NodeOptions::default()).await?;
        assert_eq!(plain.zmq_hashblock_endpoint(), None);
        let rpc = RpcClient::with_cookie(plain.rpc_url(), plain.cookie_path());
        assert_eq!(rpc.call_value("getzmqnotifications", vec![]).await?, json!([]));
        Ok(())
    })
    .await
}

#[tokio::test]
async fn reorgs_announce_what_bitcoind_announces() -> anyhow::Result<()> {
    bounded(async {
        let node = zmq_node().await?;
        let mut socket = subscriber(&node).await?;
        let a = node.mine(3);
        for hash in &a {
            assert_eq!(next(&mut socket).await?.0, *hash);
        }
        // Disconnecting announces nothing: the next message is the new block.
        node.invalidate(&a[1])?;
        let b = node.mine(1)[0];
        assert_eq!(next(&mut socket).await?, (b, 3));
        // Back to the longer branch (a1, a2 over b): a1 only catches up with b's work, a2 is
        // the first block past it, and the only one announced.
        node.reconsider(&a[1])?;
        assert_eq!(node.tip().1, a[2]);
        assert_eq!(next(&mut socket).await?, (a[2], 4));
        let c = node.mine(1)[0];
        assert_eq!(next(&mut socket).await?, (c, 5));
        Ok(())
    })
    .await
}

#[tokio::test]
async fn rawtx_for_mempool_acceptances_and_every_transaction_of_a_block() -> anyhow::Result<()> {
    bounded(async {
        let node = zmq_node().await?;
        let rpc = RpcClient::with_cookie(node.rpc_url(), node.cookie_path());
        // 101 coinbases announced before anyone listens: rawtx sequences 0 to 100.
        let coins = mature_coins(&node);
        let mut socket = subscriber_to(&node, "rawtx").await?;

        let tx = wallet::spend_tx(&coins[..1], 1, 2)?;
        node.send_raw_transaction(&tx)?;
        assert_eq!(next_rawtx(&mut socket).await?, (tx.clone(), 101));
        // Already in the mempool, or refused: nothing to announce.
        node.send_raw_transaction(&tx)?;
        let mut cheap = wallet::spend_tx(&coins[1..2], 1, 1)?;
        cheap.output[0].value = coins[1].value;
        assert!(rpc.send_raw_transaction(&cheap).await.is_err());
        let over_rpc = wallet::spend_tx(&coins[1..2], 1, 3)?;
        rpc.send_raw_transaction(&over_rpc).await?;
        assert_eq!(next_rawtx(&mut socket).await?, (over_rpc.clone(), 102));

        // A block: every transaction, coinbase first, in block order, mempool or not.
        let hash = node.mine(1)[0];
        let block = node.block(&hash).expect("mined");
        assert_eq!(block.txdata.len(), 3);
        assert_eq!(next_rawtxs(&mut socket, 3).await?, (txids(&block), 103));
        let never_in_mempool = wallet::spend_tx(&coins[2..], 1, 1)?;
        let hash = node.mine_block_with(std::slice::from_ref(&never_in_mempool))?;
        let block = node.block(&hash).expect("mined");
        assert_eq!(block.txdata[1], never_in_mempool);
        assert_eq!(next_rawtxs(&mut socket, 2).await?, (txids(&block), 106));
        // Only rawtx reached this subscriber: the next message is the next transaction.
        let child = wallet::spend_tx(&[wallet::Utxo::of(&never_in_mempool, 0)], 1, 2)?;
        rpc.send_raw_transaction(&child).await?;
        assert_eq!(next_rawtx(&mut socket).await?, (child, 108));
        Ok(())
    })
    .await
}

#[tokio::test]
async fn a_subscriber_to_every_topic_hears_a_blocks_transactions_then_the_block() -> anyhow::Result<()> {
    bounded(async {
        let node = zmq_node().await?;
        let coins = mature_coins(&node);
        // The empty subscription covers every topic and counts once.
        let mut socket = subscriber_to(&node, "").await?;
        let before = node.zmq_subscriptions();
        let mut raw = subscriber_to(&node, "raw").await?;
        assert_eq!(node.zmq_subscriptions(), before + 1);

        let tx = wallet::spend_tx(&coins[..1], 1, 2)?;
        node.send_raw_transaction(&tx)?;
        let hash = node.mine(1)[0];
        let block = node.block(&hash).expect("mined");
        let raw_tx = |tx: &Transaction| ("rawtx".to_string(), serialize(tx));
        let mut hash_bytes = hash.to_byte_array();
        hash_bytes.reverse();
        // Per-topic sequences: 101 blocks and 101 coinbases before.
        let expected = [
            (raw_tx(&tx), 101),
            (raw_tx(&block.txdata[0]), 102),
            (raw_tx(&tx), 103),
            (("hashblock".to_string(), hash_bytes.to_vec()), 101),
            (("rawblock".to_string(), serialize(&block)), 101),
        ];
        for ((topic, body), sequence) in &expected {
            assert_eq!(next_message(&mut socket).await?, (topic.clone(), body.clone(), *sequence), "{topic}");
            if topic != "hashblock" {
                assert_eq!(next_message(&mut raw).await?, (topic.clone(), body.clone(), *sequence), "{topic}");
            }
        }
        Ok(())
    })
    .await
}

#[tokio::test]
async fn rawtx_in_a_reorg_as_bitcoind_sends_it() -> anyhow::Result<()> {
    bounded(async {
        let node = zmq_node().await?;
        let coins = mature_coins(&node);
        let mut socket = subscriber_to(&node, "rawtx").await?;
        let tx = wallet::spend_tx(&coins[..1], 1, 2)?;
        node.send_raw_transaction(&tx)?;
        let a = node.mine(1)[0];
        let coinbase_a = node.block(&a).expect("mined").txdata[0].compute_txid();
        assert_eq!(next_rawtxs(&mut socket, 3).await?, (vec![tx.compute_txid(), coinbase_a, tx.compute_txid()], 101));

        // Disconnecting a block announces its transactions, then the mempool takes the
        // transaction back: announced again. Mining it again announces the new block's.
        node.invalidate(&a)?;
        assert!(node.mempool_contains(&tx.compute_txid()));
        assert_eq!(next_rawtxs(&mut socket, 3).await?, (vec![coinbase_a, tx.compute_txid(), tx.compute_txid()], 104));
        let b = node.mine(1)[0];
        let block_b = node.block(&b).expect("mined");
        assert_eq!(next_rawtxs(&mut socket, 2).await?, (txids(&block_b), 107));

        // Back to a: reconsidered, it only ties with b (the tip stays); b invalidated, the node
        // reorganises to a. b's transactions go (the transaction back to the mempool at once, as
        // bitcoind's invalidateblock does), then a's come.
        node.reconsider(&a)?;
        assert_eq!(node.tip().1, b);
        node.invalidate(&b)?;
        assert_eq!(node.tip().1, a);
        assert!(!node.mempool_contains(&tx.compute_txid()), "confirmed again by a");
        let expected =
            vec![block_b.txdata[0].compute_txid(), tx.compute_txid(), tx.compute_txid(), coinbase_a, tx.compute_txid()];
        assert_eq!(next_rawtxs(&mut socket, 5).await?, (expected, 109));
        // Nothing else was sent: the next message is the next block's coinbase.
        let c = node.mine(1)[0];
        let coinbase_c = node.block(&c).expect("mined").txdata[0].compute_txid();
        assert_eq!(next_rawtxs(&mut socket, 1).await?, (vec![coinbase_c], 114));
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publisher_goes_down_and_comes_back_with_the_node_and_teosd_follows() -> anyhow::Result<()> {
    bounded(async {
        let node = zmq_node().await?;
        let endpoint = node.zmq_hashblock_endpoint().expect("ZMQ on");
        let wake = Arc::new(Notify::new());
        let stop = CancellationToken::new();
        let teosd_subscriber = tokio::spawn(teosd::bitcoind::zmq::subscribe(
            endpoint.clone(),
            Feed::Hashblock { wake: wake.clone() },
            stop.clone(),
        ));
        node.wait_for_zmq_subscriptions(1).await;
        wake.notified().await; // teosd's subscriber wakes its follower when it connects
        let mut socket = subscriber(&node).await?;
        node.mine(1);
        wake.notified().await;
        assert_eq!(next(&mut socket).await?.1, 0);

        node.go_down().await;
        let addr = endpoint.trim_start_matches("tcp://");
        assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "the ZMQ port is closed while down");
        node.come_back().await?;
        // teosd's subscriber reconnects by itself, and wakes its follower: blocks may have been
        // missed meanwhile.
        node.wait_for_zmq_subscriptions(3).await;
        wake.notified().await;
        drop(socket);
        let mut socket = subscriber(&node).await?;
        let hash = node.mine(1)[0];
        wake.notified().await;
        // A restarted bitcoind counts from 0 again.
        assert_eq!(next(&mut socket).await?, (hash, 0));

        stop.cancel();
        teosd_subscriber.await?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn the_binary_takes_bitcoinds_zmqpubhashblock() -> anyhow::Result<()> {
    bounded(async {
        let datadir = tempfile::tempdir()?;
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_teos-regtest-node"))
            .args(["--port", "0", "--no-persist", "-zmqpubhashblock=tcp://127.0.0.1:0", "--datadir"])
            .arg(datadir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        let (mut url, mut endpoint) = (None, None);
        while let Some(line) = lines.next_line().await? {
            if let Some(u) = line.strip_prefix("rpc url: ") {
                url = Some(u.to_string());
            } else if let Some(e) = line.strip_prefix("zmqpubhashblock: ") {
                endpoint = Some(e.to_string());
            } else if line.starts_with("tip: ") {
                break;
            }
        }
        let (url, endpoint) = (url.expect("rpc url printed"), endpoint.expect("endpoint printed"));
        assert!(!endpoint.ends_with(":0"), "{endpoint}: the bound port is printed");
        let rpc = RpcClient::with_cookie(url, datadir.path().join("regtest").join(".cookie"));
        assert_eq!(rpc.call_value("getzmqnotifications", vec![]).await?[0]["address"], json!(endpoint));

        let mut socket = SubSocket::new();
        socket.connect(&endpoint).await?;
        socket.subscribe("hashblock").await?;
        // The process does not say when our subscription has reached it: mine until a block is
        // heard (messages published before that are dropped, as bitcoind drops them).
        let mut mined = Vec::new();
        let heard = loop {
            anyhow::ensure!(mined.len() < 50, "no notification after {} blocks", mined.len());
            mined.extend(rpc.generate_to_address(1, &wallet::anyone_can_spend_address()).await?);
            if let Ok(message) = tokio::time::timeout(Duration::from_millis(200), next(&mut socket)).await {
                break message?;
            }
        };
        assert!(mined.contains(&heard.0), "{heard:?} was not mined here");
        assert_eq!(heard.1 as usize, mined.iter().position(|h| *h == heard.0).unwrap_or_default());
        rpc.stop().await?;
        assert!(child.wait().await?.success());
        Ok(())
    })
    .await
}
