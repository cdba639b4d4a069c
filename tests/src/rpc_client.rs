//! The tests' bitcoind JSON-RPC client (reqwest, basic auth from a cookie file, a user/password or
//! nothing), for driving a node (ours or a real bitcoind) and checking what it answers.
//!
//! The cookie is read at every call, so a client keeps working across node restarts (each start
//! writes a new cookie).
//!
//! # Why not teosd's client
//!
//! teosd has its own client, [`teosd::bitcoind::rpc::BitcoindRpc`]. The tests use this one to
//! drive a node and to check that it answers as bitcoind does, so it must do what teosd's
//! deliberately does not:
//!
//! * **Send wrong or no credentials on purpose** ([`Auth::None`], any [`Auth::UserPass`]) and
//!   report the refusal as the node sent it: [`ClientError::Http`] with status 401 and the body.
//!   teosd's always authenticates as its `BitcoindConfig` says, retries a 401 once with a re-read
//!   cookie, and folds what remains into `RpcError::Unauthorized` (and a 503 into
//!   `RpcError::Transport`).
//! * **Expose the HTTP exchange**: [`RpcClient::post_raw`] posts any body (malformed JSON,
//!   batches, string ids) and returns the status and the body unparsed; [`RpcClient::batch`] sends
//!   a JSON-RPC batch. teosd's only sends single well-formed requests and never shows the status.
//!
//! It also differs in ways the tests use:
//!
//! * A JSON-RPC error comes back as the node's own [`crate::regtest::RpcError`] (`i32` code and
//!   message, `PartialEq`), so a test compares it with what bitcoind answers; teosd's turns it
//!   into its `RpcError::Rpc` (`i64` code, classified transient or not).
//! * The cookie is read at every call, so no cache hides a stale or missing one; a missing cookie
//!   is [`ClientError::Cookie`]. teosd's caches it, re-reads it only after a 401, and reports a
//!   missing one as a transport failure.
//! * It is made from a URL and an [`Auth`] (teosd's needs a whole `BitcoindConfig`), and carries
//!   typed helpers for the test controls (`generatetoaddress`, `generateblock`,
//!   `invalidateblock`, `stop`, ...).
//!
//! What the two have in common is the JSON-RPC 1.0 envelope and basic auth, a few lines each;
//! sharing them would mean test hooks (no credentials, raw status codes) in teosd's production
//! client. teosd's client is exercised by the end-to-end tests, which run teosd against these
//! nodes.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bitcoin::consensus::encode::{deserialize_hex, serialize_hex};
use bitcoin::{Address, Block, BlockHash, Transaction, Txid};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::regtest::RpcError;

/// How a client authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// `user:password` from bitcoind's cookie file, read at each call.
    CookieFile(PathBuf),
    UserPass(String, String),
    None,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The node answered with a JSON-RPC error.
    #[error(transparent)]
    Rpc(#[from] RpcError),
    /// The node answered with an HTTP error and no JSON-RPC reply (401 on bad auth, ...).
    #[error("HTTP {status}: {body:?}")]
    Http { status: u16, body: String },
    /// No answer (connection refused, timeout, ...).
    #[error("transport: {0}")]
    Transport(#[source] reqwest::Error),
    #[error("reading the cookie {path}: {source}")]
    Cookie {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("unexpected reply: {0}")]
    Decode(String),
}

impl ClientError {
    /// The JSON-RPC error code, when the node answered with one.
    pub fn rpc_code(&self) -> Option<i32> {
        match self {
            ClientError::Rpc(e) => Some(e.code),
            _ => None,
        }
    }
}

/// A raw HTTP answer, for tests that look at status codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawReply {
    pub status: u16,
    pub body: String,
}

#[derive(Debug, Clone)]
pub struct RpcClient {
    url: String,
    auth: Auth,
    http: reqwest::Client,
    next_id: Arc<AtomicU64>,
}

impl RpcClient {
    pub fn new(url: impl Into<String>, auth: Auth) -> RpcClient {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .connect_timeout(Duration::from_secs(10))
            .build()
            .expect("a reqwest client without TLS builds");
        RpcClient { url: url.into(), auth, http, next_id: Arc::new(AtomicU64::new(1)) }
    }

    pub fn with_cookie(url: impl Into<String>, cookie_path: impl Into<PathBuf>) -> RpcClient {
        RpcClient::new(url, Auth::CookieFile(cookie_path.into()))
    }

    pub fn with_user_pass(url: impl Into<String>, user: impl Into<String>, password: impl Into<String>) -> RpcClient {
        RpcClient::new(url, Auth::UserPass(user.into(), password.into()))
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn credentials(&self) -> Result<Option<(String, String)>, ClientError> {
        match &self.auth {
            Auth::None => Ok(None),
            Auth::UserPass(user, password) => Ok(Some((user.clone(), password.clone()))),
            Auth::CookieFile(path) => {
                let cookie = std::fs::read_to_string(path)
                    .map_err(|source| ClientError::Cookie { path: path.clone(), source })?;
                let (user, password) = cookie
                    .trim()
                    .split_once(':')
                    .ok_or_else(|| ClientError::Decode(format!("bad cookie in {}", path.display())))?;
                Ok(Some((user.to_string(), password.to_string())))
            }
        }
    }

    /// POSTs `body` as is and returns the HTTP status and body.
    pub async fn post_raw(&self, body: impl Into<String>) -> Result<RawReply, ClientError> {
        let mut request =
            self.http.post(&self.url).header(reqwest::header::CONTENT_TYPE, "application/json").body(body.into());
        if let Some((user, password)) = self.credentials()? {
            request = request.basic_auth(user, Some(password));
        }
        let response = request.send().await.map_err(ClientError::Transport)?;
        let status = response.status().as_u16();
        let body = response.text().await.map_err(ClientError::Transport)?;
        Ok(RawReply { status, body })
    }

    /// POSTs `request` and parses the reply as `T`; a body that does not parse (a 401's empty
    /// body, ...) is a [`ClientError::Http`] error.
    async fn post_json<T: DeserializeOwned>(&self, request: Value) -> Result<T, ClientError> {
        let reply = self.post_raw(request.to_string()).await?;
        serde_json::from_str(&reply.body).map_err(|_| ClientError::Http { status: reply.status, body: reply.body })
    }

    /// Calls `method` and returns its raw `result`.
    pub async fn call_value(&self, method: &str, params: Vec<Value>) -> Result<Value, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        parse_reply(self.post_json::<Value>(request(id, method, &params)).await?)
    }

    /// Calls `method` and deserializes its `result`.
    pub async fn call<T: DeserializeOwned>(&self, method: &str, params: Vec<Value>) -> Result<T, ClientError> {
        let value = self.call_value(method, params).await?;
        serde_json::from_value(value).map_err(|e| ClientError::Decode(format!("{method}: {e}")))
    }

    /// Sends a batch; each call gets its own result.
    pub async fn batch(&self, calls: &[(&str, Vec<Value>)]) -> Result<Vec<Result<Value, RpcError>>, ClientError> {
        let requests: Vec<Value> =
            calls.iter().enumerate().map(|(i, (method, params))| request(i as u64, method, params)).collect();
        let replies: Vec<Value> = self.post_json(Value::Array(requests)).await?;
        let mut results: Vec<(u64, Result<Value, RpcError>)> = replies
            .into_iter()
            .map(|reply| {
                let id = reply["id"].as_u64().unwrap_or(u64::MAX);
                let result = match parse_reply(reply) {
                    Ok(value) => Ok(value),
                    Err(ClientError::Rpc(error)) => Err(error),
                    Err(other) => Err(RpcError::new(0, other.to_string())),
                };
                (id, result)
            })
            .collect();
        results.sort_by_key(|(id, _)| *id);
        Ok(results.into_iter().map(|(_, r)| r).collect())
    }

    pub async fn get_block_count(&self) -> Result<u32, ClientError> {
        self.call("getblockcount", vec![]).await
    }

    pub async fn get_best_block_hash(&self) -> Result<BlockHash, ClientError> {
        self.call("getbestblockhash", vec![]).await
    }

    pub async fn get_block_hash(&self, height: u32) -> Result<BlockHash, ClientError> {
        self.call("getblockhash", vec![json!(height)]).await
    }

    /// `getblock <hash> 0`, decoded.
    pub async fn get_block(&self, hash: &BlockHash) -> Result<Block, ClientError> {
        let hex: String = self.call("getblock", vec![json!(hash), json!(0)]).await?;
        deserialize_hex(&hex).map_err(|e| ClientError::Decode(format!("block: {e}")))
    }

    /// `getblockheader <hash> true`.
    pub async fn get_block_header_info(&self, hash: &BlockHash) -> Result<Value, ClientError> {
        self.call_value("getblockheader", vec![json!(hash), json!(true)]).await
    }

    pub async fn send_raw_transaction(&self, tx: &Transaction) -> Result<Txid, ClientError> {
        self.call("sendrawtransaction", vec![json!(serialize_hex(tx))]).await
    }

    /// `getrawtransaction <txid> 0`, decoded.
    pub async fn get_raw_transaction(&self, txid: &Txid) -> Result<Transaction, ClientError> {
        let hex: String = self.call("getrawtransaction", vec![json!(txid), json!(false)]).await?;
        deserialize_hex(&hex).map_err(|e| ClientError::Decode(format!("transaction: {e}")))
    }

    /// `getrawtransaction <txid> true`.
    pub async fn get_raw_transaction_info(&self, txid: &Txid) -> Result<Value, ClientError> {
        self.call_value("getrawtransaction", vec![json!(txid), json!(true)]).await
    }

    pub async fn get_raw_mempool(&self) -> Result<Vec<Txid>, ClientError> {
        self.call("getrawmempool", vec![]).await
    }

    pub async fn generate_to_address(&self, n: u32, address: &Address) -> Result<Vec<BlockHash>, ClientError> {
        self.call("generatetoaddress", vec![json!(n), json!(address.to_string())]).await
    }

    /// `generateblock <address> [raw txs]`: a block holding exactly `txs`.
    pub async fn generate_block(&self, address: &Address, txs: &[Transaction]) -> Result<BlockHash, ClientError> {
        let raw: Vec<String> = txs.iter().map(serialize_hex).collect();
        let reply = self.call_value("generateblock", vec![json!(address.to_string()), json!(raw)]).await?;
        reply["hash"]
            .as_str()
            .and_then(|h| BlockHash::from_str(h).ok())
            .ok_or_else(|| ClientError::Decode(format!("generateblock: {reply}")))
    }

    pub async fn invalidate_block(&self, hash: &BlockHash) -> Result<(), ClientError> {
        self.call_value("invalidateblock", vec![json!(hash)]).await.map(|_| ())
    }

    pub async fn reconsider_block(&self, hash: &BlockHash) -> Result<(), ClientError> {
        self.call_value("reconsiderblock", vec![json!(hash)]).await.map(|_| ())
    }

    pub async fn stop(&self) -> Result<(), ClientError> {
        self.call_value("stop", vec![]).await.map(|_| ())
    }
}

/// A JSON-RPC 1.0 request.
fn request(id: u64, method: &str, params: &[Value]) -> Value {
    json!({"jsonrpc": "1.0", "id": id, "method": method, "params": params})
}

/// `{"result":..,"error":..}` to a result.
fn parse_reply(mut reply: Value) -> Result<Value, ClientError> {
    if !reply.is_object() {
        return Err(ClientError::Decode(format!("not a reply object: {reply}")));
    }
    let error = reply["error"].take();
    if !error.is_null() {
        let error: RpcError =
            serde_json::from_value(error.clone()).map_err(|_| ClientError::Decode(format!("error object {error}")))?;
        return Err(ClientError::Rpc(error));
    }
    match reply.get_mut("result") {
        Some(result) => Ok(result.take()),
        None => Err(ClientError::Decode(format!("no result in {reply}"))),
    }
}
