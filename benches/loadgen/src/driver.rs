//! Pacing: hands out submissions with a fixed number in flight
//! (`--concurrency`) or at a fixed rate (`--rate`), until `--jobs` are
//! submitted or `--duration` has passed.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// One job to submit.
#[derive(Debug)]
pub(crate) struct Submission {
    pub(crate) index: u64,
    /// When the job is due: latency counts from here. With a fixed rate it is
    /// the scheduled time (so a stall that delays sending is measured), with
    /// a fixed concurrency the moment it was handed out.
    pub(crate) due: Instant,
    /// Whether this job is measured (`false` during warm-up).
    pub(crate) measured: bool,
    /// Held while the job is in flight; dropping it lets the next one go.
    pub(crate) permit: OwnedSemaphorePermit,
}

/// How submissions are paced.
#[derive(Debug, Clone)]
pub(crate) struct Pace {
    pub(crate) jobs: u64,
    pub(crate) warmup: u64,
    pub(crate) concurrency: usize,
    pub(crate) rate: Option<f64>,
    pub(crate) duration: Duration,
}

/// Calls `dispatch` for each submission, in order; returns once every
/// submission was handed out (not when they are done). `dispatch` must not
/// block: a submission can always be accepted, because at most
/// `concurrency` of them exist at once.
pub(crate) async fn drive(pace: &Pace, mut dispatch: impl FnMut(Submission)) {
    let in_flight = Arc::new(Semaphore::new(pace.concurrency));
    let total = pace.warmup + pace.jobs;
    let start = Instant::now();
    let deadline = start + pace.duration;
    let mut measured_start = None;
    for index in 0..total {
        let measured = index >= pace.warmup;
        if measured && measured_start.is_none() {
            measured_start = Some(Instant::now());
        }
        let due = match (pace.rate, measured_start) {
            (Some(rate), Some(origin)) => {
                let due = origin + Duration::from_secs_f64((index - pace.warmup) as f64 / rate);
                tokio::time::sleep_until(due).await;
                due
            }
            (Some(rate), None) => {
                let due = start + Duration::from_secs_f64(index as f64 / rate);
                tokio::time::sleep_until(due).await;
                due
            }
            (None, _) => Instant::now(),
        };
        if Instant::now() >= deadline {
            break;
        }
        let permit = tokio::select! {
            permit = Arc::clone(&in_flight).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = tokio::time::sleep_until(deadline) => break,
        };
        let due = if pace.rate.is_some() {
            due
        } else {
            Instant::now()
        };
        dispatch(Submission {
            index,
            due,
            measured,
            permit,
        });
    }
    // Wait for the last jobs to give their permits back.
    let _ = in_flight.acquire_many(pace.concurrency as u32).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keeps_the_concurrency() {
        let pace = Pace {
            jobs: 10,
            warmup: 2,
            concurrency: 3,
            rate: None,
            duration: Duration::from_secs(5),
        };
        let mut seen = Vec::new();
        drive(&pace, |submission| {
            seen.push((submission.index, submission.measured));
            drop(submission.permit);
        })
        .await;
        assert_eq!(seen.len(), 12);
        assert_eq!(seen.iter().filter(|(_, measured)| !measured).count(), 2);
    }

    #[tokio::test]
    async fn stops_at_the_deadline() {
        let pace = Pace {
            jobs: 1_000_000,
            warmup: 0,
            concurrency: 1,
            rate: Some(100.0),
            duration: Duration::from_millis(100),
        };
        let mut count = 0;
        drive(&pace, |_| count += 1).await;
        assert!(count <= 12, "{count}");
    }
}
