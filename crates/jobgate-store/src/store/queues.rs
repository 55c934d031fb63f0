//! Queues as the gateway sees them: which queue a kind goes to (workers
//! register kinds in `jobgate:kinds:v2`), how long a queue is (for admission)
//! and every queue's length and oldest entry (for `/metrics`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::{JobStore, lock, unix_ms};
use crate::StoreError;
use crate::keys::{self, Band};

/// How long a job's kind → queue route is trusted before asking Redis again.
const ROUTE_TTL: Duration = Duration::from_secs(5);

impl JobStore {
    /// Every queue a worker registered a kind for, in name order (the
    /// queues the delayed-job mover looks at, `/metrics` reports and the
    /// dead-letter listing goes through).
    pub async fn registered_queues(&self) -> Result<Vec<String>, StoreError> {
        let mut conn = self.reader();
        let registrations: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(keys::KINDS)
            .query_async(&mut conn)
            .await?;
        let mut queues: Vec<String> = registrations
            .values()
            .filter_map(|r| serde_json::from_str::<serde_json::Value>(r).ok())
            .filter_map(|r| r["queue"].as_str().map(str::to_owned))
            .collect();
        queues.sort();
        queues.dedup();
        Ok(queues)
    }

    /// The queue that a worker registered `kind` for, or `None` when no
    /// worker knows the kind.
    pub async fn route(&self, kind: &str) -> Result<Option<String>, StoreError> {
        if let Some((queue, at)) = lock(&self.routes).get(kind)
            && at.elapsed() < ROUTE_TTL
        {
            return Ok(Some(queue.clone()));
        }
        let mut conn = self.reader();
        let entry: Option<String> = redis::cmd("HGET")
            .arg(keys::KINDS)
            .arg(kind)
            .query_async(&mut conn)
            .await?;
        let Some(entry) = entry else { return Ok(None) };
        #[derive(serde::Deserialize)]
        struct Registration {
            queue: String,
        }
        let registration: Registration = serde_json::from_str(&entry)
            .map_err(|e| StoreError::Protocol(format!("kind registration of {kind}: {e}")))?;
        lock(&self.routes).insert(
            kind.to_owned(),
            (registration.queue.clone(), Instant::now()),
        );
        Ok(Some(registration.queue))
    }

    /// Entries waiting in `queue` (all bands, and its delayed jobs), read at
    /// most every `max_age`; a bound for admission, not an exact count.
    pub async fn queue_length(&self, queue: &str, max_age: Duration) -> Result<u64, StoreError> {
        if let Some((length, at)) = lock(&self.depths).get(queue)
            && at.elapsed() < max_age
        {
            return Ok(*length);
        }
        let mut conn = self.reader();
        let lengths: (u64, u64, u64, u64) = redis::pipe()
            .cmd("XLEN")
            .arg(keys::queue(queue, Band::High))
            .cmd("XLEN")
            .arg(keys::queue(queue, Band::Normal))
            .cmd("XLEN")
            .arg(keys::queue(queue, Band::Low))
            .cmd("ZCARD")
            .arg(keys::delayed(queue))
            .query_async(&mut conn)
            .await?;
        let length = lengths.0 + lengths.1 + lengths.2 + lengths.3;
        lock(&self.depths).insert(queue.to_owned(), (length, Instant::now()));
        Ok(length)
    }

    /// Every queue a worker registered a kind for, with its length (all
    /// bands) and the age in ms of its oldest entry (waiting or running:
    /// acknowledged entries are deleted).
    pub async fn queue_stats(&self) -> Result<Vec<(String, u64, Option<u64>)>, StoreError> {
        let queues = self.registered_queues().await?;
        let mut conn = self.reader();
        let now = unix_ms();
        let mut stats = Vec::with_capacity(queues.len());
        for queue in queues {
            let mut pipe = redis::pipe();
            for band in [Band::High, Band::Normal, Band::Low] {
                pipe.cmd("XLEN").arg(keys::queue(&queue, band));
                pipe.cmd("XRANGE")
                    .arg(keys::queue(&queue, band))
                    .arg("-")
                    .arg("+")
                    .arg("COUNT")
                    .arg(1);
            }
            type First = Vec<(String, HashMap<String, String>)>;
            let replies: (u64, First, u64, First, u64, First) = pipe.query_async(&mut conn).await?;
            let length = replies.0 + replies.2 + replies.4;
            let oldest = [&replies.1, &replies.3, &replies.5]
                .into_iter()
                .filter_map(|first| first.first())
                .filter_map(|(id, _)| {
                    id.split_once('-')
                        .and_then(|(ms, _)| ms.parse::<u64>().ok())
                })
                .min();
            stats.push((queue, length, oldest.map(|ms| now.saturating_sub(ms))));
        }
        Ok(stats)
    }
}
