//! The regtest node through its JSON-RPC interface: block encoding and validity, bitcoind's
//! result shapes and error codes, auth, going down and coming back.

mod common;

use std::os::unix::fs::PermissionsExt;

use bitcoin::block::Header;
use bitcoin::blockdata::constants::genesis_block;
use bitcoin::consensus::encode::{deserialize_hex, serialize_hex};
use bitcoin::hashes::Hash;
use bitcoin::{Block, BlockHash, CompactTarget, Network, Target, Txid};
use common::{bounded, btc, coinbase_utxo, node, rpc_error};
use serde_json::{json, Value};
use teos_tests::regtest::{NodeOptions, RegtestNode, REGTEST_BITS};
use teos_tests::rpc_client::{Auth, ClientError, RpcClient};
use teos_tests::wallet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn mined_blocks_are_valid_regtest_blocks() -> anyhow::Result<()> {
    bounded(async {
        let (_node, rpc) = node().await?;
        let genesis = genesis_block(Network::Regtest);
        assert_eq!(rpc.get_block_hash(0).await?, genesis.block_hash());

        let address = wallet::anyone_can_spend_address();
        let hashes = rpc.generate_to_address(20, &address).await?;
        assert_eq!(hashes.len(), 20);
        let target = Target::from_compact(CompactTarget::from_consensus(REGTEST_BITS));
        let (mut prev, mut prev_time) = (genesis.block_hash(), genesis.header.time);
        for (i, hash) in hashes.iter().enumerate() {
            let height = i as u32 + 1;
            assert_eq!(rpc.get_block_hash(height).await?, *hash);
            let hex: String = rpc.call("getblock", vec![json!(hash), json!(0)]).await?;
            let block: Block = deserialize_hex(&hex)?;
            assert_eq!(serialize_hex(&block), hex, "round trip");
            assert_eq!(block.block_hash(), *hash);
            assert_eq!(block.header.prev_blockhash, prev);
            assert!(block.header.time > prev_time, "increasing timestamps");
            assert_eq!(block.header.bits.to_consensus(), REGTEST_BITS);
            assert!(block.check_merkle_root());
            assert_eq!(block.header.validate_pow(target)?, *hash);
            assert!(block.check_witness_commitment());
            assert_eq!(wallet::coinbase_height(&block), Some(height));
            if height > 16 {
                assert_eq!(block.bip34_block_height()?, u64::from(height));
            }
            let coinbase = &block.txdata[0];
            assert!(coinbase.is_coinbase());
            assert_eq!(coinbase.output[0].value, btc(50));
            assert_eq!(coinbase.output[0].script_pubkey, address.script_pubkey());
            (prev, prev_time) = (*hash, block.header.time);
        }

        let header_hex: String = rpc.call("getblockheader", vec![json!(hashes[4]), json!(false)]).await?;
        let header: Header = deserialize_hex(&header_hex)?;
        assert_eq!(header.block_hash(), hashes[4]);
        let info = rpc.get_block_header_info(&hashes[4]).await?;
        assert_eq!(info["hash"], json!(hashes[4]));
        assert_eq!(info["height"], 5);
        assert_eq!(info["confirmations"], 16);
        assert_eq!(info["previousblockhash"], json!(hashes[3]));
        assert_eq!(info["nextblockhash"], json!(hashes[5]));
        assert_eq!(info["bits"], "207fffff");
        assert_eq!(info["versionHex"], "20000000");
        assert_eq!(info["merkleroot"], json!(header.merkle_root));
        assert_eq!(info["nTx"], 1);
        assert_eq!(info["chainwork"], format!("{:064x}", 2 * 6));
        assert_eq!(info["time"], header.time);
        let difficulty = info["difficulty"].as_f64().unwrap_or_default();
        assert!((difficulty - 4.656542373906925e-10).abs() < 1e-20);
        let tip_info = rpc.get_block_header_info(&hashes[19]).await?;
        assert_eq!(tip_info["confirmations"], 1);
        assert!(tip_info.get("nextblockhash").is_none());
        let genesis_info = rpc.get_block_header_info(&genesis.block_hash()).await?;
        assert!(genesis_info.get("previousblockhash").is_none());

        let verbose = rpc.call_value("getblock", vec![json!(hashes[0])]).await?;
        let block = rpc.get_block(&hashes[0]).await?;
        assert_eq!(verbose["tx"], json!([block.txdata[0].compute_txid()]));
        assert_eq!(verbose["height"], 1);
        assert_eq!(verbose["size"], bitcoin::consensus::serialize(&block).len());
        let verbose2 = rpc.call_value("getblock", vec![json!(hashes[0]), json!(2)]).await?;
        assert_eq!(verbose2["tx"][0]["vout"][0]["scriptPubKey"]["address"], json!(address.to_string()));
        assert_eq!(verbose2["tx"][0]["vout"][0]["scriptPubKey"]["type"], "witness_v0_scripthash");

        let chain = rpc.call_value("getblockchaininfo", vec![]).await?;
        assert_eq!(chain["chain"], "regtest");
        assert_eq!(chain["blocks"], 20);
        assert_eq!(chain["headers"], 20);
        assert_eq!(chain["bestblockhash"], json!(hashes[19]));
        assert_eq!(chain["initialblockdownload"], false);
        assert_eq!(chain["pruned"], false);
        assert_eq!(chain["verificationprogress"], 1.0);
        assert_eq!(chain["chainwork"], format!("{:064x}", 2 * 21));
        assert!(chain["mediantime"].as_u64() < chain["time"].as_u64());
        assert_eq!(rpc.get_block_count().await?, 20);
        assert_eq!(rpc.get_best_block_hash().await?, hashes[19]);

        let network = rpc.call_value("getnetworkinfo", vec![]).await?;
        assert_eq!(network["version"], 270000);
        assert!(network["subversion"].as_str().is_some_and(|s| s.starts_with("/Satoshi:")));
        assert!(rpc.call_value("uptime", vec![]).await?.is_u64());
        Ok(())
    })
    .await
}

#[tokio::test]
async fn subsidy_halves_every_150_blocks() -> anyhow::Result<()> {
    bounded(async {
        let (_node, rpc) = node().await?;
        let hashes = rpc.generate_to_address(151, &wallet::anyone_can_spend_address()).await?;
        let before = rpc.get_block(&hashes[148]).await?;
        let after = rpc.get_block(&hashes[149]).await?;
        assert_eq!(wallet::coinbase_height(&after), Some(150));
        assert_eq!(before.txdata[0].output[0].value, btc(50));
        assert_eq!(after.txdata[0].output[0].value, btc(25));
        Ok(())
    })
    .await
}

#[tokio::test]
async fn segwit_transactions_get_a_witness_commitment() -> anyhow::Result<()> {
    bounded(async {
        let (_node, rpc) = node().await?;
        let address = wallet::anyone_can_spend_address();
        let hashes = rpc.generate_to_address(101, &address).await?;
        let coin = coinbase_utxo(&rpc.get_block(&hashes[0]).await?, 1);
        let commitment = wallet::commitment_tx(&coin, 2, 1, 42)?;
        let txid = rpc.send_raw_transaction(&commitment).await?;
        assert_eq!(txid, commitment.compute_txid());
        assert_eq!(rpc.get_raw_mempool().await?, vec![txid]);
        let mempool_info = rpc.get_raw_transaction_info(&txid).await?;
        assert!(mempool_info.get("blockhash").is_none());
        assert_eq!(mempool_info["hash"], json!(commitment.compute_wtxid()));

        let hash = rpc.generate_to_address(1, &address).await?[0];
        let block = rpc.get_block(&hash).await?;
        assert_eq!(block.txdata.len(), 2);
        assert_eq!(block.txdata[1], commitment);
        assert!(!block.txdata[1].input[0].witness.is_empty());
        assert!(block.check_merkle_root());
        assert!(block.check_witness_commitment());
        let coinbase = &block.txdata[0];
        let commitment_output = coinbase.output.last().map(|o| o.script_pubkey.as_bytes().to_vec());
        assert!(commitment_output.is_some_and(|s| s.starts_with(&[0x6a, 0x24, 0xaa, 0x21, 0xa9, 0xed])));
        let fee = coin.value - commitment.output.iter().map(|o| o.value).sum();
        assert_eq!(coinbase.output[0].value, btc(50) + fee);
        let mut tampered = block.clone();
        tampered.txdata[1].input[0].witness = bitcoin::Witness::from_slice(&[[0x52u8]]);
        assert!(!tampered.check_witness_commitment());

        let info = rpc.get_raw_transaction_info(&txid).await?;
        assert_eq!(info["blockhash"], json!(hash));
        assert_eq!(info["confirmations"], 1);
        assert_eq!(info["blocktime"], block.header.time);
        assert_eq!(info["hex"], serialize_hex(&commitment));
        assert_eq!(rpc.get_raw_transaction(&txid).await?, commitment);
        let in_block = rpc.call_value("getrawtransaction", vec![json!(txid), json!(true), json!(hash)]).await?;
        assert_eq!(in_block["in_active_chain"], true);
        assert!(rpc.get_raw_mempool().await?.is_empty());
        Ok(())
    })
    .await
}

#[tokio::test]
async fn rpc_errors_match_bitcoind() -> anyhow::Result<()> {
    bounded(async {
        let (node, rpc) = node().await?;
        node.mine(1);
        let unknown_hash = json!(BlockHash::all_zeros());
        let unknown_txid = json!(Txid::all_zeros());
        let address = wallet::anyone_can_spend_address().to_string();

        let raw = rpc
            .post_raw(json!({"jsonrpc": "1.0", "id": 7, "method": "nosuchmethod", "params": []}).to_string())
            .await?;
        assert_eq!(raw.status, 404);
        let reply: Value = serde_json::from_str(&raw.body)?;
        assert_eq!(reply, json!({"result": null, "error": {"code": -32601, "message": "Method not found"}, "id": 7}));

        let raw = rpc
            .post_raw(json!({"jsonrpc": "1.0", "id": "x", "method": "getblockhash", "params": [1000]}).to_string())
            .await?;
        assert_eq!(raw.status, 500);
        let reply: Value = serde_json::from_str(&raw.body)?;
        assert_eq!(reply["error"], json!({"code": -8, "message": "Block height out of range"}));
        assert_eq!(reply["id"], "x");

        let raw = rpc
            .post_raw(json!({"jsonrpc": "1.0", "id": 1, "method": "getblockcount", "params": []}).to_string())
            .await?;
        assert_eq!(raw.status, 200);
        assert_eq!(serde_json::from_str::<Value>(&raw.body)?, json!({"result": 1, "error": null, "id": 1}));

        let raw = rpc.post_raw("{not json").await?;
        assert_eq!(raw.status, 500);
        assert_eq!(serde_json::from_str::<Value>(&raw.body)?["error"]["code"], -32700);

        let batch =
            rpc.batch(&[("getblockcount", vec![]), ("nosuchmethod", vec![]), ("getblockhash", vec![json!(0)])]).await?;
        assert_eq!(batch.len(), 3);
        assert_eq!(batch[0], Ok(json!(1)));
        assert_eq!(batch[1].as_ref().map_err(|e| e.code).err(), Some(-32601));
        assert_eq!(batch[2], Ok(json!(genesis_block(Network::Regtest).block_hash())));
        let raw = rpc.post_raw(json!([{"id": 1, "method": "nosuchmethod"}]).to_string()).await?;
        assert_eq!(raw.status, 200, "a batch is answered with 200");

        let cases: Vec<(&str, Vec<Value>, i32, &str)> = vec![
            ("getblockhash", vec![json!(-1)], -8, "Block height out of range"),
            ("getblockheader", vec![unknown_hash.clone()], -5, "Block not found"),
            ("getblock", vec![unknown_hash.clone()], -5, "Block not found"),
            ("getblockheader", vec![json!("abc")], -8, "hash must be of length 64 (not 3, for 'abc')"),
            (
                "getrawtransaction",
                vec![unknown_txid.clone()],
                -5,
                "No such mempool or blockchain transaction. Use gettransaction for wallet transactions.",
            ),
            ("getmempoolentry", vec![unknown_txid.clone()], -5, "Transaction not in mempool"),
            (
                "sendrawtransaction",
                vec![json!("zz")],
                -22,
                "TX decode failed. Make sure the tx has at least one input.",
            ),
            (
                "sendrawtransaction",
                vec![json!("0200000000")],
                -22,
                "TX decode failed. Make sure the tx has at least one input.",
            ),
            ("generatetoaddress", vec![json!(1), json!("notanaddress")], -5, "Error: Invalid address"),
            (
                "generatetoaddress",
                vec![json!(1), json!("bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq")],
                -5,
                "Error: Invalid address",
            ),
            ("invalidateblock", vec![unknown_hash.clone()], -5, "Block not found"),
            ("reconsiderblock", vec![unknown_hash.clone()], -5, "Block not found"),
            ("generateblock", vec![json!(address), json!([unknown_txid])], -5, ""),
        ];
        for (method, params, code, message) in cases {
            let error = rpc_error(rpc.call_value(method, params.clone()).await);
            assert_eq!(error.code, code, "{method} {params:?}: {error}");
            if !message.is_empty() {
                assert_eq!(error.message, message, "{method} {params:?}");
            }
        }
        let error = rpc_error(rpc.call_value("generateblock", vec![json!(address), json!(["zz"])]).await);
        assert_eq!(error.code, -22);
        assert!(error.message.starts_with("Transaction decode failed for zz"), "{error}");
        assert_eq!(rpc_error(rpc.call_value("getblockhash", vec![json!("1")]).await).code, -3);
        assert_eq!(rpc_error(rpc.call_value("getblockcount", vec![json!(1)]).await).code, -1);
        assert_eq!(rpc_error(rpc.call_value("getblockhash", vec![]).await).code, -1);
        let by_name =
            rpc.post_raw(json!({"id": 1, "method": "getblockhash", "params": {"height": 1}}).to_string()).await?;
        assert_eq!(serde_json::from_str::<Value>(&by_name.body)?["result"], json!(node.tip().1));
        Ok(())
    })
    .await
}

#[tokio::test]
async fn cookie_and_user_auth() -> anyhow::Result<()> {
    bounded(async {
        let node = RegtestNode::start(NodeOptions {
            rpc_user: Some("alice".into()),
            rpc_password: Some("secret".into()),
            ..NodeOptions::default()
        })
        .await?;
        let cookie_path = node.cookie_path();
        assert_eq!(cookie_path, node.datadir().join("regtest").join(".cookie"));
        let mode = std::fs::metadata(&cookie_path)?.permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let cookie = std::fs::read_to_string(&cookie_path)?;
        let secret = cookie.strip_prefix("__cookie__:").unwrap_or_default();
        assert_eq!(secret.len(), 64);
        assert!(secret.chars().all(|c| c.is_ascii_hexdigit()));

        let body = json!({"jsonrpc": "1.0", "id": 1, "method": "getblockcount", "params": []}).to_string();
        let url = node.rpc_url();
        let ok = RpcClient::with_cookie(&url, &cookie_path).post_raw(body.clone()).await?;
        assert_eq!(ok.status, 200);
        let user = RpcClient::with_user_pass(&url, "alice", "secret").get_block_count().await?;
        assert_eq!(user, 0);
        for auth in [
            Auth::UserPass("__cookie__".into(), "wrong".into()),
            Auth::UserPass("alice".into(), "wrong".into()),
            Auth::None,
        ] {
            let reply = RpcClient::new(&url, auth.clone()).post_raw(body.clone()).await?;
            assert_eq!(reply.status, 401, "{auth:?}");
            assert_eq!(reply.body, "", "{auth:?}");
        }
        let unauthorized = RpcClient::new(&url, Auth::None).get_block_count().await;
        assert!(matches!(unauthorized, Err(ClientError::Http { status: 401, .. })));
        let get = reqwest::get(&url).await?;
        assert_eq!(get.status().as_u16(), 405);
        Ok(())
    })
    .await
}

/// Sends one request on a raw keep-alive connection and reads the whole reply.
async fn keep_alive_request(stream: &mut TcpStream, cookie: &str) -> anyhow::Result<String> {
    use base64::Engine;
    let body = r#"{"id":1,"method":"getblockcount","params":[]}"#;
    let auth = base64::engine::general_purpose::STANDARD.encode(cookie);
    let request = format!(
        "POST / HTTP/1.1\r\nHost: localhost\r\nAuthorization: Basic {auth}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        anyhow::ensure!(n > 0, "connection closed mid-reply");
        reply.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&reply).to_string();
        if let Some((head, content)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if content.len() >= length {
                return Ok(text);
            }
        }
    }
}

#[tokio::test]
async fn going_down_refuses_connections_and_coming_back_rotates_the_cookie() -> anyhow::Result<()> {
    bounded(async {
        let (node, rpc) = node().await?;
        let hashes = node.mine(3);
        let old_cookie = std::fs::read_to_string(node.cookie_path())?;
        let mut idle = TcpStream::connect(node.rpc_addr()).await?;
        let reply = keep_alive_request(&mut idle, &old_cookie).await?;
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");

        node.go_down().await;
        assert!(!node.is_up());
        assert!(!node.cookie_path().exists(), "the cookie goes with the server");
        let refused = TcpStream::connect(node.rpc_addr()).await;
        assert_eq!(refused.map_err(|e| e.kind()).err(), Some(std::io::ErrorKind::ConnectionRefused));
        let mut buf = [0u8; 16];
        let closed = idle.read(&mut buf).await;
        assert!(matches!(closed, Ok(0) | Err(_)), "open connections are closed: {closed:?}");
        let (user, password) = old_cookie.split_once(':').unwrap_or_default();
        let old_auth = RpcClient::with_user_pass(node.rpc_url(), user, password);
        assert!(matches!(old_auth.get_block_count().await, Err(ClientError::Transport(_))));

        node.come_back().await?;
        assert!(node.is_up());
        assert!(matches!(node.come_back().await, Err(teos_tests::regtest::NodeError::AlreadyUp)));
        let new_cookie = std::fs::read_to_string(node.cookie_path())?;
        assert_ne!(new_cookie, old_cookie, "a new cookie at each start");
        assert!(matches!(old_auth.get_block_count().await, Err(ClientError::Http { status: 401, .. })));
        assert_eq!(rpc.get_block_count().await?, 3, "the chain survives");
        assert_eq!(rpc.get_best_block_hash().await?, hashes[2]);

        // `stop` over RPC takes the node down too.
        let stopping: String = rpc.call("stop", vec![]).await?;
        assert_eq!(stopping, "Bitcoin Core stopping");
        node.stopped().await;
        assert!(!node.is_up());
        node.go_down().await;
        assert!(TcpStream::connect(node.rpc_addr()).await.is_err());
        node.come_back().await?;
        assert_eq!(rpc.get_block_count().await?, 3);
        Ok(())
    })
    .await
}
