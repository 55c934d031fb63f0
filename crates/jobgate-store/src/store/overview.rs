//! What an operator sees of a queue: depth per priority band, the oldest
//! entry's age, entries running (held by workers), dead letters and whether
//! the queue is paused; and pausing and resuming it (`jobgate:paused:{<queue>}`,
//! which workers check before each read).

use serde::Serialize;

use super::{JobStore, unix_ms};
use crate::StoreError;
use crate::keys::{self, Band};

/// Entries waiting or running in each priority band.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct BandDepths {
    pub high: u64,
    pub normal: u64,
    pub low: u64,
}

/// One queue as `GET /v1/admin/queues` and `jobgate queues` show it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct QueueOverview {
    pub queue: String,
    pub paused: bool,
    /// Entries in each band's stream (waiting or running: acknowledged
    /// entries are deleted).
    pub bands: BandDepths,
    /// Age of the oldest entry in any band, if there is one.
    pub oldest_age_ms: Option<u64>,
    /// Entries held by workers: the consumer group's pending entries.
    pub running: u64,
    /// Length of the queue's dead-letter stream.
    pub dead_letters: u64,
}

impl JobStore {
    /// Every queue a worker registered a kind for, as an operator sees it.
    pub async fn queue_overviews(&self) -> Result<Vec<QueueOverview>, StoreError> {
        let stats = self.queue_stats().await?;
        let mut overviews = Vec::with_capacity(stats.len());
        for (queue, _, oldest_age_ms) in stats {
            overviews.push(self.overview(queue, oldest_age_ms).await?);
        }
        Ok(overviews)
    }

    async fn overview(
        &self,
        queue: String,
        oldest_age_ms: Option<u64>,
    ) -> Result<QueueOverview, StoreError> {
        let mut conn = self.connection();
        let (high, normal, low, dead_letters, paused): (u64, u64, u64, u64, bool) = redis::pipe()
            .cmd("XLEN")
            .arg(keys::queue(&queue, Band::High))
            .cmd("XLEN")
            .arg(keys::queue(&queue, Band::Normal))
            .cmd("XLEN")
            .arg(keys::queue(&queue, Band::Low))
            .cmd("XLEN")
            .arg(keys::dead_letters(&queue))
            .cmd("EXISTS")
            .arg(keys::paused(&queue))
            .query_async(&mut conn)
            .await?;
        let mut running = 0;
        for band in [Band::High, Band::Normal, Band::Low] {
            // A band without a stream or group yet holds nothing (NOGROUP).
            let summary: Result<(u64, redis::Value, redis::Value, redis::Value), _> =
                redis::cmd("XPENDING")
                    .arg(keys::queue(&queue, band))
                    .arg(keys::CONSUMER_GROUP)
                    .query_async(&mut conn)
                    .await;
            running += summary.map(|(count, ..)| count).unwrap_or(0);
        }
        Ok(QueueOverview {
            queue,
            paused,
            bands: BandDepths { high, normal, low },
            oldest_age_ms,
            running,
            dead_letters,
        })
    }

    /// Pauses (`paused = true`) or resumes `queue`. `None` when no worker
    /// registered a kind for it (nothing is written), else whether it is
    /// paused now.
    pub async fn set_paused(&self, queue: &str, paused: bool) -> Result<Option<bool>, StoreError> {
        let known = self
            .queue_stats()
            .await?
            .iter()
            .any(|(name, ..)| name == queue);
        if !known {
            return Ok(None);
        }
        let mut conn = self.connection();
        let key = keys::paused(queue);
        if paused {
            let _: () = redis::cmd("SET")
                .arg(&key)
                .arg(unix_ms())
                .query_async(&mut conn)
                .await?;
        } else {
            let _: () = redis::cmd("DEL").arg(&key).query_async(&mut conn).await?;
        }
        Ok(Some(paused))
    }
}
