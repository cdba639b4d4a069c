//! The reference transcript (reference-tower.md §2.6) line by line against the real router, plus
//! generated bodies, user isolation and concurrency. Test config: slots 21, duration 500, height 100.

use std::str::FromStr;
use std::sync::Arc;

use bitcoin::secp256k1::{PublicKey, Secp256k1, SecretKey};
use serde_json::{json, Value};
use tokio::sync::watch;
use warp::http::StatusCode;

use super::*;
use crate::api::admission::{Admission, RateLimits};
use crate::api::server::ConnectionLimits;
use crate::chain::ChainStatus;
use crate::config::Policy;
use crate::disk::DiskReserve;
use crate::gatekeeper::Gatekeeper;
use crate::health::HealthCheck;
use crate::locks::UserLocks;
use crate::protocol::{recover_signer, registration_receipt_bytes, sign_message, TowerSigner};
use crate::responder::Responder;
use crate::store::{PenaltyStatus, Store, TrackerRecord};
use crate::test_utils::FakeBroadcaster;
use crate::watcher::Watcher;

const USER_ID: &str = "034f355bdcb7cc0af728ef3cceb9615d90684bb5b2ca5f859ab0f0b704075871aa";
const LOCATOR: &str = "b4a11e76c7115e2cd79526f3543e6bec";
const USER_SIG: &str =
    "d9p9eu5na6jn9ppw1s57tgzrar5cejkdo9hqbwc7soih9wbrdmn9qanwrhr76w4aef4fr8h7wod7q3z56drh5tihyjd1ukcpeujp5w7x";

struct Harness {
    store: Store,
    tower: Tower,
    chain: watch::Sender<ChainStatus>,
    health: HealthCheck,
    settings: HttpSettings,
    admission: Arc<Admission>,
    _dir: tempfile::TempDir,
}

fn policy() -> Policy {
    Policy {
        subscription_slots: 21,
        subscription_duration: 500,
        expiry_delta: 42,
        min_to_self_delay: 20,
        max_blob_size: 2048,
        recent_block_lookback: 100,
        rebroadcast_after: 6,
        max_slots_per_user: 100_000,
        max_users: 1000,
    }
}

fn harness() -> Harness {
    let store = Store::in_memory();
    let signer = TowerSigner::new(SecretKey::from_slice(&[0x33; 32]).unwrap());
    let responder = Arc::new(Responder::new(store.clone(), Arc::new(FakeBroadcaster::default()), 6));
    let watcher = Watcher::new(store.clone(), Gatekeeper::new(store.clone(), policy()).unwrap(), signer, responder);
    harness_with(
        Arc::new(watcher),
        store,
        RateLimits { registrations_per_minute: 0, appointments_per_second: 0, subscription_info_per_minute: 0 },
        0,
    )
}

fn harness_with(watcher: Arc<Watcher>, store: Store, rates: RateLimits, disk_reserve: u64) -> Harness {
    let following = ChainStatus { source_height: Some(100), source_reachable: true, ..ChainStatus::starting(100) };
    let (chain, rx) = watch::channel(following);
    let dir = tempfile::tempdir().unwrap();
    let disk = Arc::new(DiskReserve::new(dir.path(), disk_reserve));
    let health = HealthCheck::new(rx.clone(), disk.clone(), 3);
    let tower = Tower::new(watcher, Arc::new(UserLocks::default()), rx, None, disk).expect("the intake's thread").0;
    let settings = HttpSettings {
        bodies: BodyLimits::for_blob_size(2048),
        connections: ConnectionLimits {
            max_connections: 16,
            max_connections_per_ip: 4,
            header_timeout: std::time::Duration::from_secs(10),
            request_timeout: std::time::Duration::from_secs(30),
        },
        rates,
        behind_proxy: false,
        python_teos_clients: true,
    };
    let admission = Arc::new(Admission::new(rates));
    Harness { store, tower, chain, health, settings, admission, _dir: dir }
}

fn user_sk(n: u8) -> SecretKey {
    SecretKey::from_slice(&[n; 32]).unwrap()
}

fn user_id(n: u8) -> String {
    PublicKey::from_secret_key(&Secp256k1::new(), &user_sk(n)).to_string()
}

impl Harness {
    fn router(&self) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
        routes(self.tower.clone(), self.health.clone(), self.admission.clone(), self.settings)
    }

    async fn raw(&self, method: &str, path: &str, body: &[u8], content_type: Option<&str>) -> (StatusCode, String) {
        let mut req = warp::test::request().method(method).path(path);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        if !body.is_empty() || method == "POST" {
            req = req.header("content-length", body.len().to_string()).body(body);
        }
        let (status, body) = finished(req, &self.router()).await;
        (status, String::from_utf8(body).unwrap())
    }

    async fn post(&self, path: &str, body: &str) -> (StatusCode, String) {
        self.raw("POST", path, body.as_bytes(), Some("application/json")).await
    }

    async fn post_json(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let (status, text) = self.post(path, &body.to_string()).await;
        (status, serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text:?}")))
    }

    async fn register(&self, n: u8) -> Value {
        let (status, body) = self.post_json("/register", json!({ "user_id": user_id(n) })).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    async fn add(&self, n: u8, locator: &str, blob: &str, to_self_delay: u32) -> (StatusCode, Value) {
        let appointment = Appointment {
            locator: Locator::from_str(locator).unwrap(),
            encrypted_blob: hex::decode(blob).unwrap(),
            to_self_delay,
        };
        let signature = sign_message(&appointment.signed_bytes(), &user_sk(n));
        let body = json!({"appointment": {"locator": locator, "encrypted_blob": blob, "to_self_delay": to_self_delay}, "signature": signature});
        self.post_json("/add_appointment", body).await
    }

    async fn get(&self, n: u8, locator: &str) -> (StatusCode, Value) {
        let signature = sign_message(format!("get appointment {locator}").as_bytes(), &user_sk(n));
        self.post_json("/get_appointment", json!({"locator": locator, "signature": signature})).await
    }

    async fn info(&self, n: u8) -> (StatusCode, Value) {
        let signature = sign_message(b"get subscription info", &user_sk(n));
        self.post_json("/get_subscription_info", json!({ "signature": signature })).await
    }
}

/// `request` through `router` as the server sends it: a streamed body collected too.
async fn finished<F>(request: warp::test::RequestBuilder, router: &F) -> (StatusCode, Vec<u8>)
where
    F: Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static,
{
    use http_body_util::BodyExt;
    let response = match request.filter(router).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let response = crate::api::server::finish(response);
    let status = response.status();
    let body = response.into_body().collect().await.expect("a whole body").to_bytes().to_vec();
    (status, body)
}

fn error(status: (StatusCode, String), expected_status: StatusCode, message: &str, code: u8) {
    assert_eq!(status.0, expected_status, "{}", status.1);
    assert_eq!(status.1, json!({"error": message, "error_code": code}).to_string());
}

#[tokio::test]
async fn transcript_register() {
    let h = harness();
    let (status, body) = h.post_json("/register", json!({ "user_id": USER_ID })).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["user_id"], USER_ID);
    assert_eq!(
        (body["available_slots"].as_u64(), body["subscription_start"].as_u64(), body["subscription_expiry"].as_u64()),
        (Some(21), Some(100), Some(600))
    );
    let receipt = registration_receipt_bytes(&UserId::from_str(USER_ID).unwrap(), 21, 100, 600);
    let sig = body["subscription_signature"].as_str().unwrap();
    assert_eq!(recover_signer(&receipt, sig).unwrap(), h.tower.tower_id());
    let keys: Vec<_> = body.as_object().unwrap().keys().cloned().collect();
    assert_eq!(keys.len(), 5);

    let (_, again) = h.post_json("/register", json!({ "user_id": USER_ID })).await;
    assert_eq!(
        (
            again["available_slots"].as_u64(),
            again["subscription_start"].as_u64(),
            again["subscription_expiry"].as_u64()
        ),
        (Some(42), Some(100), Some(1100))
    );
    // Field order is the reference's.
    let text = h.post("/register", &json!({ "user_id": USER_ID }).to_string()).await.1;
    assert!(text.starts_with("{\"user_id\":") && text.contains("\"available_slots\":63,\"subscription_start\":100,\"subscription_expiry\":1600,\"subscription_signature\":"), "{text}");
}

#[tokio::test]
async fn transcript_register_errors() {
    let h = harness();
    // The reference refused python-teos's `public_key` this way; we serve it (http_python_tests),
    // and any other key is still a missing `user_id`.
    error(
        h.post("/register", &json!({"pubkey": USER_ID}).to_string()).await,
        StatusCode::BAD_REQUEST,
        "missing field `user_id`",
        1,
    );
    error(
        h.raw("POST", "/register", b"{}", Some("text/plain")).await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "The request's content-type is not supported",
        44,
    );
    let no_ct = h.raw("POST", "/register", json!({"user_id": USER_ID}).to_string().as_bytes(), None).await;
    assert_eq!(no_ct.0, StatusCode::OK);
    let with_charset = h
        .raw(
            "POST",
            "/register",
            json!({"user_id": USER_ID}).to_string().as_bytes(),
            Some("application/json; charset=utf-8"),
        )
        .await;
    assert_eq!(with_charset.0, StatusCode::OK);
    error(h.post("/register", "").await, StatusCode::BAD_REQUEST, "EOF while parsing a value at line 1 column 0", 6);
    // The reference said code 3 (serde's "invalid type"); a body that is not a JSON object is
    // refused before it is parsed, as python-teos did (http_python_tests).
    error(h.post("/register", "\"\"").await, StatusCode::BAD_REQUEST, "Invalid request content: not a JSON object", 6);
    error(h.post("/register", r#"{"user_id":""}"#).await, StatusCode::BAD_REQUEST, "`user_id` field is empty", 2);
    error(
        h.post("/register", r#"{"user_id":"a"}"#).await,
        StatusCode::BAD_REQUEST,
        "Odd number of digits at line 1 column 14",
        5,
    );
    error(
        h.post("/register", r#"{"user_id":"zz"}"#).await,
        StatusCode::BAD_REQUEST,
        "Invalid character 'z' at position 0 at line 1 column 15",
        5,
    );
    error(
        h.post("/register", r#"{"user_id":"aa"}"#).await,
        StatusCode::BAD_REQUEST,
        "Wrong `user_id` field size. Expected 33, received 1",
        4,
    );
    error(
        h.post("/register", r#"{"user_id":1}"#).await,
        StatusCode::BAD_REQUEST,
        "invalid type: integer `1`, expected a hex encoded string at line 1 column 12",
        3,
    );
    let not_a_point = format!("04{}", &USER_ID[2..]);
    error(
        h.post("/register", &json!({"user_id": not_a_point}).to_string()).await,
        StatusCode::BAD_REQUEST,
        "Provided public key does not match expected format (33-byte compressed key)",
        5,
    );
    // Uppercase hex is accepted; output is lowercase.
    let (status, body) = h.post_json("/register", json!({"user_id": USER_ID.to_uppercase()})).await;
    assert_eq!((status, body["user_id"].as_str()), (StatusCode::OK, Some(USER_ID)));
}

#[tokio::test]
async fn transcript_http_errors_are_json() {
    let h = harness();
    let res = warp::test::request().method("POST").path("/register").reply(&h.router()).await;
    assert_eq!(res.status(), StatusCode::LENGTH_REQUIRED);
    assert_eq!(
        res.body().as_ref(),
        json!({"error": "A content-length header is required", "error_code": 42}).to_string().as_bytes()
    );
    let big = format!(r#"{{"user_id":"{}"}}"#, "a".repeat(300));
    error(h.post("/register", &big).await, StatusCode::PAYLOAD_TOO_LARGE, "The request payload is too large", 43);
    error(h.raw("GET", "/register", b"", None).await, StatusCode::METHOD_NOT_ALLOWED, "HTTP method not allowed", 41);
    let ping = h.raw("GET", "/ping", b"", None).await;
    assert_eq!(ping, (StatusCode::OK, String::new()));
    error(h.raw("POST", "/ping", b"", None).await, StatusCode::METHOD_NOT_ALLOWED, "HTTP method not allowed", 41);
    error(h.post("/nope", "{}").await, StatusCode::NOT_FOUND, "No such route", 40);
    error(h.raw("GET", "/nope", b"", None).await, StatusCode::NOT_FOUND, "No such route", 40);
    error(h.raw("GET", "/ping/extra", b"", None).await, StatusCode::NOT_FOUND, "No such route", 40);
}

#[tokio::test]
async fn transcript_add_appointment() {
    let h = harness();
    for _ in 0..3 {
        h.register(0x11).await;
    }
    let body = json!({"appointment": {"locator": LOCATOR, "encrypted_blob": "deadbeef", "to_self_delay": 42}, "signature": USER_SIG});
    let (status, text) = h.post("/add_appointment", &body.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let reply: Value = serde_json::from_str(&text).unwrap();
    assert!(text.starts_with(&format!("{{\"locator\":\"{LOCATOR}\",\"start_block\":100,\"signature\":\"")), "{text}");
    assert!(text.ends_with("\"available_slots\":62,\"subscription_expiry\":1600}"), "{text}");
    let receipt = crate::protocol::appointment_receipt_bytes(USER_SIG, 100);
    assert_eq!(recover_signer(&receipt, reply["signature"].as_str().unwrap()).unwrap(), h.tower.tower_id());

    // The same request again is an update: same reply, no charge.
    assert_eq!(h.post("/add_appointment", &body.to_string()).await, (StatusCode::OK, text.clone()));
    // Unlike the reference, an empty blob is refused (it used to refund a slot) and nothing changes.
    error(h.post("/add_appointment", &json!({"appointment": {"locator": LOCATOR, "encrypted_blob": "", "to_self_delay": 42}, "signature": sign_message(&hex::decode(format!("{LOCATOR}0000002a")).unwrap(), &user_sk(0x11))}).to_string()).await,
        StatusCode::BAD_REQUEST, "`encrypted_blob` field is empty", 2);
    // A changed field under the old signature recovers another key.
    let tampered = json!({"appointment": {"locator": LOCATOR, "encrypted_blob": "deadbeef", "to_self_delay": 43}, "signature": USER_SIG});
    error(
        h.post("/add_appointment", &tampered.to_string()).await,
        StatusCode::UNAUTHORIZED,
        "Invalid signature or user does not have enough slots available",
        7,
    );
    error(
        h.post("/add_appointment", &json!({"signature": USER_SIG}).to_string()).await,
        StatusCode::BAD_REQUEST,
        "missing field `appointment`",
        1,
    );
    error(
        h.post("/add_appointment", &json!({"appointment": null, "signature": USER_SIG}).to_string()).await,
        StatusCode::BAD_REQUEST,
        "missing field `appointment`",
        1,
    );
    let with_locator = |l: &str| {
        json!({"appointment": {"locator": l, "encrypted_blob": "deadbeef", "to_self_delay": 42}, "signature": USER_SIG})
            .to_string()
    };
    error(h.post("/add_appointment", &with_locator("")).await, StatusCode::BAD_REQUEST, "`locator` field is empty", 2);
    error(
        h.post("/add_appointment", &with_locator("aabb")).await,
        StatusCode::BAD_REQUEST,
        "Wrong `locator` field size. Expected 16, received 2",
        4,
    );
    error(h.post("/add_appointment", &json!({"appointment": {"locator": LOCATOR, "encrypted_blob": "deadbeef", "to_self_delay": 42}, "signature": ""}).to_string()).await, StatusCode::BAD_REQUEST, "`signature` field is empty", 2);
    error(
        h.post(
            "/add_appointment",
            &json!({"appointment": {"locator": LOCATOR, "encrypted_blob": "deadbeef"}, "signature": USER_SIG})
                .to_string(),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "missing field `to_self_delay`",
        1,
    );
    let negative = h.post("/add_appointment", &format!(r#"{{"appointment":{{"locator":"{LOCATOR}","encrypted_blob":"deadbeef","to_self_delay":-1}},"signature":"{USER_SIG}"}}"#)).await;
    assert_eq!(negative.0, StatusCode::BAD_REQUEST);
    let negative: Value = serde_json::from_str(&negative.1).unwrap();
    assert!(
        negative["error"].as_str().unwrap().starts_with("invalid value: integer `-1`, expected u32 at line 1 column"),
        "{negative}"
    );
    assert_eq!(negative["error_code"], 6);
    // Signed by an unregistered key.
    let (status, body) = h.add(0x55, LOCATOR, "deadbeef", 42).await;
    assert_eq!((status, body["error_code"].as_u64()), (StatusCode::UNAUTHORIZED, Some(7)));
    // Nothing above charged a slot or changed the appointment.
    let (_, info) = h.info(0x11).await;
    assert_eq!(info, json!({"available_slots": 62, "subscription_expiry": 1600, "locators": [LOCATOR]}));
    let (_, got) = h.get(0x11, LOCATOR).await;
    assert_eq!(
        got,
        json!({"appointment": {"locator": LOCATOR, "encrypted_blob": "deadbeef", "to_self_delay": 42}, "status": "being_watched"})
    );
}

#[tokio::test]
async fn inspector_limits() {
    let h = harness();
    h.register(1).await;
    let (status, _) = h.add(1, LOCATOR, &"ab".repeat(2048), 20).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = h.add(1, LOCATOR, &"ab".repeat(2049), 20).await;
    assert_eq!((status, body["error_code"].as_u64()), (StatusCode::BAD_REQUEST, Some(34)), "{body}");
    let (status, body) = h.add(1, LOCATOR, "deadbeef", 19).await;
    assert_eq!(body, json!({"error": "`to_self_delay` is 19, below the tower's minimum of 20", "error_code": 33}));
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let huge = json!({"appointment": {"locator": LOCATOR, "encrypted_blob": "ab".repeat(4096), "to_self_delay": 42}, "signature": USER_SIG});
    assert_eq!(h.post("/add_appointment", &huge.to_string()).await.0, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn transcript_get_appointment_and_subscription_info() {
    let h = harness();
    h.register(0x11).await;
    assert_eq!(h.add(0x11, LOCATOR, "deadbeef", 42).await.0, StatusCode::OK);
    let (status, body) = h.get(0x11, LOCATOR).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"appointment": {"locator": LOCATOR, "encrypted_blob": "deadbeef", "to_self_delay": 42}, "status": "being_watched"})
    );
    let unknown = "9ef53c7d6c2ecfad7fcb73d6b9bffa10";
    assert_eq!(
        h.get(0x11, unknown).await,
        (StatusCode::NOT_FOUND, json!({"error": "Appointment not found", "error_code": 36}))
    );
    assert_eq!(
        h.get(0x55, LOCATOR).await,
        (StatusCode::UNAUTHORIZED, json!({"error": "User cannot be authenticated", "error_code": 7}))
    );
    let garbage = h.post_json("/get_appointment", json!({"locator": LOCATOR, "signature": "garbage"})).await;
    assert_eq!(garbage, (StatusCode::UNAUTHORIZED, json!({"error": "User cannot be authenticated", "error_code": 7})));
    assert_eq!(h.post_json("/get_appointment", json!({"locator": "", "signature": "x"})).await.1["error_code"], 2);
    assert_eq!(h.post_json("/get_appointment", json!({"locator": "aa", "signature": "x"})).await.1["error_code"], 4);
    assert_eq!(h.post_json("/get_appointment", json!({"locator": LOCATOR, "signature": ""})).await.1["error_code"], 2);

    let (status, info) = h.info(0x11).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(info, json!({"available_slots": 20, "subscription_expiry": 600, "locators": [LOCATOR]}));
    assert_eq!(
        h.info(0x55).await,
        (StatusCode::UNAUTHORIZED, json!({"error": "User not found. Have you registered?", "error_code": 7}))
    );
    assert_eq!(h.post_json("/get_subscription_info", json!({"signature": ""})).await.1["error_code"], 2);
}

fn tracker_fixture() -> TrackerRecord {
    crate::test_utils::tracker(1, 100, PenaltyStatus::Broadcast(101))
}

#[tokio::test]
async fn transcript_triggered_appointment() {
    let h = harness();
    h.register(0x11).await;
    assert_eq!(h.add(0x11, LOCATOR, "deadbeef", 42).await.0, StatusCode::OK);
    let tracker = tracker_fixture();
    let mut batch = h.store.batch();
    batch.put_tracker(&Locator::from_str(LOCATOR).unwrap(), &UserId::from_str(USER_ID).unwrap(), &tracker, None);
    h.store.commit(batch).unwrap();
    let (status, body) = h.get(0x11, LOCATOR).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"appointment": {
        "dispute_txid": tracker.dispute_txid.to_string(),
        "penalty_txid": tracker.penalty.compute_txid().to_string(),
        "penalty_rawtx": serialize_hex(&tracker.penalty)}, "status": "dispute_responded"})
    );
    assert_eq!(
        h.add(0x11, LOCATOR, "deadbeef", 42).await,
        (
            StatusCode::BAD_REQUEST,
            json!({"error": "The provided appointment has already been triggered", "error_code": 35})
        )
    );
    // Triggered appointments still count in the user's locators.
    assert_eq!(h.info(0x11).await.1["locators"], json!([LOCATOR]));
}

#[tokio::test]
async fn expired_users_get_code_7_and_can_renew() {
    let h = harness();
    h.register(1).await;
    assert_eq!(h.add(1, LOCATOR, "deadbeef", 42).await.0, StatusCode::OK);
    h.chain.send_modify(|s| s.tip_height = 600);
    let expired = json!({"error": "Your subscription expired at 600", "error_code": 7});
    assert_eq!(h.add(1, LOCATOR, "deadbeef", 42).await, (StatusCode::UNAUTHORIZED, expired.clone()));
    assert_eq!(h.get(1, LOCATOR).await, (StatusCode::UNAUTHORIZED, expired.clone()));
    assert_eq!(h.info(1).await, (StatusCode::UNAUTHORIZED, expired));
    let renewed = h.register(1).await;
    assert_eq!((renewed["available_slots"].as_u64(), renewed["subscription_expiry"].as_u64()), (Some(41), Some(1100)));
    assert_eq!(h.add(1, LOCATOR, "deadbeef", 42).await.0, StatusCode::OK);
}

#[tokio::test]
async fn out_of_slots_is_code_7_and_updates_stay_free() {
    let h = harness();
    h.register(1).await;
    for i in 0..21u8 {
        assert_eq!(h.add(1, &hex::encode([i; 16]), "deadbeef", 42).await.0, StatusCode::OK);
    }
    let (status, body) = h.add(1, &hex::encode([99u8; 16]), "deadbeef", 42).await;
    assert_eq!((status, body["error_code"].as_u64()), (StatusCode::UNAUTHORIZED, Some(7)));
    let (status, body) = h.add(1, &hex::encode([3u8; 16]), "cafebabe", 42).await;
    assert_eq!((status, body["available_slots"].as_u64()), (StatusCode::OK, Some(0)));
}

#[tokio::test]
async fn users_see_only_their_own_appointments() {
    let h = harness();
    h.register(1).await;
    h.register(2).await;
    assert_eq!(h.add(1, LOCATOR, "aaaa", 42).await.0, StatusCode::OK);
    assert_eq!(h.get(2, LOCATOR).await.0, StatusCode::NOT_FOUND);
    assert_eq!(h.info(2).await.1["locators"], json!([]));
    // B's appointment at the same locator is B's own; A's is untouched and A's slots unchanged.
    assert_eq!(h.add(2, LOCATOR, "bbbb", 42).await.0, StatusCode::OK);
    assert_eq!(h.get(1, LOCATOR).await.1["appointment"]["encrypted_blob"], "aaaa");
    assert_eq!(h.get(2, LOCATOR).await.1["appointment"]["encrypted_blob"], "bbbb");
    assert_eq!(h.info(1).await.1["available_slots"], 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_adds_charge_exactly() {
    let h = Arc::new(harness());
    h.register(1).await;
    h.register(2).await;
    // 16 identical requests at once: one appointment, one charge.
    let same: Vec<_> = (0..16)
        .map(|_| {
            let h = h.clone();
            tokio::spawn(async move { h.add(1, LOCATOR, "deadbeef", 42).await.0 })
        })
        .collect();
    for task in same {
        assert_eq!(task.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(h.info(1).await.1["available_slots"], 20);
    // 30 different locators at once with 20 slots left: exactly 20 accepted.
    let distinct: Vec<_> = (0..30u8)
        .map(|i| {
            let h = h.clone();
            tokio::spawn(async move { h.add(1, &hex::encode([i + 100; 16]), "deadbeef", 42).await.0 })
        })
        .collect();
    let mut accepted = 0;
    for task in distinct {
        if task.await.unwrap() == StatusCode::OK {
            accepted += 1;
        }
    }
    assert_eq!(accepted, 20);
    let (_, info) = h.info(1).await;
    assert_eq!((info["available_slots"].as_u64(), info["locators"].as_array().unwrap().len()), (Some(0), 21));
    // Another user's concurrent requests are unaffected.
    let other: Vec<_> = (0..10u8)
        .map(|i| {
            let h = h.clone();
            tokio::spawn(async move { h.add(2, &hex::encode([i; 16]), "deadbeef", 42).await.0 })
        })
        .collect();
    for task in other {
        assert_eq!(task.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(h.info(2).await.1["available_slots"], 11);
}

/// A small deterministic generator for the fuzz-style tests.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
}

#[tokio::test]
async fn generated_requests_never_panic_and_always_answer_documented_codes() {
    let h = harness();
    h.register(1).await;
    let documented = [1u64, 2, 3, 4, 5, 6, 7, 33, 34, 35, 36, 40, 41, 42, 43, 44, 65];
    let paths = [
        "/register",
        "/add_appointment",
        "/get_appointment",
        "/get_subscription_info",
        "/ping",
        "/",
        "/x",
        "/register/x",
    ];
    let methods = ["GET", "POST", "PUT", "DELETE", "PATCH"];
    let fragments = [
        "{",
        "}",
        "[",
        "]",
        "\"user_id\"",
        "\"appointment\"",
        "\"locator\"",
        "\"signature\"",
        "\"encrypted_blob\"",
        "\"to_self_delay\"",
        ":",
        ",",
        "null",
        "1",
        "-1",
        "4294967296",
        "\"\"",
        "\"zz\"",
        &format!("\"{LOCATOR}\""),
        &format!("\"{USER_ID}\""),
        &format!("\"{USER_SIG}\""),
        "true",
        "\u{fffd}",
    ];
    let content_types =
        [None, Some("application/json"), Some("text/plain"), Some("application/json; charset=utf-8"), Some("\u{7f}")];
    let mut rng = Rng(0x5eed);
    for _ in 0..1500 {
        let body: String = (0..rng.next() % 12).map(|_| rng.pick(&fragments)).collect();
        let body = if rng.next().is_multiple_of(8) {
            (0..rng.next() % 64).map(|_| (rng.next() % 256) as u8).collect::<Vec<_>>()
        } else {
            body.into_bytes()
        };
        let ct = content_types[(rng.next() % content_types.len() as u64) as usize];
        let mut req = warp::test::request().method(rng.pick(&methods)).path(rng.pick(&paths));
        if let Some(ct) = ct {
            if let Ok(v) = warp::http::HeaderValue::from_str(ct) {
                req = req.header("content-type", v);
            }
        }
        if !rng.next().is_multiple_of(10) {
            req = req.header("content-length", body.len().to_string());
        }
        let res = req.body(body).reply(&h.router()).await;
        if res.status() == StatusCode::OK {
            continue;
        }
        let value: Value =
            serde_json::from_slice(res.body()).unwrap_or_else(|_| panic!("non-JSON error body {:?}", res.body()));
        let code = value["error_code"].as_u64().unwrap();
        assert!(documented.contains(&code), "undocumented code {code}: {value}");
        assert!(value["error"].is_string());
    }
}

fn limited_harness(rates: RateLimits, disk_reserve: u64, policy: Policy) -> Harness {
    let store = Store::in_memory();
    let signer = TowerSigner::new(SecretKey::from_slice(&[0x33; 32]).unwrap());
    let responder = Arc::new(Responder::new(store.clone(), Arc::new(FakeBroadcaster::default()), 6));
    let watcher = Watcher::new(store.clone(), Gatekeeper::new(store.clone(), policy).unwrap(), signer, responder);
    harness_with(Arc::new(watcher), store, rates, disk_reserve)
}

#[tokio::test]
async fn a_source_over_its_rate_limit_gets_429_with_code_7_and_when_to_retry() {
    let rates = RateLimits { registrations_per_minute: 2, appointments_per_second: 1, subscription_info_per_minute: 0 };
    let h = limited_harness(rates, 0, policy());
    let from = |path: &str, body: Value, ip: &str| {
        warp::test::request()
            .method("POST")
            .path(path)
            .remote_addr(format!("{ip}:5000").parse().unwrap())
            .header("content-type", "application/json")
            .header("content-length", body.to_string().len().to_string())
            .body(body.to_string())
    };
    for n in 1..=2 {
        let res = from("/register", json!({ "user_id": user_id(n) }), "10.0.0.1").reply(&h.router()).await;
        assert_eq!(res.status(), StatusCode::OK);
    }
    let res = from("/register", json!({ "user_id": user_id(3) }), "10.0.0.1").reply(&h.router()).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = res.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    let body: Value = serde_json::from_slice(res.body()).unwrap();
    assert_eq!(body["error_code"], 7, "the CLN plugin keeps and retries on code 7: {body}");
    assert!(body["error"].as_str().unwrap().contains("try again in"), "{body}");
    assert!(h.store.user(&UserId::from_str(&user_id(3)).unwrap()).unwrap().is_none(), "nothing done");
    // Another source is not affected.
    let res = from("/register", json!({ "user_id": user_id(3) }), "10.0.0.2").reply(&h.router()).await;
    assert_eq!(res.status(), StatusCode::OK);
    // Appointment writes have their own allowance (a burst of 4 at 1 per second).
    let statuses: Vec<StatusCode> = {
        let mut out = Vec::new();
        for i in 0..5u8 {
            let locator = format!("{:02x}", i).repeat(16);
            let appointment = Appointment {
                locator: Locator::from_str(&locator).unwrap(),
                encrypted_blob: vec![1; 100],
                to_self_delay: 20,
            };
            let signature = sign_message(&appointment.signed_bytes(), &user_sk(1));
            let body = json!({"appointment": {"locator": locator, "encrypted_blob": hex::encode([1u8; 100]), "to_self_delay": 20}, "signature": signature});
            out.push(from("/add_appointment", body, "10.0.0.1").reply(&h.router()).await.status());
        }
        out
    };
    assert_eq!(statuses[..4], [StatusCode::OK; 4]);
    assert_eq!(statuses[4], StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn a_renewal_past_the_slot_cap_is_refused_and_the_subscription_is_unchanged() {
    let h = limited_harness(
        RateLimits { registrations_per_minute: 0, appointments_per_second: 0, subscription_info_per_minute: 0 },
        0,
        Policy { max_slots_per_user: 50, ..policy() },
    );
    assert_eq!(h.register(1).await["available_slots"], 21);
    assert_eq!(h.register(1).await["available_slots"], 42);
    error(
        h.post("/register", &json!({ "user_id": user_id(1) }).to_string()).await,
        StatusCode::BAD_REQUEST,
        "Subscription maximum slots count reached",
        65,
    );
    assert_eq!(h.info(1).await.1["available_slots"], 42);
}

#[tokio::test]
async fn a_full_tower_refuses_new_users_and_keeps_serving_the_registered_ones() {
    let h = limited_harness(
        RateLimits { registrations_per_minute: 0, appointments_per_second: 0, subscription_info_per_minute: 0 },
        0,
        Policy { max_users: 2, ..policy() },
    );
    h.register(1).await;
    h.register(2).await;
    error(
        h.post("/register", &json!({ "user_id": user_id(3) }).to_string()).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "The tower accepts no new users: it is full",
        65,
    );
    assert_eq!(h.register(1).await["available_slots"], 42, "a renewal still works");
    assert_eq!(h.add(2, LOCATOR, "00".repeat(100).as_str(), 20).await.0, StatusCode::OK);
}

#[tokio::test]
async fn below_the_disk_reserve_public_writes_are_refused_with_507_and_code_7_but_reads_work() {
    let h = limited_harness(
        RateLimits { registrations_per_minute: 0, appointments_per_second: 0, subscription_info_per_minute: 0 },
        u64::MAX,
        policy(),
    );
    let refused = "the tower is low on disk space and takes no new data for now; try again later";
    error(
        h.post("/register", &json!({ "user_id": user_id(1) }).to_string()).await,
        StatusCode::INSUFFICIENT_STORAGE,
        refused,
        7,
    );
    assert!(h.store.user(&UserId::from_str(&user_id(1)).unwrap()).unwrap().is_none());
    let (status, body) = h.add(1, LOCATOR, "00".repeat(100).as_str(), 20).await;
    assert_eq!((status, body["error_code"].as_u64()), (StatusCode::INSUFFICIENT_STORAGE, Some(7)));
    // Reads still answer (this user is unknown: 401 as always).
    assert_eq!(h.info(1).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn health_is_200_when_following_and_503_with_the_reason_when_behind() {
    let h = harness();
    let (status, body) = h.raw("GET", "/health", b"", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let report: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["ready"], true);
    assert_eq!((report["tip_height"].as_u64(), report["bitcoind_height"].as_u64()), (Some(100), Some(100)));
    h.chain.send_modify(|s| s.source_height = Some(110));
    let (status, body) = h.raw("GET", "/health", b"", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let report: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["problems"], json!(["10 blocks behind bitcoind"]));
    // Liveness stays liveness.
    assert_eq!(h.raw("GET", "/ping", b"", None).await.0, StatusCode::OK);
}

#[tokio::test]
async fn an_unforeseen_rejection_says_nothing_of_the_routers_internals() {
    #[derive(Debug)]
    struct SecretInternals;
    impl Reject for SecretInternals {}
    let refusing = warp::any()
        .and_then(|| async { Err::<Response, Rejection>(warp::reject::custom(SecretInternals)) })
        .recover(rejection_reply);
    let res = warp::test::request().reply(&refusing).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(res.body(), json!({"error": "Invalid request", "error_code": 6}).to_string().as_bytes());
}

#[tokio::test]
async fn subscription_info_streams_every_locator_in_the_same_json_as_one_body_would() {
    let h = harness();
    let user = UserId::from_str(&user_id(1)).unwrap();
    h.register(1).await;
    // More locators than one streamed chunk holds, written straight to the store.
    let record = h.store.user(&user).unwrap().unwrap();
    let mut batch = h.store.batch();
    let mut locators = Vec::new();
    for i in 0..(super::LOCATORS_PER_CHUNK as u32 + 10) {
        let mut bytes = [0u8; 16];
        bytes[..4].copy_from_slice(&i.to_be_bytes());
        let locator = Locator::from_slice(&bytes).unwrap();
        let appointment = Appointment { locator, encrypted_blob: vec![1], to_self_delay: 20 };
        batch.put_appointment(
            &user,
            &record,
            &crate::store::StoredAppointment { appointment, user_signature: "s".into(), start_block: 1 },
            true,
        );
        locators.push(*locator.as_bytes());
    }
    h.store.commit(batch).unwrap();
    let (status, text) = h
        .post(
            "/get_subscription_info",
            &json!({"signature": sign_message(b"get subscription info", &user_sk(1))}).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let whole =
        teos_proto::http::GetSubscriptionInfoResponse { available_slots: 21, subscription_expiry: 600, locators };
    assert_eq!(text, serde_json::to_string(&whole).unwrap(), "byte for byte what one body would be");
}

#[tokio::test]
async fn subscription_info_is_rate_limited_per_user_as_its_signature_can_be_replayed() {
    let rates = RateLimits { registrations_per_minute: 0, appointments_per_second: 0, subscription_info_per_minute: 2 };
    let h = limited_harness(rates, 0, policy());
    h.register(1).await;
    let body = json!({"signature": sign_message(b"get subscription info", &user_sk(1))});
    let from = |ip: &str| {
        warp::test::request()
            .method("POST")
            .path("/get_subscription_info")
            .remote_addr(format!("{ip}:5000").parse().unwrap())
            .header("content-type", "application/json")
            .header("content-length", body.to_string().len().to_string())
            .body(body.to_string())
    };
    assert_eq!(finished(from("10.0.0.1"), &h.router()).await.0, StatusCode::OK);
    assert_eq!(finished(from("10.0.0.2"), &h.router()).await.0, StatusCode::OK);
    // The same signature replayed from a third address: the user's own limit.
    let (status, body) = finished(from("10.0.0.3"), &h.router()).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(serde_json::from_slice::<Value>(&body).unwrap()["error_code"], 7);
}

#[path = "http_python_tests.rs"]
mod python;
