//! The regtest node's ZMQ `hashblock` publisher (bitcoind's `-zmqpubhashblock`): bitcoind's
//! message layout and sequence numbers, what is announced in reorgs, going down and coming back
//! with the node, the binary's flag; and teosd's subscriber against it.

mod common;

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bitcoin::BlockHash;
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
    let before = node.zmq_subscriptions();
    let mut socket = SubSocket::new();
    socket.connect(&node.zmq_hashblock_endpoint().expect("ZMQ on")).await?;
    socket.subscribe("hashblock").await?;
    node.wait_for_zmq_subscriptions(before + 1).await;
    Ok(socket)
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
