//! systemd's readiness protocol (`Type=notify`), without a library: a datagram with the state to
//! the unix socket named by `$NOTIFY_SOCKET` (a path, or an abstract name starting with `@`).
//! Without `$NOTIFY_SOCKET` (not run by systemd) every call does nothing. Failures are logged,
//! never fatal.

use std::io;
use std::os::unix::net::UnixDatagram;

/// The environment variable systemd sets for `Type=notify` services.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Tells systemd the tower is ready: caught up with the chain, APIs open.
pub fn ready() {
    send_logged("READY=1");
}

/// Tells systemd the tower is shutting down.
pub fn stopping() {
    send_logged("STOPPING=1");
}

/// The watchdog interval systemd asks for (`WatchdogSec=`, passed as `$WATCHDOG_USEC` and meant
/// for this process when `$WATCHDOG_PID` is unset or ours).
pub fn watchdog_interval() -> Option<std::time::Duration> {
    let pid = std::env::var("WATCHDOG_PID").ok();
    if pid.is_some_and(|pid| pid.trim() != std::process::id().to_string()) {
        return None;
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    (usec > 0).then(|| std::time::Duration::from_micros(usec))
}

/// Feeds systemd's watchdog (`WATCHDOG=1`) whenever the chain follower shows a sign of life (a
/// block, a round, a retry while waiting for bitcoind), at most four times per interval, until
/// `shutdown`. Never from a timer alone: a follower that stops making rounds stops the pings, and
/// systemd restarts the tower. Does nothing without `WatchdogSec=`.
pub async fn watchdog(
    mut status: tokio::sync::watch::Receiver<crate::chain::ChainStatus>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let Some(interval) = watchdog_interval() else { return };
    tracing::info!(?interval, "systemd watchdog on: fed by the chain follower's progress");
    let mut last = None::<std::time::Instant>;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = status.changed() => if changed.is_err() { return },
        }
        if last.is_none_or(|at| at.elapsed() >= interval / 4) {
            send_logged("WATCHDOG=1");
            last = Some(std::time::Instant::now());
        }
    }
}

fn send_logged(state: &str) {
    match notify(state) {
        Ok(true) => tracing::debug!(state, "notified systemd"),
        Ok(false) => {}
        Err(e) => tracing::warn!(state, error = %e, "could not notify systemd"),
    }
}

/// Sends `state` (e.g. `READY=1`) to `$NOTIFY_SOCKET`. Returns whether there was a socket to send
/// to.
pub fn notify(state: &str) -> io::Result<bool> {
    match std::env::var_os(NOTIFY_SOCKET) {
        Some(socket) if !socket.is_empty() => {
            send_to(&socket.to_string_lossy(), state)?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// Sends `state` to the socket `socket`: a file system path, or `@name` for an abstract socket.
pub fn send_to(socket: &str, state: &str) -> io::Result<()> {
    let datagram = UnixDatagram::unbound()?;
    let sent = match socket.strip_prefix('@') {
        Some(name) => send_abstract(&datagram, name.as_bytes(), state.as_bytes())?,
        None => datagram.send_to(state.as_bytes(), socket)?,
    };
    if sent != state.len() {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "short write to the notify socket"));
    }
    Ok(())
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn send_abstract(datagram: &UnixDatagram, name: &[u8], msg: &[u8]) -> io::Result<usize> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    datagram.send_to_addr(msg, &addr)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn send_abstract(_: &UnixDatagram, _: &[u8], _: &[u8]) -> io::Result<usize> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "abstract unix sockets exist only on Linux"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receive(socket: &UnixDatagram) -> String {
        let mut buf = [0u8; 64];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn sends_to_a_socket_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        send_to(path.to_str().unwrap(), "READY=1").unwrap();
        assert_eq!(receive(&listener), "READY=1");
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn sends_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("teosd-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&addr).unwrap();
        send_to(&format!("@{name}"), "STOPPING=1").unwrap();
        assert_eq!(receive(&listener), "STOPPING=1");
    }

    #[test]
    fn a_missing_socket_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        assert!(send_to(dir.path().join("absent").to_str().unwrap(), "READY=1").is_err());
    }
}
