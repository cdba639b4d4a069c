//! End to end: the real `teosd` publishes its public API as an onion service through a real,
//! offline `tor` (`DisableNetwork 1`: no network, but `ADD_ONION` answers). The address shows in
//! `teos-cli gettowerinfo`; Tor itself holds the service (adding the same key from another
//! controller collides) until teosd stops; the key file is 64 bytes, owner-only, never logged;
//! the address is the same after teosd restarts, and after Tor restarts under a running teosd.
//! A control port with a password (from teos.toml) and a Tor that starts after teosd work too.
//!
//! `tor` must be installed (Debian's `tor`, which scripts/env.sh installs, or `TOR_EXE`): the
//! tests fail without it rather than skip.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use teos_tests::backend::{free_port, Bitcoind};
use teos_tests::tor::{TorAuth, TorProcess};
use teos_tests::tower::{eventually, TowerProcess};
use teosd::tor::control::{ControlConnection, ControlError};
use teosd::tor::OnionKey;

const TEST_TIMEOUT: Duration = Duration::from_secs(170);

async fn bounded(test: impl std::future::Future<Output = ()>) {
    tokio::time::timeout(TEST_TIMEOUT, test).await.expect("test timed out");
}

/// The `torv3` entry of `gettowerinfo`, if there is one.
async fn onion_now(tower: &TowerProcess) -> Option<Value> {
    let info = tower.info().await;
    info["addresses"].as_array()?.iter().find(|a| a["type"] == "torv3").cloned()
}

/// Waits for the `torv3` entry and checks its shape.
async fn onion(tower: &TowerProcess) -> Value {
    let entry = eventually("an onion address in gettowerinfo", || onion_now(tower)).await;
    let host = entry["address"].as_str().expect("address");
    assert!(host.len() == 62 && host.ends_with(".onion"), "{entry}");
    assert_eq!((entry["port"].as_u64(), entry["service"].as_str()), (Some(9814), Some("public_http")), "{entry}");
    entry
}

async fn start_node() -> Bitcoind {
    let bitcoind = Bitcoind::start().await.expect("bitcoind");
    bitcoind.mine(101).await.expect("mining");
    bitcoind
}

fn tor_args(control_port: u16) -> Vec<String> {
    let args = ["--torsupport", "--torcontrolport", &control_port.to_string(), "--onionhiddenserviceport", "9814"];
    args.iter().map(|s| s.to_string()).collect()
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// Whether Tor holds a service with `key` for another controller: adding it again from a
/// controller of our own collides. Our service, if added, is removed again.
async fn tor_holds(control_port: u16, key: &OnionKey) -> bool {
    let mut probe = ControlConnection::connect(([127, 0, 0, 1], control_port).into()).await.expect("control port");
    probe.authenticate(None).await.expect("authenticating the probe");
    match probe.add_onion(Some(key), 1, "127.0.0.1:1".parse().unwrap()).await {
        Ok(added) => {
            probe.del_onion(&added.service_id).await.expect("DEL_ONION");
            false
        }
        Err(ControlError::Rejected { code: 550, .. }) => true,
        Err(e) => panic!("probe ADD_ONION: {e}"),
    }
}

fn key_file(datadir: &Path) -> (Vec<u8>, u32) {
    use std::os::unix::fs::PermissionsExt;
    let path = datadir.join("regtest").join(teosd::tor::ONION_KEY_FILE);
    let mode = std::fs::metadata(&path).expect("the onion key file").permissions().mode() & 0o777;
    (std::fs::read(&path).expect("reading the key file"), mode)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_onion_address_survives_teosd_and_tor_restarts() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let control_port = free_port().unwrap();
        let mut tor = TorProcess::start(&dir.path().join("tor"), control_port, TorAuth::Cookie).expect("starting tor");
        let bitcoind = start_node().await;
        let args = tor_args(control_port);
        let mut tower = TowerProcess::start(&bitcoind, &dir.path().join("teos"), &strs(&args));

        let first = onion(&tower).await;
        let (key_bytes, mode) = key_file(&tower.datadir);
        assert_eq!((key_bytes.len(), mode), (64, 0o600), "64 raw bytes, owner-only");
        let key = OnionKey::from_bytes(&key_bytes).unwrap();
        assert!(tor_holds(control_port, &key).await, "Tor holds the service for teosd");
        let secret = key.to_base64();
        assert!(!tower.tail_all().iter().any(|l| l.contains(&secret[..20])), "the key reached the log");
        assert!(tower.logged("created a new onion service key"));

        assert!(tower.stop().success(), "{}", tower.tail());
        assert!(tower.logged("onion service removed"), "{}", tower.tail());
        eventually("Tor to drop the service of the stopped teosd", || async {
            (!tor_holds(control_port, &key).await).then_some(())
        })
        .await;

        tower.restart();
        assert_eq!(onion(&tower).await, first, "the same address after a restart");
        assert_eq!(key_file(&tower.datadir).0, key_bytes, "the key is kept, not rewritten");
        assert!(tor_holds(control_port, &key).await);

        // Tor crashes and comes back (with a new cookie): teosd withdraws the address, then
        // publishes the same one again.
        tor.kill();
        eventually("the address withdrawn while Tor is down", || async {
            onion_now(&tower).await.is_none().then_some(())
        })
        .await;
        tor.restart().expect("restarting tor");
        assert_eq!(onion(&tower).await, first, "the same address after Tor restarts");
        assert!(tower.logged("the onion service is not published"));
        assert!(tower.stop().success(), "{}", tower.tail());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn teosd_waits_for_a_late_tor_and_authenticates_with_the_password_from_its_config() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let control_port = free_port().unwrap();
        let datadir = dir.path().join("teos");
        std::fs::create_dir_all(&datadir).unwrap();
        let config = datadir.join("teos.toml");
        std::fs::write(&config, "tor_control_password = \"correct horse\"\n").unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let bitcoind = start_node().await;
        let args = tor_args(control_port);
        // No Tor yet: the tower starts all the same, without an onion address.
        let mut tower = TowerProcess::start(&bitcoind, &datadir, &strs(&args));
        if !tower.logged("the onion service is not published") {
            tower.wait_for("the onion service is not published");
        }
        assert!(onion_now(&tower).await.is_none());
        assert_eq!(tower.health().await.0, 200, "Tor being down does not make the tower unready");

        let password = TorAuth::Password("correct horse".into());
        let _tor = TorProcess::start(&dir.path().join("tor"), control_port, password).expect("starting tor");
        onion(&tower).await;
        assert!(!tower.tail_all().iter().any(|l| l.contains("correct horse")), "the password reached the log");
        assert!(tower.stop().success(), "{}", tower.tail());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_damaged_key_file_stops_the_start_instead_of_changing_the_address() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let datadir = dir.path().join("teos");
        let key_path = datadir.join("regtest").join(teosd::tor::ONION_KEY_FILE);
        std::fs::create_dir_all(key_path.parent().unwrap()).unwrap();
        std::fs::write(&key_path, [7; 10]).unwrap();
        let bitcoind = start_node().await;
        // No Tor needed: the key file is read before teosd talks to it.
        let args = tor_args(free_port().unwrap());
        let mut tower = TowerProcess::launch(&bitcoind, &datadir, &strs(&args));
        let status = tower.wait_for_exit();
        assert_eq!(status.code(), Some(1), "{}", tower.tail());
        assert!(tower.logged("onion_v3_sk holds 10 bytes, not a 64-byte key"), "{}", tower.tail());
        assert!(!tower.logged("Tower ready") && !tower.logged("public HTTP API listening"), "{}", tower.tail());
        assert_eq!(std::fs::read(&key_path).unwrap(), vec![7; 10], "the file is left as it was");
    })
    .await
}
