//! Listing an owner's jobs, newest first (`GET /v1/jobs`): the owner's index
//! (`jobgate:owner:{<owner>}:jobs`) read page by page, the records of each
//! page read in one pipeline (one per slot on a cluster), filtered by
//! status and kind.
//!
//! Pagination is by position, not by offset: a [`ListPosition`] is the index
//! entry (score and job id) a page ended at, and the next page starts just
//! after it, so jobs created meanwhile (newer, so before it) never shift a
//! page. A request reads at most [`ListQuery::scan_max`] index entries; when
//! it stops there, the page may hold fewer jobs than asked while more exist,
//! and its position tells where to go on. Entries whose record has expired
//! are left out and removed from the index.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use crate::connection::Connection;
use jobgate_proto::{JobId, JobSnapshot, JobStatus};

use super::JobStore;
use crate::{JobRecord, StoreError, keys};

/// The record fields a snapshot is built from (everything but `params` and
/// the trace context, which can be large and are not listed).
const SNAPSHOT_FIELDS: &[&str] = &[
    "job_id",
    "owner",
    "kind",
    "queue",
    "status",
    "priority",
    "attempt",
    "max_attempts",
    "timeout_s",
    "seq",
    "epoch",
    "epoch_seq",
    "progress",
    "result",
    "error",
    "cancel_requested",
    "created_at",
    "started_at",
    "finished_at",
    "updated_at",
    "trace_id",
];

/// An entry of an owner's index: its score (when the job was indexed, ms)
/// and the job id. Index order, newest first, is by score, then by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListPosition {
    pub score: u64,
    pub job_id: JobId,
}

impl ListPosition {
    /// Whether `self` comes after `other` in newest-first order. Ids
    /// compare as their bytes, which is how Redis orders their lower-case
    /// hex spelling among members of one score.
    fn is_after(&self, other: &ListPosition) -> bool {
        (self.score, self.job_id) < (other.score, other.job_id)
    }
}

/// `<score>:<job_id>`.
impl fmt::Display for ListPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.score, self.job_id)
    }
}

impl FromStr for ListPosition {
    type Err = ();

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (score, job_id) = text.split_once(':').ok_or(())?;
        if score.is_empty() || !score.bytes().all(|b| b.is_ascii_digit()) {
            return Err(());
        }
        Ok(Self {
            score: score.parse().map_err(|_| ())?,
            job_id: job_id.parse().map_err(|_| ())?,
        })
    }
}

/// What to list.
#[derive(Debug, Clone)]
pub struct ListQuery {
    /// Only jobs in one of these statuses; empty: every status.
    pub statuses: Vec<JobStatus>,
    /// Only jobs of this kind.
    pub kind: Option<String>,
    /// The most jobs on the page.
    pub limit: usize,
    /// Start after this entry; `None`: at the newest job.
    pub after: Option<ListPosition>,
    /// The most index entries read for the page.
    pub scan_max: usize,
}

impl ListQuery {
    fn accepts(&self, snapshot: &JobSnapshot) -> bool {
        (self.statuses.is_empty() || self.statuses.contains(&snapshot.status))
            && self.kind.as_ref().is_none_or(|kind| *kind == snapshot.kind)
    }
}

/// One page of jobs.
#[derive(Debug, Clone)]
pub struct JobPage {
    pub jobs: Vec<JobSnapshot>,
    /// Where the next page starts; `None` when the index holds nothing more.
    pub next: Option<ListPosition>,
}

impl JobStore {
    /// A page of `owner`'s jobs, newest first.
    pub async fn list_jobs(&self, owner: &str, query: &ListQuery) -> Result<JobPage, StoreError> {
        let mut conn = self.reader();
        let index = keys::owner_jobs(owner);
        let mut jobs = Vec::new();
        let mut position = query.after;
        let mut scanned = 0;
        let mut expired = Vec::new();
        let mut more = true;
        while jobs.len() < query.limit && scanned < query.scan_max && more {
            let want = (query.limit - jobs.len()).min(query.scan_max - scanned);
            let (entries, full) = read_index(&mut conn, &index, position, want).await?;
            more = full;
            let records = read_records(&mut conn, &entries).await?;
            for (at, (entry, record)) in entries.iter().zip(records).enumerate() {
                position = Some(*entry);
                scanned += 1;
                match record {
                    None => expired.push(entry.job_id.to_string()),
                    // The index is the owner's, so this cannot happen; if it
                    // did, another owner's job must still never be listed.
                    Some(record) if record.owner != owner => {}
                    Some(record) if query.accepts(&record.snapshot) => jobs.push(record.snapshot),
                    Some(_) => {}
                }
                if jobs.len() == query.limit {
                    more = more || at + 1 < entries.len();
                    break;
                }
            }
        }
        if !expired.is_empty() {
            tracing::debug!(owner, count = expired.len(), "expired jobs left the index");
            let _: i64 = redis::cmd("ZREM")
                .arg(&index)
                .arg(&expired)
                .query_async(&mut conn)
                .await?;
        }
        Ok(JobPage {
            jobs,
            next: if more { position } else { None },
        })
    }
}

/// Up to `count` index entries after `after`, newest first, and whether the
/// index may hold more. Entries that share the score of `after` and are
/// not after it are skipped, page by page, however many there are.
async fn read_index(
    conn: &mut Connection,
    index: &str,
    after: Option<ListPosition>,
    count: usize,
) -> Result<(Vec<ListPosition>, bool), StoreError> {
    if count == 0 {
        return Ok((Vec::new(), true));
    }
    let max = after.map_or_else(|| "+inf".to_owned(), |p| p.score.to_string());
    let mut offset = 0;
    loop {
        let raw: Vec<(String, f64)> = redis::cmd("ZRANGE")
            .arg(index)
            .arg(&max)
            .arg("-inf")
            .arg("BYSCORE")
            .arg("REV")
            .arg("LIMIT")
            .arg(offset)
            .arg(count)
            .arg("WITHSCORES")
            .query_async(conn)
            .await?;
        let fetched = raw.len();
        let entries: Vec<ListPosition> = raw
            .into_iter()
            .filter_map(|(id, score)| {
                Some(ListPosition {
                    score: score as u64,
                    job_id: id.parse().ok()?,
                })
            })
            .filter(|entry| after.is_none_or(|after| entry.is_after(&after)))
            .collect();
        if !entries.is_empty() || fetched < count {
            return Ok((entries, fetched == count));
        }
        offset += fetched;
    }
}

/// The records of `entries`, in order, `None` where one has expired: one
/// pipeline of `HMGET`s on a single server; on a cluster, where each job is
/// on its own slot, one per slot, concurrently.
async fn read_records(
    conn: &mut Connection,
    entries: &[ListPosition],
) -> Result<Vec<Option<JobRecord>>, StoreError> {
    let commands = entries
        .iter()
        .map(|entry| {
            let key = keys::job(&entry.job_id);
            let mut cmd = redis::cmd("HMGET");
            cmd.arg(&key).arg(SNAPSHOT_FIELDS);
            (key, cmd)
        })
        .collect();
    let replies = conn.query_by_slot(commands).await?;
    replies
        .into_iter()
        .map(|reply| {
            let values: Vec<Option<String>> = redis::from_redis_value(reply)
                .map_err(|e| StoreError::Protocol(format!("job record: {e}")))?;
            let fields: HashMap<String, String> = SNAPSHOT_FIELDS
                .iter()
                .zip(values)
                .filter_map(|(name, value)| Some(((*name).to_owned(), value?)))
                .collect();
            JobRecord::from_fields(fields)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0193a0b4-7c1e-7d4e-9a2b-1c2d3e4f5a6b";

    #[test]
    fn a_position_reads_back_as_written() {
        let position = ListPosition {
            score: 1_796_000_000_123,
            job_id: ID.parse().expect("id"),
        };
        assert_eq!(position.to_string(), format!("1796000000123:{ID}"));
        assert_eq!(position.to_string().parse(), Ok(position));
    }

    #[test]
    fn malformed_positions_are_refused() {
        for text in [
            "",
            ID,
            "12:",
            ":0193a0b4-7c1e-7d4e-9a2b-1c2d3e4f5a6b",
            "-1:0193a0b4-7c1e-7d4e-9a2b-1c2d3e4f5a6b",
            "+1:0193a0b4-7c1e-7d4e-9a2b-1c2d3e4f5a6b",
            "99999999999999999999999:0193a0b4-7c1e-7d4e-9a2b-1c2d3e4f5a6b",
            "12:not-a-job",
        ] {
            assert_eq!(text.parse::<ListPosition>(), Err(()), "{text:?}");
        }
    }

    #[test]
    fn newest_first_is_by_score_then_by_id() {
        let at = |score, id: &str| ListPosition {
            score,
            job_id: id.parse().expect("id"),
        };
        let later_id = "0193a0b4-7c1e-7d4e-9a2b-1c2d3e4f5a6c";
        assert!(at(1, ID).is_after(&at(2, ID)));
        assert!(at(2, ID).is_after(&at(2, later_id)));
        assert!(!at(2, later_id).is_after(&at(2, ID)));
        assert!(!at(2, ID).is_after(&at(2, ID)));
    }
}
