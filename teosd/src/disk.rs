//! The disk reserve. Public writes (registrations, appointments) are refused once free space in
//! the data directory falls below `disk_reserve_mib`, so that the chain follower, whose writes are
//! small and bounded per block, can always commit. Crossing the line either way is logged once
//! (at error going down, so an operator notices).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// Why a public write was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the tower is low on disk space and takes no new data for now; try again later")]
pub struct BelowReserve;

/// Watches free space in the data directory against the reserve.
#[derive(Debug)]
pub struct DiskReserve {
    dir: PathBuf,
    reserve_bytes: u64,
    below: AtomicBool,
}

impl DiskReserve {
    /// A reserve of `reserve_bytes` in the file system holding `dir`.
    pub fn new(dir: &Path, reserve_bytes: u64) -> Self {
        DiskReserve { dir: dir.to_path_buf(), reserve_bytes, below: AtomicBool::new(false) }
    }

    /// The reserve, in bytes.
    pub fn reserve_bytes(&self) -> u64 {
        self.reserve_bytes
    }

    /// Free bytes available to teosd in the data directory's file system.
    pub fn free_bytes(&self) -> std::io::Result<u64> {
        let stat = rustix::fs::statvfs(&self.dir)?;
        Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
    }

    /// Whether a public write may go ahead (a failure to read the free space counts as no room:
    /// the reserve errs on the chain's side). Cost: one `statvfs`.
    pub fn check(&self) -> Result<(), BelowReserve> {
        let free = self.free_bytes();
        let below = free.as_ref().map_or(true, |free| *free < self.reserve_bytes);
        if below != self.below.swap(below, Ordering::Relaxed) {
            match &free {
                Ok(free) if below => tracing::error!(free_bytes = free, reserve_bytes = self.reserve_bytes,
                    dir = %self.dir.display(), "disk space below the reserve: public writes are refused until it is freed"),
                Ok(free) => tracing::info!(
                    free_bytes = free,
                    reserve_bytes = self.reserve_bytes,
                    "disk space above the reserve again: public writes accepted"
                ),
                Err(e) => {
                    tracing::error!(error = %e, dir = %self.dir.display(), "cannot read free disk space: public writes are refused")
                }
            }
        }
        if below {
            Err(BelowReserve)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_pass_above_the_reserve_and_are_refused_below_it() {
        let dir = tempfile::tempdir().unwrap();
        let free = DiskReserve::new(dir.path(), 0).free_bytes().unwrap();
        assert!(free > 0);
        assert_eq!(DiskReserve::new(dir.path(), 0).check(), Ok(()));
        let tight = DiskReserve::new(dir.path(), free.saturating_mul(2).max(1 << 40));
        assert_eq!(tight.check(), Err(BelowReserve));
        assert_eq!(tight.check(), Err(BelowReserve), "refused for as long as it lasts");
        assert_eq!(DiskReserve::new(&dir.path().join("missing"), 0).check(), Err(BelowReserve));
    }
}
