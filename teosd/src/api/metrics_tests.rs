//! The metrics endpoint over the real domain, follower and public API (in-memory chain,
//! broadcaster and store): every documented metric is exposed, with the tower's state.

use std::sync::Arc;
use std::time::Duration;

use bitcoin::Transaction;

use super::*;
use crate::api::admission::RateLimits;
use crate::api::http::{BodyLimits, HttpSettings};
use crate::api::server::ConnectionLimits;
use crate::chain::BroadcastOutcome;
use crate::disk::DiskReserve;
use crate::metrics::NAMES;
use crate::test_utils::{channel, user, FakeChain, Scene};

/// A registered user with an appointment for channel `seed`; returns the dispute and penalty.
fn watched(scene: &Scene, n: u8, seed: u8) -> (Transaction, Transaction) {
    scene.register(&user(n));
    let (dispute, penalty) = channel(seed);
    assert!(!scene.add_appointment(&user(n), &dispute, &penalty));
    (dispute, penalty)
}

fn settings() -> HttpSettings {
    HttpSettings {
        bodies: BodyLimits::for_blob_size(2048),
        connections: ConnectionLimits {
            max_connections: 16,
            max_connections_per_ip: 16,
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
        },
        rates: RateLimits { registrations_per_minute: 0, appointments_per_second: 0, subscription_info_per_minute: 0 },
        behind_proxy: false,
        python_teos_clients: true,
    }
}

/// The value of the sample `series` (name and labels exactly as exposed).
fn sample(text: &str, series: &str) -> f64 {
    let line = text.lines().find(|l| l.strip_prefix(series).is_some_and(|rest| rest.starts_with(' ')));
    let line = line.unwrap_or_else(|| panic!("{series} missing from\n{text}"));
    line[series.len()..].trim().parse().unwrap_or_else(|e| panic!("{line}: {e}"))
}

#[tokio::test]
async fn a_scrape_exposes_every_documented_metric_with_the_towers_state() {
    let s = Scene::new(Arc::new(FakeChain::new())).await;
    // A reorg first: one block in, out, and two others.
    s.mine_empty(1).await;
    s.chain.disconnect_tip();
    s.mine_empty(2).await;
    // Three users: one breached and confirmed, one refused once then accepted, one only watched.
    let (dispute_1, penalty_1) = watched(&s, 1, 1);
    let (dispute_2, penalty_2) = watched(&s, 2, 2);
    watched(&s, 3, 3);
    let refusal = BroadcastOutcome::Rejected { code: -26, message: "min relay fee not met".into() };
    s.broadcaster.answer(penalty_2.compute_txid(), [refusal]);
    s.mine(vec![dispute_1, dispute_2]).await;
    s.mine(vec![penalty_1]).await;
    // A block whose commit fails once, then goes through.
    s.kv.set_failing(true);
    s.chain.mine_empty(1);
    assert!(s.follower.sync_round().await.is_err());
    s.kv.set_failing(false);
    s.sync().await;

    let dir = tempfile::tempdir().unwrap();
    let disk = Arc::new(DiskReserve::new(dir.path(), 1024));
    let tower =
        Tower::new(s.watcher.clone(), s.locks.clone(), s.follower.status(), None, disk).expect("the intake's thread").0;
    let stop = CancellationToken::new();
    let public = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let public_addr = public.local_addr().unwrap();
    let metrics = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_addr = metrics.local_addr().unwrap();
    let health = crate::health::HealthCheck::new(s.follower.status(), Arc::new(DiskReserve::new(dir.path(), 0)), 3);
    let servers = [
        tokio::spawn(crate::api::http::serve(public, tower.clone(), health, settings(), stop.clone())),
        tokio::spawn(serve(metrics, tower, stop.clone())),
    ];
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let ping = client.get(format!("http://{public_addr}/ping")).send().await.unwrap();
    assert_eq!(ping.status(), 200);
    let stranger = client.post(format!("http://{public_addr}/users/02aa/secret")).send().await.unwrap();
    assert_eq!(stranger.status(), 404);

    let scrape = client.get(format!("http://{metrics_addr}/metrics")).send().await.unwrap();
    assert_eq!(scrape.status(), 200);
    assert!(scrape.headers()["content-type"].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
    let text = scrape.text().await.unwrap();
    for name in NAMES {
        assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing from\n{text}");
    }
    for (series, value) in [
        ("teos_users", 3.0),
        ("teos_appointments", 3.0),
        ("teos_appointments_watched", 1.0),
        (r#"teos_trackers{state="confirmed"}"#, 1.0),
        (r#"teos_trackers{state="broadcast"}"#, 1.0),
        (r#"teos_trackers{state="refused"}"#, 0.0),
        ("teos_chain_tip_height", f64::from(s.height())),
        ("teos_bitcoind_tip_height", f64::from(s.chain.height())),
        // (Reachability is published by `follow`'s rounds, which the scene does not run.)
        ("teos_store_ok", 1.0),
        ("teos_disk_reserve_bytes", 1024.0),
        ("teos_blocks_connected_total", 6.0),
        ("teos_blocks_disconnected_total", 1.0),
        (r#"teos_block_stage_seconds_count{stage="total"}"#, 6.0),
        (r#"teos_block_stage_seconds_count{stage="commit"}"#, 6.0),
        ("teos_breaches_total", 2.0),
        (r#"teos_penalties_sent_total{why="breach"}"#, 2.0),
        (r#"teos_penalties_sent_total{why="again"}"#, 1.0),
        (r#"teos_penalties_sent_total{why="mempool"}"#, 0.0),
        (r#"teos_penalties_refused_total{reason="policy"}"#, 1.0),
        (r#"teos_penalties_refused_total{reason="inputs_missing_or_spent"}"#, 0.0),
        ("teos_penalties_confirmed_total", 1.0),
        (r#"teos_http_requests_total{code="200",route="ping"}"#, 1.0),
        (r#"teos_http_requests_total{code="404",route="other"}"#, 1.0),
        (r#"teos_http_request_duration_seconds_count{route="ping"}"#, 1.0),
        ("teos_store_commit_failures_total", 1.0),
    ] {
        assert_eq!(sample(&text, series), value, "{series}");
    }
    assert!(sample(&text, "teos_store_commit_duration_seconds_count") >= 10.0);
    assert!(sample(&text, "teos_disk_free_bytes") > 0.0);
    assert!(!text.contains("secret") && !text.contains("02aa"), "no label comes from a request's path");

    // Nothing else is served there.
    let elsewhere = client.get(format!("http://{metrics_addr}/")).send().await.unwrap();
    assert_eq!(elsewhere.status(), 404);
    let post = client.post(format!("http://{metrics_addr}/metrics")).send().await.unwrap();
    assert_eq!(post.status(), 405);

    // Counted again from the store at a restart, the counts are the ones kept along the way.
    let kept = s.store.stored_counts();
    assert_eq!((kept.appointments, kept.trackers), (3, [1, 0, 1, 0]));
    assert_eq!(s.restart().store.stored_counts(), kept);

    stop.cancel();
    for server in servers {
        tokio::time::timeout(Duration::from_secs(10), server).await.expect("stops on the token").unwrap();
    }
}

#[test]
fn every_metric_is_documented() {
    let operations = include_str!("../../../docs/operations.md");
    for name in NAMES {
        assert!(operations.contains(&format!("`{name}")), "{name} is not in docs/operations.md");
    }
}
