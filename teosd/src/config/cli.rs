//! Command-line flags. Spellings follow the reference tower (`--datadir`, `--btcnetwork`, ...);
//! each flag can also come from a `TEOS_*` environment variable, which a flag overrides.

use std::path::PathBuf;

use clap::Parser;

/// The Eye of Satoshi: a Lightning Network watchtower.
///
/// Settings come from, lowest to highest priority: defaults, `<datadir>/teos.toml`, `TEOS_*`
/// environment variables, and these flags. The bitcoind RPC password is read only from the config
/// file or TEOS_BTC_RPC_PASSWORD, never from the command line.
#[derive(Debug, Default, Parser)]
#[command(name = "teosd", version, about, long_about)]
pub struct Cli {
    /// Data directory [default: ~/.teos]. Holds teos.toml, the TLS material and a folder per network.
    #[arg(long = "datadir", env = "TEOS_DATADIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Bitcoin network: mainnet, testnet, testnet4, signet or regtest [default: mainnet].
    #[arg(long = "btcnetwork", env = "TEOS_BTC_NETWORK", value_name = "NETWORK")]
    pub btc_network: Option<String>,

    /// bitcoind RPC user (with btc_rpc_password in teos.toml or TEOS_BTC_RPC_PASSWORD).
    #[arg(long = "btcrpcuser", env = "TEOS_BTC_RPC_USER", value_name = "USER")]
    pub btc_rpc_user: Option<String>,

    /// Refused: a password on the command line shows in process listings. Use teos.toml,
    /// TEOS_BTC_RPC_PASSWORD or the cookie.
    #[arg(long = "btcrpcpassword", value_name = "PASSWORD", hide = true)]
    pub btc_rpc_password: Option<String>,

    /// bitcoind cookie file [default: bitcoind's default cookie for the network when no user is set].
    #[arg(long = "btcrpccookie", env = "TEOS_BTC_RPC_COOKIE", value_name = "PATH")]
    pub btc_rpc_cookie: Option<String>,

    /// bitcoind RPC host [default: localhost].
    #[arg(long = "btcrpcconnect", env = "TEOS_BTC_RPC_CONNECT", value_name = "HOST")]
    pub btc_rpc_connect: Option<String>,

    /// bitcoind RPC port [default: the network's: 8332, 18332, 48332, 38332, 18443].
    #[arg(long = "btcrpcport", env = "TEOS_BTC_RPC_PORT", value_name = "PORT")]
    pub btc_rpc_port: Option<u16>,

    /// bitcoind's zmqpubhashblock endpoint (e.g. tcp://127.0.0.1:28332) for instant block
    /// notifications; polling stays on as a fallback [default: off].
    #[arg(long = "zmqpubhashblock", env = "TEOS_ZMQ_HASHBLOCK", value_name = "ENDPOINT")]
    pub zmq_hashblock: Option<String>,

    /// bitcoind's zmqpubrawblock endpoint: new blocks arrive whole over ZMQ, saving the
    /// getblock round trip (and waking the follower like hashblock) [default: off].
    #[arg(long = "zmqpubrawblock", env = "TEOS_ZMQ_RAWBLOCK", value_name = "ENDPOINT")]
    pub zmq_rawblock: Option<String>,

    /// bitcoind's zmqpubrawtx endpoint: transactions entering its mempool arrive at once, so a
    /// dispute is answered before it is mined [default: off; the mempool is then polled].
    #[arg(long = "zmqpubrawtx", env = "TEOS_ZMQ_RAWTX", value_name = "ENDPOINT")]
    pub zmq_rawtx: Option<String>,

    /// Seconds between polls of bitcoind's mempool for disputes (0: never) [default: 5].
    #[arg(long = "mempoolpoll", env = "TEOS_MEMPOOL_POLL", value_name = "SECS")]
    pub mempool_poll_secs: Option<u64>,

    /// Seconds between polls of bitcoind for a new tip [default: 1].
    #[arg(long = "pollingdelta", env = "TEOS_POLLING_DELTA", value_name = "SECS")]
    pub polling_delta: Option<u64>,

    /// Address of the public HTTP API [default: 127.0.0.1].
    #[arg(long = "apibind", env = "TEOS_API_BIND", value_name = "ADDR")]
    pub api_bind: Option<String>,

    /// Port of the public HTTP API [default: 9814].
    #[arg(long = "apiport", env = "TEOS_API_PORT", value_name = "PORT")]
    pub api_port: Option<u16>,

    /// Address of the admin gRPC API (mTLS) [default: 127.0.0.1].
    #[arg(long = "rpcbind", env = "TEOS_RPC_BIND", value_name = "ADDR")]
    pub rpc_bind: Option<String>,

    /// Port of the admin gRPC API [default: 8814].
    #[arg(long = "rpcport", env = "TEOS_RPC_PORT", value_name = "PORT")]
    pub rpc_port: Option<u16>,

    /// Address of the Prometheus /metrics endpoint, IP:PORT; `off` (or empty) switches it off
    /// [default: 127.0.0.1:9815].
    #[arg(long = "metricsaddr", env = "TEOS_METRICS_ADDR", value_name = "ADDR")]
    pub metrics_addr: Option<String>,

    /// Serve python-teos clients (registrations with `public_key`) beside rust-teos ones
    /// [default: true].
    #[arg(long = "pythonteosclients", env = "TEOS_PYTHON_TEOS_CLIENTS", value_name = "BOOL")]
    pub python_teos_clients: Option<bool>,

    /// Trust X-Real-IP for client addresses in logs (only behind a reverse proxy).
    #[arg(long = "behindproxy", env = "TEOS_BEHIND_PROXY")]
    pub behind_proxy: bool,

    /// Slots granted per registration [default: 10000].
    #[arg(long = "subscriptionslots", env = "TEOS_SUBSCRIPTION_SLOTS", value_name = "N")]
    pub subscription_slots: Option<u32>,

    /// Blocks a registration lasts [default: 4320].
    #[arg(long = "subscriptionduration", env = "TEOS_SUBSCRIPTION_DURATION", value_name = "BLOCKS")]
    pub subscription_duration: Option<u32>,

    /// Grace blocks after expiry before a user's data is removed [default: 6].
    #[arg(long = "expirydelta", env = "TEOS_EXPIRY_DELTA", value_name = "BLOCKS")]
    pub expiry_delta: Option<u32>,

    /// Smallest to_self_delay accepted [default: 20].
    #[arg(long = "mintoselfdelay", env = "TEOS_MIN_TO_SELF_DELAY", value_name = "BLOCKS")]
    pub min_to_self_delay: Option<u32>,

    /// Largest encrypted blob accepted, in bytes [default: 2048].
    #[arg(long = "maxblobsize", env = "TEOS_MAX_BLOB_SIZE", value_name = "BYTES")]
    pub max_blob_size: Option<usize>,

    /// Recent blocks searched for an appointment's dispute on arrival [default: 100].
    #[arg(long = "recentblocklookback", env = "TEOS_RECENT_BLOCK_LOOKBACK", value_name = "BLOCKS")]
    pub recent_block_lookback: Option<u32>,

    /// Blocks without confirmation before a penalty is sent again [default: 6].
    #[arg(long = "rebroadcastafter", env = "TEOS_REBROADCAST_AFTER", value_name = "BLOCKS")]
    pub rebroadcast_after: Option<u32>,

    /// Connections open at once on the public API; more are closed on arrival [default: 512].
    #[arg(long = "httpmaxconnections", env = "TEOS_HTTP_MAX_CONNECTIONS", value_name = "N")]
    pub http_max_connections: Option<usize>,

    /// Of those, from one source address (0: no cap) [default: 32].
    #[arg(long = "httpmaxconnectionsperip", env = "TEOS_HTTP_MAX_CONNECTIONS_PER_IP", value_name = "N")]
    pub http_max_connections_per_ip: Option<usize>,

    /// Seconds a connection has to send a request head, once open or after its last answer
    /// (the header-read and idle keep-alive timeout) [default: 10].
    #[arg(long = "httpheadertimeout", env = "TEOS_HTTP_HEADER_TIMEOUT", value_name = "SECS")]
    pub http_header_timeout_secs: Option<u64>,

    /// Seconds a whole request (head, body, answer) may take [default: 30].
    #[arg(long = "httprequesttimeout", env = "TEOS_HTTP_REQUEST_TIMEOUT", value_name = "SECS")]
    pub http_request_timeout_secs: Option<u64>,

    /// Registrations per source address per minute (0: no limit) [default: 10].
    #[arg(long = "registrationsperminute", env = "TEOS_REGISTRATIONS_PER_MINUTE", value_name = "N")]
    pub registrations_per_minute: Option<u32>,

    /// Appointment writes per source address per second, with bursts of 4x (0: no limit)
    /// [default: 50].
    #[arg(long = "appointmentspersecond", env = "TEOS_APPOINTMENTS_PER_SECOND", value_name = "N")]
    pub appointments_per_second: Option<u32>,

    /// get_subscription_info requests per source address, and per user, per minute (0: no
    /// limit) [default: 6].
    #[arg(long = "subscriptioninfoperminute", env = "TEOS_SUBSCRIPTION_INFO_PER_MINUTE", value_name = "N")]
    pub subscription_info_per_minute: Option<u32>,

    /// Slots one user may hold; a renewal that would pass it is refused [default: 100000].
    #[arg(long = "maxslotsperuser", env = "TEOS_MAX_SLOTS_PER_USER", value_name = "N")]
    pub max_slots_per_user: Option<u32>,

    /// Registered users at most; new users are refused beyond it [default: 1000000].
    #[arg(long = "maxusers", env = "TEOS_MAX_USERS", value_name = "N")]
    pub max_users: Option<u64>,

    /// Free space (MiB) the data directory keeps for the chain: public writes are refused below
    /// it [default: 512].
    #[arg(long = "diskreservemib", env = "TEOS_DISK_RESERVE_MIB", value_name = "MIB")]
    pub disk_reserve_mib: Option<u64>,

    /// Seconds block commits may keep failing before teosd exits non-zero, for systemd to
    /// restart it [default: 600].
    #[arg(long = "commitfailureexit", env = "TEOS_COMMIT_FAILURE_EXIT", value_name = "SECS")]
    pub commit_failure_exit_secs: Option<u64>,

    /// Blocks behind bitcoind beyond which /health reports the tower not ready [default: 3].
    #[arg(long = "maxblocksbehind", env = "TEOS_MAX_BLOCKS_BEHIND", value_name = "BLOCKS")]
    pub max_blocks_behind: Option<u32>,

    /// RocksDB block cache in MiB [default: 32].
    #[arg(long = "dbcachemib", env = "TEOS_DB_CACHE_MIB", value_name = "MIB")]
    pub db_cache_mib: Option<usize>,

    /// Publish the public API as a Tor onion service through Tor's control port; the onion
    /// key is kept in <datadir>/<network>/onion_v3_sk, so the address survives restarts.
    #[arg(long = "torsupport", env = "TEOS_TOR_SUPPORT")]
    pub tor_support: bool,

    /// Tor's control port, on 127.0.0.1 [default: 9051]. A password it asks for is read from
    /// teos.toml (tor_control_password) or TEOS_TOR_CONTROL_PASSWORD, never from the command line.
    #[arg(long = "torcontrolport", env = "TEOS_TOR_CONTROL_PORT", value_name = "PORT")]
    pub tor_control_port: Option<u16>,

    /// The port the onion service offers [default: 9814].
    #[arg(long = "onionhiddenserviceport", env = "TEOS_ONION_HIDDEN_SERVICE_PORT", value_name = "PORT")]
    pub onion_hidden_service_port: Option<u16>,

    /// Rotate the tower key at start; old keys are kept in the store.
    #[arg(long = "overwritekey")]
    pub overwrite_key: bool,

    /// Debug logs for teosd.
    #[arg(long = "debug", env = "TEOS_DEBUG")]
    pub debug: bool,

    /// Debug logs for dependencies.
    #[arg(long = "depsdebug", env = "TEOS_DEPS_DEBUG")]
    pub deps_debug: bool,

    /// Log one JSON object per line (for log collectors).
    #[arg(long = "logjson", env = "TEOS_LOG_JSON")]
    pub log_json: bool,
}
