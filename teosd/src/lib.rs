//! teosd: The Eye of Satoshi, a Lightning Network watchtower.
//!
//! The binary parses [`config::Config`], sets up tracing and calls [`run`]. Everything else lives
//! here: the protocol ([`protocol`]), the store ([`store`]), the domain ([`gatekeeper`],
//! [`watcher`], [`responder`]) with its request-side facade ([`tower`]), the chain seam and its
//! follower ([`chain`]), bitcoind behind that seam ([`bitcoind`]), the APIs ([`api`]) and their
//! optional onion service ([`tor`]).
#![cfg_attr(not(test), deny(clippy::unwrap_used))]
#![deny(missing_docs)]

pub mod api;
pub mod backup;
pub mod bitcoind;
pub mod chain;
pub mod config;
pub mod disk;
pub mod gatekeeper;
pub mod health;
pub mod intake;
pub mod keys;
pub mod locks;
pub mod metrics;
pub mod protocol;
pub mod responder;
pub mod sd_notify;
pub mod store;
pub mod task;
pub mod tls;
pub mod tor;
pub mod tower;
pub mod watcher;

#[cfg(test)]
mod test_utils;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::admission::RateLimits;
use crate::api::http::{BodyLimits, HttpSettings};
use crate::api::server::ConnectionLimits;
use crate::bitcoind::rpc::BitcoindRpc;
use crate::bitcoind::zmq::OfferedBlocks;
use crate::bitcoind::{BitcoindBroadcaster, BitcoindSource};
use crate::chain::follower::FollowerSettings;
use crate::chain::{Broadcaster, ChainFollower, ChainListener, ChainStatus};
use crate::config::{Config, Policy};
use crate::disk::DiskReserve;
use crate::gatekeeper::Gatekeeper;
use crate::health::HealthCheck;
use crate::intake::IntakeThread;
use crate::locks::UserLocks;
use crate::protocol::TowerSigner;
use crate::responder::Responder;
use crate::store::Store;
use crate::tower::Tower;
use crate::watcher::Watcher;

/// Transactions from ZMQ `rawtx` waiting for the follower, at most (more are dropped: the
/// mempool poll catches up).
const RAWTX_QUEUE: usize = 10_000;

/// How long shutdown waits for requests in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Runs the tower until `shutdown` is cancelled (SIGINT, SIGTERM or the admin `stop`). Returns an
/// error if start-up fails, or if the chain follower gives up (its store failing for longer than
/// `commit_failure_exit_secs`), for the binary to exit non-zero.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    tracing::info!(version = env!("CARGO_PKG_VERSION"), config = %config.summary(), "starting teosd");
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    let network_dir = prepare_data_dir(&config)?;
    let disk = Arc::new(DiskReserve::new(&network_dir, config.limits.disk_reserve_bytes));
    // Said before the store opens: a full disk may stop it from opening at all.
    let _ = disk.check();
    let onion_key = load_onion_key(&config, &network_dir).await?;
    let store = open_store(&network_dir, config.db_cache_mib).await?;
    let signer = load_tower_key(&store, config.overwrite_key).await?;
    tracing::info!(tower_id = %signer.tower_id(), "tower key loaded");
    let bitcoind = connect_bitcoind(&config)?;
    let (watcher, listeners) = build_domain(&config.policy, &store, signer, bitcoind.broadcaster.clone())
        .context("counting the registered users")?;
    let locks = Arc::new(UserLocks::default());
    let follower = build_follower(&config, &store, &locks, &bitcoind, listeners)?;
    let tasks = TaskTracker::new();
    // From here on: catching up counts as progress for systemd's watchdog too.
    tasks.spawn(sd_notify::watchdog(follower.status(), shutdown.clone()));
    if !catch_up(&follower, &config, &shutdown).await? {
        tracing::info!("shutdown requested before bitcoind was reached");
        return Ok(());
    }

    let health = HealthCheck::new(follower.status(), disk.clone(), config.limits.max_blocks_behind);
    let (tower, intake) = Tower::new(watcher, locks, follower.status(), Some(follower.waker()), disk)
        .context("starting the appointment intake's thread")?;
    let http_stop = CancellationToken::new();
    start_metrics(&config, &tower, &tasks, http_stop.clone()).await?;
    let public_http = start_public_api(&config, tower.clone(), health.clone(), &tasks, http_stop.clone()).await?;
    let onion = start_onion_service(&config, &network_dir, onion_key, public_http, &tasks, http_stop.clone());
    start_admin_api(&config, &store, tower, health, onion, &tasks, shutdown.clone()).await?;
    let chain_stop = CancellationToken::new();
    let gave_up = start_chain(&config, follower.clone(), &bitcoind, &tasks, chain_stop.clone(), shutdown.clone());
    tasks.close();
    tracing::info!(height = follower.status().borrow().tip_height, "Tower ready");
    sd_notify::ready();

    shutdown.cancelled().await;
    sd_notify::stopping();
    stop_in_order(&tasks, &http_stop, &chain_stop, intake).await;
    drop(store);
    tracing::info!("Shutdown complete");
    let failure = gave_up.lock().unwrap_or_else(|p| p.into_inner()).take();
    match failure {
        Some(failure) => Err(anyhow::anyhow!("the chain follower gave up: {failure}")),
        None => Ok(()),
    }
}

/// Creates `<datadir>` and `<datadir>/<network>` (owner-only), returning the latter.
fn prepare_data_dir(config: &Config) -> anyhow::Result<PathBuf> {
    let dir = config.network_dir();
    for path in [&config.data_dir, &dir] {
        std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
        restrict_permissions(path)?;
    }
    Ok(dir)
}

#[cfg(unix)]
fn restrict_permissions(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("restricting permissions of {}", path.display()))
}

#[cfg(not(unix))]
fn restrict_permissions(_: &Path) -> anyhow::Result<()> {
    Ok(())
}

/// bitcoind behind the chain seam: one RPC client for reading blocks and sending penalties, and
/// the blocks its ZMQ `rawblock` feed offers.
struct Bitcoind {
    source: Arc<BitcoindSource>,
    broadcaster: Arc<BitcoindBroadcaster>,
    offered: Arc<OfferedBlocks>,
}

fn connect_bitcoind(config: &Config) -> anyhow::Result<Bitcoind> {
    let rpc = Arc::new(BitcoindRpc::new(&config.bitcoind).context("creating the bitcoind client")?);
    let offered = Arc::new(OfferedBlocks::default());
    let source = Arc::new(BitcoindSource::new(rpc.clone(), offered.clone()));
    let broadcaster = Arc::new(BitcoindBroadcaster::new(rpc, tokio::runtime::Handle::current()));
    Ok(Bitcoind { source, broadcaster, offered })
}

/// The chain listeners, in the order blocks are shown to them.
type Listeners = Vec<Arc<dyn ChainListener>>;

/// The Gatekeeper, Watcher and Responder, and the order in which blocks are shown to them: the
/// Watcher finds breaches (and hands them to the Responder), the Responder follows its trackers,
/// the Gatekeeper settles refunds and expiries last (see `chain`).
pub(crate) fn build_domain(
    policy: &Policy,
    store: &Store,
    signer: TowerSigner,
    broadcaster: Arc<dyn Broadcaster>,
) -> Result<(Arc<Watcher>, Listeners), store::StoreError> {
    let gatekeeper = Gatekeeper::new(store.clone(), policy.clone())?;
    let responder = Arc::new(Responder::new(store.clone(), broadcaster, policy.rebroadcast_after));
    let watcher = Arc::new(Watcher::new(store.clone(), gatekeeper.clone(), signer, responder.clone()));
    let listeners: Vec<Arc<dyn ChainListener>> = vec![watcher.clone(), responder, Arc::new(gatekeeper)];
    Ok((watcher, listeners))
}

async fn open_store(network_dir: &Path, cache_mib: usize) -> anyhow::Result<Store> {
    let path = network_dir.join("db");
    let store = task::blocking({
        let path = path.clone();
        move || Store::open(&path, cache_mib)
    })
    .await?
    .with_context(|| format!("opening the store at {}", path.display()))?;
    tracing::info!(path = %path.display(), "store opened");
    Ok(store)
}

async fn load_tower_key(store: &Store, rotate: bool) -> anyhow::Result<TowerSigner> {
    let store = store.clone();
    task::blocking(move || keys::load_or_create_tower_key(&store, rotate)).await?.context("loading the tower key")
}

/// Waits for bitcoind and processes every block missed while the tower was down, before any
/// API opens. Returns false if shutdown came first.
async fn catch_up(follower: &ChainFollower, config: &Config, shutdown: &CancellationToken) -> anyhow::Result<bool> {
    tracing::info!(url = %config.bitcoind.rpc_url(), "connecting to bitcoind");
    if !follower.wait_for_source(shutdown).await? {
        return Ok(false);
    }
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(false),
            result = follower.sync() => match result {
                Ok(()) => return Ok(true),
                Err(e) if e.is_transient() => {
                    tracing::warn!(error = %e, "bitcoind went away during catch-up; retrying");
                    if !follower.wait_for_source(shutdown).await? {
                        return Ok(false);
                    }
                }
                Err(e) => return Err(e).context("catching up with the chain"),
            }
        }
    }
}

/// The follower over bitcoind, with the listeners in their order, starting at the stored tip.
fn build_follower(
    config: &Config,
    store: &Store,
    locks: &Arc<UserLocks>,
    bitcoind: &Bitcoind,
    listeners: Vec<Arc<dyn ChainListener>>,
) -> anyhow::Result<ChainFollower> {
    let start_height = store.tip().context("reading the stored chain tip")?.map_or(0, |(h, _)| h);
    let (status, _) = watch::channel(ChainStatus::starting(start_height));
    let settings = FollowerSettings {
        network: config.network,
        recent_block_lookback: config.policy.recent_block_lookback,
        mempool_poll: config.bitcoind.mempool_poll,
    };
    ChainFollower::new(bitcoind.source.clone(), store.clone(), locks.clone(), listeners, settings, status)
        .context("starting the chain follower's thread")
}

/// Starts the ZMQ subscribers and the follower. If the follower gives up, the failure is kept in
/// the returned slot and the tower shuts down.
fn start_chain(
    config: &Config,
    follower: ChainFollower,
    bitcoind: &Bitcoind,
    tasks: &TaskTracker,
    stop: CancellationToken,
    shutdown: CancellationToken,
) -> Arc<std::sync::Mutex<Option<String>>> {
    if let Some(endpoint) = &config.bitcoind.zmq_hashblock {
        let feed = bitcoind::zmq::Feed::Hashblock { wake: follower.waker() };
        tasks.spawn(bitcoind::zmq::subscribe(endpoint.clone(), feed, stop.clone()));
    }
    if let Some(endpoint) = &config.bitcoind.zmq_rawblock {
        let feed = bitcoind::zmq::Feed::Rawblock { wake: follower.waker(), blocks: bitcoind.offered.clone() };
        tasks.spawn(bitcoind::zmq::subscribe(endpoint.clone(), feed, stop.clone()));
    }
    let rawtx = config.bitcoind.zmq_rawtx.as_ref().map(|endpoint| {
        let (txs, received) = tokio::sync::mpsc::channel(RAWTX_QUEUE);
        let feed = bitcoind::zmq::Feed::Rawtx { wake: follower.waker(), txs };
        tasks.spawn(bitcoind::zmq::subscribe(endpoint.clone(), feed, stop.clone()));
        received
    });
    let gave_up = Arc::new(std::sync::Mutex::new(None));
    let (interval, exit_after) = (config.bitcoind.polling_interval, config.limits.commit_failure_exit);
    tasks.spawn({
        let gave_up = gave_up.clone();
        async move {
            if let Err(e) = follower.follow(interval, exit_after, rawtx, stop).await {
                *gave_up.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                shutdown.cancel();
            }
        }
    });
    gave_up
}

/// Opens the public HTTP API; returns the address it is bound to.
async fn start_public_api(
    config: &Config,
    tower: Tower,
    health: HealthCheck,
    tasks: &TaskTracker,
    stop: CancellationToken,
) -> anyhow::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind(config.public_http_addr)
        .await
        .with_context(|| format!("binding the public HTTP API to {}", config.public_http_addr))?;
    let addr = listener.local_addr().context("reading the HTTP API address")?;
    let limits = &config.limits;
    let settings = HttpSettings {
        bodies: BodyLimits::for_blob_size(config.policy.max_blob_size),
        connections: ConnectionLimits {
            max_connections: limits.max_connections,
            max_connections_per_ip: limits.max_connections_per_ip,
            header_timeout: limits.header_timeout,
            request_timeout: limits.request_timeout,
        },
        rates: RateLimits {
            registrations_per_minute: limits.registrations_per_minute,
            appointments_per_second: limits.appointments_per_second,
            subscription_info_per_minute: limits.subscription_info_per_minute,
        },
        behind_proxy: config.behind_proxy,
        python_teos_clients: config.python_teos_clients,
    };
    tasks.spawn(api::http::serve(listener, tower, health, settings, stop));
    tracing::info!(%addr, "public HTTP API listening");
    Ok(addr)
}

/// With `tor_support`, the saved onion key (none before Tor first made one). A key file that
/// cannot be read stops the start: a new key would silently change the onion address.
async fn load_onion_key(config: &Config, network_dir: &Path) -> anyhow::Result<Option<tor::OnionKey>> {
    if config.tor.is_none() {
        return Ok(None);
    }
    let path = network_dir.join(tor::ONION_KEY_FILE);
    Ok(task::blocking(move || tor::load_key(&path)).await??)
}

/// With `tor_support`, starts the task that publishes the public API (bound at `public_http`)
/// as an onion service until `stop`. Tor being unreachable is retried in that task.
fn start_onion_service(
    config: &Config,
    network_dir: &Path,
    key: Option<tor::OnionKey>,
    public_http: std::net::SocketAddr,
    tasks: &TaskTracker,
    stop: CancellationToken,
) -> tor::PublishedOnion {
    let Some(tor_config) = &config.tor else { return tor::PublishedOnion::none() };
    let settings = tor::OnionSettings::new(tor_config, public_http, network_dir);
    tracing::info!(
        control = %settings.control_addr,
        key = if key.is_some() { "loaded" } else { "none yet: Tor will make one" },
        "publishing the public API as an onion service"
    );
    let (published, task) = tor::start(settings, key, stop);
    tasks.spawn(task);
    published
}

/// Opens the Prometheus `/metrics` endpoint on `metrics_addr`, unless it is off. It closes with
/// the public API.
async fn start_metrics(
    config: &Config,
    tower: &Tower,
    tasks: &TaskTracker,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let Some(addr) = config.metrics_addr else {
        tracing::info!("metrics endpoint off");
        return Ok(());
    };
    let listener =
        tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding the metrics endpoint to {addr}"))?;
    let addr = listener.local_addr().context("reading the metrics endpoint's address")?;
    tasks.spawn(api::metrics::serve(listener, tower.clone(), stop));
    tracing::info!(%addr, "metrics endpoint listening (GET /metrics)");
    Ok(())
}

/// Opens the admin gRPC API on `admin_grpc_addr` with mutual TLS (certificates in the data
/// directory, created on first start). It closes when `shutdown` fires, like the rest of the tower.
async fn start_admin_api(
    config: &Config,
    store: &Store,
    tower: Tower,
    health: HealthCheck,
    onion: tor::PublishedOnion,
    tasks: &TaskTracker,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let data_dir = config.data_dir.clone();
    let tls = task::blocking(move || tls::load_or_create(&data_dir))
        .await?
        .with_context(|| format!("preparing the admin API's TLS certificates in {}", config.data_dir.display()))?;
    // Fail here rather than in the server task if a key does not match its certificate.
    tonic::transport::Server::builder().tls_config(tls.server_config()).context("loading the admin API's TLS files")?;
    let listener = tokio::net::TcpListener::bind(config.admin_grpc_addr)
        .await
        .with_context(|| format!("binding the admin gRPC API to {}", config.admin_grpc_addr))?;
    let addr = listener.local_addr().context("reading the admin API address")?;
    let addresses = api::admin::ServedAddresses { public_http: config.public_http_addr, admin_grpc: addr, onion };
    let service = api::admin::AdminService::new(
        store.clone(),
        tower.tower_id(),
        config.network,
        addresses,
        health,
        shutdown.clone(),
    )
    .with_tower(tower)
    .with_data_dir(config.data_dir.clone());
    tasks.spawn(async move {
        if let Err(e) = api::admin::serve(listener, &tls, service, shutdown).await {
            tracing::error!(error = %e, "the admin gRPC API failed");
        }
    });
    tracing::info!(%addr, "admin gRPC API listening (mutual TLS)");
    Ok(())
}

/// Stops accepting requests and lets those in flight finish, then stops the chain follower.
async fn stop_in_order(
    tasks: &TaskTracker,
    http_stop: &CancellationToken,
    chain_stop: &CancellationToken,
    intake: IntakeThread,
) {
    tracing::info!(
        "Shutting down tower: 1/3 closing the public API and its onion service (finishing requests in flight)"
    );
    http_stop.cancel();
    tracing::info!("Shutting down tower: 2/3 stopping the chain follower");
    chain_stop.cancel();
    if tokio::time::timeout(SHUTDOWN_GRACE, tasks.wait()).await.is_err() {
        tracing::warn!(grace = ?SHUTDOWN_GRACE, "tasks did not stop in time");
    }
    // The APIs are gone, and with them every handle to the intake: its thread ends.
    if tokio::time::timeout(SHUTDOWN_GRACE, intake.ended()).await.is_err() {
        tracing::warn!(grace = ?SHUTDOWN_GRACE, "the appointment intake did not stop in time");
    }
    tracing::info!("Shutting down tower: 3/3 closing the store");
}
