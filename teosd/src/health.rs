//! Whether the tower is doing its job: following the chain (not behind bitcoind by more than
//! `max_blocks_behind`, bitcoind reachable, the store taking the blocks' commits). `GET /ping` is
//! liveness only; `GET /health` and `teos-cli gettowerinfo` report this. Free disk space is
//! reported too, but a tower below its disk reserve still follows the chain: it only refuses new
//! public data.

use serde::Serialize;
use tokio::sync::watch;

use crate::chain::ChainStatus;
use crate::disk::DiskReserve;

/// A health report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Health {
    /// Following the chain: every check below passes.
    pub ready: bool,
    /// What is wrong, when not ready.
    pub problems: Vec<String>,
    /// The last block the tower processed.
    pub tip_height: u32,
    /// bitcoind's best height when last seen.
    pub bitcoind_height: Option<u32>,
    /// Whether bitcoind answered the last round.
    pub bitcoind_reachable: bool,
    /// Whether the store took the last round's writes.
    pub store_ok: bool,
    /// Seconds the store has been failing, if it is.
    pub store_failing_secs: Option<u64>,
    /// The last failure other than bitcoind being unreachable (operators only: never in the
    /// public report, it may name paths).
    #[serde(skip_serializing)]
    pub last_error: Option<String>,
    /// Free bytes in the data directory, if they could be read (operators only).
    #[serde(skip_serializing)]
    pub disk_free_bytes: Option<u64>,
    /// Whether free space is above the reserve (public writes accepted).
    pub disk_above_reserve: bool,
}

/// Computes [`Health`] from the follower's status and the disk.
#[derive(Debug, Clone)]
pub struct HealthCheck {
    status: watch::Receiver<ChainStatus>,
    disk: std::sync::Arc<DiskReserve>,
    max_blocks_behind: u32,
}

impl HealthCheck {
    /// A check of the follower publishing `status`, with this disk reserve and tolerance.
    pub fn new(
        status: watch::Receiver<ChainStatus>,
        disk: std::sync::Arc<DiskReserve>,
        max_blocks_behind: u32,
    ) -> Self {
        HealthCheck { status, disk, max_blocks_behind }
    }

    /// The report now. Cost: one `statvfs`.
    pub fn report(&self) -> Health {
        let status = self.status.borrow().clone();
        let disk_free_bytes = self.disk.free_bytes().ok();
        let mut problems = Vec::new();
        if !status.source_reachable {
            problems.push("bitcoind is unreachable".to_string());
        }
        if status.store_failing_since.is_some() {
            problems.push("the store is failing: blocks cannot be committed".to_string());
        }
        let behind = status.blocks_behind();
        if behind > self.max_blocks_behind {
            problems.push(format!("{behind} blocks behind bitcoind"));
        }
        if status.source_height.is_none() {
            problems.push("bitcoind's height is not known yet".to_string());
        }
        Health {
            ready: problems.is_empty(),
            problems,
            tip_height: status.tip_height,
            bitcoind_height: status.source_height,
            bitcoind_reachable: status.source_reachable,
            store_ok: status.store_failing_since.is_none(),
            store_failing_secs: status.store_failing_since.map(|since| since.elapsed().as_secs()),
            last_error: status.last_error,
            disk_free_bytes,
            disk_above_reserve: disk_free_bytes.is_some_and(|free| free >= self.disk.reserve_bytes()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use tokio::time::Instant;

    use super::*;

    fn check(status: ChainStatus) -> Health {
        let dir = tempfile::tempdir().unwrap();
        let (_tx, rx) = watch::channel(status);
        HealthCheck::new(rx, Arc::new(DiskReserve::new(dir.path(), 0)), 3).report()
    }

    fn following() -> ChainStatus {
        ChainStatus { source_height: Some(102), source_reachable: true, ..ChainStatus::starting(100) }
    }

    #[test]
    fn a_tower_following_within_the_tolerance_is_ready() {
        let health = check(following());
        assert!(health.ready, "{health:?}");
        assert_eq!((health.tip_height, health.bitcoind_height), (100, Some(102)));
        assert!(health.store_ok && health.disk_above_reserve);
    }

    #[test]
    fn behind_unreachable_or_failing_to_commit_is_not_ready() {
        let behind = check(ChainStatus { source_height: Some(104), ..following() });
        assert!(!behind.ready);
        assert_eq!(behind.problems, vec!["4 blocks behind bitcoind".to_string()]);
        let unreachable = check(ChainStatus { source_reachable: false, ..following() });
        assert_eq!(unreachable.problems, vec!["bitcoind is unreachable".to_string()]);
        let failing = check(ChainStatus {
            store_failing_since: Some(Instant::now()),
            last_error: Some("storage backend: No space left on device".into()),
            ..following()
        });
        assert!(!failing.ready && !failing.store_ok);
        assert_eq!(failing.problems, vec!["the store is failing: blocks cannot be committed".to_string()]);
        assert!(failing.last_error.as_deref().is_some_and(|e| e.contains("No space left")));
        let public = serde_json::to_value(&failing).unwrap();
        assert!(public.get("last_error").is_none() && public.get("disk_free_bytes").is_none(), "{public}");
        assert!(!check(ChainStatus::starting(100)).ready, "nothing known yet");
    }
}
