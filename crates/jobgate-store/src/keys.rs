//! Key and channel names, all of them in one place. Braces are Redis Cluster
//! hash tags: the keys one atomic operation touches share a tag (see
//! `proto-schemas/PROTOCOL.md`).

use jobgate_proto::JobId;

/// The prefix of every key and channel.
pub const PREFIX: &str = "jobgate:";
/// The consumer group every worker reads queues through.
pub const CONSUMER_GROUP: &str = "jobgate-workers";
/// Job kind → `{"queue", "worker", "seen_at"}`, written by workers of
/// protocol 2 (protocol 1's `jobgate:kinds` is neither read nor written, so
/// a kind only old workers serve is refused at submission: see
/// `proto-schemas/PROTOCOL.md`).
pub const KINDS: &str = "jobgate:kinds:v2";

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

/// A queue's delayed jobs (sorted set: member = the queue entry as JSON,
/// score = when it is due), on the queue's hash tag so that moving due jobs
/// into the band streams is one atomic script.
pub fn delayed(queue: &str) -> String {
    format!("{PREFIX}delayed:{{{queue}}}")
}

/// A queue's dead letters (stream): jobs that ran out of attempts.
pub fn dead_letters(queue: &str) -> String {
    format!("{PREFIX}dead:{{{queue}}}")
}

/// A queue's dead letters by job (hash: job id → dead-letter entry id), so
/// that a job has at most one.
pub fn dead_letter_index(queue: &str) -> String {
    format!("{PREFIX}dead:{{{queue}}}:jobs")
}

/// Present while `queue` is paused: workers take no new entries from it.
pub fn paused(queue: &str) -> String {
    format!("{PREFIX}paused:{{{queue}}}")
}

/// A queue's worker heartbeats (hash): consumer → JSON record.
pub fn workers(queue: &str) -> String {
    format!("{PREFIX}workers:{{{queue}}}")
}

/// A queue's job outcome counts (hash, fields in `store/outcomes.rs`),
/// written by workers and gateways, read for `/metrics`.
pub fn stats(queue: &str) -> String {
    format!("{PREFIX}stats:{{{queue}}}")
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

/// Live events of one job: a sharded channel (SPUBLISH by the job script),
/// in the job's slot.
pub fn job_channel(job_id: &JobId) -> String {
    format!("{PREFIX}live:job:{{{job_id}}}")
}

/// New jobs of an owner: a sharded channel in the owner's slot, where the
/// gateway that creates (or re-runs) a job publishes its id.
pub fn owner_channel(owner: &str) -> String {
    format!("{PREFIX}live:owner:{{{owner}}}")
}

/// The priority bands of a queue, highest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
        assert_eq!(delayed("default"), "jobgate:delayed:{default}");
        assert_eq!(Band::for_priority(5), Band::Normal);
        assert_eq!(Band::for_priority(0), Band::Low);
    }

    /// Every channel the job script publishes to (all sharded: SPUBLISH),
    /// as `prefix .. '<rest>'` (the script takes the prefix from its job
    /// key).
    fn channels_published_by_the_script() -> Vec<&'static str> {
        let script = include_str!("../../../proto-schemas/redis/jobgate.lua");
        let publish = "redis.call('SPUBLISH', prefix .. '";
        script
            .match_indices(publish)
            .filter_map(|(at, _)| {
                let rest = &script[at + publish.len()..];
                rest.find('\'').map(|end| &rest[..end])
            })
            .collect()
    }

    #[test]
    fn channel_names_match_what_the_script_publishes_to() {
        let id: JobId = "0193a0b4-7c1e-7d4e-9a2b-1c2d3e4f5a6b".parse().expect("id");
        // The script's prefix is what precedes `job:{` in its first key.
        assert_eq!(
            job(&id).split_once("job:{").map(|(prefix, _)| prefix),
            Some(PREFIX)
        );
        let published = channels_published_by_the_script();
        assert_eq!(published, ["live:job:{", "control:{"], "{published:?}");
        assert_eq!(job_channel(&id), format!("{PREFIX}live:job:{{{id}}}"));
        // Nothing outside the job's slot: no owner channel, no stats.
        let script = include_str!("../../../proto-schemas/redis/jobgate.lua");
        assert!(!script.contains("redis.call('PUBLISH'"));
        assert_eq!(owner_channel("alice"), "jobgate:live:owner:{alice}");
        assert_eq!(stats("default"), "jobgate:stats:{default}");
        assert_eq!(KINDS, "jobgate:kinds:v2");
    }
}
