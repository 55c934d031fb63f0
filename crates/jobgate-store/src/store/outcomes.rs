//! Job outcome counts, as kept in Redis: one hash per queue,
//! `jobgate:stats:{<queue>}` (on the queue's slot), written with `HINCRBY`
//! by whoever ends an attempt — workers for what they report, the gateway
//! for the cancels of queued jobs and the enqueue failures it makes — and
//! read back by `/metrics`. Plain code, no I/O: the field names, the
//! latency buckets, counting in memory before a flush, and adding up what
//! the hashes hold.
//!
//! Fields (the Python worker writes the same ones):
//!
//! - `outcome|<event>|<kind>`: how many `retrying`, `completed`, `failed`
//!   and `cancelled` events;
//! - `latency|<kind>|<i>`: terminal events whose age (ms from the job's
//!   `created_at` to the event) falls in bucket `i`, the first of
//!   [`LATENCY_BUCKETS_S`] whose bound is at or above it; an age above the
//!   last bound is in no bucket (only in the count and the sum);
//! - `latency_count|<kind>`, `latency_sum_ms|<kind>`: every terminal
//!   event's count and total age.

use std::collections::{BTreeMap, HashMap};

/// Upper bounds (seconds) of the submit-to-finish latency buckets.
pub const LATENCY_BUCKETS_S: [f64; 16] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
    3600.0,
];

/// The events counted, in the order `/metrics` knows them.
pub const OUTCOME_EVENTS: [&str; 4] = ["retrying", "completed", "failed", "cancelled"];

/// The bucket of an age in ms: the first bound at or above it; `None` past
/// the last bound.
pub(crate) fn bucket_index(age_ms: u64) -> Option<usize> {
    let seconds = age_ms as f64 / 1000.0;
    LATENCY_BUCKETS_S.iter().position(|&bound| seconds <= bound)
}

fn is_terminal(event: &str) -> bool {
    matches!(event, "completed" | "failed" | "cancelled")
}

/// Counts made in this process and not yet written: queue → field → count.
#[derive(Debug, Default)]
pub(crate) struct PendingOutcomes {
    by_queue: HashMap<String, HashMap<String, i64>>,
}

impl PendingOutcomes {
    /// Counts one `event` of a job of `kind` in `queue`, `age_ms` after the
    /// job was created (the age counts only for terminal events).
    pub(crate) fn count(&mut self, queue: &str, event: &str, kind: &str, age_ms: u64) {
        let fields = self.by_queue.entry(queue.to_owned()).or_default();
        *fields.entry(format!("outcome|{event}|{kind}")).or_default() += 1;
        if !is_terminal(event) {
            return;
        }
        if let Some(bucket) = bucket_index(age_ms) {
            *fields
                .entry(format!("latency|{kind}|{bucket}"))
                .or_default() += 1;
        }
        *fields.entry(format!("latency_count|{kind}")).or_default() += 1;
        *fields.entry(format!("latency_sum_ms|{kind}")).or_default() +=
            i64::try_from(age_ms).unwrap_or(i64::MAX);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.by_queue.is_empty()
    }

    /// Everything counted so far, leaving nothing.
    pub(crate) fn take(&mut self) -> HashMap<String, HashMap<String, i64>> {
        std::mem::take(&mut self.by_queue)
    }

    /// Puts back counts whose write failed, to be written with the next.
    pub(crate) fn restore(&mut self, counts: HashMap<String, HashMap<String, i64>>) {
        for (queue, fields) in counts {
            let pending = self.by_queue.entry(queue).or_default();
            for (field, count) in fields {
                *pending.entry(field).or_default() += count;
            }
        }
    }
}

/// One kind's latency histogram as the hashes hold it: per-bucket counts
/// (not cumulative), the count and the sum of every terminal event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LatencyTotals {
    pub buckets: [u64; LATENCY_BUCKETS_S.len()],
    pub count: u64,
    pub sum_ms: u64,
}

impl LatencyTotals {
    /// Events at or under each bound (a Prometheus `_bucket` series).
    pub fn cumulative(&self) -> [u64; LATENCY_BUCKETS_S.len()] {
        let mut total = 0;
        self.buckets.map(|count| {
            total += count;
            total
        })
    }
}

/// What the stats hashes of every known queue add up to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutcomeTotals {
    /// (event, kind) → count.
    pub outcomes: BTreeMap<(String, String), u64>,
    /// kind → latency histogram.
    pub latency: BTreeMap<String, LatencyTotals>,
}

impl OutcomeTotals {
    /// Adds one queue's hash. Fields it does not know are left out.
    pub(crate) fn add_hash(&mut self, fields: HashMap<String, String>) {
        for (field, value) in fields {
            let Ok(value) = value.parse::<u64>() else {
                continue;
            };
            let Some((name, rest)) = field.split_once('|') else {
                continue;
            };
            match name {
                "outcome" => {
                    if let Some((event, kind)) = rest.split_once('|') {
                        *self
                            .outcomes
                            .entry((event.to_owned(), kind.to_owned()))
                            .or_default() += value;
                    }
                }
                "latency" => {
                    let bucket = rest
                        .rsplit_once('|')
                        .and_then(|(kind, index)| Some((kind, index.parse::<usize>().ok()?)));
                    if let Some((kind, index)) = bucket
                        && index < LATENCY_BUCKETS_S.len()
                    {
                        self.histogram(kind).buckets[index] += value;
                    }
                }
                "latency_count" => self.histogram(rest).count += value,
                "latency_sum_ms" => self.histogram(rest).sum_ms += value,
                _ => {}
            }
        }
    }

    fn histogram(&mut self, kind: &str) -> &mut LatencyTotals {
        self.latency.entry(kind.to_owned()).or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_age_falls_in_the_first_bucket_at_or_above_it() {
        assert_eq!(bucket_index(0), Some(0));
        assert_eq!(bucket_index(5), Some(0));
        assert_eq!(bucket_index(6), Some(1));
        assert_eq!(bucket_index(30), Some(3));
        assert_eq!(bucket_index(3_600_000), Some(15));
        assert_eq!(bucket_index(3_600_001), None);
    }

    #[test]
    fn counts_are_kept_per_queue_under_the_shared_field_names() {
        let mut pending = PendingOutcomes::default();
        pending.count("default", "cancelled", "echo", 30);
        pending.count("default", "retrying", "echo", 10);
        pending.count("slow", "failed", "render", 4_000_000);
        let counts = pending.take();
        assert!(pending.is_empty());
        let default = &counts["default"];
        assert_eq!(default["outcome|cancelled|echo"], 1);
        assert_eq!(default["outcome|retrying|echo"], 1);
        assert_eq!(default["latency|echo|3"], 1);
        assert_eq!(default["latency_count|echo"], 1);
        assert_eq!(default["latency_sum_ms|echo"], 30);
        assert_eq!(default.len(), 5, "a retry has no latency: {default:?}");
        let slow = &counts["slow"];
        assert_eq!(slow["latency_count|render"], 1);
        assert!(!slow.keys().any(|field| field.starts_with("latency|")));

        pending.restore(counts.clone());
        pending.restore(counts);
        assert_eq!(pending.take()["default"]["outcome|cancelled|echo"], 2);
    }

    #[test]
    fn hashes_add_up_and_unknown_fields_are_left_out() {
        let hash = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(f, v)| ((*f).to_owned(), (*v).to_owned()))
                .collect::<HashMap<_, _>>()
        };
        let mut totals = OutcomeTotals::default();
        totals.add_hash(hash(&[
            ("outcome|completed|echo", "2"),
            ("latency|echo|3", "1"),
            ("latency|echo|5", "1"),
            ("latency_count|echo", "2"),
            ("latency_sum_ms|echo", "130"),
            ("latency|echo|99", "1"),
            ("something|else", "1"),
            ("outcome|completed|echo-not-a-number", "x"),
        ]));
        totals.add_hash(hash(&[("outcome|completed|echo", "1")]));
        assert_eq!(
            totals.outcomes[&("completed".to_owned(), "echo".to_owned())],
            3
        );
        assert_eq!(totals.outcomes.len(), 1);
        let echo = &totals.latency["echo"];
        assert_eq!((echo.count, echo.sum_ms), (2, 130));
        let cumulative = echo.cumulative();
        assert_eq!(&cumulative[..7], &[0, 0, 0, 1, 1, 2, 2]);
        assert_eq!(cumulative[15], 2);
    }
}
