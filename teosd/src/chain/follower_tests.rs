//! The follower over an in-memory chain: catching up, reorgs, outages, and what it refuses.

use std::sync::Arc;

use super::*;
use crate::test_utils::{FakeChain, Scene};

/// Asserts that heights `from..=to` are recorded, each block the child of the one below.
fn assert_linked(s: &Scene, from: u32, to: u32) {
    for height in from + 1..=to {
        let (_, prev) = s.store.block_at(height).unwrap().expect("recorded");
        assert_eq!(prev, s.store.block_at(height - 1).unwrap().expect("recorded").0, "at {height}");
    }
}

#[tokio::test]
async fn a_fresh_tower_adopts_the_tip_then_connects_every_new_block_in_order() {
    let chain = Arc::new(FakeChain::new());
    chain.mine_empty(5);
    let s = Scene::new(chain.clone()).await;
    assert_eq!(s.height(), 5, "adopted, not replayed from genesis");
    chain.mine_empty(4);
    s.sync().await;
    assert_eq!(s.height(), 9);
    assert!(s.store.block_at(4).unwrap().is_none());
    assert_linked(&s, 5, 9);
}

#[tokio::test]
async fn a_reorg_disconnects_the_stale_blocks_and_connects_the_new_branch() {
    let chain = Arc::new(FakeChain::new());
    let s = Scene::new(chain.clone()).await;
    s.mine_empty(6).await;
    let stale: Vec<BlockHash> = (0..3).map(|_| chain.disconnect_tip()).collect();
    chain.mine_empty(4);
    s.sync().await;
    assert_eq!(s.height(), 7);
    for hash in stale {
        assert!((1..=7).all(|h| s.store.block_at(h).unwrap().unwrap().0 != hash), "{hash} is gone");
    }
    assert_linked(&s, 0, 7);
}

#[tokio::test]
async fn an_unreachable_source_changes_nothing_and_the_tower_catches_up_after() {
    let chain = Arc::new(FakeChain::new());
    let s = Scene::new(chain.clone()).await;
    chain.mine_empty(3);
    chain.set_down(true);
    let err = s.follower.sync_round().await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert_eq!(s.store.tip().unwrap().unwrap().0, 0);
    chain.set_down(false);
    s.sync().await;
    assert_eq!(s.height(), 3);
}

#[tokio::test]
async fn waiting_for_the_source_refuses_another_network() {
    let chain = Arc::new(FakeChain::new());
    let s = Scene::new(chain).await;
    let mut follower = s.follower.clone();
    follower.settings.network = Network::Bitcoin;
    let err = follower.wait_for_source(&CancellationToken::new()).await.unwrap_err();
    assert!(matches!(err, ChainError::WrongNetwork { .. }), "{err}");
}

#[tokio::test]
async fn the_recent_window_keeps_only_the_last_lookback_blocks() {
    let chain = Arc::new(FakeChain::new());
    let s = Scene::new(chain).await;
    s.mine_empty(10).await;
    let lookback = crate::test_utils::policy().recent_block_lookback;
    assert!(s.store.recent_blocks_below(10 - lookback + 1).is_empty());
    assert_eq!(s.store.recent_blocks_below(11).len() as u32, lookback);
}

#[tokio::test]
async fn a_store_that_fails_is_reported_and_a_round_that_succeeds_clears_it() {
    let chain = Arc::new(FakeChain::new());
    let s = Scene::new(chain.clone()).await;
    chain.mine_empty(1);
    s.kv.set_failing(true);
    let result = s.follower.sync_round().await;
    s.follower.record_round(&result);
    let status = s.follower.status().borrow().clone();
    assert!(status.store_failing_since.is_some() && status.source_reachable, "{status:?}");
    assert!(status.last_error.as_deref().is_some_and(|e| e.contains("injected write failure")), "{status:?}");
    assert_eq!((status.tip_height, status.source_height), (0, Some(1)), "behind, and known to be");

    s.kv.set_failing(false);
    let result = s.follower.sync_round().await;
    s.follower.record_round(&result);
    let status = s.follower.status().borrow().clone();
    assert_eq!((status.store_failing_since, status.last_error, status.tip_height), (None, None, 1));
}

#[tokio::test(start_paused = true)]
async fn the_follower_gives_up_once_the_store_has_failed_for_the_set_time() {
    let chain = Arc::new(FakeChain::new());
    let s = Scene::new(chain.clone()).await;
    chain.mine_empty(1);
    s.kv.set_failing(true);
    let started = tokio::time::Instant::now();
    let stop = CancellationToken::new();
    let ended = s.follower.clone().follow(Duration::from_secs(1), Duration::from_secs(30), None, stop).await;
    assert!(matches!(ended, Err(ChainError::Store(_))), "{ended:?}");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(30) && waited < Duration::from_secs(33), "{waited:?}");
    assert!(s.follower.status().borrow().rounds >= 30);
}

#[tokio::test(start_paused = true)]
async fn a_source_that_stays_away_never_makes_the_follower_give_up() {
    let chain = Arc::new(FakeChain::new());
    let s = Scene::new(chain.clone()).await;
    chain.set_down(true);
    let stop = CancellationToken::new();
    let follow =
        tokio::spawn(s.follower.clone().follow(Duration::from_secs(1), Duration::from_secs(5), None, stop.clone()));
    let mut status = s.follower.status();
    while status.borrow().rounds < 20 {
        status.changed().await.unwrap();
    }
    assert!(!follow.is_finished());
    assert!(!status.borrow().source_reachable);
    stop.cancel();
    assert!(follow.await.unwrap().is_ok());
}
