//! Dead letters: jobs that ended `failed` because their attempts ran out.
//!
//! Workers bury them (`proto-schemas/redis/dead_letters.lua` `bury`) in
//! `jobgate:dead:{<queue>}`, one per job (the `…:jobs` index). Here the
//! operator's side: list, show, re-run and purge. A re-run is two steps,
//! like a submission: `revive` in `jobgate.lua` (the job's tag: `failed` →
//! `queued`), then `requeue` in `dead_letters.lua` (the queue's tag: the
//! entry added and the dead letter removed together, only while the dead
//! letter exists). A crash between the two leaves the job `queued` with its
//! dead letter in place; re-running it again finds it `queued` and enqueues.

use std::collections::HashMap;
use std::sync::LazyLock;

use jobgate_proto::JobId;
use redis::Script;

use super::JobStore;
use crate::StoreError;
use crate::keys::{self, Band};

/// The queue's side of dead letters, shared with the Python worker.
static SCRIPT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(include_str!(
        "../../../../proto-schemas/redis/dead_letters.lua"
    ))
});

/// One dead letter: the buried queue entry, with its job's owner and
/// attempts read from the record (absent once the record expired).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DeadLetter {
    pub job_id: String,
    pub queue: String,
    pub kind: String,
    /// Why it was buried (`max_attempts_exceeded`).
    pub reason: String,
    /// The job's error `{code, message}`, as the worker saw it.
    pub error: Option<serde_json::Value>,
    /// Ms since the epoch: the time part of the dead letter's stream id.
    pub dead_lettered_at: u64,
    /// The dead letter's stream entry id.
    pub id: String,
    pub owner: Option<String>,
    pub attempts: Option<u64>,
    /// The worker that buried it.
    pub consumer: Option<String>,
}

/// One page of dead letters, oldest first, across queues in name order.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DeadLetterPage {
    pub items: Vec<DeadLetter>,
    /// Where the next page starts (`<entry id>@<queue>`), if there may be one.
    pub next_cursor: Option<String>,
}

/// What re-running a dead letter did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryOutcome {
    /// The job is `queued` again with a new entry; its dead letter is gone.
    Requeued,
    /// No dead letter for this job.
    NotFound,
    /// The dead letter exists but its job's record expired: nothing to re-run.
    RecordExpired,
    /// The job is not `failed` (nor `queued` after an unfinished re-run).
    NotRetryable(String),
}

/// A malformed list cursor.
#[derive(Debug, thiserror::Error)]
#[error("a cursor is <entry id>@<queue>, as returned by the previous page")]
pub struct BadCursor;

/// Reads `<entry id>@<queue>`.
pub fn parse_cursor(cursor: &str) -> Result<(String, String), BadCursor> {
    let (id, queue) = cursor.split_once('@').ok_or(BadCursor)?;
    let (ms, seq) = id.split_once('-').ok_or(BadCursor)?;
    if queue.is_empty() || ms.parse::<u64>().is_err() || seq.parse::<u64>().is_err() {
        return Err(BadCursor);
    }
    Ok((id.to_owned(), queue.to_owned()))
}

impl JobStore {
    /// The queues to look at: `queue`, or every registered one.
    async fn dead_letter_queues(&self, queue: Option<&str>) -> Result<Vec<String>, StoreError> {
        match queue {
            Some(queue) => Ok(vec![queue.to_owned()]),
            None => self.registered_queues().await,
        }
    }

    /// Up to `limit` dead letters, oldest first, from `cursor` on.
    pub async fn dead_letters(
        &self,
        queue: Option<&str>,
        limit: usize,
        cursor: Option<(String, String)>,
    ) -> Result<DeadLetterPage, StoreError> {
        let mut conn = self.connection();
        let mut items = Vec::new();
        let mut next_cursor = None;
        for name in self.dead_letter_queues(queue).await? {
            let start = match &cursor {
                Some((_, at)) if name < *at => continue,
                Some((id, at)) if name == *at => format!("({id}"),
                _ => "-".to_owned(),
            };
            let want = limit - items.len();
            let entries: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
                .arg(keys::dead_letters(&name))
                .arg(start)
                .arg("+")
                .arg("COUNT")
                .arg(want)
                .query_async(&mut conn)
                .await?;
            items.extend(entries.into_iter().map(|(id, f)| dead_letter(&name, id, f)));
            if items.len() >= limit {
                next_cursor = items.last().map(|d| format!("{}@{}", d.id, d.queue));
                break;
            }
        }
        self.add_job_details(&mut items).await?;
        Ok(DeadLetterPage { items, next_cursor })
    }

    /// The dead letter of `job_id`, in whichever queue it is.
    pub async fn dead_letter(&self, job_id: &JobId) -> Result<Option<DeadLetter>, StoreError> {
        let mut conn = self.connection();
        for queue in self.registered_queues().await? {
            let id: Option<String> = redis::cmd("HGET")
                .arg(keys::dead_letter_index(&queue))
                .arg(job_id.to_string())
                .query_async(&mut conn)
                .await?;
            let Some(id) = id else { continue };
            let entries: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
                .arg(keys::dead_letters(&queue))
                .arg(&id)
                .arg(&id)
                .query_async(&mut conn)
                .await?;
            let mut items: Vec<DeadLetter> = entries
                .into_iter()
                .map(|(id, f)| dead_letter(&queue, id, f))
                .collect();
            self.add_job_details(&mut items).await?;
            return Ok(items.pop());
        }
        Ok(None)
    }

    /// Re-runs `job_id` from its dead letter: `revive`, then `requeue`.
    pub async fn retry_dead_letter(
        &self,
        job_id: &JobId,
        requested_by: &str,
    ) -> Result<RetryOutcome, StoreError> {
        let Some(letter) = self.dead_letter(job_id).await? else {
            return Ok(RetryOutcome::NotFound);
        };
        let reply = self.revive(job_id, requested_by).await?;
        let (status, rest) = reply
            .split_first()
            .ok_or_else(|| StoreError::Protocol("revive answered nothing".to_owned()))?;
        match (status.as_str(), rest) {
            ("ok" | "queued", [kind, _queue, priority, traceparent, tracestate]) => {
                let band = Band::for_priority(priority.parse().unwrap_or(5));
                let mut conn = self.connection();
                let mut requeue = SCRIPT.key(keys::dead_letters(&letter.queue));
                requeue
                    .key(keys::dead_letter_index(&letter.queue))
                    .key(keys::queue(&letter.queue, band))
                    .arg("requeue")
                    .arg(job_id.to_string())
                    .arg("job_id")
                    .arg(job_id.to_string())
                    .arg("kind")
                    .arg(kind)
                    .arg("traceparent")
                    .arg(traceparent)
                    .arg("tracestate")
                    .arg(tracestate)
                    .arg("enqueued_at")
                    .arg(super::unix_ms());
                // The owner's feeds hear of the re-run as of a new job (its
                // `retrying` event is in the history already), at the same
                // time as the entry is added: the owner's slot is another.
                let mut notice_conn = self.connection();
                let notice = async {
                    match &letter.owner {
                        Some(owner) => redis::cmd("SPUBLISH")
                            .arg(keys::owner_channel(owner))
                            .arg(job_id.to_string())
                            .query_async::<i64>(&mut notice_conn)
                            .await
                            .map(drop),
                        None => Ok(()),
                    }
                };
                let (reply, notice) =
                    tokio::join!(requeue.invoke_async::<Vec<String>>(&mut conn), notice);
                let reply = reply?;
                if let Err(error) = notice {
                    tracing::warn!(job_id = %job_id, %error, "the owner's feeds were not told of the re-run");
                }
                // `missing`: another operator's re-run enqueued it meanwhile.
                let requeued = reply.first().map(String::as_str);
                tracing::info!(job_id = %job_id, queue = %letter.queue, requested_by, reply = ?requeued, "dead letter re-run");
                Ok(RetryOutcome::Requeued)
            }
            ("missing", _) => Ok(RetryOutcome::RecordExpired),
            ("skip", [status]) => Ok(RetryOutcome::NotRetryable(status.clone())),
            (other, _) => Err(StoreError::Protocol(format!("revive answered {other}"))),
        }
    }

    /// Re-runs up to `limit` dead letters (of `queue`, or all), oldest
    /// first; returns each job's outcome.
    pub async fn retry_dead_letters(
        &self,
        queue: Option<&str>,
        limit: usize,
        requested_by: &str,
    ) -> Result<Vec<(String, RetryOutcome)>, StoreError> {
        let page = self.dead_letters(queue, limit, None).await?;
        let mut outcomes = Vec::with_capacity(page.items.len());
        for letter in page.items {
            let outcome = match letter.job_id.parse::<JobId>() {
                Ok(job_id) => self.retry_dead_letter(&job_id, requested_by).await?,
                Err(_) => RetryOutcome::NotRetryable("invalid job id".to_owned()),
            };
            outcomes.push((letter.job_id, outcome));
        }
        Ok(outcomes)
    }

    /// Removes `job_id`'s dead letter (the job itself stays `failed` until it
    /// expires); `false` when it had none.
    pub async fn remove_dead_letter(&self, job_id: &JobId) -> Result<bool, StoreError> {
        let Some(letter) = self.dead_letter(job_id).await? else {
            return Ok(false);
        };
        let mut conn = self.connection();
        let reply: Vec<String> = SCRIPT
            .key(keys::dead_letters(&letter.queue))
            .key(keys::dead_letter_index(&letter.queue))
            .key(keys::queue(&letter.queue, Band::Normal))
            .arg("remove")
            .arg(job_id.to_string())
            .invoke_async(&mut conn)
            .await?;
        Ok(reply.first().map(String::as_str) == Some("ok"))
    }

    /// Removes every dead letter of `queue` (or of every queue); returns how
    /// many there were.
    pub async fn purge_dead_letters(&self, queue: Option<&str>) -> Result<u64, StoreError> {
        let mut conn = self.connection();
        let mut purged = 0;
        for name in self.dead_letter_queues(queue).await? {
            // One MULTI on the queue's tag: the stream and its index together.
            let (count, _, _): (u64, u64, u64) = redis::pipe()
                .atomic()
                .cmd("XLEN")
                .arg(keys::dead_letters(&name))
                .cmd("DEL")
                .arg(keys::dead_letters(&name))
                .cmd("DEL")
                .arg(keys::dead_letter_index(&name))
                .query_async(&mut conn)
                .await?;
            purged += count;
        }
        Ok(purged)
    }

    /// Fills in each dead letter's owner and attempts from its job record
    /// (one pipeline on a single server; one per slot on a cluster).
    async fn add_job_details(&self, items: &mut [DeadLetter]) -> Result<(), StoreError> {
        let commands = items
            .iter()
            .map(|item| {
                // A malformed id names no record: ask the index, which has
                // no such fields.
                let key = match item.job_id.parse::<JobId>() {
                    Ok(job_id) => keys::job(&job_id),
                    Err(_) => keys::dead_letter_index(&item.queue),
                };
                let mut cmd = redis::cmd("HMGET");
                cmd.arg(&key).arg("owner").arg("attempt");
                (key, cmd)
            })
            .collect();
        let replies = self.reader().query_by_slot(commands).await?;
        for (item, reply) in items.iter_mut().zip(replies) {
            let (owner, attempt): (Option<String>, Option<String>) = redis::from_redis_value(reply)
                .map_err(|e| StoreError::Protocol(format!("dead letter's job: {e}")))?;
            item.owner = owner;
            item.attempts = attempt.and_then(|a| a.parse().ok());
        }
        Ok(())
    }
}

/// A dead-letter stream entry read into a [`DeadLetter`].
fn dead_letter(queue: &str, id: String, mut fields: HashMap<String, String>) -> DeadLetter {
    let dead_lettered_at = id
        .split_once('-')
        .and_then(|(ms, _)| ms.parse().ok())
        .unwrap_or(0);
    DeadLetter {
        job_id: fields.remove("job_id").unwrap_or_default(),
        queue: queue.to_owned(),
        kind: fields.remove("kind").unwrap_or_default(),
        reason: fields.remove("reason").unwrap_or_default(),
        error: fields
            .remove("error")
            .and_then(|e| serde_json::from_str(&e).ok()),
        dead_lettered_at,
        id,
        owner: None,
        attempts: None,
        consumer: fields.remove("consumer"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_is_an_entry_id_and_a_queue() {
        assert_eq!(
            parse_cursor("1700000000000-3@a@b").expect("valid"),
            ("1700000000000-3".to_owned(), "a@b".to_owned())
        );
        for bad in ["", "1-0", "1-0@", "x-0@q", "1@q", "1-x@q"] {
            assert!(parse_cursor(bad).is_err(), "{bad}");
        }
    }
}
