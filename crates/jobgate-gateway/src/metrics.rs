//! The gateway's counters and gauges, rendered in the Prometheus text
//! format for `/metrics` (the route is `health`'s).
//!
//! Counted here: submissions (by kind), connections, events pushed,
//! slow-consumer closes. Job outcomes and submit-to-finish latency are
//! counted in Redis, per queue (`jobgate:stats:{<queue>}`), by whoever ends
//! a job — workers, and gateways for the cancels and enqueue failures they
//! make — and read through the store at scrape time (at most once a
//! second): every gateway reports the same cluster-wide counts, so take one
//! gateway's figures (or `max` over gateways), not their sum. Queue depth
//! and the age of the oldest entry are read from Redis at scrape time.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use jobgate_store::OutcomeTotals;

/// Upper bounds (seconds) of the submit-to-finish latency buckets: the
/// store's, which counts ages into them (as the Python worker does).
pub use jobgate_store::LATENCY_BUCKETS_S;

/// Counters and gauges of one gateway.
#[derive(Debug, Default)]
pub struct Metrics {
    submitted: Mutex<BTreeMap<String, u64>>,
    pub(crate) websocket_sessions: AtomicI64,
    pub(crate) sse_streams: AtomicI64,
    pub(crate) events_pushed: AtomicU64,
    pub(crate) slow_consumer_closes: AtomicU64,
    /// Log forwarding counters, when forwarding is on.
    pub(crate) log_forwarding: Mutex<Option<Arc<jobgate_fluent::ForwarderStats>>>,
}

/// Keeps one of the open-connection gauges up while a connection lives.
#[derive(Debug)]
pub(crate) struct Gauge {
    metrics: Arc<Metrics>,
    gauge: fn(&Metrics) -> &AtomicI64,
}

impl Gauge {
    /// One more open WebSocket session, until the gauge is dropped.
    pub(crate) fn websocket_session(metrics: &Arc<Metrics>) -> Self {
        Self::up(metrics, |metrics| &metrics.websocket_sessions)
    }

    /// One more open SSE stream, until the gauge is dropped.
    pub(crate) fn sse_stream(metrics: &Arc<Metrics>) -> Self {
        Self::up(metrics, |metrics| &metrics.sse_streams)
    }

    fn up(metrics: &Arc<Metrics>, gauge: fn(&Metrics) -> &AtomicI64) -> Self {
        gauge(metrics).fetch_add(1, Ordering::Relaxed);
        Self {
            metrics: Arc::clone(metrics),
            gauge,
        }
    }
}

impl Drop for Gauge {
    fn drop(&mut self) {
        (self.gauge)(&self.metrics).fetch_sub(1, Ordering::Relaxed);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain counters: nothing can be left half-updated.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Metrics {
    /// Reports log forwarding's counters from now on.
    pub fn set_log_forwarding(&self, stats: Option<Arc<jobgate_fluent::ForwarderStats>>) {
        *lock(&self.log_forwarding) = stats;
    }

    pub(crate) fn submitted(&self, kind: &str) {
        *lock(&self.submitted).entry(kind.to_owned()).or_default() += 1;
    }

    /// Renders every family: this gateway's counters, `outcomes` (the
    /// stats hashes' totals) and `queues` (name, length, oldest entry's
    /// age in ms).
    pub(crate) fn render(
        &self,
        out: &mut String,
        queues: &[(String, u64, Option<u64>)],
        outcomes: &OutcomeTotals,
    ) {
        family(
            out,
            "jobgate_jobs_submitted_total",
            "counter",
            "Jobs accepted by this gateway.",
        );
        for (kind, count) in lock(&self.submitted).iter() {
            let _ = writeln!(
                out,
                "jobgate_jobs_submitted_total{{kind=\"{}\"}} {count}",
                escape(kind)
            );
        }
        family(
            out,
            "jobgate_job_outcomes_total",
            "counter",
            "Retries and final outcomes of every job, counted in Redis by whoever ended it (cluster-wide).",
        );
        for ((event, kind), count) in &outcomes.outcomes {
            let _ = writeln!(
                out,
                "jobgate_job_outcomes_total{{event=\"{}\",kind=\"{}\"}} {count}",
                escape(event),
                escape(kind)
            );
        }
        family(
            out,
            "jobgate_job_duration_seconds",
            "histogram",
            "From submission to the final event, by kind (cluster-wide).",
        );
        for (kind, histogram) in &outcomes.latency {
            let kind = escape(kind);
            for (count, bound) in histogram.cumulative().iter().zip(LATENCY_BUCKETS_S) {
                let _ = writeln!(
                    out,
                    "jobgate_job_duration_seconds_bucket{{kind=\"{kind}\",le=\"{bound}\"}} {count}"
                );
            }
            let _ = writeln!(
                out,
                "jobgate_job_duration_seconds_bucket{{kind=\"{kind}\",le=\"+Inf\"}} {}",
                histogram.count
            );
            let _ = writeln!(
                out,
                "jobgate_job_duration_seconds_sum{{kind=\"{kind}\"}} {}",
                histogram.sum_ms as f64 / 1000.0
            );
            let _ = writeln!(
                out,
                "jobgate_job_duration_seconds_count{{kind=\"{kind}\"}} {}",
                histogram.count
            );
        }
        family(
            out,
            "jobgate_queue_length",
            "gauge",
            "Entries waiting or running in each queue.",
        );
        for (queue, length, _) in queues {
            let _ = writeln!(
                out,
                "jobgate_queue_length{{queue=\"{}\"}} {length}",
                escape(queue)
            );
        }
        family(
            out,
            "jobgate_queue_oldest_age_seconds",
            "gauge",
            "Age of the oldest entry in each queue.",
        );
        for (queue, _, oldest_ms) in queues {
            let age = oldest_ms.map_or(0.0, |ms| ms as f64 / 1000.0);
            let _ = writeln!(
                out,
                "jobgate_queue_oldest_age_seconds{{queue=\"{}\"}} {age}",
                escape(queue)
            );
        }
        let gauges = [
            (
                "jobgate_websocket_sessions",
                "gauge",
                "Open WebSocket sessions.",
                self.websocket_sessions.load(Ordering::Relaxed),
            ),
            (
                "jobgate_sse_streams",
                "gauge",
                "Open SSE streams.",
                self.sse_streams.load(Ordering::Relaxed),
            ),
        ];
        for (name, kind, help, value) in gauges {
            family(out, name, kind, help);
            let _ = writeln!(out, "{name} {value}");
        }
        let counters = [
            (
                "jobgate_events_pushed_total",
                "Events sent to clients.",
                self.events_pushed.load(Ordering::Relaxed),
            ),
            (
                "jobgate_slow_consumer_closes_total",
                "Connections closed because they did not read their events.",
                self.slow_consumer_closes.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, value) in counters {
            family(out, name, "counter", help);
            let _ = writeln!(out, "{name} {value}");
        }
        if let Some(stats) = lock(&self.log_forwarding).as_ref() {
            family(
                out,
                "jobgate_log_records_forwarded_total",
                "counter",
                "Log records Fluentd acknowledged.",
            );
            let _ = writeln!(
                out,
                "jobgate_log_records_forwarded_total {}",
                stats.forwarded()
            );
            family(
                out,
                "jobgate_log_records_dropped_total",
                "counter",
                "Log records dropped because Fluentd was unreachable and the buffer was full.",
            );
            let _ = writeln!(out, "jobgate_log_records_dropped_total {}", stats.dropped());
        }
    }
}

/// Redis's side of `/metrics`: the `OOM` refusals this gateway saw, and
/// Redis's `used_memory` and `maxmemory` read at scrape time (`memory` is
/// `None` when Redis did not answer).
pub(crate) fn render_redis(out: &mut String, oom_refusals: u64, memory: Option<(u64, u64)>) {
    family(
        out,
        "jobgate_redis_oom_refusals_total",
        "counter",
        "Requests Redis refused because it was at maxmemory (OOM), seen by this gateway.",
    );
    let _ = writeln!(out, "jobgate_redis_oom_refusals_total {oom_refusals}");
    if let Some((used, max)) = memory {
        family(
            out,
            "jobgate_redis_used_memory_bytes",
            "gauge",
            "Redis's used_memory, read at scrape time.",
        );
        let _ = writeln!(out, "jobgate_redis_used_memory_bytes {used}");
        family(
            out,
            "jobgate_redis_maxmemory_bytes",
            "gauge",
            "Redis's maxmemory (0: no limit), read at scrape time.",
        );
        let _ = writeln!(out, "jobgate_redis_maxmemory_bytes {max}");
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_outcomes_and_latency() {
        let metrics = Metrics::default();
        metrics.submitted("echo");
        let mut outcomes = OutcomeTotals::default();
        outcomes
            .outcomes
            .insert(("completed".into(), "echo".into()), 1);
        outcomes
            .outcomes
            .insert(("retrying".into(), "echo".into()), 1);
        let mut echo = jobgate_store::LatencyTotals::default();
        echo.buckets[3] = 1; // 30 ms: at or under 0.05 s
        echo.count = 1;
        echo.sum_ms = 30;
        outcomes.latency.insert("echo".into(), echo);
        let mut out = String::new();
        metrics.render(&mut out, &[("default".into(), 3, Some(1500))], &outcomes);
        assert!(out.contains("jobgate_jobs_submitted_total{kind=\"echo\"} 1"));
        assert!(out.contains("jobgate_job_outcomes_total{event=\"completed\",kind=\"echo\"} 1"));
        assert!(out.contains("jobgate_job_outcomes_total{event=\"retrying\",kind=\"echo\"} 1"));
        assert!(out.contains("jobgate_job_duration_seconds_bucket{kind=\"echo\",le=\"0.05\"} 1"));
        assert!(out.contains("jobgate_job_duration_seconds_bucket{kind=\"echo\",le=\"0.025\"} 0"));
        assert!(out.contains("jobgate_job_duration_seconds_bucket{kind=\"echo\",le=\"3600\"} 1"));
        assert!(out.contains("jobgate_job_duration_seconds_bucket{kind=\"echo\",le=\"+Inf\"} 1"));
        assert!(out.contains("jobgate_job_duration_seconds_sum{kind=\"echo\"} 0.03"));
        assert!(out.contains("jobgate_job_duration_seconds_count{kind=\"echo\"} 1"));
        assert!(out.contains("jobgate_queue_oldest_age_seconds{queue=\"default\"} 1.5"));
    }
}
