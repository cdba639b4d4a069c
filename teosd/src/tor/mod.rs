//! The tower's onion service, created through Tor's control port (`tor_support`).
//!
//! teosd connects to the control port, authenticates ([`control`]) and asks Tor with `ADD_ONION`
//! for an onion service forwarding `onion_hidden_service_port` to the public HTTP API. The first
//! time, Tor generates the key; teosd keeps it in `<datadir>/<network>/onion_v3_sk` (64 raw
//! bytes, the reference tower's format, owner-only) and hands it back on every later start, so
//! the `.onion` address never changes. The service lives as long as the control connection: a
//! task holds it open, removes the service at shutdown, and if Tor goes away reconnects with
//! backoff and adds the same key again. While the service is up its address is in
//! [`PublishedOnion`], which `gettowerinfo` shows.
//!
//! Tor being down never stops the tower: watching the chain does not need it. Only a key file
//! that exists but cannot be read stops the start (a new key would silently change the address).

pub mod control;

use std::fmt;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{Secret, TorConfig};
use control::{ControlConnection, ControlError};

/// Name of the onion key file inside the network directory.
pub const ONION_KEY_FILE: &str = "onion_v3_sk";

/// First and longest wait between attempts to (re)publish the service.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);
/// How long shutdown waits for Tor to confirm the service is removed.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(2);

/// A Tor v3 onion service key: the 64-byte expanded ed25519 secret key, as Tor's
/// `ED25519-V3:<base64>` carries it. Never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct OnionKey([u8; 64]);

impl OnionKey {
    /// The key from its 64 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Option<OnionKey> {
        bytes.try_into().ok().map(OnionKey)
    }

    /// The key from the base64 of Tor's `ED25519-V3:` blob.
    pub fn from_base64(text: &str) -> Option<OnionKey> {
        OnionKey::from_bytes(&data_encoding::BASE64.decode(text.as_bytes()).ok()?)
    }

    /// The base64 for Tor's `ED25519-V3:` blob.
    pub fn to_base64(&self) -> String {
        data_encoding::BASE64.encode(&self.0)
    }
}

impl fmt::Debug for OnionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OnionKey(****)")
    }
}

/// The onion key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// Reading or writing it failed.
    #[error("onion key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// It is not a key: 64 bytes were expected.
    #[error("onion key file {path} holds {len} bytes, not a 64-byte key: restore it from a backup, or move it away for a new address")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: usize,
    },
}

/// Loads the onion key; `None` if there is no key file yet.
pub fn load_key(path: &Path) -> Result<Option<OnionKey>, KeyFileError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(KeyFileError::Io { path: path.to_path_buf(), source }),
    };
    let key =
        OnionKey::from_bytes(&bytes).ok_or(KeyFileError::Invalid { path: path.to_path_buf(), len: bytes.len() })?;
    warn_if_readable_by_others(path);
    Ok(Some(key))
}

/// Saves the onion key owner-only (0600), through a synced temporary file renamed into place,
/// so that a crash leaves either no key file or the whole key.
pub fn save_key(path: &Path, key: &OnionKey) -> Result<(), KeyFileError> {
    let failed = |source| KeyFileError::Io { path: path.to_path_buf(), source };
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp).map_err(failed)?;
    file.write_all(&key.0).and_then(|()| file.sync_all()).map_err(failed)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(failed)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(failed)?;
    }
    Ok(())
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0) {
        tracing::warn!(path = %path.display(), "the onion key file is readable by other users: chmod 600 it");
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_: &Path) {}

/// Where the onion service is reachable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnionAddress {
    /// `<56 characters>.onion`.
    pub host: String,
    /// The onion service's port.
    pub port: u16,
}

/// The onion address while the service is published (none without `tor_support`, and none
/// while Tor is away).
#[derive(Debug, Clone)]
pub struct PublishedOnion(Option<watch::Receiver<Option<OnionAddress>>>);

impl PublishedOnion {
    /// No onion service.
    pub fn none() -> PublishedOnion {
        PublishedOnion(None)
    }

    /// What `rx` holds (tests of what shows the address).
    #[cfg(test)]
    pub(crate) fn watching(rx: watch::Receiver<Option<OnionAddress>>) -> PublishedOnion {
        PublishedOnion(Some(rx))
    }

    /// The address now, if the service is up.
    pub fn current(&self) -> Option<OnionAddress> {
        self.0.as_ref().and_then(|rx| rx.borrow().clone())
    }
}

/// What the onion service task needs.
#[derive(Debug, Clone)]
pub struct OnionSettings {
    /// Tor's control port.
    pub control_addr: SocketAddr,
    /// The control port's password, if it wants one.
    pub password: Option<Secret>,
    /// The port the onion service offers.
    pub onion_port: u16,
    /// Where Tor forwards it: the public HTTP API.
    pub target: SocketAddr,
    /// The key file.
    pub key_path: PathBuf,
    /// First wait before trying again; it doubles up to `retry_max`.
    pub retry_first: Duration,
    /// Longest wait between attempts.
    pub retry_max: Duration,
}

impl OnionSettings {
    /// Settings for `tor`, forwarding to the public API bound at `public_http` (an unspecified
    /// address is reached on loopback), with the key file in `network_dir`.
    pub fn new(tor: &TorConfig, public_http: SocketAddr, network_dir: &Path) -> OnionSettings {
        let ip = match public_http.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        OnionSettings {
            control_addr: tor.control_addr,
            password: tor.password.clone(),
            onion_port: tor.onion_port,
            target: SocketAddr::new(ip, public_http.port()),
            key_path: network_dir.join(ONION_KEY_FILE),
            retry_first: RETRY_FIRST,
            retry_max: RETRY_MAX,
        }
    }
}

/// Why publishing the service failed.
#[derive(Debug, thiserror::Error)]
enum PublishError {
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("keeping the new onion key: {0}")]
    KeyFile(#[from] KeyFileError),
    #[error("keeping the new onion key: {0}")]
    Task(#[from] crate::task::TaskFailed),
}

impl PublishError {
    fn is_transient(&self) -> bool {
        matches!(self, PublishError::Control(e) if e.is_transient())
    }
}

/// Starts publishing: the address to show, and the task (to spawn) that keeps the service up
/// until `stop`. `key` is the saved key, if any.
pub fn start(
    settings: OnionSettings,
    key: Option<OnionKey>,
    stop: CancellationToken,
) -> (PublishedOnion, impl std::future::Future<Output = ()>) {
    let (published, rx) = watch::channel(None);
    (PublishedOnion(Some(rx)), keep_published(settings, key, published, stop))
}

/// Publishes the service, and again whenever the control connection is lost, until `stop`.
async fn keep_published(
    settings: OnionSettings,
    mut key: Option<OnionKey>,
    published: watch::Sender<Option<OnionAddress>>,
    stop: CancellationToken,
) {
    let mut wait = settings.retry_first;
    let mut failures = Failures::default();
    loop {
        let error = match session(&settings, &mut key, &published, &stop).await {
            Ok(()) => return,
            Err((error, was_up)) => {
                if was_up {
                    wait = settings.retry_first;
                    failures = Failures::default();
                }
                error
            }
        };
        if !error.is_transient() {
            wait = settings.retry_max;
        }
        if let Some(failures) = failures.worth_logging(&error) {
            let retry_in = format!("{wait:?}");
            if error.is_transient() {
                tracing::warn!(error = %error, failures, retry_in, "the onion service is not published");
            } else {
                tracing::error!(error = %error, failures, retry_in, "the onion service is not published");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(settings.retry_max);
    }
}

/// Failures in a row since the service was last up. A Tor that stays away is logged at the 1st,
/// 2nd, 4th, 8th, ... failure, and whenever the reason changes, not once a minute for hours.
#[derive(Debug, Default)]
struct Failures {
    count: u64,
    last: String,
}

impl Failures {
    /// Counts `error`; the count if it is worth a log line.
    fn worth_logging(&mut self, error: &PublishError) -> Option<u64> {
        self.count += 1;
        let reason = error.to_string();
        let changed = reason != self.last;
        self.last = reason;
        (changed || self.count.is_power_of_two()).then_some(self.count)
    }
}

/// One control connection: publish, then hold until `stop` (Ok) or the connection is lost
/// (the error, and whether the service was up).
async fn session(
    settings: &OnionSettings,
    key: &mut Option<OnionKey>,
    published: &watch::Sender<Option<OnionAddress>>,
    stop: &CancellationToken,
) -> Result<(), (PublishError, bool)> {
    let (mut conn, service_id) = tokio::select! {
        _ = stop.cancelled() => return Ok(()),
        opened = publish(settings, key) => opened.map_err(|e| (e, false))?,
    };
    let address = OnionAddress { host: format!("{service_id}.onion"), port: settings.onion_port };
    tracing::info!(address = %address.host, port = address.port, target = %settings.target, "onion service published");
    published.send_replace(Some(address));
    let lost = tokio::select! {
        _ = stop.cancelled() => None,
        lost = conn.closed() => Some(lost),
    };
    published.send_replace(None);
    match lost {
        Some(lost) => Err((lost.into(), true)),
        None => {
            let removed = tokio::time::timeout(REMOVE_TIMEOUT, conn.del_onion(&service_id)).await;
            if !matches!(removed, Ok(Ok(()))) {
                tracing::debug!("Tor did not confirm the onion service's removal; closing the connection removes it");
            }
            tracing::info!("onion service removed");
            Ok(())
        }
    }
}

/// Connects, authenticates and adds the service with `key`, or with a new key which is saved
/// (and kept in `key`) before the service counts as published.
async fn publish(
    settings: &OnionSettings,
    key: &mut Option<OnionKey>,
) -> Result<(ControlConnection, String), PublishError> {
    let mut conn = ControlConnection::connect(settings.control_addr).await?;
    let method = conn.authenticate(settings.password.as_ref()).await?;
    tracing::debug!(?method, control = %settings.control_addr, "authenticated to Tor");
    let added = conn.add_onion(key.as_ref(), settings.onion_port, settings.target).await?;
    if let Some(new_key) = added.new_key {
        let path = settings.key_path.clone();
        let saved = new_key.clone();
        crate::task::blocking(move || save_key(&path, &saved)).await??;
        tracing::info!(path = %settings.key_path.display(), "created a new onion service key (back it up to keep the address)");
        *key = Some(new_key);
    }
    Ok((conn, added.service_id))
}

#[cfg(test)]
mod tests;
