//! Latency and outcome counts of one scenario, kept per task and merged.

use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::time::Instant;

/// Slowest latency the histogram holds (longer ones are clamped to it).
const MAX_LATENCY_US: u64 = 600_000_000;
/// Error messages kept as examples in the report.
const ERROR_SAMPLES: usize = 5;

/// Outcomes recorded by one task.
#[derive(Debug, Clone)]
pub(crate) struct Recorder {
    /// Latencies in microseconds, three significant digits.
    pub(crate) latency: Histogram<u64>,
    pub(crate) completed: u64,
    pub(crate) errors: u64,
    /// Jobs not finished within the job timeout (also counted in `errors`).
    pub(crate) timeouts: u64,
    /// Requests (HTTP requests or WebSocket frames) sent to the gateway.
    pub(crate) requests: u64,
    pub(crate) first_send: Option<Instant>,
    pub(crate) last_done: Option<Instant>,
    pub(crate) error_samples: Vec<String>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    pub(crate) fn new() -> Self {
        Self {
            latency: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .expect("valid histogram bounds"),
            completed: 0,
            errors: 0,
            timeouts: 0,
            requests: 0,
            first_send: None,
            last_done: None,
            error_samples: Vec::new(),
        }
    }

    /// A measured job was sent (or was due) at `at`.
    pub(crate) fn sent(&mut self, at: Instant) {
        self.first_send = Some(self.first_send.map_or(at, |first| first.min(at)));
    }

    /// One latency sample; `done` counts it as a completed job.
    pub(crate) fn sample(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency
            .saturating_record(micros.clamp(1, MAX_LATENCY_US));
    }

    /// A job completed `latency` after it was sent.
    pub(crate) fn completed(&mut self, latency: Duration, at: Instant) {
        self.sample(latency);
        self.finished(at);
    }

    /// A job completed at `at` (its latency samples recorded separately).
    pub(crate) fn finished(&mut self, at: Instant) {
        self.completed += 1;
        self.last_done = Some(self.last_done.map_or(at, |last| last.max(at)));
    }

    pub(crate) fn error(&mut self, message: impl Into<String>) {
        self.errors += 1;
        if self.error_samples.len() < ERROR_SAMPLES {
            self.error_samples.push(message.into());
        }
    }

    pub(crate) fn timeout(&mut self) {
        self.timeouts += 1;
        self.error("job timed out");
    }

    pub(crate) fn merge(&mut self, other: &Self) {
        let _ = self.latency.add(&other.latency);
        self.completed += other.completed;
        self.errors += other.errors;
        self.timeouts += other.timeouts;
        self.requests += other.requests;
        if let Some(at) = other.first_send {
            self.sent(at);
        }
        if let Some(at) = other.last_done {
            self.last_done = Some(self.last_done.map_or(at, |last| last.max(at)));
        }
        for message in &other.error_samples {
            if self.error_samples.len() < ERROR_SAMPLES {
                self.error_samples.push(message.clone());
            }
        }
    }

    /// From the first measured send to the last completion.
    pub(crate) fn window(&self) -> Option<Duration> {
        Some(self.last_done?.saturating_duration_since(self.first_send?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_and_measures() {
        let start = Instant::now();
        let mut a = Recorder::new();
        a.sent(start);
        a.completed(Duration::from_micros(900), start + Duration::from_millis(1));
        let mut b = Recorder::new();
        b.sent(start + Duration::from_millis(1));
        b.completed(Duration::from_millis(3), start + Duration::from_millis(4));
        b.error("boom");
        a.merge(&b);
        assert_eq!(a.completed, 2);
        assert_eq!(a.errors, 1);
        assert_eq!(a.window(), Some(Duration::from_millis(4)));
        assert_eq!(a.latency.len(), 2);
    }
}
