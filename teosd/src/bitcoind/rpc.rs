//! An async JSON-RPC client for bitcoind. Authenticates with user/password or the cookie file,
//! re-reading the cookie whenever bitcoind refuses it (bitcoind writes a new one at every start),
//! and tells transient failures (bitcoind down, restarting, warming up) from permanent ones.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use std::borrow::Cow;

use bitcoin::consensus::encode::{deserialize, serialize_hex, Decodable};
use bitcoin::hex::FromHex;
use bitcoin::{Block, BlockHash, Transaction, Txid};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::{BitcoindAuth, BitcoindConfig};

/// bitcoind's code for "warming up" (loading the block index).
const RPC_IN_WARMUP: i64 = -28;

/// A failed call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RpcError {
    /// No answer: connection refused, timeout, cookie not there yet. Retry later.
    #[error("bitcoind unreachable: {0}")]
    Transport(String),
    /// bitcoind refused our credentials, even after re-reading the cookie.
    #[error("bitcoind refused the RPC credentials")]
    Unauthorized,
    /// bitcoind answered with an error.
    #[error("bitcoind error {code}: {message}")]
    Rpc {
        /// bitcoind's error code.
        code: i64,
        /// Its message.
        message: String,
    },
    /// The answer could not be understood.
    #[error("unexpected answer from bitcoind: {0}")]
    Decode(String),
}

impl RpcError {
    /// Whether retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            RpcError::Transport(_) => true,
            RpcError::Rpc { code, .. } => *code == RPC_IN_WARMUP,
            RpcError::Unauthorized | RpcError::Decode(_) => false,
        }
    }
}

#[derive(Deserialize)]
struct Reply<T> {
    result: Option<T>,
    error: Option<ReplyError>,
}

#[derive(Deserialize)]
struct ReplyError {
    code: i64,
    message: String,
}

/// `getblockchaininfo`, the fields teosd uses.
#[derive(Debug, Clone, Deserialize)]
pub struct BlockchainInfo {
    /// `main`, `test`, `testnet4`, `signet` or `regtest`.
    pub chain: String,
    /// Height of the best block.
    pub blocks: u32,
    /// Hash of the best block.
    pub bestblockhash: BlockHash,
    /// Whether the node prunes blocks.
    #[serde(default)]
    pub pruned: bool,
    /// Lowest height with a full block, on a pruned node.
    #[serde(default)]
    pub pruneheight: Option<u32>,
}

/// `getblockheader <hash> true`, the fields teosd uses.
#[derive(Debug, Clone, Deserialize)]
pub struct HeaderInfo {
    /// The block's hash.
    pub hash: BlockHash,
    /// Its height.
    pub height: u32,
    /// Confirmations; -1 when the block is not in the best chain.
    pub confirmations: i64,
    /// Its parent (absent for genesis).
    pub previousblockhash: Option<BlockHash>,
}

/// A bitcoind JSON-RPC client.
#[derive(Debug)]
pub struct BitcoindRpc {
    http: reqwest::Client,
    url: String,
    auth: Auth,
    next_id: AtomicU64,
}

#[derive(Debug)]
enum Auth {
    UserPass(String, crate::config::Secret),
    Cookie { path: PathBuf, cached: Mutex<Option<String>> },
}

impl BitcoindRpc {
    /// A client for the configured bitcoind. Makes no call yet.
    pub fn new(config: &BitcoindConfig) -> Result<Self, RpcError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| RpcError::Transport(e.to_string()))?;
        let auth = match &config.auth {
            BitcoindAuth::UserPass { user, password } => Auth::UserPass(user.clone(), password.clone()),
            BitcoindAuth::Cookie(path) => Auth::Cookie { path: path.clone(), cached: Mutex::new(None) },
        };
        Ok(BitcoindRpc { http, url: config.rpc_url(), auth, next_id: AtomicU64::new(0) })
    }

    fn credentials(&self, reload: bool) -> Result<(String, String), RpcError> {
        match &self.auth {
            Auth::UserPass(user, password) => Ok((user.clone(), password.expose().to_string())),
            Auth::Cookie { path, cached } => {
                let mut cached = cached.lock().unwrap_or_else(|p| p.into_inner());
                if reload || cached.is_none() {
                    let text = std::fs::read_to_string(path)
                        .map_err(|e| RpcError::Transport(format!("cannot read cookie {}: {e}", path.display())))?;
                    *cached = Some(text.trim().to_string());
                }
                let cookie = cached.clone().unwrap_or_default();
                let (user, password) = cookie
                    .split_once(':')
                    .ok_or_else(|| RpcError::Transport(format!("malformed cookie file {}", path.display())))?;
                Ok((user.to_string(), password.to_string()))
            }
        }
    }

    async fn post(&self, body: &Value, reload: bool) -> Result<reqwest::Response, RpcError> {
        let (user, password) = self.credentials(reload)?;
        self.http
            .post(&self.url)
            .basic_auth(user, Some(password))
            .json(body)
            .send()
            .await
            .map_err(|e| RpcError::Transport(e.to_string()))
    }

    /// Calls `method` and returns the reply's body (any JSON-RPC error is still inside).
    async fn reply_body(&self, method: &str, params: Value) -> Result<bytes::Bytes, RpcError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let body = json!({"jsonrpc": "1.0", "id": id, "method": method, "params": params});
        let mut response = self.post(&body, false).await?;
        if response.status() == reqwest::StatusCode::UNAUTHORIZED && matches!(self.auth, Auth::Cookie { .. }) {
            // bitcoind may have restarted with a new cookie.
            response = self.post(&body, true).await?;
        }
        if response.status() == reqwest::StatusCode::UNAUTHORIZED {
            return Err(RpcError::Unauthorized);
        }
        if response.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE {
            return Err(RpcError::Transport("bitcoind is busy (503)".into()));
        }
        response.bytes().await.map_err(|e| RpcError::Transport(format!("{method}: {e}")))
    }

    /// Calls `method`, decoding its result as `T`.
    pub async fn call<T: DeserializeOwned>(&self, method: &str, params: Value) -> Result<T, RpcError> {
        let body = self.reply_body(method, params).await?;
        let reply: Reply<T> = serde_json::from_slice(&body).map_err(|e| RpcError::Decode(format!("{method}: {e}")))?;
        if let Some(ReplyError { code, message }) = reply.error {
            return Err(RpcError::Rpc { code, message });
        }
        match reply.result {
            Some(result) => Ok(result),
            None => T::deserialize(Value::Null).map_err(|e| RpcError::Decode(format!("{method}: {e}"))),
        }
    }

    /// Calls `method`, whose result is a hex string, decoding it as `T`'s consensus encoding
    /// (borrowed from the reply: a block's hex is not copied before it is decoded).
    async fn call_hex<T: Decodable>(&self, method: &str, params: Value) -> Result<T, RpcError> {
        let body = self.reply_body(method, params).await?;
        let decode = |e: String| RpcError::Decode(format!("{method}: {e}"));
        let reply: Reply<Cow<'_, str>> = serde_json::from_slice(&body).map_err(|e| decode(e.to_string()))?;
        if let Some(ReplyError { code, message }) = reply.error {
            return Err(RpcError::Rpc { code, message });
        }
        let hex = reply.result.ok_or_else(|| decode("null result".into()))?;
        let bytes = Vec::<u8>::from_hex(&hex).map_err(|e| decode(e.to_string()))?;
        deserialize(&bytes).map_err(|e| decode(e.to_string()))
    }

    /// `getblockchaininfo`.
    pub async fn blockchain_info(&self) -> Result<BlockchainInfo, RpcError> {
        self.call("getblockchaininfo", json!([])).await
    }

    /// `getbestblockhash`.
    pub async fn best_block_hash(&self) -> Result<BlockHash, RpcError> {
        self.call("getbestblockhash", json!([])).await
    }

    /// `getblockheader <hash> true`.
    pub async fn header_info(&self, hash: &BlockHash) -> Result<HeaderInfo, RpcError> {
        self.call("getblockheader", json!([hash, true])).await
    }

    /// `getblock <hash> 0`, decoded.
    pub async fn block(&self, hash: &BlockHash) -> Result<Block, RpcError> {
        self.call_hex("getblock", json!([hash, 0])).await
    }

    /// `getrawtransaction <txid> false <blockhash>`: a confirmed transaction, found without
    /// `txindex` by naming its block.
    pub async fn transaction_in_block(&self, txid: &Txid, block: &BlockHash) -> Result<Transaction, RpcError> {
        self.call_hex("getrawtransaction", json!([txid, false, block])).await
    }

    /// `getrawmempool`.
    pub async fn mempool_txids(&self) -> Result<Vec<Txid>, RpcError> {
        self.call("getrawmempool", json!([])).await
    }

    /// `getrawtransaction <txid> false`: a mempool transaction (or, with `txindex`, any).
    pub async fn transaction(&self, txid: &Txid) -> Result<Transaction, RpcError> {
        self.call_hex("getrawtransaction", json!([txid, false])).await
    }

    /// `sendrawtransaction <hex>`.
    pub async fn send_raw_transaction(&self, tx: &Transaction) -> Result<Txid, RpcError> {
        self.call("sendrawtransaction", json!([serialize_hex(tx)])).await
    }
}
