//! Reads: a job's record, its record and history together (what a feed
//! reads when it starts watching, fills a gap or resyncs), and an owner's
//! recent jobs (what `/v1/events` replays after a reconnect).

use std::collections::HashMap;

use bytes::Bytes;
use jobgate_proto::JobId;

use super::JobStore;
use crate::{JobRecord, StoreError, keys};

/// A raw `XRANGE` entry: id and fields.
type HistoryEntry = (String, HashMap<String, Bytes>);

/// One event from a job's history.
pub(crate) struct StoredEvent {
    /// From the entry id, `<seq>-0`.
    pub(crate) seq: u64,
    /// The event JSON, verbatim.
    pub(crate) json: Bytes,
}

/// A job's record and the history after some seq, read together.
pub(crate) struct HistoryRead {
    pub(crate) record: Option<JobRecord>,
    pub(crate) events: Vec<StoredEvent>,
}

impl JobStore {
    /// The job record, or `None` when there is no such job.
    pub async fn record(&self, job_id: &JobId) -> Result<Option<JobRecord>, StoreError> {
        let mut conn = self.reader();
        let fields: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(keys::job(job_id))
            .query_async(&mut conn)
            .await?;
        JobRecord::from_fields(fields)
    }

    /// The record and the events with seq > `after`, read in one round trip.
    pub(crate) async fn history_after(
        &self,
        job_id: &JobId,
        after: u64,
    ) -> Result<HistoryRead, StoreError> {
        let mut conn = self.reader();
        let (fields, entries): (HashMap<String, String>, Vec<HistoryEntry>) = redis::pipe()
            .cmd("HGETALL")
            .arg(keys::job(job_id))
            .cmd("XRANGE")
            .arg(keys::events(job_id))
            .arg(format!("{}-0", after.saturating_add(1)))
            .arg("+")
            .query_async(&mut conn)
            .await?;
        let mut events = Vec::with_capacity(entries.len());
        for (id, mut fields) in entries {
            let seq = id
                .split_once('-')
                .and_then(|(seq, _)| seq.parse().ok())
                .ok_or_else(|| StoreError::Protocol(format!("history entry id {id}")))?;
            let json = fields
                .remove("e")
                .ok_or_else(|| StoreError::Protocol(format!("history entry {id} has no event")))?;
            events.push(StoredEvent { seq, json });
        }
        Ok(HistoryRead {
            record: JobRecord::from_fields(fields)?,
            events,
        })
    }

    /// The owner's job ids created at or after `since_ms`, newest last, at
    /// most `limit`.
    pub async fn owner_jobs_since(
        &self,
        owner: &str,
        since_ms: u64,
        limit: usize,
    ) -> Result<Vec<JobId>, StoreError> {
        let mut conn = self.reader();
        let ids: Vec<String> = redis::cmd("ZRANGE")
            .arg(keys::owner_jobs(owner))
            .arg("+inf")
            .arg(since_ms)
            .arg("BYSCORE")
            .arg("REV")
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .query_async(&mut conn)
            .await?;
        Ok(ids.iter().rev().filter_map(|id| id.parse().ok()).collect())
    }
}
