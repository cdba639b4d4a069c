//! teosd under `Type=notify`: with `$NOTIFY_SOCKET` set it sends `READY=1` once it has caught up
//! and its APIs are open, and `STOPPING=1` when shutdown starts. (Its own test binary: it sets
//! `NOTIFY_SOCKET` for the teosd it starts, before any other thread runs.)
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

#[test]
fn teosd_notifies_systemd_when_ready_and_when_stopping() {
    let name = format!("teos-e2e-notify-{}", std::process::id());
    let socket = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    // Inherited by the teosd child; set before the runtime starts any thread.
    std::env::set_var("NOTIFY_SOCKET", format!("@{name}"));

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let bitcoind = Bitcoind::in_process().await.expect("regtest node");
        bitcoind.mine(101).await.expect("mining");
        let dir = tempfile::tempdir().unwrap();
        let mut tower = TowerProcess::start(&bitcoind, &dir.path().join("teos"), &[]);
        assert_eq!(tokio::task::block_in_place(|| receive(&socket)), "READY=1");
        // Ready means the public API answers.
        let (status, body) = TowerUser::new(3, &tower.api_url).register().await;
        assert_eq!(status, 200, "{body}");

        assert!(tower.stop().success(), "{}", tower.tail());
        assert_eq!(receive(&socket), "STOPPING=1");
    });
}
