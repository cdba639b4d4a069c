//! The bitcoind the end-to-end tests run against: our in-process [`RegtestNode`], or a real
//! `bitcoind` when the `BITCOIND_EXE` environment variable names one.
//!
//! A real bitcoind runs as a child process
//! (`bitcoind -regtest -datadir=<tmp> -rpcport=<free> -port=<free> -listen=0 -server
//! -fallbackfee=0.0001 -txindex=1`, plus `-zmqpubhashblock`, `-zmqpubrawblock` and
//! `-zmqpubrawtx=tcp://127.0.0.1:<free>` from [`Bitcoind::start_with_zmq`]) and is driven over
//! JSON-RPC only: mining with
//! `generatetoaddress`/`generateblock`, reorgs with `invalidateblock`, going down with `stop`,
//! coming back by respawning it on the same datadir and ports.

use std::io;
use std::net::TcpListener as StdTcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use bitcoin::{Block, BlockHash, Transaction, Txid};
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::process::{Child, Command};

use crate::regtest::{NodeError, NodeOptions, RegtestNode, RpcError};
use crate::rpc_client::{ClientError, RpcClient};
use crate::wallet;

/// The environment variable naming a real bitcoind binary to test against.
pub const BITCOIND_EXE_ENV: &str = "BITCOIND_EXE";

/// How long a real bitcoind may take to start serving RPC, or to exit after `stop`.
const PROCESS_TIMEOUT: Duration = Duration::from_secs(60);
/// How often readiness is polled while a real bitcoind starts.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// The end of the error message of a test control that only our node has.
const NEEDS_REGTEST_NODE: &str = "needs the in-process regtest node";

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error(transparent)]
    Rpc(#[from] RpcError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Other(String),
}

impl BackendError {
    /// The JSON-RPC error (code and message), whichever backend produced it.
    pub fn rpc_error(&self) -> Option<&RpcError> {
        match self {
            BackendError::Rpc(e) | BackendError::Client(ClientError::Rpc(e)) => Some(e),
            _ => None,
        }
    }

    /// Whether this is the refusal of a test control that only the in-process node has (such as
    /// [`Bitcoind::set_min_relay_fee`] with a real bitcoind): the test should then be skipped.
    pub fn needs_regtest_node(&self) -> bool {
        matches!(self, BackendError::Other(message) if message.ends_with(NEEDS_REGTEST_NODE))
    }
}

/// A regtest bitcoind for end-to-end tests (see the [module docs](self)).
#[derive(Debug)]
pub struct Bitcoind {
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    InProcess(RegtestNode),
    Real(Box<RealBitcoind>),
}

impl Bitcoind {
    /// A real bitcoind if `BITCOIND_EXE` is set (and not empty), else an in-process node.
    pub async fn start() -> Result<Bitcoind, BackendError> {
        Bitcoind::start_opts(false).await
    }

    /// Like [`start`](Self::start), also publishing ZMQ `hashblock`, `rawblock` and `rawtx`
    /// notifications on a free port of 127.0.0.1
    /// ([`zmq_hashblock_endpoint`](Self::zmq_hashblock_endpoint)).
    pub async fn start_with_zmq() -> Result<Bitcoind, BackendError> {
        Bitcoind::start_opts(true).await
    }

    async fn start_opts(zmq: bool) -> Result<Bitcoind, BackendError> {
        match std::env::var_os(BITCOIND_EXE_ENV).filter(|v| !v.is_empty()) {
            Some(exe) => Ok(Bitcoind { inner: Inner::Real(Box::new(RealBitcoind::spawn(exe.into(), zmq).await?)) }),
            None => {
                let options = NodeOptions { zmq_hashblock_port: zmq.then_some(0), ..NodeOptions::default() };
                Ok(Bitcoind { inner: Inner::InProcess(RegtestNode::start(options).await?) })
            }
        }
    }

    /// Our in-process node on a free port.
    pub async fn in_process() -> Result<Bitcoind, BackendError> {
        let node = RegtestNode::start(NodeOptions::default()).await?;
        Ok(Bitcoind { inner: Inner::InProcess(node) })
    }

    /// A real bitcoind child process, on free ports and a temporary datadir.
    pub async fn real(exe: impl Into<PathBuf>) -> Result<Bitcoind, BackendError> {
        let real = RealBitcoind::spawn(exe.into(), false).await?;
        Ok(Bitcoind { inner: Inner::Real(Box::new(real)) })
    }

    pub fn is_real(&self) -> bool {
        matches!(self.inner, Inner::Real(_))
    }

    /// The in-process node, when that is the backend.
    pub fn regtest_node(&self) -> Option<&RegtestNode> {
        match &self.inner {
            Inner::InProcess(node) => Some(node),
            Inner::Real(_) => None,
        }
    }

    pub fn rpc_url(&self) -> String {
        match &self.inner {
            Inner::InProcess(node) => node.rpc_url(),
            Inner::Real(real) => real.rpc_url(),
        }
    }

    pub fn rpc_port(&self) -> u16 {
        match &self.inner {
            Inner::InProcess(node) => node.rpc_port(),
            Inner::Real(real) => real.rpc_port,
        }
    }

    pub fn datadir(&self) -> &Path {
        match &self.inner {
            Inner::InProcess(node) => node.datadir(),
            Inner::Real(real) => real.datadir.path(),
        }
    }

    /// Where `hashblock`, `rawblock` and `rawtx` notifications are published
    /// (`tcp://127.0.0.1:<port>`), if they are.
    pub fn zmq_hashblock_endpoint(&self) -> Option<String> {
        match &self.inner {
            Inner::InProcess(node) => node.zmq_hashblock_endpoint(),
            Inner::Real(real) => real.zmq_port.map(|port| format!("tcp://127.0.0.1:{port}")),
        }
    }

    /// `<datadir>/regtest/.cookie`.
    pub fn cookie_path(&self) -> PathBuf {
        self.datadir().join("regtest").join(".cookie")
    }

    /// A JSON-RPC client authenticating with the cookie (re-read at each call).
    pub fn rpc_client(&self) -> RpcClient {
        RpcClient::with_cookie(self.rpc_url(), self.cookie_path())
    }

    /// Mines `n` blocks to the anyone-can-spend address, holding the mempool.
    pub async fn mine(&self, n: u32) -> Result<Vec<BlockHash>, BackendError> {
        match &self.inner {
            Inner::InProcess(node) => Ok(node.mine(n)),
            Inner::Real(real) => Ok(real.client.generate_to_address(n, &wallet::anyone_can_spend_address()).await?),
        }
    }

    /// Mines one block holding exactly `txs`, paying to the anyone-can-spend address.
    pub async fn mine_block_with(&self, txs: &[Transaction]) -> Result<BlockHash, BackendError> {
        match &self.inner {
            Inner::InProcess(node) => Ok(node.mine_block_with(txs)?),
            Inner::Real(real) => Ok(real.client.generate_block(&wallet::anyone_can_spend_address(), txs).await?),
        }
    }

    /// [`RegtestNode::set_min_relay_fee`]: raises (or lowers) the minimum relay fee rate, in
    /// sat/kvB. A real bitcoind only takes `-minrelaytxfee` at start: then this is an error
    /// ([`BackendError::needs_regtest_node`] tells it apart, for tests to skip).
    pub async fn set_min_relay_fee(&self, sat_per_kvb: u64) -> Result<(), BackendError> {
        match &self.inner {
            Inner::InProcess(node) => {
                node.set_min_relay_fee(sat_per_kvb);
                Ok(())
            }
            Inner::Real(_) => Err(BackendError::Other(format!("set_min_relay_fee {NEEDS_REGTEST_NODE}"))),
        }
    }

    /// [`RegtestNode::set_mempool_min_fee`]: makes the mempool behave as a full one whose
    /// minimum fee rate is `sat_per_kvb` (0: not full). An error with a real bitcoind, whose
    /// mempool fills up only for real.
    pub async fn set_mempool_min_fee(&self, sat_per_kvb: u64) -> Result<(), BackendError> {
        match &self.inner {
            Inner::InProcess(node) => {
                node.set_mempool_min_fee(sat_per_kvb);
                Ok(())
            }
            Inner::Real(_) => Err(BackendError::Other(format!("set_mempool_min_fee {NEEDS_REGTEST_NODE}"))),
        }
    }

    pub async fn invalidate(&self, hash: &BlockHash) -> Result<(), BackendError> {
        match &self.inner {
            Inner::InProcess(node) => Ok(node.invalidate(hash)?),
            Inner::Real(real) => Ok(real.client.invalidate_block(hash).await?),
        }
    }

    pub async fn reconsider(&self, hash: &BlockHash) -> Result<(), BackendError> {
        match &self.inner {
            Inner::InProcess(node) => Ok(node.reconsider(hash)?),
            Inner::Real(real) => Ok(real.client.reconsider_block(hash).await?),
        }
    }

    /// Height and hash of the active tip.
    pub async fn tip(&self) -> Result<(u32, BlockHash), BackendError> {
        match &self.inner {
            Inner::InProcess(node) => Ok(node.tip()),
            Inner::Real(real) => {
                let info = real.client.call_value("getblockchaininfo", vec![]).await?;
                let height = info["blocks"].as_u64().and_then(|h| u32::try_from(h).ok());
                let hash = info["bestblockhash"].as_str().and_then(|h| h.parse().ok());
                match (height, hash) {
                    (Some(height), Some(hash)) => Ok((height, hash)),
                    _ => Err(BackendError::Other(format!("getblockchaininfo: {info}"))),
                }
            }
        }
    }

    /// A block by hash (active or stale).
    pub async fn block(&self, hash: &BlockHash) -> Result<Block, BackendError> {
        match &self.inner {
            Inner::InProcess(node) => node.block(hash).ok_or_else(|| RpcError::new(-5, "Block not found").into()),
            Inner::Real(real) => Ok(real.client.get_block(hash).await?),
        }
    }

    pub async fn send_raw_transaction(&self, tx: &Transaction) -> Result<Txid, BackendError> {
        match &self.inner {
            Inner::InProcess(node) => Ok(node.send_raw_transaction(tx)?),
            Inner::Real(real) => Ok(real.client.send_raw_transaction(tx).await?),
        }
    }

    pub async fn mempool_contains(&self, txid: &Txid) -> Result<bool, BackendError> {
        match &self.inner {
            Inner::InProcess(node) => Ok(node.mempool_contains(txid)),
            Inner::Real(real) => match real.client.call_value("getmempoolentry", vec![json!(txid)]).await {
                Ok(_) => Ok(true),
                Err(e) if e.rpc_code() == Some(-5) => Ok(false),
                Err(e) => Err(e.into()),
            },
        }
    }

    /// `Some(0)` in the mempool, `Some(n)` with `n` confirmations in the active chain, `None`
    /// otherwise.
    pub async fn tx_confirmations(&self, txid: &Txid) -> Result<Option<u32>, BackendError> {
        match &self.inner {
            Inner::InProcess(node) => Ok(node.tx_confirmations(txid)),
            Inner::Real(real) => match real.client.get_raw_transaction_info(txid).await {
                Ok(info) => {
                    let confirmations = info["confirmations"].as_u64().unwrap_or(0);
                    // A transaction only found in a stale block reports 0 confirmations there.
                    if confirmations == 0 && info.get("blockhash").is_some() {
                        return Ok(None);
                    }
                    Ok(Some(u32::try_from(confirmations).unwrap_or(u32::MAX)))
                }
                Err(e) if e.rpc_code() == Some(-5) => Ok(None),
                Err(e) => Err(e.into()),
            },
        }
    }

    /// Stops serving RPC (a real bitcoind exits); the chain stays on disk / in memory.
    pub async fn go_down(&self) -> Result<(), BackendError> {
        match &self.inner {
            Inner::InProcess(node) => {
                node.go_down().await;
                Ok(())
            }
            Inner::Real(real) => real.go_down().await,
        }
    }

    /// Serves RPC again on the same port, with a new cookie.
    pub async fn come_back(&self) -> Result<(), BackendError> {
        match &self.inner {
            Inner::InProcess(node) => Ok(node.come_back().await?),
            Inner::Real(real) => real.come_back().await,
        }
    }
}

/// A free TCP port on 127.0.0.1 (free when asked: another process may take it meanwhile).
pub fn free_port() -> Result<u16, BackendError> {
    let io_error = |source| BackendError::Io { context: "finding a free port".into(), source };
    let listener = StdTcpListener::bind(("127.0.0.1", 0)).map_err(io_error)?;
    Ok(listener.local_addr().map_err(io_error)?.port())
}

#[derive(Debug)]
struct RealBitcoind {
    exe: PathBuf,
    datadir: TempDir,
    rpc_port: u16,
    p2p_port: u16,
    zmq_port: Option<u16>,
    child: tokio::sync::Mutex<Option<Child>>,
    client: RpcClient,
}

impl RealBitcoind {
    async fn spawn(exe: PathBuf, zmq: bool) -> Result<RealBitcoind, BackendError> {
        let datadir = tempfile::Builder::new()
            .prefix("teos-bitcoind-")
            .tempdir()
            .map_err(|source| BackendError::Io { context: "creating bitcoind's datadir".into(), source })?;
        let rpc_port = free_port()?;
        let p2p_port = free_port()?;
        let zmq_port = if zmq { Some(free_port()?) } else { None };
        let cookie = datadir.path().join("regtest").join(".cookie");
        let client = RpcClient::with_cookie(format!("http://127.0.0.1:{rpc_port}/"), cookie);
        let child = tokio::sync::Mutex::new(None);
        let real = RealBitcoind { exe, datadir, rpc_port, p2p_port, zmq_port, child, client };
        real.come_back().await?;
        Ok(real)
    }

    fn rpc_url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.rpc_port)
    }

    /// Starts the process and waits until it answers RPC.
    async fn come_back(&self) -> Result<(), BackendError> {
        let mut guard = self.child.lock().await;
        if guard.is_some() {
            return Err(BackendError::Other("bitcoind is already running".into()));
        }
        let child = Command::new(&self.exe)
            .arg("-regtest")
            .arg(format!("-datadir={}", self.datadir.path().display()))
            .arg(format!("-rpcport={}", self.rpc_port))
            .arg(format!("-port={}", self.p2p_port))
            .args(["-listen=0", "-server", "-fallbackfee=0.0001", "-txindex=1"])
            .args(self.zmq_port.map(|port| format!("-zmqpubhashblock=tcp://127.0.0.1:{port}")))
            .args(self.zmq_port.map(|port| format!("-zmqpubrawblock=tcp://127.0.0.1:{port}")))
            .args(self.zmq_port.map(|port| format!("-zmqpubrawtx=tcp://127.0.0.1:{port}")))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| BackendError::Io { context: format!("spawning {}", self.exe.display()), source })?;
        let child = guard.insert(child);
        let deadline = tokio::time::Instant::now() + PROCESS_TIMEOUT;
        loop {
            match self.client.call_value("getblockchaininfo", vec![]).await {
                Ok(_) => return Ok(()),
                // Cookie not written yet (or a stale one left by a killed run), port not open
                // yet, or warming up (-28).
                Err(ClientError::Cookie { .. } | ClientError::Transport(_) | ClientError::Http { status: 401, .. }) => {
                }
                Err(e) if e.rpc_code() == Some(-28) => {}
                Err(e) => return Err(e.into()),
            }
            if let Ok(Some(status)) = child.try_wait() {
                *guard = None;
                return Err(BackendError::Other(format!("bitcoind exited while starting: {status}")));
            }
            if tokio::time::Instant::now() > deadline {
                return Err(BackendError::Other("bitcoind did not start in time".into()));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// `stop`, then waits for the process to exit (killing it if it takes too long).
    async fn go_down(&self) -> Result<(), BackendError> {
        let mut guard = self.child.lock().await;
        let Some(mut child) = guard.take() else {
            return Ok(());
        };
        let stop: Result<Value, _> = self.client.call("stop", vec![]).await;
        if let Err(error) = stop {
            tracing::warn!(%error, "bitcoind stop failed; killing it");
            let _ = child.kill().await;
        }
        match tokio::time::timeout(PROCESS_TIMEOUT, child.wait()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(source)) => Err(BackendError::Io { context: "waiting for bitcoind to exit".into(), source }),
            Err(_) => {
                let _ = child.kill().await;
                Err(BackendError::Other("bitcoind did not stop in time".into()))
            }
        }
    }
}
