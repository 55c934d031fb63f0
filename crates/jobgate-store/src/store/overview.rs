//! What an operator sees of a queue: depth per priority band, the oldest
//! entry's age, entries running (held by workers), dead letters and whether
//! the queue is paused; the workers' heartbeats (`jobgate:workers:{<queue>}`,
//! a worker silent for three of its intervals is `gone` until none of its
//! entries are pending, then its record is removed); and pausing and resuming it (`jobgate:paused:{<queue>}`,
//! which workers check before each read).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

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
    /// The workers with a heartbeat on this queue, by consumer name.
    pub workers: Vec<WorkerView>,
}

/// A worker's heartbeat as it writes it (`jobgate:workers:{<queue>}`).
#[derive(Debug, Clone, Deserialize)]
struct Heartbeat {
    consumer: String,
    host: String,
    pid: u64,
    kinds: Vec<String>,
    concurrency: u64,
    in_hand: Vec<String>,
    seen_at: u64,
    interval_ms: u64,
}

/// One worker as an operator sees it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct WorkerView {
    pub queue: String,
    pub consumer: String,
    pub host: String,
    pub pid: u64,
    pub kinds: Vec<String>,
    pub concurrency: u64,
    /// Job ids the worker held at its last heartbeat.
    pub in_hand: Vec<String>,
    /// Its last heartbeat (ms since the epoch).
    pub seen_at: u64,
    /// `live`, or `gone`: no heartbeat for three of its intervals.
    pub state: &'static str,
    /// Entries pending for this consumer now (what a `gone` worker left).
    pub pending: u64,
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
        let mut pending: HashMap<String, u64> = HashMap::new();
        for band in [Band::High, Band::Normal, Band::Low] {
            // A band without a stream or group yet holds nothing (NOGROUP).
            type Summary = (u64, redis::Value, redis::Value, Option<Vec<(String, u64)>>);
            let summary: Result<Summary, _> = redis::cmd("XPENDING")
                .arg(keys::queue(&queue, band))
                .arg(keys::CONSUMER_GROUP)
                .query_async(&mut conn)
                .await;
            let Ok((count, _, _, consumers)) = summary else {
                continue;
            };
            running += count;
            for (consumer, count) in consumers.unwrap_or_default() {
                *pending.entry(consumer).or_default() += count;
            }
        }
        let workers = self.workers_of(&queue, &pending).await?;
        Ok(QueueOverview {
            queue,
            paused,
            bands: BandDepths { high, normal, low },
            oldest_age_ms,
            running,
            dead_letters,
            workers,
        })
    }

    /// The heartbeats of `queue`'s workers; removes those of gone workers
    /// that hold nothing any more.
    async fn workers_of(
        &self,
        queue: &str,
        pending: &HashMap<String, u64>,
    ) -> Result<Vec<WorkerView>, StoreError> {
        let mut conn = self.connection();
        let key = keys::workers(queue);
        let records: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(&key)
            .query_async(&mut conn)
            .await?;
        let now = unix_ms();
        let mut workers = Vec::with_capacity(records.len());
        for (field, text) in records {
            let Ok(beat) = serde_json::from_str::<Heartbeat>(&text) else {
                tracing::warn!(queue, consumer = %field, "unreadable worker heartbeat");
                continue;
            };
            let held = pending.get(&beat.consumer).copied().unwrap_or(0);
            let gone = now.saturating_sub(beat.seen_at) > 3 * beat.interval_ms;
            if gone && held == 0 {
                let _: () = redis::cmd("HDEL")
                    .arg(&key)
                    .arg(&field)
                    .query_async(&mut conn)
                    .await?;
                continue;
            }
            workers.push(WorkerView {
                queue: queue.to_owned(),
                consumer: beat.consumer,
                host: beat.host,
                pid: beat.pid,
                kinds: beat.kinds,
                concurrency: beat.concurrency,
                in_hand: beat.in_hand,
                seen_at: beat.seen_at,
                state: if gone { "gone" } else { "live" },
                pending: held,
            });
        }
        workers.sort_by(|a, b| a.consumer.cmp(&b.consumer));
        Ok(workers)
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
