//! The owner's stream (`GET /v1/events`): every job of one owner, each
//! followed like a single job.
//!
//! No channel carries every event of an owner (events are published in
//! their job's slot only). The stream subscribes to the owner's channel,
//! where the gateway that creates (or re-runs) a job publishes its id,
//! then reads the owner's index and follows each unfinished job: subscribe
//! to its channel, then read its history after the right position — so per
//! job nothing is missed or repeated. A job named on the owner's channel is
//! followed from its first event (a re-run from where it ended). A job's
//! following ends after its terminal event. When the owner's channel itself
//! was interrupted, the index is read again for the jobs indexed since the
//! stream opened, so a job created meanwhile is not missed.
//!
//! One stream follows at most [`OWNER_FEED_JOBS`] jobs at once; past that
//! the one it has followed longest is dropped (its later events are not
//! sent on this stream). The order of events across jobs is the order they
//! arrive in, as it always was; within a job it is `(epoch, seq)`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::pin::Pin;

use futures_util::StreamExt;
use jobgate_proto::{EventPosition, JobId, JobStatus};
use tokio_util::sync::WaitForCancellationFutureOwned;

use super::{Feed, FeedEvent, history_events, read_after};
use crate::{EventHub, HubMessage, JobStore, ListQuery, StoreError, Subscription, keys};

/// The most jobs one owner stream follows at once, and the most index
/// entries it reads when it opens (the owner's newest jobs): a stream's
/// subscriptions and memory stay bounded however many jobs its owner runs.
pub(crate) const OWNER_FEED_JOBS: usize = 1000;
/// The most recent jobs a reconnecting stream replays from their first
/// event (`Last-Event-ID`).
const OWNER_REPLAY_JOBS: usize = 200;
/// How far before the stream opened a re-read of the index looks, for
/// index entries stamped by a gateway whose clock is behind this one's.
const CLOCK_MARGIN_MS: u64 = 60_000;
/// History reads made at once when the stream takes up many jobs.
const CONCURRENT_READS: usize = 16;

/// An owner stream's own part of a feed.
#[derive(Debug)]
pub(super) struct OwnerFollow {
    owner: String,
    /// Only the owner's channel: its messages are job ids.
    subscription: Subscription,
    overflowed: Pin<Box<WaitForCancellationFutureOwned>>,
    jobs: FollowedJobs,
    /// When the stream opened (ms, this gateway's clock).
    opened_at_ms: u64,
    /// Job ids named on the owner's channel, not handled yet.
    notices: VecDeque<JobId>,
    /// The owner's channel was interrupted: the index must be read again.
    reread_index: bool,
}

/// What waiting on the owner's channel ended with.
pub(super) enum Waited {
    /// The owner's subscription was cut off.
    Overflowed,
    /// A message, or `None` once the hub has stopped.
    Message(Option<HubMessage>),
}

/// Waits on the owner's channel; never ends for a feed without one.
pub(super) async fn wait(owner: &mut Option<Box<OwnerFollow>>) -> Waited {
    let Some(owner) = owner else {
        return std::future::pending().await;
    };
    tokio::select! {
        biased;
        () = owner.overflowed.as_mut() => Waited::Overflowed,
        message = owner.subscription.recv() => Waited::Message(message),
    }
}

impl Feed {
    /// A feed of every job of `owner`: the unfinished ones among its newest
    /// [`OWNER_FEED_JOBS`] from where they are now, then every new one from
    /// its first event. With `replay_since_ms` (a reconnect's
    /// `Last-Event-ID`) its newest [`OWNER_REPLAY_JOBS`] jobs indexed within
    /// the retention period before it are also read from their first event;
    /// the caller drops the events stamped before it.
    pub async fn for_owner(
        store: JobStore,
        hub: EventHub,
        owner: &str,
        replay_since_ms: Option<u64>,
    ) -> Result<Self, StoreError> {
        let mut feed = Self::new(store, hub);
        let mut subscription = feed.hub.subscription();
        // Subscribed first: a job created from now on is named there.
        feed.hub
            .watch(&mut subscription, &keys::owner_channel(owner))
            .await?;
        let overflowed = Box::pin(subscription.overflowed().clone().cancelled_owned());
        feed.owner = Some(Box::new(OwnerFollow {
            owner: owner.to_owned(),
            subscription,
            overflowed,
            jobs: FollowedJobs::new(OWNER_FEED_JOBS),
            opened_at_ms: now_ms(),
            notices: VecDeque::new(),
            reread_index: false,
        }));
        let mut plan: Vec<(JobId, EventPosition)> = Vec::new();
        if let Some(since) = replay_since_ms {
            let retention = feed.store.settings().retention.as_millis() as u64;
            let window_start = since.saturating_sub(retention);
            for job_id in feed
                .store
                .owner_jobs_since(owner, window_start, OWNER_REPLAY_JOBS)
                .await?
            {
                plan.push((job_id, EventPosition::START));
            }
        }
        let unfinished = feed
            .store
            .list_jobs(
                owner,
                &ListQuery {
                    statuses: vec![JobStatus::Queued, JobStatus::Running],
                    kind: None,
                    limit: OWNER_FEED_JOBS,
                    after: None,
                    scan_max: OWNER_FEED_JOBS,
                },
            )
            .await?;
        // Oldest first, so that the newest stay followed within the limit.
        for snapshot in unfinished.jobs.into_iter().rev() {
            if !plan.iter().any(|(job_id, _)| *job_id == snapshot.job_id) {
                plan.push((snapshot.job_id, snapshot.position()));
            }
        }
        feed.follow_all(plan).await?;
        Ok(feed)
    }

    /// Whether the owner's part has notices or an index read to handle.
    pub(super) fn owner_has_work(&self) -> bool {
        self.owner
            .as_ref()
            .is_some_and(|owner| owner.reread_index || !owner.notices.is_empty())
    }

    /// A message on the owner's channel: a job id to follow, or word that
    /// the channel was interrupted.
    pub(super) fn owner_message(&mut self, message: HubMessage) {
        let Some(owner) = &mut self.owner else {
            return;
        };
        match message {
            HubMessage::Event(payload) => {
                let Some(job_id) = std::str::from_utf8(&payload)
                    .ok()
                    .and_then(|text| text.trim().parse::<JobId>().ok())
                else {
                    tracing::warn!(payload = %String::from_utf8_lossy(&payload), "dropping a malformed job notice");
                    return;
                };
                if self.cursor.is_watching(&job_id) {
                    // Followed already (found in the index as the stream
                    // opened, or re-run before its end was handed out):
                    // looked at again once it has ended.
                    owner.jobs.notice_while_followed(job_id);
                } else if !owner.notices.contains(&job_id) {
                    owner.notices.push_back(job_id);
                }
            }
            HubMessage::Resync => {
                if !owner.subscription.take_stale().is_empty() {
                    owner.reread_index = true;
                }
            }
        }
    }

    /// Handles what the owner's channel asked for. Whatever fails stays to
    /// be done on the next try.
    pub(super) async fn owner_catch_up(&mut self) -> Result<(), StoreError> {
        let Some(owner) = &self.owner else {
            return Ok(());
        };
        if owner.reread_index {
            let since = owner.opened_at_ms.saturating_sub(CLOCK_MARGIN_MS);
            let indexed = self
                .store
                .owner_jobs_since(&owner.owner, since, OWNER_FEED_JOBS)
                .await?;
            let plan = self.take_up_points(indexed);
            self.follow_all(plan).await?;
            if let Some(owner) = &mut self.owner {
                owner.reread_index = false;
            }
        }
        while let Some(job_id) = self.owner.as_ref().and_then(|o| o.notices.front().copied()) {
            let plan = self.take_up_points([job_id]);
            self.follow_all(plan).await?;
            if let Some(owner) = &mut self.owner {
                owner.notices.pop_front();
            }
        }
        Ok(())
    }

    /// A followed job's terminal event is being handed out: unless more of
    /// it is queued (a re-run read with it), its following ends there.
    pub(super) fn followed_job_ended(&mut self, event: &FeedEvent) {
        if self.cursor.has_ready(&event.job_id) {
            return;
        }
        self.unwatch(&event.job_id);
        if let Some(owner) = &mut self.owner
            && owner.jobs.ended(event.job_id, event.position())
        {
            // Named on the owner's channel while followed: look again.
            owner.notices.push_back(event.job_id);
        }
    }

    /// Where to take up each of `jobs` not followed already.
    fn take_up_points(&self, jobs: impl IntoIterator<Item = JobId>) -> Vec<(JobId, EventPosition)> {
        let Some(owner) = &self.owner else {
            return Vec::new();
        };
        jobs.into_iter()
            .filter(|job_id| !self.cursor.is_watching(job_id))
            .map(|job_id| (job_id, owner.jobs.resume_point(&job_id)))
            .collect()
    }

    /// Follows each of `jobs` like a single job: subscribed to (all at
    /// once), then each one's history read after its position. A job that
    /// is not the owner's, is gone, or ended with nothing after the
    /// position is let go again.
    async fn follow_all(&mut self, jobs: Vec<(JobId, EventPosition)>) -> Result<(), StoreError> {
        if jobs.is_empty() {
            return Ok(());
        }
        let subscribed: Vec<_> = jobs
            .iter()
            .map(|(job_id, _)| {
                self.hub
                    .watch(&mut self.subscription, &keys::job_channel(job_id))
            })
            .collect();
        let confirmed = futures_util::future::join_all(subscribed).await;
        if let Some(Err(error)) = confirmed.into_iter().find(Result::is_err) {
            for (job_id, _) in &jobs {
                if !self.cursor.is_watching(job_id) {
                    self.hub
                        .unwatch(&mut self.subscription, &keys::job_channel(job_id));
                }
            }
            return Err(error);
        }
        let store = self.store.clone();
        let mut reads = futures_util::stream::iter(jobs)
            .map(|(job_id, after)| {
                let store = store.clone();
                async move { (job_id, after, read_after(&store, &job_id, after).await) }
            })
            .buffered(CONCURRENT_READS);
        let mut failed = None;
        while let Some((job_id, after, read)) = reads.next().await {
            let read = match read {
                Ok(read) => read,
                Err(error) => {
                    self.hub
                        .unwatch(&mut self.subscription, &keys::job_channel(&job_id));
                    failed = Some(error);
                    continue;
                }
            };
            let Some(owner) = &mut self.owner else {
                break;
            };
            let finished = match &read.record {
                Some(record) if record.owner == owner.owner => {
                    record.snapshot.status.is_terminal() && record.position() <= after
                }
                // Not the owner's (or gone): never followed.
                _ => {
                    self.hub
                        .unwatch(&mut self.subscription, &keys::job_channel(&job_id));
                    continue;
                }
            };
            if finished {
                self.hub
                    .unwatch(&mut self.subscription, &keys::job_channel(&job_id));
                owner.jobs.ended(job_id, after);
                continue;
            }
            let dropped = owner.jobs.follow(job_id);
            self.cursor.watch(job_id, after);
            self.cursor.history(history_events(job_id, read.events));
            if let Some(dropped) = dropped {
                tracing::debug!(owner = %owner.owner, job_id = %dropped, "owner stream follows as many jobs as it may; the oldest is dropped");
                self.unwatch(&dropped);
            }
        }
        match failed {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

/// Which jobs an owner stream follows, in the order it took them up, and
/// where the ones that ended were left. Plain bookkeeping: the feed asks
/// and tells, this answers.
#[derive(Debug)]
pub(super) struct FollowedJobs {
    /// Followed jobs, the longest-followed first.
    followed: VecDeque<JobId>,
    /// Followed jobs named again on the owner's channel.
    noticed: HashSet<JobId>,
    /// Where jobs that ended were left (a re-run is taken up after it),
    /// the oldest first in `ended_order`.
    ended: HashMap<JobId, EventPosition>,
    ended_order: VecDeque<JobId>,
    limit: usize,
}

impl FollowedJobs {
    pub(super) fn new(limit: usize) -> Self {
        Self {
            followed: VecDeque::new(),
            noticed: HashSet::new(),
            ended: HashMap::new(),
            ended_order: VecDeque::new(),
            limit,
        }
    }

    /// Starts following `job_id`; returns the job to stop following to
    /// stay within the limit.
    pub(super) fn follow(&mut self, job_id: JobId) -> Option<JobId> {
        if self.followed.contains(&job_id) {
            return None;
        }
        self.followed.push_back(job_id);
        if self.followed.len() <= self.limit {
            return None;
        }
        let dropped = self.followed.pop_front()?;
        self.noticed.remove(&dropped);
        Some(dropped)
    }

    /// `job_id`, followed, was named on the owner's channel again.
    pub(super) fn notice_while_followed(&mut self, job_id: JobId) {
        if self.followed.contains(&job_id) {
            self.noticed.insert(job_id);
        }
    }

    /// `job_id` ended at `position`: no longer followed. True when it was
    /// named on the owner's channel while followed, so it must be looked at
    /// again (it may have been re-run).
    pub(super) fn ended(&mut self, job_id: JobId, position: EventPosition) -> bool {
        self.followed.retain(|followed| *followed != job_id);
        if self.ended.insert(job_id, position).is_none() {
            self.ended_order.push_back(job_id);
        }
        while self.ended_order.len() > self.limit {
            if let Some(oldest) = self.ended_order.pop_front() {
                self.ended.remove(&oldest);
            }
        }
        self.noticed.remove(&job_id)
    }

    /// Where to take `job_id` up: after where it ended, or from its start.
    pub(super) fn resume_point(&self, job_id: &JobId) -> EventPosition {
        self.ended
            .get(job_id)
            .copied()
            .unwrap_or(EventPosition::START)
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jobs(n: usize) -> Vec<JobId> {
        (0..n).map(|_| JobId::new()).collect()
    }

    #[test]
    fn past_the_limit_the_longest_followed_job_is_dropped() {
        let mut followed = FollowedJobs::new(2);
        let ids = jobs(3);
        assert_eq!(followed.follow(ids[0]), None);
        assert_eq!(followed.follow(ids[1]), None);
        assert_eq!(followed.follow(ids[1]), None, "followed already");
        assert_eq!(followed.follow(ids[2]), Some(ids[0]));
    }

    #[test]
    fn a_job_that_ended_is_taken_up_after_its_end_and_others_from_the_start() {
        let mut followed = FollowedJobs::new(2);
        let ids = jobs(4);
        followed.follow(ids[0]);
        assert!(!followed.ended(ids[0], EventPosition::new(1, 5)));
        assert_eq!(followed.resume_point(&ids[0]), EventPosition::new(1, 5));
        assert_eq!(followed.resume_point(&ids[1]), EventPosition::START);
        // Ended positions are bounded too: the oldest is forgotten.
        followed.ended(ids[1], EventPosition::new(1, 2));
        followed.ended(ids[2], EventPosition::new(1, 2));
        assert_eq!(followed.resume_point(&ids[0]), EventPosition::START);
        assert_eq!(followed.resume_point(&ids[2]), EventPosition::new(1, 2));
        // Ending frees a place.
        followed.follow(ids[1]);
        followed.follow(ids[3]);
        followed.ended(ids[1], EventPosition::new(1, 9));
        assert_eq!(followed.follow(ids[2]), None);
    }

    #[test]
    fn a_job_named_again_while_followed_is_looked_at_once_it_ends() {
        let mut followed = FollowedJobs::new(2);
        let ids = jobs(2);
        followed.notice_while_followed(ids[0]);
        followed.follow(ids[0]);
        followed.follow(ids[1]);
        followed.notice_while_followed(ids[0]);
        assert!(!followed.ended(ids[1], EventPosition::new(1, 3)));
        assert!(followed.ended(ids[0], EventPosition::new(1, 4)));
        assert!(!followed.ended(ids[0], EventPosition::new(1, 4)), "once");
    }
}
