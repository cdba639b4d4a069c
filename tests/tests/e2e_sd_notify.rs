//! teosd under `Type=notify`: with `$NOTIFY_SOCKET` set it sends `READY=1` once it has caught up
//! and its APIs are open, `STOPPING=1` when shutdown starts, and with `$WATCHDOG_USEC` set,
//! `WATCHDOG=1` as the chain follower makes progress. (Its own test binary: it sets the
//! variables for the teosd it starts, before any other thread runs.)
#![cfg(target_os = "linux")]

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

use teos_tests::backend::Bitcoind;
use teos_tests::tower::{TowerProcess, TowerUser};

fn receive(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 256];
    let n = socket.recv(&mut buf).expect("a notification within the timeout");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// The next notification other than a watchdog ping, and how many pings came before it.
fn receive_past_pings(socket: &UnixDatagram) -> (String, usize) {
    let mut pings = 0;
    loop {
        match receive(socket) {
            ping if ping == "WATCHDOG=1" => pings += 1,
            other => return (other, pings),
        }
    }
}

#[test]
fn teosd_notifies_systemd_when_ready_and_when_stopping() {
    let name = format!("teos-e2e-notify-{}", std::process::id());
    let socket = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    // Inherited by the teosd child; set before the runtime starts any thread.
    std::env::set_var("NOTIFY_SOCKET", format!("@{name}"));
    // WatchdogSec=0.4s: a ping at most every 0.1 s, and only when the follower makes progress.
    std::env::set_var("WATCHDOG_USEC", "400000");

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let bitcoind = Bitcoind::in_process().await.expect("regtest node");
        bitcoind.mine(101).await.expect("mining");
        let dir = tempfile::tempdir().unwrap();
        let mut tower = TowerProcess::start(&bitcoind, &dir.path().join("teos"), &[]);
        let (ready, _) = tokio::task::block_in_place(|| receive_past_pings(&socket));
        assert_eq!(ready, "READY=1");
        // Ready means the public API answers.
        let (status, body) = TowerUser::new(3, &tower.api_url).register().await;
        assert_eq!(status, 200, "{body}");
        // Blocks (and polls) are progress: the watchdog is fed.
        bitcoind.mine(3).await.expect("mining");
        tower.wait_for_height(104).await;
        assert_eq!(tokio::task::block_in_place(|| receive(&socket)), "WATCHDOG=1");

        assert!(tower.stop().success(), "{}", tower.tail());
        assert_eq!(receive_past_pings(&socket).0, "STOPPING=1");
    });
}
