//! [`EventHub`]: one Redis pub/sub connection per process, shared by every
//! client connection.
//!
//! A connection gets a [`Subscription`] (a bounded queue of its own) and
//! adds channels to it with [`EventHub::watch`], whose future resolves only
//! once Redis has confirmed the SUBSCRIBE — the "subscribe" half of
//! subscribe-then-read. The hub's task owns the pub/sub connection: it
//! serialises SUBSCRIBE/UNSUBSCRIBE (so an unsubscribe can never overtake a
//! later subscribe to the same channel), dispatches messages with
//! `try_send`, and reconnects with backoff when the link drops or stops
//! answering its probe. After a reconnect every subscription gets
//! [`HubMessage::Resync`], because events published while the link was down
//! were never delivered and must be read from the history instead.
//!
//! A subscription whose queue is full is cut off: its `overflowed` token
//! fires and it receives nothing more. Memory per connection is bounded by
//! its queue capacity.
//!
//! This file holds the handles ([`EventHub`], [`Subscription`]); who
//! watches what is `registry.rs` (pure bookkeeping, unit-tested), and the
//! connection task is `link.rs`.

mod link;
mod registry;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use self::registry::{Joined, Member, Registry};
use crate::StoreError;

/// How many channel names may wait for the hub's task to SUBSCRIBE to them.
/// Not a limit on watches: past it, `watch` hands the name over from a task
/// of its own instead of at once.
const PENDING_SUBSCRIBES: usize = 4096;

/// What a subscription receives.
#[derive(Debug, Clone)]
pub enum HubMessage {
    /// A published event JSON.
    Event(Bytes),
    /// The pub/sub link was re-established: anything may have been missed.
    Resync,
}

/// Tuning of the hub.
#[derive(Debug, Clone)]
pub struct HubSettings {
    /// Capacity of each subscription's queue.
    pub subscription_capacity: usize,
    /// How often the link is probed with PING.
    pub probe_interval: Duration,
    /// How long a probe, connect, SUBSCRIBE or UNSUBSCRIBE may take before
    /// the link is considered dead.
    pub io_timeout: Duration,
    /// How long `watch` waits for the link to confirm a subscription.
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

/// What the handles and the hub's task share.
struct Inner {
    registry: Mutex<Registry>,
    /// Names of channels to SUBSCRIBE to, for the hub's task.
    commands: mpsc::Sender<String>,
    connected: AtomicBool,
    next_id: AtomicU64,
    settings: HubSettings,
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
    /// Starts the hub's task; it runs until `shutdown` fires.
    pub fn start(
        client: redis::Client,
        settings: HubSettings,
        shutdown: CancellationToken,
    ) -> Self {
        let (commands, command_rx) = mpsc::channel(PENDING_SUBSCRIBES);
        let inner = Arc::new(Inner {
            registry: Mutex::default(),
            commands,
            connected: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
            settings,
        });
        tokio::spawn(link::run(client, Arc::clone(&inner), command_rx, shutdown));
        Self { inner }
    }

    /// Whether the pub/sub link is up (for readiness).
    pub fn is_connected(&self) -> bool {
        self.inner.connected.load(Ordering::Acquire)
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
    /// it waits; dropping it does not undo the subscription (the SUBSCRIBE
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
        let mut stopped = false;
        let confirmed = match joined {
            Joined::Confirmed => None,
            Joined::Waiting {
                confirmed,
                ask_to_subscribe,
            } => {
                if ask_to_subscribe {
                    // The first waiter asks for the SUBSCRIBE, here rather
                    // than in the future: were it dropped unpolled, later
                    // waiters would wait for a confirmation nobody asked for.
                    match self.inner.commands.try_send(channel.to_owned()) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(channel)) => {
                            let inner = Arc::clone(&self.inner);
                            tokio::spawn(async move {
                                let _ = inner.commands.send(channel).await;
                            });
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => stopped = true,
                    }
                }
                Some(confirmed)
            }
        };
        let watch_timeout = self.inner.settings.watch_timeout;
        async move {
            if stopped {
                return Err(StoreError::Unavailable("the event hub has stopped".into()));
            }
            let Some(confirmed) = confirmed else {
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
