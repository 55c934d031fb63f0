//! [`Feed`]: the events one client connection should see, in order, each
//! once.
//!
//! Subscribe-then-read: [`Feed::watch`] first subscribes to the job's live
//! channel (confirmed by Redis), then reads the history after the client's
//! position. Live events that arrive meanwhile wait in the subscription's
//! queue; the per-job position (the last `(epoch, seq)` handed out) drops
//! whatever the history already gave. A live event that skips a seq or
//! opens a new epoch, or a [`HubMessage::Resync`] naming the job's channel
//! after its delivery was interrupted, makes the feed read the missing
//! events from the history, so no event falls between.
//!
//! Those decisions are the cursor's (`cursor.rs`, Redis-free and unit-tested
//! there); this module is the I/O around it: it subscribes, makes the
//! history reads the cursor asks for, and turns replies into its inputs.
//! An owner's stream (`GET /v1/events`) follows the owner's jobs one by one
//! the same way (`feed/owner.rs`).

mod owner;

use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use jobgate_proto::{EventHeader, EventPosition, EventType, JobId};
use tokio_util::sync::WaitForCancellationFutureOwned;

use self::owner::OwnerFollow;
use crate::cursor::{self, FeedCursor, Live, Reread};
use crate::keys;
use crate::store::StoredEvent;
use crate::{EventHub, HubMessage, JobRecord, JobStore, Published, StoreError, Subscription};

/// Pause before reading histories again after Redis could not be read.
const RESYNC_PAUSE: Duration = Duration::from_millis(500);

/// One event ready to send, with the fields the transport needs.
#[derive(Debug, Clone)]
pub struct FeedEvent {
    pub job_id: JobId,
    pub seq: u64,
    /// The job's epoch when the event was written.
    pub epoch: u64,
    pub event: EventType,
    pub ts: u64,
    /// The event JSON, verbatim.
    pub json: Bytes,
}

impl FeedEvent {
    /// Where the event stands in its job's order.
    pub fn position(&self) -> EventPosition {
        EventPosition::new(self.epoch, self.seq)
    }
}

/// What [`Feed::next`] yields.
#[derive(Debug)]
pub enum FeedItem {
    Event(FeedEvent),
    /// The connection fell too far behind and was cut off from live events.
    Overflowed,
    /// Redis could not be read to fill a gap or to resync; the feed keeps
    /// trying (see [`Feed::next`]).
    Unavailable(StoreError),
}

/// The result of starting to watch a job.
#[derive(Debug)]
pub struct WatchStart {
    /// The job now (after subscribing), or `None` when there is no such job.
    pub record: Option<JobRecord>,
    /// The first seq the history still holds, when events after the
    /// client's position were cut from it.
    pub truncated_from: Option<u64>,
}

/// Events of a set of jobs (or of all of one owner's jobs) for one connection.
#[derive(Debug)]
pub struct Feed {
    store: JobStore,
    hub: EventHub,
    subscription: Subscription,
    /// Decides what to hand out, what to drop and what to re-read.
    cursor: FeedCursor,
    /// Fires when the hub cut the subscription off. Made once: a fresh wait
    /// per event would register and unregister a waiter each time.
    overflowed: Pin<Box<WaitForCancellationFutureOwned>>,
    /// An owner stream's own part: the owner's channel and its jobs. Boxed:
    /// most feeds have none, and each WebSocket session and SSE stream
    /// holds a feed for as long as it is open.
    owner: Option<Box<OwnerFollow>>,
    /// A read failed: the next try waits until then. A deadline, not a
    /// pause, so that a caller that drops [`Feed::next`] and calls it again
    /// (as a busy session does) does not put the try off each time.
    retry_at: Option<tokio::time::Instant>,
}

impl Feed {
    /// A feed of explicitly watched jobs (a WebSocket session, one SSE stream).
    pub fn new(store: JobStore, hub: EventHub) -> Self {
        let subscription = hub.subscription();
        let overflowed = Box::pin(subscription.overflowed().clone().cancelled_owned());
        Self {
            store,
            hub,
            subscription,
            cursor: FeedCursor::new(),
            overflowed,
            owner: None,
            retry_at: None,
        }
    }

    /// Starts watching `job_id` after `after`; the history after it is
    /// queued for [`Feed::next`] (from the start of the job's current epoch,
    /// when that is later than `after`'s). The caller checks the record's
    /// owner and calls [`Feed::unwatch`] when the job is not the client's.
    pub async fn watch(
        &mut self,
        job_id: JobId,
        after: EventPosition,
    ) -> Result<WatchStart, StoreError> {
        self.hub
            .watch(&mut self.subscription, &keys::job_channel(&job_id))
            .await?;
        let read = read_after(&self.store, &job_id, after).await?;
        let truncated_from = cursor::truncated_from(
            read.after,
            read.record.as_ref().map(|record| record.snapshot.seq),
            read.events.first().map(|first| first.seq),
        );
        // Watching a job again starts over from the new position.
        self.cursor.watch(job_id, after);
        self.cursor.history(history_events(job_id, read.events));
        Ok(WatchStart {
            record: read.record,
            truncated_from,
        })
    }

    /// Starts watching a job that does not exist yet (a WebSocket submit
    /// watches its job before creating it): expects its events from the
    /// first, without reading a history that cannot exist. The job is
    /// watched at once; the returned future resolves when Redis has
    /// confirmed the subscription, and the job must not be created before
    /// it does. It borrows nothing, so the session can go on meanwhile.
    pub fn expect(
        &mut self,
        job_id: JobId,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + use<> {
        let subscribed = self
            .hub
            .watch(&mut self.subscription, &keys::job_channel(&job_id));
        self.cursor.watch(job_id, EventPosition::START);
        subscribed
    }

    /// Stops watching `job_id`; events of it already queued are dropped.
    pub fn unwatch(&mut self, job_id: &JobId) {
        self.cursor.unwatch(job_id);
        self.hub
            .unwatch(&mut self.subscription, &keys::job_channel(job_id));
    }

    /// How many jobs the feed watches.
    pub fn watching(&self) -> usize {
        self.cursor.watching()
    }

    pub fn is_watching(&self, job_id: &JobId) -> bool {
        self.cursor.is_watching(job_id)
    }

    /// The next event, in `(epoch, seq)` order per job, each once. `None`
    /// once the event hub has stopped. After [`FeedItem::Unavailable`] the
    /// feed keeps trying to read what it missed, pausing between tries.
    /// Cancel-safe: a history read that is dropped half-way is made again
    /// by the next call (its job stays stale until the read is taken in).
    pub async fn next(&mut self) -> Option<FeedItem> {
        loop {
            if let Some(event) = self.cursor.pop() {
                if event.event.is_terminal() && self.owner.is_some() {
                    self.followed_job_ended(&event);
                }
                return Some(FeedItem::Event(event));
            }
            if self.cursor.resync_pending() || self.owner_has_work() {
                // Boxed: the rare path's state would otherwise be part of
                // every session's for as long as it waits for events.
                if let Err(error) = Box::pin(self.retry_catch_up()).await {
                    self.retry_at = Some(tokio::time::Instant::now() + RESYNC_PAUSE);
                    return Some(FeedItem::Unavailable(error));
                }
                self.retry_at = None;
                continue;
            }
            let Self {
                subscription,
                overflowed,
                owner,
                ..
            } = self;
            let received = tokio::select! {
                biased;
                () = overflowed.as_mut() => return Some(FeedItem::Overflowed),
                message = subscription.recv() => Received::Job(message?),
                waited = owner::wait(owner) => match waited {
                    owner::Waited::Overflowed => return Some(FeedItem::Overflowed),
                    owner::Waited::Message(notice) => Received::Owner(notice?),
                },
            };
            match received {
                Received::Job(HubMessage::Event(published)) => self.accept_live(&published),
                Received::Job(HubMessage::Resync) => self.channels_interrupted(),
                Received::Owner(message) => self.owner_message(message),
            }
        }
    }

    /// [`Feed::catch_up`], once the pause after a failed read is over.
    async fn retry_catch_up(&mut self) -> Result<(), StoreError> {
        if let Some(retry_at) = self.retry_at {
            tokio::time::sleep_until(retry_at).await;
        }
        self.catch_up().await
    }

    /// Reads again what the cursor and the owner's part still need.
    async fn catch_up(&mut self) -> Result<(), StoreError> {
        for reread in self.cursor.rereads() {
            self.reread(reread).await?;
            self.cursor.reread_done(&reread.job_id);
        }
        self.owner_catch_up().await
    }

    /// The hub says some channels' delivery was interrupted: their jobs are
    /// re-read after their positions.
    fn channels_interrupted(&mut self) {
        let jobs: Vec<JobId> = self
            .subscription
            .take_stale()
            .iter()
            .filter_map(|channel| job_of_channel(channel))
            .collect();
        self.cursor.resync(jobs);
    }

    /// A live event after a gap makes its job stale: the history after the
    /// job's position is read on the way round ([`Feed::catch_up`]), never
    /// here, so a caller that drops [`Feed::next`] half-way loses nothing.
    fn accept_live(&mut self, published: &Published) {
        let Some(event) = live_event(published) else {
            return;
        };
        match self.cursor.live(event) {
            Live::Gap(reread) => self.cursor.resync([reread.job_id]),
            Live::Deliver | Live::Duplicate | Live::Unwatched => {}
        }
    }

    async fn reread(&mut self, reread: Reread) -> Result<(), StoreError> {
        let read = read_after(&self.store, &reread.job_id, reread.after).await?;
        self.cursor
            .history(history_events(reread.job_id, read.events));
        Ok(())
    }
}

/// What a feed's wait ended with.
enum Received {
    Job(HubMessage),
    Owner(HubMessage),
}

/// A job's record and its history after a seq.
struct Read {
    record: Option<JobRecord>,
    events: Vec<StoredEvent>,
    /// The seq the events follow.
    after: u64,
}

/// `job_id`'s record and history after `after`, read from the start of the
/// job's current epoch instead when the record is in a later epoch than
/// `after` and that epoch began at or before `after.seq` (a second read,
/// only then).
async fn read_after(
    store: &JobStore,
    job_id: &JobId,
    after: EventPosition,
) -> Result<Read, StoreError> {
    let read = store.history_after(job_id, after.seq).await?;
    let restart = read
        .record
        .as_ref()
        .and_then(|record| cursor::epoch_restart(after, record.snapshot.epoch, record.epoch_seq));
    let (read, after) = match restart {
        None => (read, after.seq),
        Some(from) => (store.history_after(job_id, from).await?, from),
    };
    Ok(Read {
        record: read.record,
        events: read.events,
        after,
    })
}

/// The job whose live channel `channel` is.
fn job_of_channel(channel: &str) -> Option<JobId> {
    let (_, tagged) = channel.split_once('{')?;
    let job_id: JobId = tagged.strip_suffix('}')?.parse().ok()?;
    (keys::job_channel(&job_id) == channel).then_some(job_id)
}

/// A live event ready to hand out, from its header (read once per event,
/// shared by every watcher: see `hub/published.rs`); `None` for something
/// that is not a jobgate event.
fn live_event(published: &Published) -> Option<FeedEvent> {
    let header = published.event_header()?;
    Some(FeedEvent {
        job_id: header.job_id,
        seq: header.seq,
        epoch: header.epoch,
        event: header.event,
        ts: header.ts,
        json: published.payload().clone(),
    })
}

/// `job_id`'s history entries as feed events; the seq is the entry id's.
/// An entry whose JSON is not an event is skipped.
fn history_events(job_id: JobId, events: Vec<StoredEvent>) -> impl Iterator<Item = FeedEvent> {
    events.into_iter().filter_map(move |stored| {
        let header = EventHeader::parse(&stored.json).ok()?;
        let (epoch, event, ts) = (header.epoch, header.event, header.ts);
        Some(FeedEvent {
            job_id,
            seq: stored.seq,
            epoch,
            event,
            ts,
            json: stored.json,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_channel_names_its_job() {
        let id = JobId::new();
        assert_eq!(job_of_channel(&keys::job_channel(&id)), Some(id));
        assert_eq!(job_of_channel(&keys::owner_channel("alice")), None);
        assert_eq!(job_of_channel("jobgate:live:job:{not-a-job}"), None);
    }
}
