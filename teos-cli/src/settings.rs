//! Where the tower is and how to authenticate: the data directory, the admin address (flag, else
//! `teos.toml`, else default), and the argument checks done before connecting.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::CliError;

/// teosd's default admin address.
pub const DEFAULT_RPC_BIND: &str = "127.0.0.1";
/// teosd's default admin port.
pub const DEFAULT_RPC_PORT: u16 = 8814;

/// The keys of teosd's `teos.toml` that the CLI reads; every other key is ignored.
#[derive(Debug, Default, Deserialize)]
struct FileSettings {
    rpc_bind: Option<String>,
    rpc_port: Option<u16>,
}

/// What the CLI needs to reach the tower.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Holds the TLS files.
    pub data_dir: PathBuf,
    /// `https://host:port`.
    pub endpoint: String,
}

impl Settings {
    /// Flags beat `<data_dir>/teos.toml`, which beats the defaults.
    pub fn resolve(
        data_dir: Option<PathBuf>,
        rpc_bind: Option<String>,
        rpc_port: Option<u16>,
    ) -> Result<Settings, CliError> {
        let data_dir = match data_dir {
            Some(dir) => dir,
            None => directories::BaseDirs::new()
                .map(|d| d.home_dir().join(".teos"))
                .ok_or_else(|| CliError::Usage("no home directory found: pass --datadir".into()))?,
        };
        let file = read_file_settings(&data_dir.join("teos.toml"))?;
        let bind = rpc_bind.or(file.rpc_bind).unwrap_or_else(|| DEFAULT_RPC_BIND.to_string());
        let port = rpc_port.or(file.rpc_port).unwrap_or(DEFAULT_RPC_PORT);
        Ok(Settings { endpoint: endpoint(&bind, port)?, data_dir })
    }
}

fn read_file_settings(path: &Path) -> Result<FileSettings, CliError> {
    match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text).map_err(|e| {
            CliError::Failed(format!("invalid {}: {}", path.display(), e.to_string().trim_end().replace('\n', " ")))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(FileSettings::default()),
        Err(e) => Err(CliError::Failed(format!("cannot read {}: {e}", path.display()))),
    }
}

/// `https://host:port`. An address teosd binds to all interfaces with (0.0.0.0, ::) is reached on
/// loopback.
fn endpoint(bind: &str, port: u16) -> Result<String, CliError> {
    let host = bind.trim();
    if host.is_empty() || host.contains(['/', ' ', '@']) {
        return Err(CliError::Usage(format!("invalid --rpcbind `{bind}`: expected a host name or an IP address")));
    }
    let host = match host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) if ip.is_unspecified() => Ipv4Addr::LOCALHOST.to_string(),
        Ok(IpAddr::V4(ip)) => ip.to_string(),
        Ok(IpAddr::V6(ip)) if ip.is_unspecified() => format!("[{}]", Ipv6Addr::LOCALHOST),
        Ok(IpAddr::V6(ip)) => format!("[{ip}]"),
        Err(_) => host.to_string(),
    };
    Ok(format!("https://{host}:{port}"))
}

/// A user id given on the command line: 33 bytes of hex, a compressed key (02 or 03 first).
pub fn parse_user_id(text: &str) -> Result<Vec<u8>, CliError> {
    let bytes = hex::decode(text.trim())
        .map_err(|e| CliError::Usage(format!("invalid user id `{text}`: not hex encoded ({e})")))?;
    if bytes.len() != 33 {
        return Err(CliError::Usage(format!(
            "invalid user id `{text}`: expected a 33-byte compressed public key (66 hex characters), got {} bytes",
            bytes.len()
        )));
    }
    if bytes[0] != 2 && bytes[0] != 3 {
        return Err(CliError::Usage(format!("invalid user id `{text}`: a compressed public key starts with 02 or 03")));
    }
    Ok(bytes)
}

/// A locator given on the command line: 16 bytes of hex.
pub fn parse_locator(text: &str) -> Result<Vec<u8>, CliError> {
    let bytes = hex::decode(text.trim())
        .map_err(|e| CliError::Usage(format!("invalid locator `{text}`: not hex encoded ({e})")))?;
    if bytes.len() != 16 {
        return Err(CliError::Usage(format!(
            "invalid locator `{text}`: expected 16 bytes (32 hex characters), got {} bytes",
            bytes.len()
        )));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(e: CliError) -> String {
        match e {
            CliError::Usage(m) | CliError::Failed(m) => m,
            CliError::OutputClosed => "closed".into(),
        }
    }

    #[test]
    fn flags_beat_the_file_which_beats_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let defaults = Settings::resolve(Some(dir.path().into()), None, None).unwrap();
        assert_eq!(defaults.endpoint, "https://127.0.0.1:8814");
        std::fs::write(
            dir.path().join("teos.toml"),
            "btc_network = \"regtest\"\nrpc_bind = \"0.0.0.0\"\nrpc_port = 9000\nsomething_else = [1]\n",
        )
        .unwrap();
        let from_file = Settings::resolve(Some(dir.path().into()), None, None).unwrap();
        assert_eq!(from_file.endpoint, "https://127.0.0.1:9000");
        let from_flags = Settings::resolve(Some(dir.path().into()), Some("::1".into()), Some(1)).unwrap();
        assert_eq!(from_flags.endpoint, "https://[::1]:1");
        let named = Settings::resolve(Some(dir.path().into()), Some("tower.example".into()), None).unwrap();
        assert_eq!(named.endpoint, "https://tower.example:9000");
    }

    #[test]
    fn a_malformed_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("teos.toml"), "rpc_port = \"high\"\n").unwrap();
        let err = message(Settings::resolve(Some(dir.path().into()), None, None).unwrap_err());
        assert!(err.contains("teos.toml") && !err.contains('\n'), "{err}");
    }

    #[test]
    fn user_ids_and_locators_are_checked() {
        let id = format!("02{}", "ab".repeat(32));
        assert_eq!(parse_user_id(&id).unwrap().len(), 33);
        assert!(message(parse_user_id("zz").unwrap_err()).contains("not hex"));
        assert!(message(parse_user_id("0203").unwrap_err()).contains("got 2 bytes"));
        assert!(message(parse_user_id(&format!("04{}", "ab".repeat(32))).unwrap_err()).contains("02 or 03"));
        assert_eq!(parse_locator(&"cd".repeat(16)).unwrap().len(), 16);
        assert!(message(parse_locator("abc").unwrap_err()).contains("not hex"));
        assert!(message(parse_locator("abcd").unwrap_err()).contains("got 2 bytes"));
        assert!(message(endpoint("http://x", 1).unwrap_err()).contains("--rpcbind"));
    }
}
