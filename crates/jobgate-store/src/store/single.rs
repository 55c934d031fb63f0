//! A batch's submission on a single server: the owners' rates, the
//! records, the queue entries and the owners' indexes and notices in one
//! `submit_many` call of the job script (its header documents the
//! arguments), instead of three steps. On a single server every key may be
//! touched by one call, so the steps `batch.rs` makes one after the other
//! (three round trips, and a repair when the last one fails) are one
//! atomic call here: a job is either refused, or created and enqueued and
//! indexed. Redis Cluster keeps the three steps (`batch.rs`), because the
//! keys of one submission are in several slots.

use std::collections::HashMap;

use super::batch::{MAX_JOBS_PER_CREATE, SubmitOutcome, created};
use super::delayed::delayed_member;
use super::script::status_word;
use super::submit::{NewJob, SubmitRate, Submitted};
use super::{JobStore, unix_ms};
use crate::connection::Connection;
use crate::keys::{self, Band};

impl JobStore {
    /// `submit_many` for `jobs`, in calls of at most [`MAX_JOBS_PER_CREATE`]
    /// jobs sent one after the other (so an owner's jobs are counted against
    /// its rate in order); one answer per job, in order.
    pub(super) async fn submit_single_server(
        &self,
        conn: &mut Connection,
        jobs: &[NewJob],
        rate: Option<SubmitRate>,
    ) -> Vec<SubmitOutcome> {
        let mut outcomes = Vec::with_capacity(jobs.len());
        for chunk in jobs.chunks(MAX_JOBS_PER_CREATE) {
            outcomes.extend(self.submit_call(conn, chunk, rate).await);
        }
        outcomes
    }

    async fn submit_call(
        &self,
        conn: &mut Connection,
        jobs: &[NewJob],
        rate: Option<SubmitRate>,
    ) -> Vec<SubmitOutcome> {
        let now_ms = unix_ms();
        let call = Call::new(jobs);
        // Without a rate the script touches no window (its limit is 0).
        let window = rate.map(|rate| rate.window_at(now_ms));
        let window_index = window.map_or(0, |window| window.index);
        let retention_ms = self.settings.retention.as_millis().max(1) as u64;
        let mut invocation = self.script.prepare_invoke();
        for job in jobs {
            invocation
                .key(keys::job(&job.job_id))
                .key(keys::events(&job.job_id));
        }
        for owner in &call.owners {
            invocation
                .key(keys::submit_rate(owner, window_index))
                .key(keys::owner_jobs(owner));
        }
        for (queue, band) in &call.targets {
            invocation
                .key(keys::queue(queue, *band))
                .key(keys::delayed(queue));
        }
        invocation
            .arg("submit_many")
            .arg(jobs.len())
            .arg(call.owners.len())
            .arg(rate.map_or(0, |rate| rate.limit))
            .arg(window.map_or(0, |window| window.length_s * 2))
            .arg(now_ms)
            .arg(retention_ms)
            .arg(self.settings.owner_index_max.max(1));
        for owner in &call.owners {
            invocation.arg(keys::owner_channel(owner));
        }
        for (job, (owner, target)) in jobs.iter().zip(&call.places) {
            // Only a job asking for a delay can be due later.
            let member = if job.request.delay_ms.is_some() || job.request.run_at.is_some() {
                delayed_member(job, Band::for_priority(job.request.priority()))
            } else {
                String::new()
            };
            invocation.arg(owner + 1).arg(2 * target + 1).arg(member);
            self.add_create_args(&mut invocation, job);
        }
        let all: Vec<&NewJob> = jobs.iter().collect();
        let replies = match self
            .invoke_creating(conn, &invocation, &all, "submit_many")
            .await
        {
            Ok(replies) => replies,
            Err(error) => return vec![Err(error); jobs.len()],
        };
        let mut delayed = false;
        let outcomes = replies
            .iter()
            .map(|one| match status_word(one)?.as_str() {
                "rate_limited" => Ok(Submitted::RateLimited {
                    retry_after_s: window.map_or(0, |window| window.retry_after_s),
                }),
                _ => {
                    delayed |= created(one)?.is_some();
                    Ok(Submitted::Created)
                }
            })
            .collect();
        if delayed {
            self.delayed_added.notify_one();
        }
        outcomes
    }
}

/// How one call's jobs map onto its owners and its queue targets.
struct Call<'a> {
    /// The owners of the call's jobs, in order of first appearance.
    owners: Vec<&'a str>,
    /// The (queue, band) pairs the jobs go to, in order of first appearance.
    targets: Vec<(&'a str, Band)>,
    /// Each job's owner and target, as indexes into the two lists.
    places: Vec<(usize, usize)>,
}

impl<'a> Call<'a> {
    fn new(jobs: &'a [NewJob]) -> Self {
        let mut owners: Vec<&str> = Vec::new();
        let mut targets: Vec<(&str, Band)> = Vec::new();
        let mut owner_of: HashMap<&str, usize> = HashMap::new();
        let mut target_of: HashMap<(&str, Band), usize> = HashMap::new();
        let places = jobs
            .iter()
            .map(|job| {
                let owner = *owner_of.entry(&job.owner).or_insert_with(|| {
                    owners.push(&job.owner);
                    owners.len() - 1
                });
                let target = (
                    job.queue.as_str(),
                    Band::for_priority(job.request.priority()),
                );
                let target = *target_of.entry(target).or_insert_with(|| {
                    targets.push(target);
                    targets.len() - 1
                });
                (owner, target)
            })
            .collect();
        Self {
            owners,
            targets,
            places,
        }
    }
}
