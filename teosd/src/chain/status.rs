//! What the follower knows of its own progress, published (a `tokio::sync::watch`) after every
//! block and every round for the request side (the height requests are served at), the health
//! report and the systemd watchdog.

use tokio::time::Instant;

/// The follower's progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainStatus {
    /// The last block the tower processed.
    pub tip_height: u32,
    /// The source's best height, when last seen.
    pub source_height: Option<u32>,
    /// Whether the last exchange with the source succeeded.
    pub source_reachable: bool,
    /// Since when rounds have been failing on the store (`None`: the last round reached it fine).
    pub store_failing_since: Option<Instant>,
    /// The last failure other than the source being unreachable, until a round succeeds.
    pub last_error: Option<String>,
    /// Rounds done since start: each one, successful or not, is a sign of life.
    pub rounds: u64,
}

impl ChainStatus {
    /// The status at start, with the stored tip at `tip_height`.
    pub fn starting(tip_height: u32) -> Self {
        ChainStatus {
            tip_height,
            source_height: None,
            source_reachable: false,
            store_failing_since: None,
            last_error: None,
            rounds: 0,
        }
    }

    /// Blocks the tower is behind the source (0 if unknown or ahead).
    pub fn blocks_behind(&self) -> u32 {
        self.source_height.map_or(0, |source| source.saturating_sub(self.tip_height))
    }
}
