//! End to end: python-teos's client dialect and the rust dialect at one real tower. A python-teos
//! client (`teos_tests::python_client`, written from reference-tower.md §10) registers, sends an
//! appointment in its byte order and checks both receipts in its layouts; a rust-teos user does
//! the same in its own; both disputes are mined in one block and both penalties are broadcast
//! and mined. Bodies that are not JSON objects are refused.

use std::time::Duration;

use bitcoin::Transaction;
use serde_json::json;
use teos_tests::python_client::{python_locator, PythonUser};
use teos_tests::tower::{eventually, Fixture, TowerUser};
use teos_tests::wallet::{commitment_tx, penalty_tx};
use teosd::protocol::UserId;

const TEST_TIMEOUT: Duration = Duration::from_secs(170);

async fn channel(f: &mut Fixture, n: u64) -> (Transaction, Transaction) {
    let coin = f.funding.next_coin(&f.bitcoind).await.expect("coin");
    let commitment = commitment_tx(&coin, 2, 2, n).expect("commitment");
    let penalty = penalty_tx(&commitment, 0, 3).expect("penalty");
    (commitment, penalty)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn python_and_rust_clients_of_one_tower_are_answered_in_the_same_block() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let mut f = Fixture::start(&[]).await;
        let tower_id: UserId = f.tower.info().await["tower_id"].as_str().expect("tower_id").parse().expect("id");
        let python = PythonUser::new(9, tower_id, &f.tower.api_url);
        let rust = TowerUser::new(7, &f.tower.api_url);

        // Registration: each client checks the receipt in its own layout.
        let (slots, _) = python.register().await.expect("python-teos registration, receipt checked");
        assert_eq!(rust.register().await.0, 200);
        // A user keeps its dialect.
        let (status, body) = rust.post_json("/register", json!({ "public_key": rust.user_id })).await;
        assert_eq!((status, body["error_code"].as_u64()), (400, Some(6)), "{body}");

        let (python_dispute, python_penalty) = channel(&mut f, 1).await;
        let (rust_dispute, rust_penalty) = channel(&mut f, 2).await;
        let python_txid = python_dispute.compute_txid();
        python.add_appointment(&python_txid, &python_penalty).await.expect("python-teos appointment, receipt checked");
        assert_eq!(rust.add_appointment(&rust_dispute.compute_txid(), &rust_penalty).await.0, 200);

        // python-teos's reply shapes.
        let (status, watched) = python.get_appointment(&python_txid).await.expect("get_appointment");
        assert_eq!(status, 200, "{watched}");
        assert_eq!(watched["status"], "being_watched");
        assert_eq!(watched["locator"], python_locator(&python_txid));
        assert_eq!(watched["appointment"]["locator"], python_locator(&python_txid));
        let (status, missing) = python.get_appointment(&rust_dispute.compute_txid()).await.expect("get_appointment");
        assert_eq!(status, 404);
        assert_eq!(missing, json!({"locator": python_locator(&rust_dispute.compute_txid()), "status": "not_found"}));
        let user = f.tower.cli(&["getuser", &python.user_id]).await;
        assert_eq!(user["dialect"], "python", "{user}");
        assert_eq!(f.tower.cli(&["getuser", &rust.user_id]).await["dialect"], "rust");
        let info = python.subscription_info().await.expect("subscription info");
        assert_eq!(info["available_slots"].as_u64(), Some(u64::from(slots) - 1), "{info}");
        assert_eq!(info["appointments"], json!([python_locator(&python_txid)]));

        // Both disputes in one block: both penalties go out.
        f.bitcoind.mine_block_with(&[python_dispute.clone(), rust_dispute.clone()]).await.expect("mine disputes");
        let responded = eventually("the python-teos user's dispute answered", || async {
            let (status, body) = python.get_appointment(&python_txid).await.ok()?;
            (status == 200 && body["status"] == "dispute_responded").then_some(body)
        })
        .await;
        assert_eq!(responded["appointment"]["dispute_txid"], python_txid.to_string());
        assert_eq!(responded["appointment"]["penalty_txid"], python_penalty.compute_txid().to_string());
        assert_eq!(responded["appointment"]["locator"], python_locator(&python_txid));
        rust.wait_for_status(&rust_dispute.compute_txid(), "dispute_responded").await;
        for penalty in [&python_penalty, &rust_penalty] {
            assert!(f.bitcoind.mempool_contains(&penalty.compute_txid()).await.expect("mempool"), "{}", f.tower.tail());
        }
        f.funding.mine(&f.bitcoind, 1).await.expect("mining");
        for penalty in [&python_penalty, &rust_penalty] {
            assert_eq!(f.bitcoind.tx_confirmations(&penalty.compute_txid()).await.expect("confirmations"), Some(1));
        }
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bodies_that_are_not_json_objects_are_refused_on_every_route() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let f = Fixture::start(&[]).await;
        let user = TowerUser::new(7, &f.tower.api_url);
        for route in ["/register", "/add_appointment", "/get_appointment", "/get_subscription_info"] {
            for body in [json!([user.user_id]), json!("text"), json!(42), json!(null)] {
                let (status, reply) = user.post_json(route, body.clone()).await;
                assert_eq!((status, reply["error_code"].as_u64()), (400, Some(6)), "{route} {body}: {reply}");
            }
        }
        assert_eq!(f.tower.info().await["n_registered_users"], 0, "nothing was registered");
    })
    .await
    .expect("test timed out");
}
