//! The job record (the `jobgate:job:{id}` hash) read back into typed form.

use std::collections::HashMap;

use jobgate_proto::{EventPosition, FIRST_EPOCH, JobId, JobSnapshot, JobStatus};
use serde_json::value::RawValue;

use crate::StoreError;

/// A job record: the public snapshot plus what only the gateway sees.
#[derive(Debug, Clone)]
pub struct JobRecord {
    pub owner: String,
    /// The old API's free-form trace id; `None` for every other job (the
    /// field is absent, or empty in records of earlier versions).
    pub legacy_trace_id: Option<String>,
    /// The seq of the first event of the job's current epoch (1 for a job
    /// that never changed epoch, and for records written before epochs).
    pub epoch_seq: u64,
    pub snapshot: JobSnapshot,
}

impl JobRecord {
    /// Builds the record from `HGETALL`; `None` when the hash is empty
    /// (no such job, or it expired).
    pub fn from_fields(mut fields: HashMap<String, String>) -> Result<Option<Self>, StoreError> {
        if fields.is_empty() {
            return Ok(None);
        }
        let mut take = |name: &str| fields.remove(name).filter(|v| !v.is_empty());
        let bad = |name: &str| {
            StoreError::Protocol(format!("job record field {name} is missing or malformed"))
        };
        let job_id: JobId = take("job_id")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| bad("job_id"))?;
        let status: JobStatus = take("status")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| bad("status"))?;
        let json = |value: Option<String>| value.and_then(|v| RawValue::from_string(v).ok());
        let number = |value: Option<String>| value.and_then(|v| v.parse::<u64>().ok());
        let snapshot = JobSnapshot {
            job_id,
            status,
            kind: take("kind").ok_or_else(|| bad("kind"))?,
            queue: take("queue").ok_or_else(|| bad("queue"))?,
            priority: number(take("priority"))
                .and_then(|p| u8::try_from(p).ok())
                .unwrap_or(5),
            attempt: number(take("attempt"))
                .and_then(|a| u32::try_from(a).ok())
                .unwrap_or(0),
            max_attempts: number(take("max_attempts"))
                .and_then(|a| u32::try_from(a).ok())
                .filter(|a| *a > 0)
                .unwrap_or(jobgate_proto::DEFAULT_MAX_ATTEMPTS),
            timeout_s: number(take("timeout_s")).unwrap_or(0),
            seq: number(take("seq")).unwrap_or(0),
            epoch: number(take("epoch"))
                .filter(|epoch| *epoch >= FIRST_EPOCH)
                .unwrap_or(FIRST_EPOCH),
            progress: json(take("progress")),
            result: json(take("result")),
            error: json(take("error")),
            cancel_requested: take("cancel_requested").as_deref() == Some("1")
                && !status.is_terminal(),
            created_at: number(take("created_at")).unwrap_or(0),
            started_at: number(take("started_at")),
            finished_at: number(take("finished_at")),
            updated_at: number(take("updated_at")),
            trace_id: take("trace_id").unwrap_or_default(),
            run_at: number(take("run_at")),
        };
        Ok(Some(Self {
            owner: take("owner").ok_or_else(|| bad("owner"))?,
            legacy_trace_id: take("legacy_trace_id"),
            epoch_seq: number(take("epoch_seq")).unwrap_or(1),
            snapshot,
        }))
    }
}

impl JobRecord {
    /// Where the job's last event stands in its order.
    pub fn position(&self) -> EventPosition {
        self.snapshot.position()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect()
    }

    fn record_with(extra: &[(&str, &str)]) -> JobRecord {
        let mut pairs = vec![
            ("job_id", "01936f3e-8a7c-7b44-9f4e-2d5c8a1b6e90"),
            ("owner", "alice"),
            ("status", "queued"),
            ("kind", "echo"),
            ("queue", "default"),
        ];
        pairs.extend_from_slice(extra);
        JobRecord::from_fields(fields(&pairs))
            .expect("decodes")
            .expect("a record")
    }

    #[test]
    fn only_an_old_api_job_has_a_legacy_trace_id() {
        assert_eq!(record_with(&[]).legacy_trace_id, None);
        assert_eq!(
            record_with(&[("legacy_trace_id", "")]).legacy_trace_id,
            None,
            "records of earlier versions hold an empty string"
        );
        assert_eq!(
            record_with(&[("legacy_trace_id", "ios-1234")])
                .legacy_trace_id
                .as_deref(),
            Some("ios-1234")
        );
    }

    #[test]
    fn a_record_without_an_epoch_is_in_the_first_from_seq_1() {
        let record = record_with(&[("seq", "4")]);
        assert_eq!(record.position(), EventPosition::new(1, 4));
        assert_eq!(record.epoch_seq, 1);
        let record = record_with(&[("seq", "9"), ("epoch", "3"), ("epoch_seq", "7")]);
        assert_eq!(record.position(), EventPosition::new(3, 9));
        assert_eq!(record.epoch_seq, 7);
    }

    #[test]
    fn a_workers_numbers_are_kept_verbatim_whatever_their_magnitude() {
        let record = JobRecord::from_fields(fields(&[
            ("job_id", "01936f3e-8a7c-7b44-9f4e-2d5c8a1b6e90"),
            ("owner", "alice"),
            ("status", "running"),
            ("kind", "mc_option_price"),
            ("queue", "default"),
            ("progress", "1e4736"),
            (
                "result",
                "{\"price\":5.55555555555555555555555555555555555555}",
            ),
        ]))
        .expect("decodes")
        .expect("a record");
        let json = serde_json::to_string(&record.snapshot).expect("serializes");
        assert!(json.contains(r#""progress":1e4736"#), "{json}");
        assert!(
            json.contains(r#""result":{"price":5.55555555555555555555555555555555555555}"#),
            "{json}"
        );
    }
}
