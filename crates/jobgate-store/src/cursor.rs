//! [`FeedCursor`]: what a [`Feed`](crate::Feed) decides, apart from the
//! Redis reads that feed it.
//!
//! Per job the cursor keeps its position — the `(epoch, seq)` of the last
//! event handed out — and a queue of events ready to send. It is told what
//! happened — a live event arrived, a history read returned, some channels'
//! delivery was interrupted — and answers what to do: hand the event out,
//! drop it as a duplicate, or read the history after some position because
//! events were missed. It never reads anything itself and awaits nothing,
//! so every rule of subscribe-then-read (de-duplication and order by
//! `(epoch, seq)`, gap detection, resync, the epoch rules) is unit-tested
//! here without Redis; `feed.rs` only carries the reads it asks for.
//!
//! Epochs: a failover can lose acknowledged writes; the job then starts a
//! new epoch whose first event (the record's `epoch_seq`) may reuse a seq
//! already handed out. An event of a higher epoch is therefore never a
//! duplicate, whatever its seq, and events of a lower epoch than the
//! position are void. Where a new epoch begins is only known from the
//! record, so a live event of a higher epoch is not handed out at once: the
//! history is read from the new epoch's start ([`epoch_restart`]).

use std::collections::{HashMap, HashSet, VecDeque};

use jobgate_proto::{EventPosition, JobId};

use crate::FeedEvent;

/// A history read the feed must make: `job_id`'s events after `after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reread {
    pub(crate) job_id: JobId,
    pub(crate) after: EventPosition,
}

/// What became of a live event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Live {
    /// The next event of its job: queued to be handed out.
    Deliver,
    /// At or before the job's position (handed out already, or void): dropped.
    Duplicate,
    /// Of a job this feed does not watch: dropped.
    Unwatched,
    /// Events between the job's position and this one may be missing — a
    /// skipped seq, or the first event seen of a new epoch. The event is
    /// dropped; the feed reads the history after `after` (which holds the
    /// missing events and this one) and passes it to [`FeedCursor::history`].
    Gap(Reread),
}

/// The per-job positions and the ready queue of one feed.
#[derive(Debug, Default)]
pub(crate) struct FeedCursor {
    /// The last event handed out, per watched job.
    positions: HashMap<JobId, EventPosition>,
    /// Events to hand out, in order.
    ready: VecDeque<FeedEvent>,
    /// Jobs whose history must be re-read before live events are awaited
    /// again: their channel's delivery was interrupted, or a read failed.
    stale: HashSet<JobId>,
}

impl FeedCursor {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Watches `job_id` from `after`: events of it already queued are
    /// dropped, and the next one handed out is the first after `after` (the
    /// caller passes the history after it, if any, to
    /// [`FeedCursor::history`]). Watching again from an earlier point starts
    /// over from there.
    pub(crate) fn watch(&mut self, job_id: JobId, after: EventPosition) {
        self.ready.retain(|event| event.job_id != job_id);
        self.stale.remove(&job_id);
        self.positions.insert(job_id, after);
    }

    /// Stops watching `job_id`; events of it already queued are dropped.
    pub(crate) fn unwatch(&mut self, job_id: &JobId) {
        self.positions.remove(job_id);
        self.stale.remove(job_id);
        self.ready.retain(|event| event.job_id != *job_id);
    }

    /// How many jobs the cursor follows.
    pub(crate) fn watching(&self) -> usize {
        self.positions.len()
    }

    pub(crate) fn is_watching(&self, job_id: &JobId) -> bool {
        self.positions.contains_key(job_id)
    }

    /// Whether events of `job_id` wait to be handed out.
    pub(crate) fn has_ready(&self, job_id: &JobId) -> bool {
        self.ready.iter().any(|event| event.job_id == *job_id)
    }

    /// A live event arrived.
    pub(crate) fn live(&mut self, event: FeedEvent) -> Live {
        let Some(position) = self.positions.get(&event.job_id).copied() else {
            return Live::Unwatched;
        };
        let at = event.position();
        if at <= position {
            return Live::Duplicate;
        }
        if at.epoch == position.epoch && at.seq == position.seq + 1 {
            self.deliver(event);
            return Live::Deliver;
        }
        Live::Gap(Reread {
            job_id: event.job_id,
            after: position,
        })
    }

    /// A history read returned `events` (in seq order): those after their
    /// job's position are queued, the others were handed out already, or
    /// are void (of an epoch the job has left).
    pub(crate) fn history(&mut self, events: impl IntoIterator<Item = FeedEvent>) {
        for event in events {
            let Some(position) = self.positions.get(&event.job_id).copied() else {
                continue;
            };
            if event.position() > position {
                self.deliver(event);
            }
        }
    }

    /// The delivery of `jobs` was interrupted: each watched one is re-read
    /// after its position ([`FeedCursor::rereads`]) before live events are
    /// awaited again.
    pub(crate) fn resync(&mut self, jobs: impl IntoIterator<Item = JobId>) {
        for job_id in jobs {
            if self.positions.contains_key(&job_id) {
                self.stale.insert(job_id);
            }
        }
    }

    /// The history reads a resync still needs.
    pub(crate) fn rereads(&self) -> Vec<Reread> {
        self.stale
            .iter()
            .filter_map(|job_id| {
                Some(Reread {
                    job_id: *job_id,
                    after: *self.positions.get(job_id)?,
                })
            })
            .collect()
    }

    /// `job_id`'s re-read was made and passed to [`FeedCursor::history`].
    pub(crate) fn reread_done(&mut self, job_id: &JobId) {
        self.stale.remove(job_id);
    }

    pub(crate) fn resync_pending(&self) -> bool {
        !self.stale.is_empty()
    }

    /// The next event to hand out.
    pub(crate) fn pop(&mut self) -> Option<FeedEvent> {
        self.ready.pop_front()
    }

    fn deliver(&mut self, event: FeedEvent) {
        self.positions.insert(event.job_id, event.position());
        self.ready.push_back(event);
    }
}

/// Where to read a job's history from again when a read after `after`
/// found the job's record in a later epoch than `after`'s: the new epoch's
/// events begin at `epoch_seq`, which may be at or before `after.seq`.
/// `None` when the read already covered them. One epoch further, the read
/// starts just before `epoch_seq` (or where it did, if earlier); further
/// still, the epochs in between began at seqs the record no longer names,
/// so the whole history is read.
pub(crate) fn epoch_restart(
    after: EventPosition,
    record_epoch: u64,
    epoch_seq: u64,
) -> Option<u64> {
    if record_epoch <= after.epoch {
        return None;
    }
    let from = if record_epoch == after.epoch + 1 {
        epoch_seq.saturating_sub(1)
    } else {
        0
    };
    (from < after.seq).then_some(from)
}

/// The first seq the history still holds when watching a job after
/// `after` (a seq) finds events missing from it: the read begins later than
/// `after + 1` (older events were trimmed to `history_max`), or it returned
/// nothing although the record's last seq is past `after`. `record_seq` is
/// that last seq (`None`: no such job, never truncated); `first_read` is
/// the first seq the read returned.
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

    fn at(epoch: u64, seq: u64) -> EventPosition {
        EventPosition::new(epoch, seq)
    }

    fn event_in(job_id: &str, epoch: u64, seq: u64, event: EventType) -> FeedEvent {
        FeedEvent {
            job_id: job(job_id),
            seq,
            epoch,
            event,
            ts: 1_796_000_000_000 + seq,
            json: Bytes::from(format!("{{\"seq\":{seq},\"epoch\":{epoch}}}")),
        }
    }

    fn event(job_id: &str, seq: u64, event: EventType) -> FeedEvent {
        event_in(job_id, 1, seq, event)
    }

    fn progress(seq: u64) -> FeedEvent {
        event(JOB, seq, EventType::Progress)
    }

    fn progress_in(epoch: u64, seq: u64) -> FeedEvent {
        event_in(JOB, epoch, seq, EventType::Progress)
    }

    /// The decision "read `id`'s history after `after`".
    fn reread(id: &str, after: EventPosition) -> Reread {
        Reread {
            job_id: job(id),
            after,
        }
    }

    /// Everything the cursor hands out, as `(job, epoch, seq)`.
    fn drain(cursor: &mut FeedCursor) -> Vec<(JobId, u64, u64)> {
        std::iter::from_fn(|| cursor.pop())
            .map(|event| (event.job_id, event.epoch, event.seq))
            .collect()
    }

    fn seqs(cursor: &mut FeedCursor) -> Vec<u64> {
        drain(cursor).into_iter().map(|(_, _, seq)| seq).collect()
    }

    fn positions(cursor: &mut FeedCursor) -> Vec<(u64, u64)> {
        drain(cursor)
            .into_iter()
            .map(|(_, epoch, seq)| (epoch, seq))
            .collect()
    }

    #[test]
    fn live_events_the_history_already_gave_are_dropped() {
        let mut cursor = FeedCursor::new();
        cursor.watch(job(JOB), EventPosition::START);
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
        let mut cursor = FeedCursor::new();
        cursor.watch(job(JOB), at(1, 2));
        assert_eq!(cursor.live(progress(3)), Live::Deliver);
        assert_eq!(cursor.live(progress(4)), Live::Deliver);
        // A re-read after 2 returns 3, 4 and 5: only 5 is new.
        cursor.history([progress(3), progress(4), progress(5)]);
        assert_eq!(seqs(&mut cursor), [3, 4, 5]);
    }

    #[test]
    fn a_skipped_seq_asks_for_the_history_after_the_position() {
        let mut cursor = FeedCursor::new();
        cursor.watch(job(JOB), EventPosition::START);
        assert_eq!(cursor.live(progress(1)), Live::Deliver);
        assert_eq!(cursor.live(progress(4)), Live::Gap(reread(JOB, at(1, 1))));
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
        let mut cursor = FeedCursor::new();
        cursor.watch(job(JOB), at(1, 7));
        assert_eq!(cursor.live(progress(9)), Live::Gap(reread(JOB, at(1, 7))));
    }

    #[test]
    fn a_gap_inside_a_later_epoch_is_still_a_gap() {
        let mut cursor = FeedCursor::new();
        cursor.watch(job(JOB), at(2, 5));
        assert_eq!(cursor.live(progress_in(2, 6)), Live::Deliver);
        assert_eq!(
            cursor.live(progress_in(2, 8)),
            Live::Gap(reread(JOB, at(2, 6)))
        );
    }

    #[test]
    fn a_higher_epoch_is_never_a_duplicate_whatever_its_seq() {
        let mut cursor = FeedCursor::new();
        cursor.watch(job(JOB), EventPosition::START);
        cursor.history([progress(1), progress(2), progress(3)]);
        // Seq 3 was lost in a failover; the promoted node wrote seq 3 again
        // in epoch 2. Where epoch 2 began is the record's to say: the live
        // event asks for the history after the position.
        assert_eq!(
            cursor.live(progress_in(2, 3)),
            Live::Gap(reread(JOB, at(1, 3)))
        );
        // The history from the new epoch's start: seq 1 and 2 survived.
        cursor.history([progress(1), progress(2), progress_in(2, 3)]);
        assert_eq!(positions(&mut cursor), [(1, 1), (1, 2), (1, 3), (2, 3)]);
        // Now (2, 3) is handed out: its live copy is a duplicate, (2, 4) next.
        assert_eq!(cursor.live(progress_in(2, 3)), Live::Duplicate);
        assert_eq!(cursor.live(progress_in(2, 4)), Live::Deliver);
        assert_eq!(positions(&mut cursor), [(2, 4)]);
    }

    #[test]
    fn events_of_an_epoch_the_job_left_are_void() {
        let mut cursor = FeedCursor::new();
        cursor.watch(job(JOB), at(2, 3));
        // A late copy of the lost write, and anything else of epoch 1.
        assert_eq!(cursor.live(progress_in(1, 4)), Live::Duplicate);
        cursor.history([progress_in(1, 3), progress_in(1, 4), progress_in(2, 4)]);
        assert_eq!(positions(&mut cursor), [(2, 4)]);
    }

    #[test]
    fn a_client_behind_a_new_epoch_gets_the_new_epochs_events_from_its_start() {
        let mut cursor = FeedCursor::new();
        // The client saw (1, 5); the failover kept seqs 1..=3, so epoch 2
        // began at seq 4 and (1, 4), (1, 5) are void.
        cursor.watch(job(JOB), at(1, 5));
        cursor.history([progress_in(2, 4), progress_in(2, 5), progress_in(2, 6)]);
        assert_eq!(positions(&mut cursor), [(2, 4), (2, 5), (2, 6)]);
    }

    #[test]
    fn a_read_that_found_a_new_epoch_starts_again_from_the_epochs_first_seq() {
        // After (1, 5); the record is in epoch 2 from seq 4: read after 3.
        assert_eq!(epoch_restart(at(1, 5), 2, 4), Some(3));
        // Epoch 2 began after 5: the read after 5 holds all of it.
        assert_eq!(epoch_restart(at(1, 5), 2, 6), None);
        // Epoch 2 began at 5 exactly: read after 4.
        assert_eq!(epoch_restart(at(1, 5), 2, 5), Some(4));
        // Same epoch: nothing more to read.
        assert_eq!(epoch_restart(at(2, 5), 2, 1), None);
        assert_eq!(epoch_restart(at(3, 5), 2, 1), None);
        // Two epochs on: where the one in between began is not known.
        assert_eq!(epoch_restart(at(1, 5), 3, 5), Some(0));
        // Nothing before the start.
        assert_eq!(epoch_restart(at(1, 0), 2, 1), None);
    }

    #[test]
    fn interrupted_jobs_are_re_read_after_their_positions() {
        let mut cursor = FeedCursor::new();
        cursor.watch(job(JOB), EventPosition::START);
        cursor.watch(job(OTHER_JOB), at(1, 5));
        assert_eq!(cursor.live(progress(1)), Live::Deliver);
        assert_eq!(cursor.live(progress(2)), Live::Deliver);
        assert!(!cursor.resync_pending());

        let unknown = job("0193a0b4-7c1e-7d4e-9a2b-1c2d3e4f5a6d");
        cursor.resync([job(JOB), unknown]);
        assert!(cursor.resync_pending());
        // Only the interrupted job, not OTHER_JOB; a job not watched is not read.
        assert_eq!(cursor.rereads(), [reread(JOB, at(1, 2))]);
        cursor.history([progress(3)]);
        cursor.reread_done(&job(JOB));
        assert!(!cursor.resync_pending());
        assert_eq!(seqs(&mut cursor), [1, 2, 3]);
        // Live copies of what the re-read gave are duplicates.
        assert_eq!(cursor.live(progress(3)), Live::Duplicate);
    }

    #[test]
    fn a_stale_job_stays_pending_until_its_read_is_done() {
        let mut cursor = FeedCursor::new();
        cursor.watch(job(JOB), EventPosition::START);
        // A gap, or a read that failed or was dropped half-way.
        cursor.resync([job(JOB)]);
        assert!(cursor.resync_pending());
        assert_eq!(cursor.rereads(), [reread(JOB, EventPosition::START)]);
        // Watching it again, or no more, settles it.
        cursor.unwatch(&job(JOB));
        assert!(!cursor.resync_pending());
    }

    #[test]
    fn watching_again_starts_over_from_the_new_point() {
        let mut cursor = FeedCursor::new();
        cursor.watch(job(JOB), EventPosition::START);
        cursor.watch(job(OTHER_JOB), EventPosition::START);
        cursor.history([progress(1), progress(2), progress(3)]);
        cursor.history([event(OTHER_JOB, 1, EventType::Queued)]);
        cursor.watch(job(JOB), at(1, 1));
        // JOB's queued events are dropped, OTHER_JOB's kept.
        cursor.history([progress(2), progress(3)]);
        assert_eq!(
            drain(&mut cursor),
            [(job(OTHER_JOB), 1, 1), (job(JOB), 1, 2), (job(JOB), 1, 3)]
        );
    }

    #[test]
    fn an_unwatched_job_gets_nothing_more() {
        let mut cursor = FeedCursor::new();
        assert_eq!(cursor.live(progress(1)), Live::Unwatched);
        cursor.watch(job(JOB), EventPosition::START);
        cursor.history([progress(1)]);
        assert!(cursor.is_watching(&job(JOB)));
        cursor.unwatch(&job(JOB));
        assert!(!cursor.is_watching(&job(JOB)));
        assert_eq!(cursor.watching(), 0);
        assert_eq!(cursor.live(progress(2)), Live::Unwatched);
        cursor.history([progress(2)]);
        assert!(
            seqs(&mut cursor).is_empty(),
            "its queued events are dropped, its history ignored"
        );
    }

    #[test]
    fn an_ended_job_stays_watched_until_the_feed_lets_it_go() {
        let mut cursor = FeedCursor::new();
        cursor.watch(job(JOB), EventPosition::START);
        cursor.history([event(JOB, 1, EventType::Cancelled)]);
        assert!(cursor.is_watching(&job(JOB)));
        assert_eq!(
            cursor.live(event(JOB, 1, EventType::Cancelled)),
            Live::Duplicate
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
