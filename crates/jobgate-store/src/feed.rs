//! [`Feed`]: the events one client connection should see, in order, each
//! once.
//!
//! Subscribe-then-read: [`Feed::watch`] first subscribes to the job's live
//! channel (confirmed by Redis), then reads the history after the client's
//! `after`. Live events that arrive meanwhile wait in the subscription's
//! queue; the per-job cursor (the last seq handed out) drops whatever the
//! history already gave. A live event that skips a seq, or a
//! [`HubMessage::Resync`] after the pub/sub link came back, makes the feed
//! read the missing events from the history, so no event falls between.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;

use bytes::Bytes;
use jobgate_proto::{EventHeader, EventType, JobId};
use tokio_util::sync::WaitForCancellationFutureOwned;

use crate::keys;

/// Pause before re-reading histories after Redis could not be read.
const RESYNC_PAUSE: std::time::Duration = std::time::Duration::from_millis(500);
use crate::store::StoredEvent;
use crate::{EventHub, HubMessage, JobRecord, JobStore, StoreError, Subscription};

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
    /// Redis could not be read to fill a gap; the feed keeps going.
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

#[derive(Debug, Clone, Copy)]
struct Cursor {
    last_seq: u64,
}

/// Events of a set of jobs (or of all of one owner's jobs) for one connection.
#[derive(Debug)]
pub struct Feed {
    store: JobStore,
    hub: EventHub,
    subscription: Subscription,
    cursors: HashMap<JobId, Cursor>,
    /// Set for an owner feed: events of any job on the owner's channel count.
    owner: Option<String>,
    ready: VecDeque<FeedEvent>,
    /// A history read failed: every cursor is re-read before waiting again.
    resync_pending: bool,
    /// Fires when the hub cut the subscription off. Made once: a fresh wait
    /// per event would register and unregister a waiter each time.
    overflowed: Pin<Box<WaitForCancellationFutureOwned>>,
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
            cursors: HashMap::new(),
            owner: None,
            ready: VecDeque::new(),
            resync_pending: false,
            overflowed,
        }
    }

    /// A feed of every job of `owner` (the dashboard stream).
    pub async fn for_owner(
        store: JobStore,
        hub: EventHub,
        owner: &str,
    ) -> Result<Self, StoreError> {
        let mut feed = Self::new(store, hub);
        feed.hub
            .watch(&mut feed.subscription, &keys::owner_channel(owner))
            .await?;
        feed.owner = Some(owner.to_owned());
        Ok(feed)
    }

    /// Starts watching `job_id` after `after`; the history after `after` is
    /// queued for [`Feed::next`]. The caller checks the record's owner and
    /// calls [`Feed::unwatch`] when the job is not the client's.
    pub async fn watch(&mut self, job_id: JobId, after: u64) -> Result<WatchStart, StoreError> {
        self.hub
            .watch(&mut self.subscription, &keys::job_channel(&job_id))
            .await?;
        let read = self.store.history_after(&job_id, after).await?;
        let truncated_from = match (&read.record, read.events.first()) {
            (Some(_), Some(first)) if first.seq > after + 1 => Some(first.seq),
            (Some(record), None) if record.snapshot.seq > after => Some(record.snapshot.seq + 1),
            _ => None,
        };
        // Watching again from an earlier point starts over from there. A job
        // that does not exist yet is watched too: a WebSocket submit watches
        // its job before creating it, so that its first event is not missed.
        self.ready.retain(|event| event.job_id != job_id);
        self.cursors.insert(job_id, Cursor { last_seq: after });
        self.accept_history(job_id, read.events);
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
        self.ready.retain(|event| event.job_id != job_id);
        self.cursors.insert(job_id, Cursor { last_seq: 0 });
        subscribed
    }

    /// Stops watching `job_id`; events of it already queued are dropped.
    pub fn unwatch(&mut self, job_id: &JobId) {
        self.cursors.remove(job_id);
        self.ready.retain(|event| event.job_id != *job_id);
        self.hub
            .unwatch(&mut self.subscription, &keys::job_channel(job_id));
    }

    /// How many jobs the feed watches.
    pub fn watching(&self) -> usize {
        self.cursors.len()
    }

    pub fn is_watching(&self, job_id: &JobId) -> bool {
        self.cursors.contains_key(job_id)
    }

    /// Seeds an owner feed with the events of `job_id` after `after` (used
    /// to replay after a reconnect), without subscribing to the job's channel.
    pub async fn replay(
        &mut self,
        job_id: JobId,
        after: u64,
    ) -> Result<Option<JobRecord>, StoreError> {
        let read = self.store.history_after(&job_id, after).await?;
        self.cursors
            .entry(job_id)
            .or_insert(Cursor { last_seq: after });
        self.accept_history(job_id, read.events);
        Ok(read.record)
    }

    /// The next event, in seq order per job, each once. `None` once the
    /// event hub has stopped. After [`FeedItem::Unavailable`] the feed
    /// keeps trying to read what it missed, pausing between tries.
    pub async fn next(&mut self) -> Option<FeedItem> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Some(FeedItem::Event(event));
            }
            if self.resync_pending {
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
                self.resync_pending = true;
                return Some(FeedItem::Unavailable(error));
            }
        }
    }

    /// Reads every watched job's history after its cursor.
    async fn resync(&mut self) -> Result<(), StoreError> {
        self.resync_pending = true;
        let jobs: Vec<(JobId, u64)> = self
            .cursors
            .iter()
            .map(|(id, c)| (*id, c.last_seq))
            .collect();
        for (job_id, after) in jobs {
            let read = self.store.history_after(&job_id, after).await?;
            self.accept_history(job_id, read.events);
        }
        self.resync_pending = false;
        Ok(())
    }

    async fn accept_live(&mut self, json: Bytes) -> Result<(), StoreError> {
        let Ok(header) = EventHeader::parse(&json) else {
            tracing::warn!(payload = %String::from_utf8_lossy(&json), "dropping a malformed event");
            return Ok(());
        };
        let Ok(job_id) = header.job_id.parse::<JobId>() else {
            return Ok(());
        };
        let (seq, event, ts) = (header.seq, header.event, header.ts);
        let last_seq = match self.cursors.get(&job_id) {
            Some(cursor) => cursor.last_seq,
            // An owner feed meets a job for the first time: start from here.
            None if self.owner.is_some() => seq.saturating_sub(1),
            None => return Ok(()),
        };
        if seq <= last_seq {
            return Ok(());
        }
        if seq > last_seq + 1 {
            // A gap: the missing events are in the history (with this one).
            let read = self.store.history_after(&job_id, last_seq).await?;
            self.cursors.entry(job_id).or_insert(Cursor { last_seq });
            self.accept_history(job_id, read.events);
            return Ok(());
        }
        self.push(FeedEvent {
            job_id,
            seq,
            event,
            ts,
            json,
        });
        Ok(())
    }

    fn accept_history(&mut self, job_id: JobId, events: Vec<StoredEvent>) {
        for stored in events {
            let Ok(header) = EventHeader::parse(&stored.json) else {
                continue;
            };
            let (event, ts) = (header.event, header.ts);
            let seq = stored.seq;
            let last = self.cursors.get(&job_id).map_or(0, |c| c.last_seq);
            if seq > last {
                self.push(FeedEvent {
                    job_id,
                    seq,
                    event,
                    ts,
                    json: stored.json,
                });
            }
        }
    }

    fn push(&mut self, event: FeedEvent) {
        let cursor = self
            .cursors
            .entry(event.job_id)
            .or_insert(Cursor { last_seq: 0 });
        cursor.last_seq = event.seq;
        if self.owner.is_some() && event.event.is_terminal() {
            // Nothing follows a terminal event: an owner feed forgets the job
            // so its memory stays bounded by the jobs in flight.
            self.cursors.remove(&event.job_id);
        }
        self.ready.push_back(event);
    }
}
