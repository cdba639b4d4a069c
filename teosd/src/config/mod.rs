//! The tower's configuration: one typed struct, layered as defaults < `<datadir>/teos.toml` <
//! `TEOS_*` environment < command-line flags, validated once. See `docs/config.md`.

mod cli;
mod file;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bitcoin::Network;

pub use cli::Cli;
use file::FileConfig;

/// Name of the configuration file inside the data directory.
pub const CONFIG_FILE_NAME: &str = "teos.toml";

/// Everything that can be wrong with a configuration. Each names the setting at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file exists but could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown key or a value of the wrong type.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, naming the key and line.
        message: String,
    },
    /// A setting has a value that cannot be used.
    #[error("invalid value for `{key}`: {reason}")]
    Invalid {
        /// The setting.
        key: &'static str,
        /// Why.
        reason: String,
    },
    /// No data directory was given and no home directory could be found.
    #[error("no home directory found: pass --datadir")]
    NoHome,
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key, reason: reason.into() }
}

/// A string that never shows in `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: String) -> Self {
        Secret(value)
    }
    /// The secret itself: only for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"****\"")
    }
}

/// How teosd authenticates to bitcoind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BitcoindAuth {
    /// `rpcuser`/`rpcpassword`.
    UserPass {
        /// The user.
        user: String,
        /// The password.
        password: Secret,
    },
    /// bitcoind's cookie file, re-read whenever authentication fails.
    Cookie(PathBuf),
}

/// Where and how to reach bitcoind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BitcoindConfig {
    /// Host name or address of the RPC server.
    pub host: String,
    /// RPC port.
    pub port: u16,
    /// Credentials.
    pub auth: BitcoindAuth,
    /// bitcoind's `zmqpubhashblock` endpoint, if block notifications are enabled.
    pub zmq_hashblock: Option<String>,
    /// bitcoind's `zmqpubrawblock` endpoint, if whole blocks are to come over ZMQ.
    pub zmq_rawblock: Option<String>,
    /// bitcoind's `zmqpubrawtx` endpoint, if mempool transactions are to come over ZMQ.
    pub zmq_rawtx: Option<String>,
    /// How often the mempool is polled for disputes (`None`: never).
    pub mempool_poll: Option<Duration>,
    /// How often to poll for a new tip (also the fallback when ZMQ is on).
    pub polling_interval: Duration,
}

impl BitcoindConfig {
    /// `http://host:port/`.
    pub fn rpc_url(&self) -> String {
        format!("http://{}:{}/", self.host, self.port)
    }
}

/// Subscription and appointment policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Slots granted per registration.
    pub subscription_slots: u32,
    /// Blocks a registration lasts.
    pub subscription_duration: u32,
    /// Grace period in blocks after expiry before a user's data is removed.
    pub expiry_delta: u32,
    /// Smallest `to_self_delay` accepted.
    pub min_to_self_delay: u32,
    /// Largest encrypted blob accepted, in bytes.
    pub max_blob_size: usize,
    /// How many recent blocks are searched for an appointment's dispute when it arrives.
    pub recent_block_lookback: u32,
    /// Blocks without a confirmation after which a penalty is sent again.
    pub rebroadcast_after: u32,
    /// Slots one user may hold: a renewal that would pass it is refused.
    pub max_slots_per_user: u32,
    /// Registered users at most: new users are refused beyond it.
    pub max_users: u64,
}

/// What strangers on the public API may make the tower spend, and when it calls itself unready
/// (docs/operations.md, "Running a public tower").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once on the public API.
    pub max_connections: usize,
    /// Of those, from one source address (0: no cap).
    pub max_connections_per_ip: usize,
    /// Time a connection has to send a request head, once open or after its last answer.
    pub header_timeout: Duration,
    /// Time a whole request (head, body, answer) may take.
    pub request_timeout: Duration,
    /// Registrations per source per minute (0: no limit).
    pub registrations_per_minute: u32,
    /// Appointment writes per source per second, bursts of 4x (0: no limit).
    pub appointments_per_second: u32,
    /// get_subscription_info per source, and per user, per minute (0: no limit).
    pub subscription_info_per_minute: u32,
    /// Free bytes the data directory keeps for the chain.
    pub disk_reserve_bytes: u64,
    /// How long block commits may keep failing before teosd exits non-zero.
    pub commit_failure_exit: Duration,
    /// Blocks behind bitcoind beyond which the tower is not ready.
    pub max_blocks_behind: u32,
}

/// Log output settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Debug level for teosd's own modules.
    pub debug: bool,
    /// Debug level for dependencies.
    pub deps_debug: bool,
    /// One JSON object per line instead of text.
    pub json: bool,
}

/// The onion service (`tor_support`): see `docs/operations.md`, "Tor".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TorConfig {
    /// Tor's control port (on loopback).
    pub control_addr: SocketAddr,
    /// The port the onion service offers.
    pub onion_port: u16,
    /// The control port's password (`HashedControlPassword`), if it wants one.
    pub password: Option<Secret>,
}

/// The validated configuration of one tower.
#[derive(Debug, Clone)]
pub struct Config {
    /// Root data directory (config file, TLS material).
    pub data_dir: PathBuf,
    /// The Bitcoin network.
    pub network: Network,
    /// bitcoind access.
    pub bitcoind: BitcoindConfig,
    /// Where the public HTTP API listens.
    pub public_http_addr: SocketAddr,
    /// Where the admin gRPC API listens.
    pub admin_grpc_addr: SocketAddr,
    /// Take client addresses for logs from `X-Real-IP` (behind a reverse proxy).
    pub behind_proxy: bool,
    /// Accept python-teos registrations (`{"public_key"}`): see docs/api.md's dialects.
    pub python_teos_clients: bool,
    /// The onion service, when `tor_support` is on.
    pub tor: Option<TorConfig>,
    /// Where the Prometheus `/metrics` endpoint listens (`None`: off).
    pub metrics_addr: Option<SocketAddr>,
    /// Subscription and appointment policy.
    pub policy: Policy,
    /// Resource limits of the public API and health thresholds.
    pub limits: Limits,
    /// Rotate the tower key at start (old keys are kept).
    pub overwrite_key: bool,
    /// RocksDB block cache, in MiB.
    pub db_cache_mib: usize,
    /// Logging.
    pub log: LogConfig,
    /// Things the operator should hear about (deprecated keys), logged once tracing is up.
    pub warnings: Vec<String>,
}

impl Config {
    /// The per-network directory (`<datadir>/<network>`) holding the store.
    pub fn network_dir(&self) -> PathBuf {
        self.data_dir.join(network_dir_name(self.network))
    }

    /// Builds the configuration from parsed flags (which carry the `TEOS_*` environment), the
    /// config file in the data directory, and the environment-only secrets.
    pub fn load(cli: &Cli) -> Result<Config, ConfigError> {
        let data_dir = match &cli.data_dir {
            Some(dir) => dir.clone(),
            None => default_data_dir()?,
        };
        let path = data_dir.join(CONFIG_FILE_NAME);
        let file = FileConfig::read(&path)?;
        let exposed =
            (file.btc_rpc_password.is_some() || file.tor_control_password.is_some()) && readable_by_others(&path);
        let password_env = std::env::var("TEOS_BTC_RPC_PASSWORD").ok();
        let mut config = Config::build(data_dir, cli, file, password_env)?;
        config.tor_password_from_env(std::env::var("TEOS_TOR_CONTROL_PASSWORD").ok());
        if exposed {
            config
                .warnings
                .push(format!("{} holds a password and other users can read it: chmod 600 it", path.display()));
        }
        Ok(config)
    }

    /// `TEOS_TOR_CONTROL_PASSWORD`, when set, beats `tor_control_password` from the file.
    fn tor_password_from_env(&mut self, password: Option<String>) {
        if let (Some(tor), Some(password)) = (self.tor.as_mut(), password.filter(|p| !p.is_empty())) {
            tor.password = Some(Secret::new(password));
        }
    }

    fn build(
        data_dir: PathBuf,
        cli: &Cli,
        file: FileConfig,
        password_env: Option<String>,
    ) -> Result<Config, ConfigError> {
        if cli.btc_rpc_password.is_some() {
            return Err(invalid(
                "btc_rpc_password",
                "refusing a password on the command line, where process listings show it; set \
                 `btc_rpc_password` in teos.toml or TEOS_BTC_RPC_PASSWORD, or use the cookie",
            ));
        }
        let warnings = file.deprecation_warnings();
        let network_name = pick(&cli.btc_network, &file.btc_network, "mainnet".to_string());
        let network = parse_network(&network_name)?;
        let bitcoind = bitcoind_config(cli, &file, network, password_env)?;
        let api_bind = pick(&cli.api_bind, &file.api_bind, "127.0.0.1".to_string());
        let api_port = pick(&cli.api_port, &file.api_port, 9814);
        let rpc_bind = pick(&cli.rpc_bind, &file.rpc_bind, "127.0.0.1".to_string());
        let rpc_port = pick(&cli.rpc_port, &file.rpc_port, 8814);
        let policy = policy(cli, &file)?;
        let limits = limits(cli, &file)?;
        Config {
            data_dir,
            network,
            bitcoind,
            public_http_addr: socket_addr("api_bind", &api_bind, api_port)?,
            admin_grpc_addr: socket_addr("rpc_bind", &rpc_bind, rpc_port)?,
            behind_proxy: cli.behind_proxy || file.behind_proxy.unwrap_or(false),
            python_teos_clients: pick(&cli.python_teos_clients, &file.python_teos_clients, true),
            tor: tor_config(cli, &file)?,
            metrics_addr: metrics_addr(&pick(&cli.metrics_addr, &file.metrics_addr, DEFAULT_METRICS_ADDR.to_string()))?,
            policy,
            limits,
            overwrite_key: cli.overwrite_key,
            db_cache_mib: pick(&cli.db_cache_mib, &file.db_cache_mib, 32),
            log: LogConfig {
                debug: cli.debug || file.debug.unwrap_or(false),
                deps_debug: cli.deps_debug || file.deps_debug.unwrap_or(false),
                json: cli.log_json || file.log_format.as_deref() == Some("json"),
            },
            warnings,
        }
        .checked(file.log_format.as_deref())
    }

    fn checked(self, log_format: Option<&str>) -> Result<Config, ConfigError> {
        if let Some(format) = log_format {
            if format != "json" && format != "text" {
                return Err(invalid("log_format", format!("`{format}`: expected `text` or `json`")));
            }
        }
        if self.db_cache_mib == 0 {
            return Err(invalid("db_cache_mib", "must be at least 1"));
        }
        Ok(self)
    }

    /// The settings that differ from their defaults, for the start-up log line. Never includes
    /// secrets.
    pub fn summary(&self) -> String {
        format!(
            "network={} datadir={} bitcoind={}:{} auth={} http={} admin={} slots={} duration={} \
             expiry_delta={} min_to_self_delay={} polling={:?} zmq={} zmq_rawblock={} zmq_rawtx={} mempool_poll={:?} \
             tor={} metrics={}",
            self.network,
            self.data_dir.display(),
            self.bitcoind.host,
            self.bitcoind.port,
            match &self.bitcoind.auth {
                BitcoindAuth::UserPass { user, .. } => format!("user:{user}"),
                BitcoindAuth::Cookie(path) => format!("cookie:{}", path.display()),
            },
            self.public_http_addr,
            self.admin_grpc_addr,
            self.policy.subscription_slots,
            self.policy.subscription_duration,
            self.policy.expiry_delta,
            self.policy.min_to_self_delay,
            self.bitcoind.polling_interval,
            self.bitcoind.zmq_hashblock.as_deref().unwrap_or("off"),
            self.bitcoind.zmq_rawblock.as_deref().unwrap_or("off"),
            self.bitcoind.zmq_rawtx.as_deref().unwrap_or("off"),
            self.bitcoind.mempool_poll,
            match &self.tor {
                Some(tor) => format!("control:{} onion_port:{}", tor.control_addr, tor.onion_port),
                None => "off".to_string(),
            },
            self.metrics_addr.map_or_else(|| "off".to_string(), |a| a.to_string()),
        )
    }
}

/// Whether users other than the file's owner may read `path`.
#[cfg(unix)]
fn readable_by_others(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o044 != 0)
}

#[cfg(not(unix))]
fn readable_by_others(_: &Path) -> bool {
    false
}

/// Flags (with their environment variables) beat the file, which beats the default.
fn pick<T: Clone>(flag: &Option<T>, file: &Option<T>, default: T) -> T {
    flag.clone().or_else(|| file.clone()).unwrap_or(default)
}

fn default_data_dir() -> Result<PathBuf, ConfigError> {
    directories::BaseDirs::new().map(|d| d.home_dir().join(".teos")).ok_or(ConfigError::NoHome)
}

/// The per-network folder name.
pub fn network_dir_name(network: Network) -> &'static str {
    match network {
        Network::Bitcoin => "mainnet",
        Network::Testnet => "testnet",
        Network::Testnet4 => "testnet4",
        Network::Signet => "signet",
        _ => "regtest",
    }
}

fn parse_network(name: &str) -> Result<Network, ConfigError> {
    match name {
        "mainnet" | "main" | "bitcoin" => Ok(Network::Bitcoin),
        "testnet" | "test" | "testnet3" => Ok(Network::Testnet),
        "testnet4" => Ok(Network::Testnet4),
        "signet" => Ok(Network::Signet),
        "regtest" => Ok(Network::Regtest),
        other => Err(invalid(
            "btc_network",
            format!("unknown network `{other}`: expected mainnet, testnet, testnet4, signet or regtest"),
        )),
    }
}

fn default_rpc_port(network: Network) -> u16 {
    match network {
        Network::Bitcoin => 8332,
        Network::Testnet => 18332,
        Network::Testnet4 => 48332,
        Network::Signet => 38332,
        _ => 18443,
    }
}

/// bitcoind's default cookie: `~/.bitcoin[/<net>]/.cookie`.
fn default_cookie(network: Network) -> Result<PathBuf, ConfigError> {
    let base = directories::BaseDirs::new().ok_or(ConfigError::NoHome)?.home_dir().join(".bitcoin");
    Ok(match network {
        Network::Bitcoin => base.join(".cookie"),
        Network::Testnet => base.join("testnet3/.cookie"),
        Network::Testnet4 => base.join("testnet4/.cookie"),
        Network::Signet => base.join("signet/.cookie"),
        _ => base.join("regtest/.cookie"),
    })
}

fn bitcoind_config(
    cli: &Cli,
    file: &FileConfig,
    network: Network,
    password_env: Option<String>,
) -> Result<BitcoindConfig, ConfigError> {
    let user = pick(&cli.btc_rpc_user, &file.btc_rpc_user, String::new());
    let password = password_env.or_else(|| file.btc_rpc_password.clone()).unwrap_or_default();
    let cookie = pick(&cli.btc_rpc_cookie, &file.btc_rpc_cookie, String::new());
    let auth = match (user.is_empty(), password.is_empty(), cookie.is_empty()) {
        (false, false, true) => BitcoindAuth::UserPass { user, password: Secret::new(password) },
        (true, true, false) => BitcoindAuth::Cookie(expand_home(&cookie)),
        (true, true, true) => BitcoindAuth::Cookie(default_cookie(network)?),
        (_, _, false) => {
            return Err(invalid(
                "btc_rpc_cookie",
                "conflicting bitcoind credentials: give either btc_rpc_user and btc_rpc_password, \
                 or btc_rpc_cookie, not both",
            ))
        }
        (true, false, true) => return Err(invalid("btc_rpc_user", "btc_rpc_password is set but btc_rpc_user is not")),
        (false, true, true) => {
            return Err(invalid("btc_rpc_password", "btc_rpc_user is set but btc_rpc_password is not"))
        }
    };
    let port = match pick(&cli.btc_rpc_port, &file.btc_rpc_port, 0) {
        0 => default_rpc_port(network),
        port => port,
    };
    let host = pick(&cli.btc_rpc_connect, &file.btc_rpc_connect, "localhost".to_string());
    let host = host.trim_start_matches("http://").trim_end_matches('/').to_string();
    if host.is_empty() {
        return Err(invalid("btc_rpc_connect", "empty host"));
    }
    let polling_secs = pick(&cli.polling_delta, &file.polling_delta, 1);
    if polling_secs == 0 {
        return Err(invalid("polling_delta", "must be at least 1 second"));
    }
    let zmq_hashblock = zmq_endpoint("zmq_hashblock", &cli.zmq_hashblock, &file.zmq_hashblock)?;
    let zmq_rawblock = zmq_endpoint("zmq_rawblock", &cli.zmq_rawblock, &file.zmq_rawblock)?;
    let zmq_rawtx = zmq_endpoint("zmq_rawtx", &cli.zmq_rawtx, &file.zmq_rawtx)?;
    let mempool_poll = match pick(&cli.mempool_poll_secs, &file.mempool_poll_secs, 5) {
        0 => None,
        secs => Some(Duration::from_secs(secs)),
    };
    let polling_interval = Duration::from_secs(polling_secs);
    Ok(BitcoindConfig { host, port, auth, zmq_hashblock, zmq_rawblock, zmq_rawtx, mempool_poll, polling_interval })
}

/// A ZMQ endpoint setting (flag over file; empty means off), checked.
fn zmq_endpoint(key: &'static str, cli: &Option<String>, file: &Option<String>) -> Result<Option<String>, ConfigError> {
    let endpoint = cli.clone().or_else(|| file.clone()).filter(|s| !s.is_empty());
    if let Some(endpoint) = &endpoint {
        endpoint
            .parse::<zeromq::Endpoint>()
            .map_err(|e| invalid(key, format!("`{endpoint}`: {e} (expected tcp://<host>:<port> or ipc://<path>)")))?;
    }
    Ok(endpoint)
}

fn policy(cli: &Cli, file: &FileConfig) -> Result<Policy, ConfigError> {
    let policy = Policy {
        subscription_slots: pick(&cli.subscription_slots, &file.subscription_slots, 10_000),
        subscription_duration: pick(&cli.subscription_duration, &file.subscription_duration, 4320),
        expiry_delta: pick(&cli.expiry_delta, &file.expiry_delta, 6),
        min_to_self_delay: pick(&cli.min_to_self_delay, &file.min_to_self_delay, 20),
        max_blob_size: pick(&cli.max_blob_size, &file.max_blob_size, 2048),
        recent_block_lookback: pick(&cli.recent_block_lookback, &file.recent_block_lookback, 100),
        rebroadcast_after: pick(&cli.rebroadcast_after, &file.rebroadcast_after, 6),
        max_slots_per_user: pick(&cli.max_slots_per_user, &file.max_slots_per_user, 100_000),
        max_users: pick(&cli.max_users, &file.max_users, 1_000_000),
    };
    if policy.max_slots_per_user < policy.subscription_slots {
        return Err(invalid(
            "max_slots_per_user",
            format!(
                "{} is below subscription_slots ({}): no registration could succeed",
                policy.max_slots_per_user, policy.subscription_slots
            ),
        ));
    }
    if policy.max_users == 0 {
        return Err(invalid("max_users", "must be at least 1"));
    }
    if policy.subscription_slots == 0 {
        return Err(invalid("subscription_slots", "must be at least 1"));
    }
    if policy.subscription_duration == 0 {
        return Err(invalid("subscription_duration", "must be at least 1 block"));
    }
    if policy.max_blob_size < 16 || policy.max_blob_size > 65_536 {
        return Err(invalid("max_blob_size", "must be between 16 and 65536 bytes"));
    }
    if policy.rebroadcast_after == 0 {
        return Err(invalid("rebroadcast_after", "must be at least 1 block"));
    }
    Ok(policy)
}

fn limits(cli: &Cli, file: &FileConfig) -> Result<Limits, ConfigError> {
    let secs = |key: &'static str, flag: &Option<u64>, file: &Option<u64>, default: u64| match pick(flag, file, default)
    {
        0 => Err(invalid(key, "must be at least 1 second")),
        secs => Ok(Duration::from_secs(secs)),
    };
    let limits = Limits {
        max_connections: pick(&cli.http_max_connections, &file.http_max_connections, 512),
        max_connections_per_ip: pick(&cli.http_max_connections_per_ip, &file.http_max_connections_per_ip, 32),
        header_timeout: secs(
            "http_header_timeout_secs",
            &cli.http_header_timeout_secs,
            &file.http_header_timeout_secs,
            10,
        )?,
        request_timeout: secs(
            "http_request_timeout_secs",
            &cli.http_request_timeout_secs,
            &file.http_request_timeout_secs,
            30,
        )?,
        registrations_per_minute: pick(&cli.registrations_per_minute, &file.registrations_per_minute, 10),
        appointments_per_second: pick(&cli.appointments_per_second, &file.appointments_per_second, 50),
        subscription_info_per_minute: pick(&cli.subscription_info_per_minute, &file.subscription_info_per_minute, 6),
        disk_reserve_bytes: pick(&cli.disk_reserve_mib, &file.disk_reserve_mib, 512).saturating_mul(1 << 20),
        commit_failure_exit: secs(
            "commit_failure_exit_secs",
            &cli.commit_failure_exit_secs,
            &file.commit_failure_exit_secs,
            600,
        )?,
        max_blocks_behind: pick(&cli.max_blocks_behind, &file.max_blocks_behind, 3),
    };
    if limits.max_connections == 0 {
        return Err(invalid("http_max_connections", "must be at least 1"));
    }
    Ok(limits)
}

/// The onion service settings, if `tor_support` is on (the flag and the file are OR-ed).
fn tor_config(cli: &Cli, file: &FileConfig) -> Result<Option<TorConfig>, ConfigError> {
    if !(cli.tor_support || file.tor_support.unwrap_or(false)) {
        return Ok(None);
    }
    let control_port = pick(&cli.tor_control_port, &file.tor_control_port, 9051);
    let onion_port = pick(&cli.onion_hidden_service_port, &file.onion_hidden_service_port, 9814);
    if control_port == 0 {
        return Err(invalid("tor_control_port", "must not be 0"));
    }
    if onion_port == 0 {
        return Err(invalid("onion_hidden_service_port", "must not be 0"));
    }
    Ok(Some(TorConfig {
        control_addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), control_port),
        onion_port,
        password: file.tor_control_password.clone().filter(|p| !p.is_empty()).map(Secret::new),
    }))
}

/// Where `/metrics` listens unless told otherwise: loopback, next to the public API's 9814.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9815";

/// `metrics_addr`: `IP:PORT`, or `off` / empty for no endpoint.
fn metrics_addr(value: &str) -> Result<Option<SocketAddr>, ConfigError> {
    match value.trim() {
        "" | "off" | "false" => Ok(None),
        addr => addr.parse().map(Some).map_err(|_| {
            invalid("metrics_addr", format!("`{addr}`: expected IP:PORT (e.g. 127.0.0.1:9815), or `off`"))
        }),
    }
}

fn socket_addr(key: &'static str, host: &str, port: u16) -> Result<SocketAddr, ConfigError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    if host == "localhost" {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    (host, port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| invalid(key, format!("`{host}` is not an address or a resolvable host name")))
}

fn expand_home(path: &str) -> PathBuf {
    match (path.strip_prefix("~/"), directories::BaseDirs::new()) {
        (Some(rest), Some(dirs)) => dirs.home_dir().join(rest),
        _ => Path::new(path).to_path_buf(),
    }
}

#[cfg(test)]
mod tests;
