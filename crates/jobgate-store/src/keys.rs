//! Key and channel names. Braces are Redis Cluster hash tags: the keys one
//! atomic operation touches share a tag (see `proto-schemas/PROTOCOL.md`).

use jobgate_proto::JobId;

/// The prefix of every key and channel.
pub const PREFIX: &str = "jobgate:";
/// The consumer group every worker reads queues through.
pub const CONSUMER_GROUP: &str = "jobgate-workers";
/// Job kind → `{"queue", "worker", "seen_at"}`, written by workers.
pub const KINDS: &str = "jobgate:kinds";

/// The job record (hash).
pub fn job(job_id: &JobId) -> String {
    format!("{PREFIX}job:{{{job_id}}}")
}

/// The job's event history (stream, entry id `<seq>-0`).
pub fn events(job_id: &JobId) -> String {
    format!("{PREFIX}events:{{{job_id}}}")
}

/// A queue's stream for one priority band.
pub fn queue(queue: &str, band: Band) -> String {
    format!("{PREFIX}queue:{{{queue}}}:{}", band.as_str())
}

/// An owner's job ids, scored by creation time.
pub fn owner_jobs(owner: &str) -> String {
    format!("{PREFIX}owner:{{{owner}}}:jobs")
}

/// An owner's idempotency key → the job it created.
pub fn idempotency(owner: &str, key: &str) -> String {
    format!("{PREFIX}idem:{{{owner}}}:{key}")
}

/// An owner's submission count in one rate-limit window.
pub fn submit_rate(owner: &str, window: u64) -> String {
    format!("{PREFIX}rate:{{{owner}}}:{window}")
}

/// Live events of one job.
pub fn job_channel(job_id: &JobId) -> String {
    format!("{PREFIX}live:job:{job_id}")
}

/// Live events of all of an owner's jobs.
pub fn owner_channel(owner: &str) -> String {
    format!("{PREFIX}live:owner:{owner}")
}

/// The priority bands of a queue, highest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Band {
    High,
    Normal,
    Low,
}

impl Band {
    /// 7–9 high, 4–6 normal, 0–3 low.
    pub fn for_priority(priority: u8) -> Self {
        match priority {
            7.. => Self::High,
            4..=6 => Self::Normal,
            _ => Self::Low,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::High => "high",
            Self::Normal => "normal",
            Self::Low => "low",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_keys_share_one_hash_tag() {
        let id: JobId = "0193a0b4-7c1e-7d4e-9a2b-1c2d3e4f5a6b".parse().expect("id");
        assert_eq!(
            job(&id),
            "jobgate:job:{0193a0b4-7c1e-7d4e-9a2b-1c2d3e4f5a6b}"
        );
        assert_eq!(
            events(&id),
            "jobgate:events:{0193a0b4-7c1e-7d4e-9a2b-1c2d3e4f5a6b}"
        );
        assert_eq!(
            queue("default", Band::for_priority(9)),
            "jobgate:queue:{default}:high"
        );
        assert_eq!(Band::for_priority(5), Band::Normal);
        assert_eq!(Band::for_priority(0), Band::Low);
    }
}
