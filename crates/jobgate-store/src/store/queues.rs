//! Queues as the gateway sees them: which queue a kind goes to and the
//! schema its params must meet (workers register kinds in
//! `jobgate:kinds:v2`), how long a queue is (for admission) and every
//! queue's length and oldest entry (for `/metrics`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jobgate_proto::{KindInfo, ParamsSchema};
use serde_json::Value;
use serde_json::value::RawValue;

use super::{JobStore, lock, unix_ms};
use crate::StoreError;
use crate::keys::{self, Band};

/// How long a job's kind → queue route is trusted before asking Redis again.
const ROUTE_TTL: Duration = Duration::from_secs(5);

/// Where a kind's jobs go.
#[derive(Debug, Clone)]
pub struct Route {
    pub queue: String,
    /// The params schema its worker registered; `None`: params unchecked.
    pub params_schema: Option<Arc<ParamsSchema>>,
}

/// A kind's registration: `{"queue", "worker", "seen_at", "params_schema"?}`.
/// The schema is kept as the worker wrote it, property order included.
#[derive(serde::Deserialize)]
struct Registration {
    queue: String,
    #[serde(default)]
    params_schema: Option<Box<RawValue>>,
}

impl Registration {
    fn parse(kind: &str, entry: &str) -> Result<Self, StoreError> {
        serde_json::from_str(entry)
            .map_err(|e| StoreError::Protocol(format!("kind registration of {kind}: {e}")))
    }

    /// The params schema as a `Value`, to compile and compare.
    fn params_schema_value(&self, kind: &str) -> Result<Option<Value>, StoreError> {
        self.params_schema
            .as_deref()
            .map(|raw| serde_json::from_str(raw.get()))
            .transpose()
            .map_err(|e| StoreError::Protocol(format!("params schema of {kind}: {e}")))
    }
}

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

    /// Where a worker registered `kind` to go, with the params schema it
    /// registered (compiled), or `None` when no worker knows the kind. A
    /// route is read again after [`ROUTE_TTL`]; its schema is compiled again
    /// only when it changed.
    pub async fn route(&self, kind: &str) -> Result<Option<Route>, StoreError> {
        let cached = lock(&self.routes).get(kind).cloned();
        if let Some((route, at)) = &cached
            && at.elapsed() < ROUTE_TTL
        {
            return Ok(Some(route.clone()));
        }
        let mut conn = self.reader();
        let entry: Option<String> = redis::cmd("HGET")
            .arg(keys::KINDS)
            .arg(kind)
            .query_async(&mut conn)
            .await?;
        let Some(entry) = entry else {
            lock(&self.routes).remove(kind);
            return Ok(None);
        };
        let registration = Registration::parse(kind, &entry)?;
        let params_schema = match (registration.params_schema_value(kind)?, cached) {
            (None, _) => None,
            (Some(schema), Some((old, _)))
                if old
                    .params_schema
                    .as_ref()
                    .is_some_and(|s| *s.schema() == schema) =>
            {
                old.params_schema
            }
            (Some(schema), _) => match ParamsSchema::compile(schema) {
                Ok(compiled) => Some(Arc::new(compiled)),
                Err(error) => {
                    // Workers check their schemas when they declare them; one
                    // that does not compile here is not enforced, and the
                    // handler still sees the params.
                    tracing::warn!(kind, %error, "a registered params schema does not compile; params of the kind are not checked");
                    None
                }
            },
        };
        let route = Route {
            queue: registration.queue,
            params_schema,
        };
        lock(&self.routes).insert(kind.to_owned(), (route.clone(), Instant::now()));
        Ok(Some(route))
    }

    /// Every registered kind with its queue and params schema, sorted by
    /// kind (`GET /v1/kinds`). A registration that cannot be read is left
    /// out.
    pub async fn kinds(&self) -> Result<Vec<KindInfo>, StoreError> {
        let mut conn = self.reader();
        let registrations: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(keys::KINDS)
            .query_async(&mut conn)
            .await?;
        let mut kinds: Vec<KindInfo> = registrations
            .into_iter()
            .filter_map(|(kind, entry)| {
                let registration = Registration::parse(&kind, &entry).ok()?;
                Some(KindInfo {
                    kind,
                    queue: registration.queue,
                    params_schema: registration.params_schema,
                })
            })
            .collect();
        kinds.sort_by(|a, b| a.kind.cmp(&b.kind));
        Ok(kinds)
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
