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
