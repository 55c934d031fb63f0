//! [`Feed`]: the events one client connection should see, in order, each
//! once.
//!
//! Subscribe-then-read: [`Feed::watch`] first subscribes to the job's live
//! channel (confirmed by Redis), then reads the history after the client's
//! `after`. Live events that arrive meanwhile wait in the subscription's
//! queue; the per-job position (the last seq handed out) drops whatever the
//! history already gave. A live event that skips a seq, or a
//! [`HubMessage::Resync`] after the pub/sub link came back, makes the feed
//! read the missing events from the history, so no event falls between.
//!
//! Those decisions are the cursor's (`cursor.rs`, Redis-free and unit-tested
//! there); this module is the I/O around it: it subscribes, makes the
//! history reads the cursor asks for, and turns replies into its inputs.

use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use jobgate_proto::{EventHeader, EventType, JobId};
use tokio_util::sync::WaitForCancellationFutureOwned;

use crate::cursor::{self, FeedCursor, Live, Reread};
use crate::keys;
use crate::store::StoredEvent;
use crate::{EventHub, HubMessage, JobRecord, JobStore, StoreError, Subscription};

/// Pause before re-reading histories after Redis could not be read.
const RESYNC_PAUSE: Duration = Duration::from_millis(500);

/// One event ready to send, with the fields the transport needs.
#[derive(Debug, Clone)]
pub struct FeedEvent {
    pub job_id: JobId,
    pub seq: u64,
    pub event: EventType,
    pub ts: u64,
    /// The event JSON, verbatim.
    pub json: Bytes,
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
    /// client's `after` were cut from it.
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
}

impl Feed {
    /// A feed of explicitly watched jobs (a WebSocket session, one SSE stream).
    pub fn new(store: JobStore, hub: EventHub) -> Self {
        Self::with_cursor(store, hub, FeedCursor::for_jobs())
    }

    /// A feed of every job of `owner` (the dashboard stream).
    pub async fn for_owner(
        store: JobStore,
        hub: EventHub,
        owner: &str,
    ) -> Result<Self, StoreError> {
        let mut feed = Self::with_cursor(store, hub, FeedCursor::for_owner());
        feed.hub
            .watch(&mut feed.subscription, &keys::owner_channel(owner))
            .await?;
        Ok(feed)
    }

    fn with_cursor(store: JobStore, hub: EventHub, cursor: FeedCursor) -> Self {
        let subscription = hub.subscription();
        let overflowed = Box::pin(subscription.overflowed().clone().cancelled_owned());
        Self {
            store,
            hub,
            subscription,
            cursor,
            overflowed,
        }
    }

    /// Starts watching `job_id` after `after`; the history after `after` is
    /// queued for [`Feed::next`]. The caller checks the record's owner and
    /// calls [`Feed::unwatch`] when the job is not the client's.
    pub async fn watch(&mut self, job_id: JobId, after: u64) -> Result<WatchStart, StoreError> {
        self.hub
            .watch(&mut self.subscription, &keys::job_channel(&job_id))
            .await?;
        let read = self.store.history_after(&job_id, after).await?;
        let truncated_from = cursor::truncated_from(
            after,
            read.record.as_ref().map(|record| record.snapshot.seq),
            read.events.first().map(|first| first.seq),
        );
        // Watching a job again starts over from the new `after`.
        self.cursor.watch(job_id, after);
        self.cursor.history(history_events(job_id, read.events));
        Ok(WatchStart {
            record: read.record,
            truncated_from,
        })
    }

    /// Starts watching a job that does not exist yet (a WebSocket submit
    /// watches its job before creating it): expects its events from seq 1,
    /// without reading a history that cannot exist. The job is watched at
    /// once; the returned future resolves when Redis has confirmed the
    /// subscription, and the job must not be created before it does. It
    /// borrows nothing, so the session can go on meanwhile.
    pub fn expect(
        &mut self,
        job_id: JobId,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + use<> {
        let subscribed = self
            .hub
            .watch(&mut self.subscription, &keys::job_channel(&job_id));
        self.cursor.watch(job_id, 0);
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

    /// Seeds an owner feed with the events of `job_id` after `after` (used
    /// to replay after a reconnect), without subscribing to the job's channel.
    pub async fn replay(
        &mut self,
        job_id: JobId,
        after: u64,
    ) -> Result<Option<JobRecord>, StoreError> {
        let read = self.store.history_after(&job_id, after).await?;
        self.cursor.seed(job_id, after);
        self.cursor.history(history_events(job_id, read.events));
        Ok(read.record)
    }

    /// The next event, in seq order per job, each once. `None` once the
    /// event hub has stopped. After [`FeedItem::Unavailable`] the feed
    /// keeps trying to read what it missed, pausing between tries.
    pub async fn next(&mut self) -> Option<FeedItem> {
        loop {
            if let Some(event) = self.cursor.pop() {
                return Some(FeedItem::Event(event));
            }
            if self.cursor.resync_pending() {
                tokio::time::sleep(RESYNC_PAUSE).await;
                if let Err(error) = self.resync().await {
                    return Some(FeedItem::Unavailable(error));
                }
                continue;
            }
            let message = tokio::select! {
                biased;
                () = self.overflowed.as_mut() => return Some(FeedItem::Overflowed),
                message = self.subscription.recv() => message,
            };
            let outcome = match message? {
                HubMessage::Event(json) => self.accept_live(json).await,
                HubMessage::Resync => self.resync().await,
            };
            if let Err(error) = outcome {
                self.cursor.read_failed();
                return Some(FeedItem::Unavailable(error));
            }
        }
    }

    /// Re-reads every watched job's history after its position.
    async fn resync(&mut self) -> Result<(), StoreError> {
        for reread in self.cursor.resync() {
            self.reread(reread).await?;
        }
        self.cursor.resynced();
        Ok(())
    }

    async fn accept_live(&mut self, json: Bytes) -> Result<(), StoreError> {
        let Some(event) = live_event(json) else {
            return Ok(());
        };
        match self.cursor.live(event) {
            Live::Gap(reread) => self.reread(reread).await,
            Live::Deliver | Live::Duplicate | Live::Unwatched => Ok(()),
        }
    }

    async fn reread(&mut self, reread: Reread) -> Result<(), StoreError> {
        let read = self
            .store
            .history_after(&reread.job_id, reread.after)
            .await?;
        self.cursor
            .history(history_events(reread.job_id, read.events));
        Ok(())
    }
}

/// A live event's header read from its JSON; `None` for something that is
/// not a jobgate event (with a warning when it is not even an event's JSON).
fn live_event(json: Bytes) -> Option<FeedEvent> {
    let Ok(header) = EventHeader::parse(&json) else {
        tracing::warn!(payload = %String::from_utf8_lossy(&json), "dropping a malformed event");
        return None;
    };
    let job_id = header.job_id.parse::<JobId>().ok()?;
    let (seq, event, ts) = (header.seq, header.event, header.ts);
    Some(FeedEvent {
        job_id,
        seq,
        event,
        ts,
        json,
    })
}

/// `job_id`'s history entries as feed events; the seq is the entry id's.
/// An entry whose JSON is not an event is skipped.
fn history_events(job_id: JobId, events: Vec<StoredEvent>) -> impl Iterator<Item = FeedEvent> {
    events.into_iter().filter_map(move |stored| {
        let header = EventHeader::parse(&stored.json).ok()?;
        let (event, ts) = (header.event, header.ts);
        Some(FeedEvent {
            job_id,
            seq: stored.seq,
            event,
            ts,
            json: stored.json,
        })
    })
}
