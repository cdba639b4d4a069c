//! `teos.toml`: the reference tower's keys, strictly parsed. Unknown keys are errors; the
//! reference's keys that no longer apply are accepted with a warning.

use std::path::Path;

use serde::Deserialize;

use super::ConfigError;

/// The config file's contents. Every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    pub btc_network: Option<String>,
    pub btc_rpc_user: Option<String>,
    pub btc_rpc_password: Option<String>,
    pub btc_rpc_cookie: Option<String>,
    pub btc_rpc_connect: Option<String>,
    pub btc_rpc_port: Option<u16>,
    pub zmq_hashblock: Option<String>,
    pub zmq_rawblock: Option<String>,
    pub zmq_rawtx: Option<String>,
    pub mempool_poll_secs: Option<u64>,
    pub polling_delta: Option<u64>,
    pub api_bind: Option<String>,
    pub api_port: Option<u16>,
    pub rpc_bind: Option<String>,
    pub rpc_port: Option<u16>,
    pub behind_proxy: Option<bool>,
    pub python_teos_clients: Option<bool>,
    pub metrics_addr: Option<String>,
    pub subscription_slots: Option<u32>,
    pub subscription_duration: Option<u32>,
    pub expiry_delta: Option<u32>,
    pub min_to_self_delay: Option<u32>,
    pub max_blob_size: Option<usize>,
    pub recent_block_lookback: Option<u32>,
    pub rebroadcast_after: Option<u32>,
    pub db_cache_mib: Option<usize>,
    pub http_max_connections: Option<usize>,
    pub http_max_connections_per_ip: Option<usize>,
    pub http_header_timeout_secs: Option<u64>,
    pub http_request_timeout_secs: Option<u64>,
    pub registrations_per_minute: Option<u32>,
    pub appointments_per_second: Option<u32>,
    pub subscription_info_per_minute: Option<u32>,
    pub max_slots_per_user: Option<u32>,
    pub max_users: Option<u64>,
    pub disk_reserve_mib: Option<u64>,
    pub commit_failure_exit_secs: Option<u64>,
    pub max_blocks_behind: Option<u32>,
    pub debug: Option<bool>,
    pub deps_debug: Option<bool>,
    pub log_format: Option<String>,
    pub tor_support: Option<bool>,
    pub tor_control_port: Option<u16>,
    pub tor_control_password: Option<String>,
    pub onion_hidden_service_port: Option<u16>,
    // Keys of the reference tower that have no effect here.
    internal_api_bind: Option<toml::Value>,
    internal_api_port: Option<toml::Value>,
    overwrite_key: Option<toml::Value>,
    force_update: Option<toml::Value>,
}

impl FileConfig {
    /// Reads the file; a missing file is an empty config.
    pub fn read(path: &Path) -> Result<FileConfig, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                FileConfig::parse(&text).map_err(|message| ConfigError::Parse { path: path.to_path_buf(), message })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(FileConfig::default()),
            Err(source) => Err(ConfigError::Read { path: path.to_path_buf(), source }),
        }
    }

    /// Parses the file's text. An error names the line, the column and what was wrong, but never
    /// quotes the file: its line may hold `btc_rpc_password`, and so may the parser's message
    /// (which can repeat a value), which is then left out too.
    pub fn parse(text: &str) -> Result<FileConfig, String> {
        toml::from_str(text).map_err(|e| {
            let Some(span) = e.span() else { return e.message().to_string() };
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            let line_text = text.lines().nth(line - 1).unwrap_or("");
            let key = line_text.split('=').next().unwrap_or("").trim();
            let at = match key.len() {
                1..=64 if !key.contains(char::is_whitespace) => format!("line {line}, column {column} (`{key}`)"),
                _ => format!("line {line}, column {column}"),
            };
            if line_text.contains("password") {
                format!("{at}: invalid entry (the line holds a password: not shown)")
            } else {
                format!("{at}: {}", e.message())
            }
        })
    }

    /// One warning per reference-tower key that is ignored here.
    pub fn deprecation_warnings(&self) -> Vec<String> {
        let ignored = [
            (
                "internal_api_bind",
                self.internal_api_bind.is_some(),
                "there is no internal gRPC hop: the HTTP API calls the tower in-process",
            ),
            (
                "internal_api_port",
                self.internal_api_port.is_some(),
                "there is no internal gRPC hop: the HTTP API calls the tower in-process",
            ),
            ("overwrite_key", self.overwrite_key.is_some(), "only the --overwritekey flag rotates the key"),
            ("force_update", self.force_update.is_some(), "teosd never skips blocks"),
        ];
        ignored
            .iter()
            .filter(|(_, set, _)| *set)
            .map(|(key, _, why)| format!("config key `{key}` is ignored: {why}"))
            .collect()
    }
}
