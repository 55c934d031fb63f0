//! [`FeedCursor`]: what a [`Feed`](crate::Feed) decides, apart from the
//! Redis reads that feed it.
//!
//! Per job the cursor keeps its position, the last seq handed out, and a
//! queue of events ready to send. It is told what happened — a live event
//! arrived, a history read returned, the pub/sub link came back — and
//! answers what to do: hand the event out, drop it as a duplicate, or read
//! the history after some seq because events were missed. It never reads
//! anything itself and awaits nothing, so every rule of subscribe-then-read
//! (de-duplication by seq, gap detection, ordering, resync) is unit-tested
//! here without Redis; `feed.rs` only carries the reads it asks for.

use std::collections::{HashMap, VecDeque};

use jobgate_proto::JobId;

use crate::FeedEvent;

/// A history read the feed must make: `job_id`'s events after `after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reread {
    pub(crate) job_id: JobId,
    pub(crate) after: u64,
}

/// What became of a live event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Live {
    /// The next event of its job: queued to be handed out.
    Deliver,
    /// Its seq was handed out already (by a history read, or earlier): dropped.
    Duplicate,
    /// Of a job this feed does not watch: dropped.
    Unwatched,
    /// Seqs between the job's position and this event were missed. The event
    /// is dropped; the feed reads the history after `after` (which holds the
    /// missed events and this one) and passes it to [`FeedCursor::history`].
    Gap(Reread),
}

/// The per-job positions and the ready queue of one feed.
#[derive(Debug)]
pub(crate) struct FeedCursor {
    /// The last seq handed out, per watched job.
    positions: HashMap<JobId, u64>,
    /// An owner feed takes any job's events (they come on the owner's
    /// channel) and forgets a job after its terminal event.
    follows_owner: bool,
    /// Events to hand out, in order.
    ready: VecDeque<FeedEvent>,
    /// Every job must be re-read before waiting for live events again: the
    /// pub/sub link was re-established, or a re-read failed.
    resync_pending: bool,
}

impl FeedCursor {
    /// A cursor of explicitly watched jobs.
    pub(crate) fn for_jobs() -> Self {
        Self::new(false)
    }

    /// A cursor of every job of one owner.
    pub(crate) fn for_owner() -> Self {
        Self::new(true)
    }

    fn new(follows_owner: bool) -> Self {
        Self {
            positions: HashMap::new(),
            follows_owner,
            ready: VecDeque::new(),
            resync_pending: false,
        }
    }

    /// Watches `job_id` from `after`: events of it already queued are
    /// dropped, and the next one handed out is `after + 1` (the caller
    /// passes the history after `after`, if any, to [`FeedCursor::history`]).
    /// Watching again from an earlier point starts over from there.
    pub(crate) fn watch(&mut self, job_id: JobId, after: u64) {
        self.ready.retain(|event| event.job_id != job_id);
        self.positions.insert(job_id, after);
    }

    /// Takes `job_id` in from `after` unless it is followed already (an
    /// owner feed replaying after a reconnect): a known position is kept.
    pub(crate) fn seed(&mut self, job_id: JobId, after: u64) {
        self.positions.entry(job_id).or_insert(after);
    }

    /// Stops watching `job_id`; events of it already queued are dropped.
    pub(crate) fn unwatch(&mut self, job_id: &JobId) {
        self.positions.remove(job_id);
        self.ready.retain(|event| event.job_id != *job_id);
    }

    /// How many jobs the cursor follows.
    pub(crate) fn watching(&self) -> usize {
        self.positions.len()
    }

    pub(crate) fn is_watching(&self, job_id: &JobId) -> bool {
        self.positions.contains_key(job_id)
    }

    /// A live event arrived.
    pub(crate) fn live(&mut self, event: FeedEvent) -> Live {
        let position = match self.positions.get(&event.job_id) {
            Some(position) => *position,
            // An owner feed meets a job for the first time: start from here.
            None if self.follows_owner => event.seq.saturating_sub(1),
            None => return Live::Unwatched,
        };
        if event.seq <= position {
            return Live::Duplicate;
        }
        if event.seq > position + 1 {
            return Live::Gap(Reread {
                job_id: event.job_id,
                after: position,
            });
        }
        self.deliver(event);
        Live::Deliver
    }

    /// A history read returned `events` (in seq order): those after their
    /// job's position are queued, the others were handed out already.
    pub(crate) fn history(&mut self, events: impl IntoIterator<Item = FeedEvent>) {
        for event in events {
            let position = self.positions.get(&event.job_id).copied().unwrap_or(0);
            if event.seq > position {
                self.deliver(event);
            }
        }
    }

    /// The pub/sub link was re-established (or an earlier re-read failed):
    /// anything may have been missed, so every followed job is re-read after
    /// its position. The resync stays pending until [`FeedCursor::resynced`].
    pub(crate) fn resync(&mut self) -> Vec<Reread> {
        self.resync_pending = true;
        self.positions
            .iter()
            .map(|(job_id, after)| Reread {
                job_id: *job_id,
                after: *after,
            })
            .collect()
    }

    /// Every re-read [`FeedCursor::resync`] asked for was made and passed to
    /// [`FeedCursor::history`].
    pub(crate) fn resynced(&mut self) {
        self.resync_pending = false;
    }

    /// A read failed: everything is re-read before live events are awaited
    /// again.
    pub(crate) fn read_failed(&mut self) {
        self.resync_pending = true;
    }

    pub(crate) fn resync_pending(&self) -> bool {
        self.resync_pending
    }

    /// The next event to hand out.
    pub(crate) fn pop(&mut self) -> Option<FeedEvent> {
        self.ready.pop_front()
    }

    fn deliver(&mut self, event: FeedEvent) {
        if self.follows_owner && event.event.is_terminal() {
            // Nothing follows a terminal event: an owner feed forgets the job
            // so its memory stays bounded by the jobs in flight.
            self.positions.remove(&event.job_id);
        } else {
            self.positions.insert(event.job_id, event.seq);
        }
        self.ready.push_back(event);
    }
}

/// The first seq the history still holds when watching a job after `after`
/// finds events missing from it: the read begins later than `after + 1`
/// (older events were trimmed to `history_max`), or it returned nothing
/// although the record's last seq is past `after`. `record_seq` is that
/// last seq (`None`: no such job, never truncated); `first_read` is the
/// first seq the read returned.
pub(crate) fn truncated_from(
    after: u64,
    record_seq: Option<u64>,
    first_read: Option<u64>,
) -> Option<u64> {
    match (record_seq, first_read) {
        (Some(_), Some(first)) if first > after + 1 => Some(first),
        (Some(last), None) if last > after => Some(last + 1),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use jobgate_proto::EventType;

    use super::*;

    const JOB: &str = "0193a0b4-7c1e-7d4e-9a2b-1c2d3e4f5a6b";
    const OTHER_JOB: &str = "0193a0b4-7c1e-7d4e-9a2b-1c2d3e4f5a6c";

    fn job(id: &str) -> JobId {
        id.parse().expect("a job id")
    }

    fn event(job_id: &str, seq: u64, event: EventType) -> FeedEvent {
        FeedEvent {
            job_id: job(job_id),
            seq,
            event,
            ts: 1_796_000_000_000 + seq,
            json: Bytes::from(format!("{{\"seq\":{seq}}}")),
        }
    }

    fn progress(seq: u64) -> FeedEvent {
        event(JOB, seq, EventType::Progress)
    }

    /// The decision "read `id`'s history after `after`".
    fn reread(id: &str, after: u64) -> Reread {
        Reread {
            job_id: job(id),
            after,
        }
    }

    /// Everything the cursor hands out, as `(job, seq)`.
    fn drain(cursor: &mut FeedCursor) -> Vec<(JobId, u64)> {
        std::iter::from_fn(|| cursor.pop())
            .map(|event| (event.job_id, event.seq))
            .collect()
    }

    fn seqs(cursor: &mut FeedCursor) -> Vec<u64> {
        drain(cursor).into_iter().map(|(_, seq)| seq).collect()
    }

    #[test]
    fn live_events_the_history_already_gave_are_dropped() {
        let mut cursor = FeedCursor::for_jobs();
        cursor.watch(job(JOB), 0);
        // Subscribed first, then read: the history holds 1 and 2, and the
        // same events arrive live afterwards.
        cursor.history([progress(1), progress(2)]);
        assert_eq!(cursor.live(progress(1)), Live::Duplicate);
        assert_eq!(cursor.live(progress(2)), Live::Duplicate);
        assert_eq!(cursor.live(progress(3)), Live::Deliver);
        assert_eq!(cursor.live(progress(3)), Live::Duplicate);
        assert_eq!(seqs(&mut cursor), [1, 2, 3]);
    }

    #[test]
    fn history_events_already_handed_out_live_are_dropped() {
        let mut cursor = FeedCursor::for_jobs();
        cursor.watch(job(JOB), 2);
        assert_eq!(cursor.live(progress(3)), Live::Deliver);
        assert_eq!(cursor.live(progress(4)), Live::Deliver);
        // A re-read after 2 returns 3, 4 and 5: only 5 is new.
        cursor.history([progress(3), progress(4), progress(5)]);
        assert_eq!(seqs(&mut cursor), [3, 4, 5]);
    }

    #[test]
    fn a_skipped_seq_asks_for_the_history_after_the_position() {
        let mut cursor = FeedCursor::for_jobs();
        cursor.watch(job(JOB), 0);
        assert_eq!(cursor.live(progress(1)), Live::Deliver);
        assert_eq!(cursor.live(progress(4)), Live::Gap(reread(JOB, 1)));
        // The event that revealed the gap is not handed out before the
        // missing ones: it comes again with the history.
        assert_eq!(seqs(&mut cursor), [1]);
        cursor.history([progress(2), progress(3), progress(4)]);
        assert_eq!(cursor.live(progress(4)), Live::Duplicate);
        assert_eq!(cursor.live(progress(5)), Live::Deliver);
        assert_eq!(seqs(&mut cursor), [2, 3, 4, 5]);
    }

    #[test]
    fn a_gap_right_after_watching_is_measured_from_after() {
        let mut cursor = FeedCursor::for_jobs();
        cursor.watch(job(JOB), 7);
        assert_eq!(cursor.live(progress(9)), Live::Gap(reread(JOB, 7)));
    }

    #[test]
    fn a_re_established_link_re_reads_every_job_after_its_position() {
        let mut cursor = FeedCursor::for_jobs();
        cursor.watch(job(JOB), 0);
        cursor.watch(job(OTHER_JOB), 5);
        assert_eq!(cursor.live(progress(1)), Live::Deliver);
        assert_eq!(cursor.live(progress(2)), Live::Deliver);
        assert!(!cursor.resync_pending());

        let mut rereads = cursor.resync();
        rereads.sort_by_key(|read| read.after);
        assert_eq!(rereads, [reread(JOB, 2), reread(OTHER_JOB, 5)]);
        // Until every re-read is in, the feed must not wait for live events.
        assert!(cursor.resync_pending());
        cursor.history([progress(3)]);
        cursor.history([event(OTHER_JOB, 6, EventType::Completed)]);
        cursor.resynced();
        assert!(!cursor.resync_pending());
        assert_eq!(
            drain(&mut cursor),
            [
                (job(JOB), 1),
                (job(JOB), 2),
                (job(JOB), 3),
                (job(OTHER_JOB), 6)
            ]
        );
        // Live copies of what the re-read gave are duplicates.
        assert_eq!(cursor.live(progress(3)), Live::Duplicate);
    }

    #[test]
    fn a_failed_read_keeps_a_resync_pending() {
        let mut cursor = FeedCursor::for_jobs();
        cursor.watch(job(JOB), 0);
        cursor.read_failed();
        assert!(cursor.resync_pending());
        // A resync that fails part-way stays pending too.
        let rereads = cursor.resync();
        assert_eq!(rereads.len(), 1);
        assert!(cursor.resync_pending());
    }

    #[test]
    fn watching_again_starts_over_from_the_new_point() {
        let mut cursor = FeedCursor::for_jobs();
        cursor.watch(job(JOB), 0);
        cursor.watch(job(OTHER_JOB), 0);
        cursor.history([progress(1), progress(2), progress(3)]);
        cursor.history([event(OTHER_JOB, 1, EventType::Queued)]);
        cursor.watch(job(JOB), 1);
        // JOB's queued events are dropped, OTHER_JOB's kept.
        cursor.history([progress(2), progress(3)]);
        assert_eq!(
            drain(&mut cursor),
            [(job(OTHER_JOB), 1), (job(JOB), 2), (job(JOB), 3)]
        );
    }

    #[test]
    fn an_unwatched_job_gets_nothing_more() {
        let mut cursor = FeedCursor::for_jobs();
        assert_eq!(cursor.live(progress(1)), Live::Unwatched);
        cursor.watch(job(JOB), 0);
        cursor.history([progress(1)]);
        assert!(cursor.is_watching(&job(JOB)));
        cursor.unwatch(&job(JOB));
        assert!(!cursor.is_watching(&job(JOB)));
        assert_eq!(cursor.watching(), 0);
        assert_eq!(cursor.live(progress(2)), Live::Unwatched);
        assert!(
            seqs(&mut cursor).is_empty(),
            "its queued events are dropped"
        );
    }

    #[test]
    fn an_owner_feed_follows_new_jobs_and_forgets_ended_ones() {
        let mut cursor = FeedCursor::for_owner();
        // A job first met in the middle starts from there.
        assert_eq!(cursor.live(progress(4)), Live::Deliver);
        assert_eq!(cursor.live(progress(4)), Live::Duplicate);
        assert_eq!(cursor.live(progress(6)), Live::Gap(reread(JOB, 4)));
        cursor.history([progress(5), event(JOB, 6, EventType::Completed)]);
        assert_eq!(cursor.watching(), 0, "an ended job is forgotten");
        assert_eq!(seqs(&mut cursor), [4, 5, 6]);
    }

    #[test]
    fn a_jobs_feed_keeps_an_ended_job() {
        let mut cursor = FeedCursor::for_jobs();
        cursor.watch(job(JOB), 0);
        cursor.history([event(JOB, 1, EventType::Cancelled)]);
        assert!(cursor.is_watching(&job(JOB)));
        assert_eq!(
            cursor.live(event(JOB, 1, EventType::Cancelled)),
            Live::Duplicate
        );
    }

    #[test]
    fn seeding_keeps_a_known_position() {
        let mut cursor = FeedCursor::for_owner();
        assert_eq!(cursor.live(progress(3)), Live::Deliver);
        cursor.seed(job(JOB), 0);
        cursor.history([progress(1), progress(2), progress(3), progress(4)]);
        cursor.seed(job(OTHER_JOB), 2);
        cursor.history([event(OTHER_JOB, 3, EventType::Started)]);
        assert_eq!(
            drain(&mut cursor),
            [(job(JOB), 3), (job(JOB), 4), (job(OTHER_JOB), 3)]
        );
    }

    #[test]
    fn a_history_cut_short_is_reported_from_its_first_retained_seq() {
        // Events 1..=3 were trimmed: the read after 0 starts at 4.
        assert_eq!(truncated_from(0, Some(9), Some(4)), Some(4));
        // The read starts right after `after`: nothing is missing.
        assert_eq!(truncated_from(3, Some(9), Some(4)), None);
        // The record says 9 events exist but none after 5 are left.
        assert_eq!(truncated_from(5, Some(9), None), Some(10));
        // Nothing after 9 exists yet.
        assert_eq!(truncated_from(9, Some(9), None), None);
        // No record: no such job (or not yet created), never truncated.
        assert_eq!(truncated_from(0, None, Some(4)), None);
        assert_eq!(truncated_from(0, None, None), None);
    }
}
