//! Submitting many jobs together: the same three steps as one submission —
//! the owners' rates, `create`, then the queue entries with the owners'
//! indexes and new-job notices — each made once for the whole batch instead
//! of once per job. On a single server all three are one `submit_many` call
//! (`single.rs`); what follows is how a Redis Cluster, whose keys of one
//! submission are in several slots, makes them.
//!
//! - **Rates:** one `INCRBY` per owner of the batch (by its number of jobs);
//!   the jobs past the limit, in batch order, are refused.
//! - **Create:** `jobgate.lua` `create_many`, which creates each job exactly
//!   as `create` does, in one atomic call. A call must stay in one slot, so
//!   jobs are grouped by the slot of their hash tag, one call per group (in
//!   chunks of [`MAX_JOBS_PER_CREATE`]) — with tags per job that is most
//!   often one call per job — sent concurrently.
//! - **Enqueue:** every queue entry, then per owner one `ZADD` of all its new
//!   ids, one trim, one `PEXPIRE` and one `SPUBLISH` per job: one pipeline
//!   per slot (`query_by_slot`), sent concurrently.
//!
//! Each job gets its own answer. A job refused at any step (over its
//! owner's rate, an id taken, an error of its `create` call) changes
//! nothing and refuses only itself; a failed enqueue fails the records it
//! had created (`enqueue_failed`), as for one job.

use std::collections::HashMap;

use futures_util::future::join_all;
use jobgate_proto::JobId;
use redis::cluster_routing::Slot;
use redis::{Cmd, ScriptInvocation, Value};

use super::delayed::delayed_member;
use super::script::status_word;
use super::submit::{NewJob, SubmitRate, Submitted};
use super::{JobStore, unix_ms};
use crate::StoreError;
use crate::connection::Connection;
use crate::keys::{self, Band};

/// The most jobs one `create_many` call creates: a script blocks Redis
/// while it runs, so a large batch is created in several short calls.
pub const MAX_JOBS_PER_CREATE: usize = 64;
/// Tries at failing a record whose enqueue failed, and the first pause
/// between them (doubling): about 1.5 s in all.
const REPAIR_ATTEMPTS: u32 = 5;
const REPAIR_FIRST_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);
/// The arguments `create_many` takes per job.
const CREATE_ARGS_PER_JOB: usize = 16;

/// One job's answer in a batch.
pub type SubmitOutcome = Result<Submitted, StoreError>;

impl JobStore {
    /// Creates and enqueues `jobs`, counting each against its owner's
    /// `rate` first; one answer per job, in order. See the module comment.
    pub async fn submit_many(
        &self,
        jobs: &[NewJob],
        rate: Option<SubmitRate>,
    ) -> Vec<SubmitOutcome> {
        let mut conn = self.connection();
        match conn.is_cluster().await {
            Ok(false) => return self.submit_single_server(&mut conn, jobs, rate).await,
            Ok(true) => {}
            Err(error) => return vec![Err(error.into()); jobs.len()],
        }
        let mut outcomes: Vec<Option<SubmitOutcome>> = vec![None; jobs.len()];
        if let Some(rate) = rate {
            match count_rates(&mut conn, jobs, rate).await {
                Ok(refused) => {
                    for (place, retry_after_s) in refused {
                        outcomes[place] = Some(Ok(Submitted::RateLimited { retry_after_s }));
                    }
                }
                Err(error) => return vec![Err(error); jobs.len()],
            }
        }
        let admitted: Vec<usize> = (0..jobs.len()).filter(|&i| outcomes[i].is_none()).collect();
        let created_at = unix_ms();
        let created = self.create_many(&mut conn, jobs, &admitted).await;
        let mut to_enqueue = Vec::with_capacity(admitted.len());
        for (place, result) in admitted.into_iter().zip(created) {
            match result {
                Ok(due) => to_enqueue.push((place, due)),
                Err(error) => outcomes[place] = Some(Err(error)),
            }
        }
        if !to_enqueue.is_empty() {
            match self.enqueue_many(&mut conn, jobs, &to_enqueue).await {
                Ok(()) => {
                    if to_enqueue.iter().any(|(_, due)| due.is_some()) {
                        self.delayed_added.notify_one();
                    }
                    for (place, _) in &to_enqueue {
                        outcomes[*place] = Some(Ok(Submitted::Created));
                    }
                }
                Err(error) => {
                    let error = StoreError::from(error);
                    for (place, _) in &to_enqueue {
                        self.repair_unenqueued(&jobs[*place], created_at).await;
                        outcomes[*place] = Some(Err(error.clone()));
                    }
                }
            }
        }
        outcomes
            .into_iter()
            .map(|outcome| outcome.unwrap_or_else(|| Err(unanswered())))
            .collect()
    }

    /// Best effort after a failed enqueue: fails the record so it never
    /// claims to be queued, and counts the outcome.
    /// Redis unreachable for a moment (a timeout under load, a failover)
    /// is tried again a few times, so that the record does not stay queued.
    pub(super) async fn repair_unenqueued(&self, job: &NewJob, created_at: u64) {
        let mut pause = REPAIR_FIRST_PAUSE;
        for attempt in 1..=REPAIR_ATTEMPTS {
            match self.fail_unenqueued(&job.job_id).await {
                Ok(true) => {
                    return self.count_outcome(&job.queue, "failed", &job.request.kind, created_at);
                }
                Ok(false) => return,
                Err(StoreError::Unavailable(_)) if attempt < REPAIR_ATTEMPTS => {
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                Err(repair) => {
                    tracing::error!(job_id = %job.job_id, error = %repair, "a job that could not be enqueued could not be failed either");
                    return;
                }
            }
        }
    }

    /// `create_many` for the jobs at `places`: returns, in that order, each
    /// job's due time (`None`: runnable now) or why it was not created.
    async fn create_many(
        &self,
        conn: &mut Connection,
        jobs: &[NewJob],
        places: &[usize],
    ) -> Vec<Result<Option<u64>, StoreError>> {
        let groups = create_groups(jobs, places);
        let calls = groups.iter().map(|group| {
            let mut conn = conn.clone();
            async move { self.create_group(&mut conn, jobs, group).await }
        });
        let mut results: Vec<Option<Result<Option<u64>, StoreError>>> = vec![None; jobs.len()];
        for (group, replies) in groups.iter().zip(join_all(calls).await) {
            for (&place, reply) in group.iter().zip(replies) {
                results[place] = Some(reply);
            }
        }
        places
            .iter()
            .map(|&place| results[place].take().unwrap_or_else(|| Err(unanswered())))
            .collect()
    }

    /// One `create_many` call for the jobs at `group` (all in one slot).
    async fn create_group(
        &self,
        conn: &mut Connection,
        jobs: &[NewJob],
        group: &[usize],
    ) -> Vec<Result<Option<u64>, StoreError>> {
        let mut invocation = self.script.prepare_invoke();
        invocation.arg("create_many").arg(group.len());
        for &place in group {
            let job = &jobs[place];
            invocation
                .key(keys::job(&job.job_id))
                .key(keys::events(&job.job_id));
            self.add_create_args(&mut invocation, job);
        }
        let group_jobs: Vec<&NewJob> = group.iter().map(|&place| &jobs[place]).collect();
        match self
            .invoke_creating(conn, &invocation, &group_jobs, "create_many")
            .await
        {
            Ok(replies) => replies.iter().map(created).collect(),
            Err(error) => vec![Err(error); group.len()],
        }
    }

    /// `create`'s sixteen arguments for `job`, added to `invocation`.
    pub(super) fn add_create_args(&self, invocation: &mut ScriptInvocation<'_>, job: &NewJob) {
        for arg in create_args(
            job,
            self.settings.retention.as_secs().max(1),
            self.settings.history_max.max(1),
        ) {
            invocation.arg(arg);
        }
    }

    /// Runs a call that creates `jobs` (`op`: `create_many` or
    /// `submit_many`) and returns its reply for each job. A call that failed
    /// part-way (a script error: not refused at its start, as at maxmemory,
    /// nor lost with the connection) may have created some of the jobs
    /// without their entries: those must not stay queued, so each job is
    /// failed (`enqueue_failed`); a job it never created is left alone.
    pub(super) async fn invoke_creating(
        &self,
        conn: &mut Connection,
        invocation: &ScriptInvocation<'_>,
        jobs: &[&NewJob],
        op: &str,
    ) -> Result<Vec<Value>, StoreError> {
        let reply: Value = match invocation.invoke_async(conn).await {
            Ok(reply) => reply,
            Err(error) => {
                let error = StoreError::from(error);
                if matches!(error, StoreError::Redis(_)) {
                    for job in jobs {
                        self.repair_unenqueued(job, unix_ms()).await;
                    }
                }
                return Err(error);
            }
        };
        match (status_word(&reply), reply) {
            (Ok(word), Value::Array(mut items))
                if word == "ok" && items.len() == jobs.len() + 1 =>
            {
                items.remove(0);
                Ok(items)
            }
            (_, other) => Err(StoreError::Protocol(format!("{op} answered {other:?}"))),
        }
    }

    /// Adds the queue entries (or delayed-set members) of the created jobs
    /// (`(place, due)`), indexes them among their owners' recent jobs and
    /// publishes each id on its owner's channel: one pipeline per slot,
    /// sent concurrently. The indexes stay
    /// bounded: entries older than the retention period and all but the
    /// newest `owner_index_max` are trimmed, and each key expires one
    /// retention period after its last write.
    async fn enqueue_many(
        &self,
        conn: &mut Connection,
        jobs: &[NewJob],
        created: &[(usize, Option<u64>)],
    ) -> Result<(), redis::RedisError> {
        let now_ms = unix_ms();
        let mut commands = Vec::with_capacity(created.len() * 2 + 4);
        let mut owners: Vec<(&str, Vec<&JobId>)> = Vec::new();
        for &(place, due) in created {
            let job = &jobs[place];
            commands.push(queue_entry(job, due, now_ms));
            match owners.iter_mut().find(|(owner, _)| *owner == job.owner) {
                Some((_, ids)) => ids.push(&job.job_id),
                None => owners.push((&job.owner, vec![&job.job_id])),
            }
        }
        for (owner, ids) in owners {
            commands.extend(self.index_for_owner(owner, &ids, now_ms));
        }
        conn.query_by_slot(commands).await.map(drop)
    }

    /// The commands that add `job_ids` to their owner's index (and trim it)
    /// and tell the owner's feeds about each: `SPUBLISH` of each id on the
    /// owner's channel, after the `ZADD`, so a feed that hears of a job
    /// finds it in the index. All on the owner's slot.
    fn index_for_owner(&self, owner: &str, job_ids: &[&JobId], now_ms: u64) -> Vec<(String, Cmd)> {
        let retention_ms = self.settings.retention.as_millis() as u64;
        let owner_jobs = keys::owner_jobs(owner);
        let mut add = redis::cmd("ZADD");
        add.arg(&owner_jobs);
        for job_id in job_ids {
            add.arg(now_ms).arg(job_id.to_string());
        }
        let mut trim_old = redis::cmd("ZREMRANGEBYSCORE");
        trim_old
            .arg(&owner_jobs)
            .arg("-inf")
            .arg(format!("({}", now_ms.saturating_sub(retention_ms)));
        let mut trim_many = redis::cmd("ZREMRANGEBYRANK");
        trim_many
            .arg(&owner_jobs)
            .arg(0)
            .arg(-(self.settings.owner_index_max.max(1) as i64) - 1);
        let mut expire = redis::cmd("PEXPIRE");
        expire.arg(&owner_jobs).arg(retention_ms.max(1));
        let mut commands = vec![
            (owner_jobs.clone(), add),
            (owner_jobs.clone(), trim_old),
            (owner_jobs.clone(), trim_many),
            (owner_jobs, expire),
        ];
        let channel = keys::owner_channel(owner);
        for job_id in job_ids {
            let mut notice = redis::cmd("SPUBLISH");
            notice.arg(&channel).arg(job_id.to_string());
            commands.push((channel.clone(), notice));
        }
        commands
    }
}

/// The jobs at `places` in groups of one `create_many` call each: jobs
/// whose keys share a slot together, in chunks of [`MAX_JOBS_PER_CREATE`].
fn create_groups(jobs: &[NewJob], places: &[usize]) -> Vec<Vec<usize>> {
    let mut by_slot: HashMap<Slot, Vec<usize>> = HashMap::new();
    let mut order = Vec::new();
    for &place in places {
        let slot = Slot::for_key(keys::job(&jobs[place].job_id).as_bytes());
        by_slot
            .entry(slot)
            .or_insert_with(|| {
                order.push(slot);
                Vec::new()
            })
            .push(place);
    }
    order
        .into_iter()
        .filter_map(|slot| by_slot.remove(&slot))
        .flat_map(|group| {
            group
                .chunks(MAX_JOBS_PER_CREATE)
                .map(<[usize]>::to_vec)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// `create`'s sixteen arguments for `job`, the optional ones empty when
/// unused (the old API's trace id only when there is one, so other records
/// get no such field).
pub(super) fn create_args(
    job: &NewJob,
    retention_s: u64,
    history_max: u64,
) -> [String; CREATE_ARGS_PER_JOB] {
    let request = &job.request;
    let text = |value: Option<i64>| value.map(|v| v.to_string()).unwrap_or_default();
    [
        job.job_id.to_string(),
        job.owner.clone(),
        request.kind.clone(),
        job.queue.clone(),
        request.params.get().to_owned(),
        request.priority().to_string(),
        request.max_attempts().to_string(),
        request.timeout_s().to_string(),
        retention_s.to_string(),
        history_max.to_string(),
        job.trace.traceparent.clone(),
        job.trace.tracestate.clone(),
        job.trace.trace_id.clone(),
        job.legacy_trace_id.clone().unwrap_or_default(),
        text(request.delay_ms),
        text(request.run_at),
    ]
}

/// One job's `create` reply: its due time, or why it was not created.
pub(super) fn created(reply: &Value) -> Result<Option<u64>, StoreError> {
    match status_word(reply)?.as_str() {
        "ok" => Ok(due_time(reply)),
        other => Err(StoreError::Protocol(format!("create answered {other}"))),
    }
}

/// `create`'s fourth reply element: a delayed job's due time.
fn due_time(reply: &Value) -> Option<u64> {
    match reply {
        Value::Array(items) => match items.get(3) {
            Some(Value::Int(run_at)) => u64::try_from(*run_at).ok(),
            _ => None,
        },
        _ => None,
    }
}

/// The job's queue entry: `XADD` to its band's stream, or for a job `due`
/// later, `ZADD` of its member to the queue's delayed set.
fn queue_entry(job: &NewJob, due: Option<u64>, now_ms: u64) -> (String, Cmd) {
    let band = Band::for_priority(job.request.priority());
    match due {
        Some(due) => {
            let key = keys::delayed(&job.queue);
            let mut cmd = redis::cmd("ZADD");
            cmd.arg(&key).arg(due).arg(delayed_member(job, band));
            (key, cmd)
        }
        None => {
            let key = keys::queue(&job.queue, band);
            let mut cmd = redis::cmd("XADD");
            cmd.arg(&key)
                .arg("*")
                .arg("job_id")
                .arg(job.job_id.to_string())
                .arg("kind")
                .arg(&job.request.kind)
                .arg("traceparent")
                .arg(&job.trace.traceparent)
                .arg("tracestate")
                .arg(&job.trace.tracestate)
                .arg("enqueued_at")
                .arg(now_ms);
            (key, cmd)
        }
    }
}

/// Counts each owner's jobs of the batch in its current window (one
/// `INCRBY` per owner); returns the places of the jobs over the limit,
/// with the seconds left in the window. An owner's jobs are counted in
/// batch order, so the first ones fit.
async fn count_rates(
    conn: &mut Connection,
    jobs: &[NewJob],
    rate: SubmitRate,
) -> Result<Vec<(usize, u64)>, StoreError> {
    let window = rate.window_at(unix_ms());
    let mut owners: Vec<(&str, Vec<usize>)> = Vec::new();
    for (place, job) in jobs.iter().enumerate() {
        match owners.iter_mut().find(|(owner, _)| *owner == job.owner) {
            Some((_, places)) => places.push(place),
            None => owners.push((&job.owner, vec![place])),
        }
    }
    let mut commands = Vec::with_capacity(owners.len() * 2);
    for (owner, places) in &owners {
        let key = keys::submit_rate(owner, window.index);
        let mut count = redis::cmd("INCRBY");
        count.arg(&key).arg(places.len());
        let mut expire = redis::cmd("EXPIRE");
        expire.arg(&key).arg(window.length_s * 2);
        commands.push((key.clone(), count));
        commands.push((key, expire));
    }
    let replies = conn.query_by_slot(commands).await?;
    let mut refused = Vec::new();
    for (i, (_, places)) in owners.iter().enumerate() {
        let total: u64 = match replies.get(2 * i) {
            Some(Value::Int(total)) => u64::try_from(*total).unwrap_or(0),
            other => return Err(StoreError::Protocol(format!("INCRBY answered {other:?}"))),
        };
        let before = total.saturating_sub(places.len() as u64);
        refused.extend(
            places
                .iter()
                .enumerate()
                .filter(|(n, _)| before + *n as u64 + 1 > rate.limit)
                .map(|(_, &place)| (place, window.retry_after_s)),
        );
    }
    Ok(refused)
}

/// A job the batch gave no answer (cannot happen: every step answers
/// each job it is given).
fn unanswered() -> StoreError {
    StoreError::Protocol("the batch gave this job no answer".to_owned())
}

#[cfg(test)]
mod tests {
    use jobgate_proto::SubmitRequest;

    use super::*;
    use crate::TraceContext;

    fn job(owner: &str) -> NewJob {
        NewJob {
            job_id: JobId::new(),
            owner: owner.to_owned(),
            request: serde_json::from_str::<SubmitRequest>(r#"{"kind":"echo","params":{}}"#)
                .expect("request"),
            queue: "default".to_owned(),
            trace: TraceContext::default(),
            legacy_trace_id: None,
        }
    }

    #[test]
    fn a_cluster_creates_per_slot() {
        let jobs: Vec<NewJob> = (0..40).map(|_| job("alice")).collect();
        let places: Vec<usize> = (0..40).step_by(2).collect();
        let groups = create_groups(&jobs, &places);
        for group in &groups {
            let slots: std::collections::HashSet<Slot> = group
                .iter()
                .map(|&p| Slot::for_key(keys::job(&jobs[p].job_id).as_bytes()))
                .collect();
            assert_eq!(slots.len(), 1);
        }
        let mut all = groups.concat();
        all.sort_unstable();
        assert_eq!(all, places);
    }

    #[test]
    fn optional_create_arguments_are_empty_when_unused() {
        let mut plain = job("alice");
        let args = create_args(&plain, 60, 100);
        assert_eq!(args[13..], [String::new(), String::new(), String::new()]);
        plain.legacy_trace_id = Some("ios-1".to_owned());
        assert_eq!(create_args(&plain, 60, 100)[13], "ios-1");
    }
}
