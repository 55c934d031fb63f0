//! [`EventHub`]: the process's sharded pub/sub, shared by every client
//! connection.
//!
//! Events are published with SPUBLISH on sharded channels, each delivered
//! only by the master that owns its hash tag's slot. The hub keeps one
//! connection per master ([`link`]), none shared with commands; it learns
//! which master owns which slot from `CLUSTER SLOTS` (a standalone Redis is
//! one node owning every slot) and reads the map again when a link drops,
//! a SSUBSCRIBE is answered MOVED, or Redis pushes `sunsubscribe` because a
//! slot moved away ([`topology`]).
//!
//! A connection gets a [`Subscription`] (a bounded queue of its own) and
//! adds channels to it with [`EventHub::watch`], whose future resolves only
//! once Redis has confirmed the SSUBSCRIBE — the "subscribe" half of
//! subscribe-then-read. When a channel's delivery was interrupted (its
//! master's link dropped, or the slot moved) the channel is subscribed to
//! again, at its new master if it has one, and only then are the
//! subscriptions watching it sent [`HubMessage::Resync`]: events published
//! meanwhile were never delivered and must be read from the history
//! ([`Subscription::take_stale`] names the channels). Subscriptions of
//! channels on other masters hear nothing of it.
//!
//! A subscription whose queue is full is cut off: its `overflowed` token
//! fires and it receives nothing more. Memory per connection is bounded by
//! its queue capacity.
//!
//! This file holds the handles ([`EventHub`], [`Subscription`]); who
//! watches what and which master serves it is `registry.rs` (pure
//! bookkeeping, unit-tested), the slot map `slots.rs`.

mod link;
mod published;
mod registry;
mod slots;
mod topology;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

pub use self::published::{LiveHeader, Published};
use self::registry::{Joined, Member, Registry};
use crate::StoreError;

/// What a subscription receives.
#[derive(Debug, Clone)]
pub enum HubMessage {
    /// A published message: an event JSON on a job's channel (its header
    /// read once for every watcher), a job id on an owner's channel.
    Event(Published),
    /// Some of the subscription's channels may have missed messages while
    /// their delivery was interrupted; they are delivered again now.
    /// [`Subscription::take_stale`] names them.
    Resync,
}

/// Tuning of the hub.
#[derive(Debug, Clone)]
pub struct HubSettings {
    /// Capacity of each subscription's queue.
    pub subscription_capacity: usize,
    /// How often each master's link is probed with PING.
    pub probe_interval: Duration,
    /// How long a probe, connect, SSUBSCRIBE, SUNSUBSCRIBE or slot map read
    /// may take before the link (or the node asked) is considered dead.
    pub io_timeout: Duration,
    /// How long `watch` waits for Redis to confirm a subscription.
    pub watch_timeout: Duration,
}

impl Default for HubSettings {
    fn default() -> Self {
        Self {
            subscription_capacity: 1024,
            probe_interval: Duration::from_secs(5),
            io_timeout: Duration::from_secs(3),
            watch_timeout: Duration::from_secs(5),
        }
    }
}

/// One master as the hub sees it (for readiness reports).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeState {
    /// `host:port`.
    pub node: String,
    /// Its pub/sub link is up.
    pub linked: bool,
    /// Channels it serves for this gateway.
    pub channels: usize,
}

/// What the handles and the hub's tasks share.
struct Inner {
    registry: Mutex<Registry>,
    /// Wakes the topology task: the slot map should be read again.
    refresh: Arc<Notify>,
    next_id: AtomicU64,
    /// Numbers each connection a link makes.
    next_link: AtomicU64,
    settings: HubSettings,
    /// The hub stops when this fires.
    shutdown: CancellationToken,
}

/// Handle to the hub; cheap to clone.
#[derive(Clone)]
pub struct EventHub {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EventHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventHub")
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

/// One connection's view of the hub. Dropping it leaves every channel.
pub struct Subscription {
    hub: Arc<Inner>,
    member: Member,
    receiver: mpsc::Receiver<HubMessage>,
    channels: HashSet<String>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.member.id)
            .field("channels", &self.channels.len())
            .finish()
    }
}

impl EventHub {
    /// Starts the hub's tasks; they run until `shutdown` fires. `seeds` are
    /// the addresses to learn the topology from (one for a standalone
    /// Redis; any nodes of a cluster): every master's connection is made
    /// from the first seed's settings (TLS, user, password) with the
    /// master's host and port.
    pub fn start(
        seeds: Vec<redis::ConnectionInfo>,
        settings: HubSettings,
        shutdown: CancellationToken,
    ) -> Self {
        let refresh = Arc::new(Notify::new());
        let inner = Arc::new(Inner {
            registry: Mutex::new(Registry::new(Arc::clone(&refresh))),
            refresh,
            next_id: AtomicU64::new(1),
            next_link: AtomicU64::new(1),
            settings,
            shutdown,
        });
        tokio::spawn(topology::run(seeds, Arc::clone(&inner)));
        Self { inner }
    }

    /// Whether events can be delivered (for readiness): the topology is
    /// known, and every master serving channels has its link up (with
    /// none watched, at least one link is up).
    pub fn is_connected(&self) -> bool {
        self.inner.lock().is_connected()
    }

    /// Each master and the state of its link.
    pub fn nodes(&self) -> Vec<NodeState> {
        self.inner.lock().node_states()
    }

    /// A new, empty subscription.
    pub fn subscription(&self) -> Subscription {
        let (tx, receiver) = mpsc::channel(self.inner.settings.subscription_capacity);
        let member = Member {
            id: self.inner.next_id.fetch_add(1, Ordering::Relaxed),
            tx,
            overflowed: CancellationToken::new(),
        };
        self.inner.lock().add_subscription(member.clone());
        Subscription {
            hub: Arc::clone(&self.inner),
            member,
            receiver,
            channels: HashSet::new(),
        }
    }

    /// Adds `channel` to the subscription now and returns what resolves once
    /// Redis delivers the channel's messages to it. The returned future
    /// borrows nothing, so the connection can go on with other work while
    /// it waits; dropping it does not undo the subscription (the SSUBSCRIBE
    /// is already on its way).
    pub fn watch(
        &self,
        subscription: &mut Subscription,
        channel: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + use<> {
        let already_member = subscription.channels.contains(channel);
        let joined = self
            .inner
            .lock()
            .join(channel, &subscription.member, already_member);
        subscription.channels.insert(channel.to_owned());
        let stopped = self.inner.shutdown.is_cancelled();
        let watch_timeout = self.inner.settings.watch_timeout;
        async move {
            if stopped {
                return Err(StoreError::Unavailable("the event hub has stopped".into()));
            }
            let Joined::Waiting(confirmed) = joined else {
                return Ok(());
            };
            match tokio::time::timeout(watch_timeout, confirmed).await {
                Ok(Ok(())) => Ok(()),
                _ => Err(StoreError::Unavailable(
                    "the pub/sub link to Redis is down".into(),
                )),
            }
        }
    }

    /// Removes `channel` from the subscription.
    pub fn unwatch(&self, subscription: &mut Subscription, channel: &str) {
        subscription.leave(channel);
    }
}

impl Subscription {
    /// The next message; `None` once the hub has stopped.
    pub async fn recv(&mut self) -> Option<HubMessage> {
        self.receiver.recv().await
    }

    /// Fires when this subscription's queue overflowed and it was cut off.
    pub fn overflowed(&self) -> &CancellationToken {
        &self.member.overflowed
    }

    pub fn is_watching(&self, channel: &str) -> bool {
        self.channels.contains(channel)
    }

    /// The channels that may have missed messages since the last call (what
    /// a [`HubMessage::Resync`] is about), among those still watched.
    pub fn take_stale(&mut self) -> Vec<String> {
        let mut stale = self.hub.lock().take_stale(self.member.id);
        stale.retain(|channel| self.channels.contains(channel));
        stale
    }

    fn leave(&mut self, channel: &str) {
        if self.channels.remove(channel) {
            self.hub.lock().leave(channel, self.member.id);
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub
            .lock()
            .remove_subscription(self.member.id, &self.channels);
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Registry> {
        // Nothing is awaited while the lock is held, and every update leaves
        // the maps consistent, so a poisoned lock is still usable.
        self.registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
