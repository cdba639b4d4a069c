//! End to end: the operator's side. The real `teosd` against the in-process regtest node, a user
//! registered with an appointment over HTTP, then every `teos-cli` command against the admin gRPC
//! API (mutual TLS): output and exit codes, clients without the tower's client certificate
//! refused, and `teos-cli stop` ending teosd with exit code 0. Readiness is read from teosd's log.
//! Then user administration: a ban refusing a user's requests with code 7 (across a restart) until
//! lifted, and a deletion that leaves the user's responding tracker to run to its end.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use bitcoin::hashes::Hash;
use bitcoin::{Amount, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Txid, Witness};
use serde_json::Value;
use teos_proto::admin::private_tower_services_client::PrivateTowerServicesClient;
use teos_proto::admin::GetTowerInfoRequest;
use teos_tests::backend::Bitcoind;
use teos_tests::tower::{Fixture, TowerProcess, TowerUser};
use teos_tests::wallet::{commitment_tx, penalty_tx};
use teosd::protocol::Locator;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

const TEST_TIMEOUT: Duration = Duration::from_secs(170);

/// Runs `teos-cli --datadir <datadir> --rpcport <port> <args>`.
async fn cli(datadir: &Path, rpc_port: u16, args: &[&str]) -> Output {
    teos_tests::tower::teos_cli(datadir, rpc_port, args).await
}

fn json(output: &Output) -> Value {
    teos_tests::tower::cli_json(output)
}

/// The one line on stderr of a command that must fail with exit code 1.
fn failure(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).trim_end().to_string();
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked") && stderr.lines().count() == 1, "{stderr}");
    stderr
}

/// A transaction to stand for a penalty (the tower decrypts it only on a breach).
fn penalty() -> Transaction {
    Transaction {
        version: bitcoin::transaction::Version::TWO,
        lock_time: bitcoin::absolute::LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint::new(Txid::from_byte_array([7; 32]), 0),
            script_sig: ScriptBuf::new(),
            sequence: Sequence::MAX,
            witness: Witness::new(),
        }],
        output: vec![TxOut { value: Amount::from_sat(10_000), script_pubkey: ScriptBuf::new() }],
    }
}

async fn bounded(test: impl std::future::Future<Output = ()>) {
    tokio::time::timeout(TEST_TIMEOUT, test).await.expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_operator_inspects_and_stops_the_tower_with_teos_cli() {
    bounded(async {
        let bitcoind = Bitcoind::in_process().await.expect("regtest node");
        bitcoind.mine(101).await.expect("mining");
        let dir = tempfile::tempdir().expect("tempdir");
        let datadir = dir.path().join("teos");
        let mut tower = TowerProcess::start(&bitcoind, &datadir, &[]);
        let port = tower.rpc_port;
        check_tls_files(&datadir);

        let user = TowerUser::new(7, &tower.api_url);
        let (status, registration) = user.register().await;
        assert_eq!(status, 200, "{registration}");
        let dispute_txid = Txid::from_byte_array([0x42; 32]);
        let (status, receipt) = user.add_appointment(&dispute_txid, &penalty()).await;
        assert_eq!(status, 200, "{receipt}");
        let locator = Locator::from_txid(&dispute_txid).to_string();

        let info = json(&cli(&datadir, port, &["gettowerinfo"]).await);
        assert_eq!(info["tower_id"].as_str().map(str::len), Some(66), "{info}");
        assert_eq!(info["n_registered_users"], 1);
        assert_eq!(info["n_watcher_appointments"], 1);
        assert_eq!(info["n_responder_trackers"], 0);
        assert_eq!(info["bitcoind_reachable"], true);
        assert_eq!(info["tip_height"], 101);
        assert_eq!(info["network"], "regtest");
        assert_eq!((info["ready"].as_bool(), info["bitcoind_height"].as_u64()), (Some(true), Some(101)), "{info}");
        assert_eq!((info["store_ok"].as_bool(), info["disk_above_reserve"].as_bool()), (Some(true), Some(true)));
        let api_port: u64 = tower.api_url.rsplit(':').next().unwrap().parse().unwrap();
        let addresses = info["addresses"].as_array().unwrap();
        assert!(addresses.iter().any(|a| a["service"] == "public_http" && a["port"] == api_port), "{info}");
        assert!(addresses.iter().any(|a| a["service"] == "admin_grpc" && a["port"] == port), "{info}");
        let human = cli(&datadir, port, &["--human", "gettowerinfo"]).await;
        let human = String::from_utf8_lossy(&human.stdout).into_owned();
        assert!(human.contains("chain tip     101 (bitcoind at 101)"), "{human}");
        assert!(human.contains("health        ready"), "{human}");

        let users = json(&cli(&datadir, port, &["getusers"]).await);
        assert_eq!(users, serde_json::json!({ "user_ids": [user.user_id] }));
        let got = json(&cli(&datadir, port, &["getuser", &user.user_id]).await);
        assert_eq!(got["locators"], serde_json::json!([locator]));
        assert_eq!(got["available_slots"].as_u64(), registration["available_slots"].as_u64().map(|s| s - 1));
        assert_eq!(got["subscription_expiry"], registration["subscription_expiry"]);
        assert_eq!(got["subscription_start"], registration["subscription_start"]);
        let stranger = TowerUser::new(8, &tower.api_url);
        assert_eq!(failure(&cli(&datadir, port, &["getuser", &stranger.user_id]).await), "teos-cli: User not found");

        let all = json(&cli(&datadir, port, &["getallappointments"]).await);
        let listed = all["appointments"].as_array().unwrap();
        assert_eq!(listed.len(), 1, "{all}");
        assert_eq!(listed[0]["locator"], locator.as_str());
        assert_eq!(listed[0]["user_id"], user.user_id.as_str());
        assert_eq!(listed[0]["to_self_delay"], 42);
        assert_eq!(listed[0]["start_block"], 101);
        let at = json(&cli(&datadir, port, &["getappointments", &locator]).await);
        assert_eq!(at["appointments"], all["appointments"]);
        let elsewhere = json(&cli(&datadir, port, &["getappointments", &"00".repeat(16)]).await);
        assert_eq!(elsewhere, serde_json::json!({ "appointments": [] }));

        refuses_clients_without_the_tower_certificate(&datadir, port, &dir.path().join("impostor")).await;

        let stop = cli(&datadir, port, &["stop"]).await;
        assert!(stop.status.success(), "{stop:?}");
        assert_eq!(String::from_utf8_lossy(&stop.stdout).trim(), "Shutting down tower");
        tower.wait_for("stop requested over the admin API");
        tower.wait_for("Shutdown complete");
        // teosd has shut down by itself; `stop` collects its exit status. Its SIGTERM may still
        // reach a process that is exiting, after the shutdown completed, and changes nothing.
        assert!(tower.stop().success(), "{}", tower.tail());
        let log = tower.tail();
        let complete = log.find("Shutdown complete").expect("logged");
        assert!(log.find("SIGTERM received").is_none_or(|at| at > complete), "{log}");

        let down = failure(&cli(&datadir, port, &["gettowerinfo"]).await);
        assert!(down.starts_with("teos-cli: Could not connect to tower. Is teosd running?"), "{down}");
    })
    .await;
}

/// teosd created its CA, server and client certificates in the data directory's root.
fn check_tls_files(datadir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    for file in ["ca.pem", "ca-key.pem", "server.pem", "server-key.pem", "client.pem", "client-key.pem"] {
        let meta = std::fs::metadata(datadir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        if file.ends_with("-key.pem") {
            assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{file}");
        }
    }
}

/// A client that trusts the tower but presents no certificate, and one whose certificate comes
/// from another CA, are both refused.
async fn refuses_clients_without_the_tower_certificate(datadir: &Path, port: u16, impostor: &Path) {
    let ca = std::fs::read_to_string(datadir.join("ca.pem")).unwrap();
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca)).domain_name("localhost");
    let channel = Channel::from_shared(format!("https://127.0.0.1:{port}")).unwrap().tls_config(tls).unwrap();
    let refused = match channel.connect().await {
        Err(_) => true,
        Ok(channel) => PrivateTowerServicesClient::new(channel).get_tower_info(GetTowerInfoRequest {}).await.is_err(),
    };
    assert!(refused, "a client without a certificate was served");

    // Same CA file (so the client trusts the tower), a client certificate the tower never issued.
    std::fs::create_dir_all(impostor).unwrap();
    teosd::tls::load_or_create(impostor).expect("another CA");
    std::fs::write(impostor.join("ca.pem"), &ca).unwrap();
    let line = failure(&cli(impostor, port, &["gettowerinfo"]).await);
    assert!(line.starts_with("teos-cli: "), "{line}");
}

/// A commitment-shaped dispute spending a fresh coin, and its penalty.
async fn channel(fixture: &mut Fixture, n: u64) -> (Transaction, Transaction) {
    let coin = fixture.funding.next_coin(&fixture.bitcoind).await.expect("coin");
    let dispute = commitment_tx(&coin, 2, 2, n).expect("commitment");
    let penalty = penalty_tx(&dispute, 0, 3).expect("penalty");
    (dispute, penalty)
}

/// What the public API answers a banned user: 401 with error_code 7, the code the CLN plugin
/// treats as a subscription error (it keeps the appointment pending).
fn refused_as_banned((status, body): (u16, Value)) {
    assert_eq!(status, 401, "{body}");
    assert_eq!(body, serde_json::json!({"error": "This user is banned from the tower", "error_code": 7}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_operator_bans_unbans_and_deletes_users_and_a_deleted_users_penalty_runs_to_its_end() {
    bounded(async {
        let mut fixture = Fixture::start(&[]).await;
        let (datadir, port) = (fixture.tower.datadir.clone(), fixture.tower.rpc_port);
        let (user, other) = (TowerUser::new(41, &fixture.tower.api_url), TowerUser::new(42, &fixture.tower.api_url));
        for u in [&user, &other] {
            assert_eq!(u.register().await.0, 200);
        }
        let (breached, breached_penalty) = channel(&mut fixture, 1).await;
        let (watched, watched_penalty) = channel(&mut fixture, 2).await;
        let (late, late_penalty) = channel(&mut fixture, 3).await;
        for (dispute, penalty) in [(&breached, &breached_penalty), (&watched, &watched_penalty)] {
            assert_eq!(user.add_appointment(&dispute.compute_txid(), penalty).await.0, 200);
        }
        assert_eq!(other.add_appointment(&watched.compute_txid(), &watched_penalty).await.0, 200);
        let tip = fixture.bitcoind.tip().await.expect("tip").0;
        fixture.tower.wait_for_height(tip).await;

        // Ban: every request of the user is refused with code 7; other users are served.
        let banned = json(&cli(&datadir, port, &["banuser", &user.user_id]).await);
        assert_eq!(banned, serde_json::json!({"user_id": user.user_id, "already_banned": false, "registered": true}));
        refused_as_banned(user.add_appointment(&late.compute_txid(), &late_penalty).await);
        refused_as_banned(user.get_appointment(&watched.compute_txid()).await);
        refused_as_banned(user.subscription_info().await);
        refused_as_banned(user.register().await);
        assert_eq!(other.subscription_info().await.0, 200);
        let listed = json(&cli(&datadir, port, &["getbannedusers"]).await);
        assert_eq!(listed, serde_json::json!({"banned_users": [{"user_id": user.user_id, "banned_at": tip}]}));
        let ban_line = fixture.tower.wait_for("admin: user banned");
        assert!(ban_line.contains(&user.user_id) && ban_line.contains("CN=teos grpc Client"), "{ban_line}");

        // The ban survives a restart.
        assert!(fixture.tower.stop().success());
        fixture.tower.restart();
        refused_as_banned(user.add_appointment(&late.compute_txid(), &late_penalty).await);

        // Unban: served again.
        let unbanned = json(&cli(&datadir, port, &["unbanuser", &user.user_id]).await);
        assert_eq!(unbanned, serde_json::json!({"user_id": user.user_id}));
        assert_eq!(user.add_appointment(&late.compute_txid(), &late_penalty).await.0, 200);
        assert_eq!(json(&cli(&datadir, port, &["getbannedusers"]).await), serde_json::json!({"banned_users": []}));
        assert_eq!(failure(&cli(&datadir, port, &["unbanuser", &user.user_id]).await), "teos-cli: User is not banned");

        // A breach: the tower is responding when the user is deleted.
        fixture.bitcoind.mine_block_with(std::slice::from_ref(&breached)).await.expect("mining the dispute");
        fixture.tower.wait_for_tracker(&breached.compute_txid(), &user.user_id, "broadcast").await;
        let deleted = json(&cli(&datadir, port, &["deleteuser", &user.user_id]).await);
        assert_eq!(
            deleted,
            serde_json::json!({"user_id": user.user_id, "appointments_deleted": 3, "trackers_kept": 1})
        );
        assert!(fixture.tower.logged("admin: user deleted"), "{}", fixture.tower.tail());
        assert_eq!(json(&cli(&datadir, port, &["getusers"]).await), serde_json::json!({"user_ids": [other.user_id]}));
        assert_eq!(failure(&cli(&datadir, port, &["getuser", &user.user_id]).await), "teos-cli: User not found");
        assert_eq!(failure(&cli(&datadir, port, &["deleteuser", &user.user_id]).await), "teos-cli: User not found");
        // Its watched appointments are gone (the other user's at the same locator stays); the
        // user itself is unknown to the public API now.
        let at_watched = json(
            &cli(&datadir, port, &["getappointments", &Locator::from_txid(&watched.compute_txid()).to_string()]).await,
        );
        let owners: Vec<&Value> =
            at_watched["appointments"].as_array().unwrap().iter().map(|a| &a["user_id"]).collect();
        assert_eq!(owners, vec![&Value::from(other.user_id.clone())], "{at_watched}");
        let at_late = json(
            &cli(&datadir, port, &["getappointments", &Locator::from_txid(&late.compute_txid()).to_string()]).await,
        );
        assert_eq!(at_late, serde_json::json!({"appointments": []}));
        assert_eq!(user.get_appointment(&watched.compute_txid()).await.0, 401);

        // The tracker kept is followed to its end: confirmed, then buried 100 deep and counted won.
        fixture.funding.mine(&fixture.bitcoind, 1).await.expect("mining");
        fixture.tower.wait_for_tracker(&breached.compute_txid(), &user.user_id, "confirmed").await;
        fixture.funding.mine(&fixture.bitcoind, 100).await.expect("mining");
        fixture.tower.wait_for_height(fixture.bitcoind.tip().await.expect("tip").0).await;
        assert!(fixture.tower.tracker(&breached.compute_txid(), &user.user_id).await.is_none());
        assert_eq!(fixture.tower.info().await["n_penalties_won"], 1);
        assert_eq!(
            fixture.bitcoind.tx_confirmations(&breached_penalty.compute_txid()).await.expect("confirmations"),
            Some(101)
        );
        // The other user's appointment at the shared locator is still watched.
        assert_eq!(other.get_appointment(&watched.compute_txid()).await.1["status"], "being_watched");
    })
    .await;
}
