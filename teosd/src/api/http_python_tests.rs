//! python-teos's dialect through the real router: its registration reply and receipt, its reply
//! shapes, a user keeping its dialect, and bodies that are not JSON objects (both dialects).

use super::*;
use crate::protocol::{zbase32, Dialect};

impl Harness {
    async fn register_python(&self, n: u8) -> Value {
        let (status, body) = self.post_json("/register", json!({ "public_key": user_id(n) })).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }
}

fn tower_id() -> UserId {
    TowerSigner::new(SecretKey::from_slice(&[0x33; 32]).unwrap()).tower_id()
}

#[tokio::test]
async fn a_python_registration_gets_python_teos_s_reply_and_its_41_byte_receipt() {
    let h = harness();
    let body = h.register_python(0x11).await;
    let signature = body["subscription_signature"].as_str().unwrap().to_string();
    assert_eq!(
        body,
        json!({"public_key": USER_ID, "user_id": USER_ID, "available_slots": 21, "subscription_expiry": 600,
               "subscription_signature": signature})
    );
    let mut receipt = hex::decode(USER_ID).unwrap();
    receipt.extend_from_slice(&21u32.to_be_bytes());
    receipt.extend_from_slice(&600u32.to_be_bytes());
    assert_eq!(recover_signer(&receipt, &signature), Ok(tower_id()));
    // The user renews in its dialect, and cannot switch.
    assert_eq!(h.register_python(0x11).await["available_slots"], 42);
    let (status, refused) = h.post_json("/register", json!({ "user_id": USER_ID })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(refused["error_code"], 6, "{refused}");
    assert!(refused["error"].as_str().unwrap().contains("python"), "{refused}");
    let (status, refused) = h.post_json("/register", json!({ "public_key": "ab" })).await;
    assert_eq!(
        (status, refused["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("Wrong `public_key` field size. Expected 33, received 1"))
    );
    // Neither field: the reference's message.
    error(h.post("/register", "{}").await, StatusCode::BAD_REQUEST, "missing field `user_id`", 1);
}

#[tokio::test]
async fn a_python_appointment_receipt_signs_the_decoded_user_signature() {
    let h = harness();
    h.register_python(0x11).await;
    let (status, body) = h.add(0x11, LOCATOR, "deadbeef", 42).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["start_block"], 100);
    let mut receipt = zbase32().decode(USER_SIG.as_bytes()).unwrap();
    receipt.extend_from_slice(&100u32.to_be_bytes());
    assert_eq!(recover_signer(&receipt, body["signature"].as_str().unwrap()), Ok(tower_id()));
    // Not the rust layout.
    let rust = crate::protocol::appointment_receipt_bytes(USER_SIG, 100);
    assert_ne!(recover_signer(&rust, body["signature"].as_str().unwrap()), Ok(tower_id()));
}

#[tokio::test]
async fn a_python_user_gets_python_teos_s_get_appointment_and_subscription_info_shapes() {
    let h = harness();
    h.register_python(0x11).await;
    assert_eq!(h.add(0x11, LOCATOR, "deadbeef", 42).await.0, StatusCode::OK);
    let watched = json!({"locator": LOCATOR, "status": "being_watched",
                         "appointment": {"locator": LOCATOR, "encrypted_blob": "deadbeef", "to_self_delay": 42}});
    assert_eq!(h.get(0x11, LOCATOR).await, (StatusCode::OK, watched));
    let unknown = "9ef53c7d6c2ecfad7fcb73d6b9bffa10";
    assert_eq!(h.get(0x11, unknown).await, (StatusCode::NOT_FOUND, json!({"locator": unknown, "status": "not_found"})));
    assert_eq!(
        h.info(0x11).await,
        (StatusCode::OK, json!({"available_slots": 20, "subscription_expiry": 600, "appointments": [LOCATOR]}))
    );

    let tracker = tracker_fixture();
    let mut batch = h.store.batch();
    batch.put_tracker(&Locator::from_str(LOCATOR).unwrap(), &UserId::from_str(USER_ID).unwrap(), &tracker, None);
    h.store.commit(batch).unwrap();
    let responded = json!({"locator": LOCATOR, "status": "dispute_responded", "appointment": {
        "locator": LOCATOR,
        "dispute_txid": tracker.dispute_txid.to_string(),
        "penalty_txid": tracker.penalty.compute_txid().to_string(),
        "penalty_rawtx": serialize_hex(&tracker.penalty)}});
    assert_eq!(h.get(0x11, LOCATOR).await, (StatusCode::OK, responded));
    // A rust user at the same tower still gets the rust shapes.
    h.register(0x22).await;
    assert_eq!(h.get(0x22, unknown).await.1, json!({"error": "Appointment not found", "error_code": 36}));
    assert!(h.store.user(&UserId::from_str(&user_id(0x22)).unwrap()).unwrap().unwrap().dialect == Dialect::Rust);
}

#[tokio::test]
async fn bodies_that_are_not_json_objects_are_refused_on_every_route_with_code_6() {
    let h = harness();
    let array = format!("[\"{USER_ID}\"]");
    for route in ["/register", "/add_appointment", "/get_appointment", "/get_subscription_info"] {
        for body in [array.as_str(), " [1]", "\"text\"", "42", "null", "true"] {
            let (status, reply) = h.post(route, body).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{route} {body}: {reply}");
            let reply: Value = serde_json::from_str(&reply).unwrap();
            assert_eq!(reply["error_code"], 6, "{route} {body}: {reply}");
        }
    }
    assert!(h.store.user(&UserId::from_str(USER_ID).unwrap()).unwrap().is_none(), "the array registered no one");
    // An empty body is still the reference's EOF error, an object is still parsed.
    assert_eq!(h.post_json("/register", json!({"user_id": USER_ID})).await.0, StatusCode::OK);
}

#[tokio::test]
async fn a_tower_serving_rust_teos_clients_only_refuses_python_registrations() {
    let mut h = harness();
    h.settings.python_teos_clients = false;
    let (status, refused) = h.post_json("/register", json!({ "public_key": USER_ID })).await;
    assert_eq!((status, refused["error_code"].as_u64()), (StatusCode::BAD_REQUEST, Some(6)), "{refused}");
    assert!(h.store.user(&UserId::from_str(USER_ID).unwrap()).unwrap().is_none());
    assert!(!h.store.has_python_users(), "no python-teos locator will be searched for");
    assert_eq!(h.register(0x11).await["user_id"], USER_ID, "rust-teos clients are served");
}
