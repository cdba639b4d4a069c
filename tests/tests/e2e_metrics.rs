//! End to end: the real `teosd` serves `GET /metrics` on its own listener. After a register, an
//! appointment, a breach and its penalty mined, the scrape shows them; every metric the Grafana
//! dashboard (`contrib/grafana/teos-dashboard.json`) queries is in it; `--metricsaddr off`
//! opens no listener.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;
use teos_tests::tower::{Fixture, TowerProcess, TowerUser};
use teos_tests::wallet::{commitment_tx, penalty_tx};

const TEST_TIMEOUT: Duration = Duration::from_secs(170);
const DASHBOARD: &str = include_str!("../../contrib/grafana/teos-dashboard.json");

async fn bounded(test: impl std::future::Future<Output = ()>) {
    tokio::time::timeout(TEST_TIMEOUT, test).await.expect("test timed out");
}

async fn scrape(tower: &TowerProcess) -> String {
    let url = tower.metrics_url.as_deref().expect("the fixture's metrics port");
    let response = reqwest::get(url).await.expect("the tower answers /metrics");
    assert_eq!(response.status(), 200);
    response.text().await.expect("a text body")
}

/// The value of the sample `series` (name and labels exactly as exposed).
fn sample(text: &str, series: &str) -> f64 {
    let line = text.lines().find(|l| l.strip_prefix(series).is_some_and(|rest| rest.starts_with(' ')));
    let line = line.unwrap_or_else(|| panic!("{series} missing from\n{text}"));
    line[series.len()..].trim().parse().unwrap_or_else(|e| panic!("{line}: {e}"))
}

/// Every `expr` in the dashboard, wherever it is nested.
fn exprs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                match (key.as_str(), inner) {
                    ("expr", Value::String(expr)) => out.push(expr.clone()),
                    _ => exprs(inner, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| exprs(item, out)),
        _ => {}
    }
}

/// The `teos_*` metric names an expression uses.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("teos_") {
        let name: String =
            rest[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':').collect();
        rest = &rest[at + name.len()..];
        names.insert(name);
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_breach_shows_in_the_metrics_and_the_dashboard_queries_only_what_is_exposed() {
    bounded(async {
        let Fixture { bitcoind, mut funding, tower, dir: _dir } = Fixture::start(&[]).await;
        let user = TowerUser::new(21, &tower.api_url);
        assert_eq!(user.register().await.0, 200);
        let coin = funding.next_coin(&bitcoind).await.expect("coin");
        let dispute = commitment_tx(&coin, 2, 2, 1).expect("commitment");
        let penalty = penalty_tx(&dispute, 0, 3).expect("penalty");
        let txid = dispute.compute_txid();
        assert_eq!(user.add_appointment(&txid, &penalty).await.0, 200);
        bitcoind.mine_block_with(std::slice::from_ref(&dispute)).await.expect("mine dispute");
        user.wait_for_status(&txid, "dispute_responded").await;
        funding.mine(&bitcoind, 1).await.expect("mining");
        tower.wait_for_tracker(&txid, &user.user_id, "confirmed").await;
        let tip = bitcoind.tip().await.expect("tip").0;
        tower.wait_for_height(tip).await;

        let text = scrape(&tower).await;
        for (series, value) in [
            ("teos_users", 1.0),
            ("teos_appointments", 1.0),
            ("teos_appointments_watched", 0.0),
            (r#"teos_trackers{state="confirmed"}"#, 1.0),
            ("teos_breaches_total", 1.0),
            (r#"teos_penalties_sent_total{why="breach"}"#, 1.0),
            ("teos_penalties_confirmed_total", 1.0),
            (r#"teos_http_requests_total{code="200",route="register"}"#, 1.0),
            (r#"teos_http_requests_total{code="200",route="add_appointment"}"#, 1.0),
            ("teos_chain_tip_height", f64::from(tip)),
            ("teos_bitcoind_tip_height", f64::from(tip)),
            ("teos_bitcoind_reachable", 1.0),
            ("teos_store_ok", 1.0),
            ("teos_store_commit_failures_total", 0.0),
        ] {
            assert_eq!(sample(&text, series), value, "{series}");
        }
        assert!(sample(&text, r#"teos_http_requests_total{code="200",route="get_appointment"}"#) >= 1.0);
        assert!(sample(&text, r#"teos_block_stage_seconds_count{stage="total"}"#) >= 2.0);
        assert!(sample(&text, "teos_blocks_connected_total") >= 2.0);
        assert!(sample(&text, r#"teos_http_request_duration_seconds_count{route="add_appointment"}"#) >= 1.0);
        assert!(sample(&text, "teos_store_commit_duration_seconds_count") >= 3.0);
        assert!(sample(&text, "teos_disk_free_bytes") > 0.0);
        assert!(!text.contains(&user.user_id), "no label names a user");

        // The dashboard imports as is (its datasource an input) and queries nothing that is not here.
        let dashboard: Value = serde_json::from_str(DASHBOARD).expect("the dashboard is JSON");
        assert_eq!(dashboard["__inputs"][0]["name"], "DS_PROMETHEUS", "{}", dashboard["__inputs"]);
        let mut all = Vec::new();
        exprs(&dashboard, &mut all);
        assert!(all.len() >= 10, "{all:?}");
        let used: BTreeSet<String> = all.iter().flat_map(|e| metric_names(e)).collect();
        let exposed: BTreeSet<&str> =
            text.lines().filter(|l| !l.starts_with('#')).filter_map(|l| l.split(['{', ' ']).next()).collect();
        for name in &used {
            assert!(exposed.contains(name.as_str()), "the dashboard queries {name}, which /metrics does not expose");
        }
        for name in teosd::metrics::NAMES {
            assert!(used.iter().any(|u| u.starts_with(name)), "the dashboard shows nothing of {name}");
        }
    })
    .await;
}

/// The ports `pid` listens on over TCP (IPv4 and IPv6), from `/proc`.
fn listening_ports(pid: u32) -> BTreeSet<u16> {
    let sockets: BTreeSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the tower's descriptors")
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            Some(target.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let mut ports = BTreeSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for fields in text.lines().skip(1).map(|l| l.split_whitespace().collect::<Vec<_>>()) {
            // local_address is `ADDR:PORT` in hex; state 0A is LISTEN; the inode is field 9.
            let (Some(local), Some(state), Some(inode)) = (fields.get(1), fields.get(3), fields.get(9)) else {
                continue;
            };
            if *state == "0A" && sockets.contains(*inode) {
                let port = local.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
                ports.extend(port);
            }
        }
    }
    ports
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn switched_off_the_metrics_endpoint_opens_no_listener() {
    bounded(async {
        let Fixture { tower: mut off, .. } = Fixture::start(&["--metricsaddr", "off"]).await;
        assert!(off.logged("metrics endpoint off"), "{}", off.tail());
        let ports = listening_ports(off.pid().expect("running"));
        let api_port: u16 = off.api_url.rsplit(':').next().and_then(|p| p.parse().ok()).expect("api port");
        assert_eq!(ports, BTreeSet::from([api_port, off.rpc_port]), "only the public and admin APIs listen");
        assert_eq!(off.stop().code(), Some(0));
    })
    .await;
}
