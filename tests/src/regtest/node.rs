//! [`RegtestNode`]: the in-process handle on a node, its RPC server and its cookie.

use std::fs;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use bitcoin::secp256k1::rand::{thread_rng, RngCore};
use bitcoin::{Block, BlockHash, ScriptBuf, Transaction, Txid};
use tempfile::TempDir;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::http::{serve, Credentials};
use super::rpc::RpcContext;
use super::state::NodeState;
use super::{zmq, RpcError};
use crate::wallet;

/// How to start a [`RegtestNode`].
#[derive(Debug, Clone, Default)]
pub struct NodeOptions {
    /// RPC port on 127.0.0.1; `None` picks a free one.
    pub port: Option<u16>,
    /// Data directory (the cookie goes to `<datadir>/regtest/.cookie`); `None` makes a
    /// temporary one, removed when the node is dropped.
    pub datadir: Option<PathBuf>,
    /// Also accept these credentials (`-rpcuser`/`-rpcpassword`), besides the cookie.
    pub rpc_user: Option<String>,
    pub rpc_password: Option<String>,
    /// Keep the chain (blocks, `invalidateblock`/`reconsiderblock`) in
    /// `<datadir>/regtest/chain.log` and replay it at start.
    pub persist: bool,
    /// Publish ZMQ `hashblock`, `rawblock` and `rawtx` notifications (bitcoind's
    /// `-zmqpubhashblock`, `-zmqpubrawblock` and `-zmqpubrawtx`, all on one endpoint) on this
    /// port of 127.0.0.1 (0 picks a free one); `None`: no publisher. See [`zmq`](super::zmq).
    pub zmq_hashblock_port: Option<u16>,
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("the node is already up")]
    AlreadyUp,
    #[error("rpc_user and rpc_password go together")]
    IncompleteCredentials,
}

fn io_error(context: impl Into<String>) -> impl FnOnce(io::Error) -> NodeError {
    let context = context.into();
    move |source| NodeError::Io { context, source }
}

#[derive(Debug)]
struct Running {
    stop: CancellationToken,
    task: JoinHandle<()>,
    zmq: Option<JoinHandle<()>>,
}

/// A bitcoind-compatible regtest node serving JSON-RPC on 127.0.0.1 (see the
/// [module docs](super) for what it checks).
///
/// The chain lives as long as this handle: [`go_down`](Self::go_down) stops the RPC server (the
/// port then refuses connections) and [`come_back`](Self::come_back) serves again on the same
/// port with a new cookie, as a restarted bitcoind would. The ZMQ publisher, if any, goes down
/// and comes back with it, on its same port.
#[derive(Debug)]
pub struct RegtestNode {
    state: Arc<Mutex<NodeState>>,
    datadir: PathBuf,
    _tempdir: Option<TempDir>,
    addr: SocketAddr,
    user_credentials: Option<String>,
    running: Mutex<Option<Running>>,
    zmq_addr: Option<SocketAddr>,
    zmq_subscriptions: Arc<watch::Sender<u64>>,
}

impl RegtestNode {
    /// Starts a node (with only the genesis block, unless `persist` finds blocks) and serves
    /// RPC. Needs a Tokio runtime.
    pub async fn start(opts: NodeOptions) -> Result<RegtestNode, NodeError> {
        let user_credentials = match (&opts.rpc_user, &opts.rpc_password) {
            (Some(user), Some(password)) => Some(format!("{user}:{password}")),
            (None, None) => None,
            _ => return Err(NodeError::IncompleteCredentials),
        };
        let (datadir, tempdir) = match opts.datadir {
            Some(dir) => (dir, None),
            None => {
                let dir = tempfile::Builder::new()
                    .prefix("teos-regtest-")
                    .tempdir()
                    .map_err(io_error("creating a temporary datadir"))?;
                (dir.path().to_path_buf(), Some(dir))
            }
        };
        let network_dir = datadir.join("regtest");
        fs::create_dir_all(&network_dir).map_err(io_error(format!("creating {}", network_dir.display())))?;
        let state = if opts.persist {
            let path = network_dir.join("chain.log");
            NodeState::with_log(&path).map_err(io_error(format!("opening {}", path.display())))?
        } else {
            NodeState::new()
        };
        let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), opts.port.unwrap_or(0));
        let listener = bind(addr)?;
        let addr = listener.local_addr().map_err(io_error("reading the bound address"))?;
        let zmq = match opts.zmq_hashblock_port {
            Some(port) => {
                let listener = bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port))?;
                let addr = listener.local_addr().map_err(io_error("reading the bound ZMQ address"))?;
                Some((listener, addr))
            }
            None => None,
        };
        let node = RegtestNode {
            state: Arc::new(Mutex::new(state)),
            datadir,
            _tempdir: tempdir,
            addr,
            user_credentials,
            running: Mutex::new(None),
            zmq_addr: zmq.as_ref().map(|(_, addr)| *addr),
            zmq_subscriptions: Arc::new(watch::channel(0).0),
        };
        node.launch(listener, zmq.map(|(listener, _)| listener))?;
        Ok(node)
    }

    fn running(&self) -> MutexGuard<'_, Option<Running>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn state(&self) -> MutexGuard<'_, NodeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes a fresh cookie and serves RPC on `listener` (and ZMQ on `zmq`).
    fn launch(&self, listener: TcpListener, zmq: Option<TcpListener>) -> Result<(), NodeError> {
        let cookie = write_cookie(&self.cookie_path())?;
        let mut accepted = vec![cookie];
        accepted.extend(self.user_credentials.clone());
        let stop = CancellationToken::new();
        let zmq = zmq.map(|zmq_listener| {
            let (notifier, receiver) = mpsc::unbounded_channel();
            self.state().set_notifier(Some(notifier));
            tokio::spawn(zmq::publish(zmq_listener, receiver, self.zmq_subscriptions.clone(), stop.clone()))
        });
        let ctx = RpcContext {
            state: self.state.clone(),
            started: Instant::now(),
            stop: stop.clone(),
            zmq_hashblock: self.zmq_hashblock_endpoint(),
        };
        let cookie_path = self.cookie_path();
        let task = tokio::spawn(async move {
            serve(listener, ctx, Arc::new(Credentials { accepted })).await;
            let _ = fs::remove_file(&cookie_path);
        });
        tracing::info!(url = %self.rpc_url(), zmq = ?self.zmq_hashblock_endpoint(), "regtest node up");
        *self.running() = Some(Running { stop, task, zmq });
        Ok(())
    }

    /// `http://127.0.0.1:<port>/`
    pub fn rpc_url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    pub fn rpc_port(&self) -> u16 {
        self.addr.port()
    }

    pub fn rpc_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn datadir(&self) -> &Path {
        &self.datadir
    }

    /// `tcp://127.0.0.1:<port>` where `hashblock`, `rawblock` and `rawtx` notifications are
    /// published, if enabled.
    pub fn zmq_hashblock_endpoint(&self) -> Option<String> {
        self.zmq_addr.map(|addr| format!("tcp://{addr}"))
    }

    /// How many subscriptions covering `hashblock`, `rawblock` or `rawtx` the publisher has
    /// received since the node started (a subscriber sends one per topic at each connection, so
    /// a reconnection counts again; one covering several topics, such as `raw` or the empty
    /// one, counts once).
    pub fn zmq_subscriptions(&self) -> u64 {
        *self.zmq_subscriptions.borrow()
    }

    /// Resolves once [`zmq_subscriptions`](Self::zmq_subscriptions) reaches `n`: from then on,
    /// that subscriber receives every notification (a PUB socket drops messages published before
    /// a subscription reaches it). Waits forever without a publisher: bound it.
    pub async fn wait_for_zmq_subscriptions(&self, n: u64) {
        let mut count = self.zmq_subscriptions.subscribe();
        let _ = count.wait_for(|count| *count >= n).await;
    }

    /// `<datadir>/regtest/.cookie`, present while the node is up.
    pub fn cookie_path(&self) -> PathBuf {
        self.datadir.join("regtest").join(".cookie")
    }

    /// The current cookie's user and password, if the node is up.
    pub fn cookie_credentials(&self) -> Option<(String, String)> {
        let cookie = fs::read_to_string(self.cookie_path()).ok()?;
        let (user, password) = cookie.trim().split_once(':')?;
        Some((user.to_string(), password.to_string()))
    }

    /// Whether the RPC server is serving (false after `go_down` or an RPC `stop`).
    pub fn is_up(&self) -> bool {
        self.running().as_ref().is_some_and(|r| !r.stop.is_cancelled())
    }

    /// Resolves once the server has been told to stop (RPC `stop` or [`go_down`](Self::go_down)).
    pub async fn stopped(&self) {
        let token = self.running().as_ref().map(|r| r.stop.clone());
        if let Some(token) = token {
            token.cancelled().await;
        }
    }

    /// Stops serving: the listener closes (connections are refused), open connections are
    /// closed (in-flight requests get a short grace period) and the cookie is removed; the ZMQ
    /// publisher closes its port and connections. The chain and the mempool stay. Does nothing if
    /// already down.
    pub async fn go_down(&self) {
        let running = self.running().take();
        if let Some(running) = running {
            running.stop.cancel();
            self.state().set_notifier(None);
            if let Err(error) = running.task.await {
                tracing::warn!(%error, "the RPC server task failed");
            }
            if let Some(zmq) = running.zmq {
                if let Err(error) = zmq.await {
                    tracing::warn!(%error, "the ZMQ publisher task failed");
                }
            }
            tracing::info!(url = %self.rpc_url(), "regtest node down");
        }
    }

    /// Serves again on the same port, with a new cookie (and ZMQ on its same port, its sequence
    /// numbers starting again at 0, as after a bitcoind restart).
    pub async fn come_back(&self) -> Result<(), NodeError> {
        if self.is_up() {
            return Err(NodeError::AlreadyUp);
        }
        // Down through an RPC `stop`: finish that shutdown first.
        self.go_down().await;
        let listener = bind(self.addr)?;
        let zmq = self.zmq_addr.map(bind).transpose()?;
        self.launch(listener, zmq)
    }

    /// The active chain's height and tip.
    pub fn tip(&self) -> (u32, BlockHash) {
        let state = self.state();
        (state.chain.height(), state.chain.tip().hash)
    }

    /// Mines `n` blocks holding the mempool, paying to the anyone-can-spend script
    /// ([`wallet::anyone_can_spend_script`]).
    pub fn mine(&self, n: u32) -> Vec<BlockHash> {
        self.mine_to(n, &wallet::anyone_can_spend_script())
    }

    /// Mines `n` blocks holding the mempool, paying to `script_pubkey`.
    pub fn mine_to(&self, n: u32, script_pubkey: &ScriptBuf) -> Vec<BlockHash> {
        self.state().generate(n, script_pubkey).expect("blocks built on our own tip connect")
    }

    /// Mines one block holding exactly `txs` (mempool or not), as `generateblock` does.
    pub fn mine_block_with(&self, txs: &[Transaction]) -> Result<BlockHash, RpcError> {
        let block = self.state().generate_block(&wallet::anyone_can_spend_script(), txs.to_vec(), true)?;
        Ok(block.block_hash())
    }

    /// `invalidateblock`.
    pub fn invalidate(&self, hash: &BlockHash) -> Result<(), RpcError> {
        self.state().invalidate(hash)
    }

    /// `reconsiderblock`.
    pub fn reconsider(&self, hash: &BlockHash) -> Result<(), RpcError> {
        self.state().reconsider(hash)
    }

    /// `sendrawtransaction` with the default maximum fee rate.
    pub fn send_raw_transaction(&self, tx: &Transaction) -> Result<Txid, RpcError> {
        self.state().send_raw_transaction(tx.clone(), 10_000_000)
    }

    /// Sets the minimum relay fee rate (bitcoind's `-minrelaytxfee`, here changeable at
    /// runtime), in sat/kvB; the default is 1000. A transaction paying less for its virtual size
    /// is refused by `sendrawtransaction` with -26 `min relay fee not met, <fee> < <min fee>`
    /// (in satoshis), and by `testmempoolaccept` with reason `min relay fee not met`.
    ///
    /// Only mempool acceptance is affected: transactions already in the mempool stay, mined
    /// blocks ([`mine`](Self::mine), [`mine_block_with`](Self::mine_block_with), `submitblock`)
    /// are not subject to relay policy, and transactions coming back from disconnected blocks
    /// skip the fee checks, as in bitcoind. `getmempoolinfo` (`minrelaytxfee`, `mempoolminfee`)
    /// and `getnetworkinfo` (`relayfee`) report it. It stays across
    /// [`go_down`](Self::go_down)/[`come_back`](Self::come_back).
    pub fn set_min_relay_fee(&self, sat_per_kvb: u64) {
        self.state().fees.min_relay = sat_per_kvb;
    }

    /// Makes the mempool behave as a full one whose rolling minimum fee rate is `sat_per_kvb`
    /// (0: not full, the default). As in bitcoind, the effective minimum is never below the
    /// incremental relay fee rate (1000 sat/kvB), and it is checked before the minimum relay
    /// fee: a transaction paying less than it for its virtual size is refused with -26
    /// `mempool min fee not met, <fee> < <min fee>` (in satoshis). `getmempoolinfo` reports it
    /// as `mempoolminfee` (when above `minrelaytxfee`).
    ///
    /// Nothing is evicted: the mempool keeps what it holds (a full bitcoind evicts the lowest
    /// fee rates to make room, then raises its minimum above them). Blocks are not affected.
    pub fn set_mempool_min_fee(&self, sat_per_kvb: u64) {
        self.state().fees.mempool_min = sat_per_kvb;
    }

    /// A stored block (active or stale).
    pub fn block(&self, hash: &BlockHash) -> Option<Block> {
        self.state().chain.get(hash).map(|e| e.block.clone())
    }

    /// The active block at `height`.
    pub fn block_at(&self, height: u32) -> Option<Block> {
        let state = self.state();
        let hash = state.chain.hash_at(height)?;
        state.chain.get(&hash).map(|e| e.block.clone())
    }

    pub fn mempool_contains(&self, txid: &Txid) -> bool {
        self.state().mempool.contains(txid)
    }

    /// The mempool's transactions, parents first.
    pub fn mempool_txids(&self) -> Vec<Txid> {
        self.state().mempool.ordered().iter().map(|e| e.txid).collect()
    }

    /// `Some(0)` in the mempool, `Some(n)` with `n` confirmations in the active chain, `None`
    /// otherwise.
    pub fn tx_confirmations(&self, txid: &Txid) -> Option<u32> {
        self.state().tx_confirmations(txid)
    }
}

impl Drop for RegtestNode {
    fn drop(&mut self) {
        if let Some(running) = self.running().take() {
            running.stop.cancel();
        }
        let _ = fs::remove_file(self.cookie_path());
    }
}

/// A listener on `addr` with `SO_REUSEADDR`, so that the port can be bound again right after
/// going down.
fn bind(addr: SocketAddr) -> Result<TcpListener, NodeError> {
    let context = format!("binding {addr}");
    let socket = TcpSocket::new_v4().map_err(io_error(context.clone()))?;
    socket.set_reuseaddr(true).map_err(io_error(context.clone()))?;
    socket.bind(addr).map_err(io_error(context.clone()))?;
    socket.listen(128).map_err(io_error(context))
}

/// Writes `__cookie__:<64 hex>` (mode 0600) through a temporary file, as bitcoind does; returns
/// the `user:password` string.
fn write_cookie(path: &Path) -> Result<String, NodeError> {
    let mut secret = [0u8; 32];
    thread_rng().fill_bytes(&mut secret);
    let cookie = format!("__cookie__:{}", hex::encode(secret));
    let tmp = path.with_extension("tmp");
    let context = format!("writing {}", path.display());
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_error(context.clone()))?;
    file.write_all(cookie.as_bytes()).map_err(io_error(context.clone()))?;
    drop(file);
    fs::rename(&tmp, path).map_err(io_error(context))?;
    Ok(cookie)
}
