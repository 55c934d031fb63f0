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

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use redis::aio::PubSubSink;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::StoreError;

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
    /// How long a probe, connect or SUBSCRIBE may take before the link is
    /// considered dead.
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

#[derive(Clone)]
struct Member {
    id: u64,
    tx: mpsc::Sender<HubMessage>,
    overflowed: CancellationToken,
}

#[derive(Default)]
struct Channel {
    members: Vec<Member>,
    confirmed: bool,
    waiters: Vec<oneshot::Sender<()>>,
}

#[derive(Default)]
struct State {
    channels: HashMap<String, Channel>,
    /// Every live subscription, for `Resync`.
    subscriptions: HashMap<u64, Member>,
}

struct Inner {
    state: Mutex<State>,
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
        let (commands, command_rx) = mpsc::channel(4096);
        let inner = Arc::new(Inner {
            state: Mutex::default(),
            commands,
            connected: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
            settings,
        });
        tokio::spawn(run(client, Arc::clone(&inner), command_rx, shutdown));
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
        self.inner
            .lock()
            .subscriptions
            .insert(member.id, member.clone());
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
        let waiter = {
            let mut state = self.inner.lock();
            let entry = state.channels.entry(channel.to_owned()).or_default();
            if !subscription.channels.contains(channel) {
                entry.members.push(subscription.member.clone());
            }
            if entry.confirmed {
                None
            } else {
                let (tx, rx) = oneshot::channel();
                let first_waiter = entry.waiters.is_empty();
                entry.waiters.push(tx);
                Some((rx, first_waiter))
            }
        };
        subscription.channels.insert(channel.to_owned());
        let mut stopped = false;
        if let Some((_, true)) = &waiter {
            // The first waiter asks for the SUBSCRIBE, here rather than in
            // the future: were it dropped unpolled, later waiters would wait
            // for a confirmation nobody asked for.
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
        let watch_timeout = self.inner.settings.watch_timeout;
        async move {
            if stopped {
                return Err(StoreError::Unavailable("the event hub has stopped".into()));
            }
            let Some((confirmed, _)) = waiter else {
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
            let mut state = self.hub.lock();
            if let Some(entry) = state.channels.get_mut(channel) {
                entry.members.retain(|m| m.id != self.member.id);
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut state = self.hub.lock();
        state.subscriptions.remove(&self.member.id);
        for channel in &self.channels {
            if let Some(entry) = state.channels.get_mut(channel) {
                entry.members.retain(|m| m.id != self.member.id);
            }
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing is awaited while the lock is held, and every update leaves
        // the maps consistent, so a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Hands one message to every member of `channel`; members whose queue
    /// is full are cut off.
    fn dispatch(&self, channel: &str, payload: Bytes) {
        let mut state = self.lock();
        let Some(entry) = state.channels.get_mut(channel) else {
            return;
        };
        entry.members.retain(|member| {
            match member.tx.try_send(HubMessage::Event(payload.clone())) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    member.overflowed.cancel();
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
    }

    fn resync_all(&self) {
        let state = self.lock();
        for member in state.subscriptions.values() {
            if let Err(mpsc::error::TrySendError::Full(_)) = member.tx.try_send(HubMessage::Resync)
            {
                member.overflowed.cancel();
            }
        }
    }

    /// Marks channels confirmed and wakes whoever waits for them.
    fn confirm<'a>(&self, names: impl IntoIterator<Item = &'a String>) {
        let mut state = self.lock();
        for name in names {
            if let Some(entry) = state.channels.get_mut(name) {
                entry.confirmed = true;
                for waiter in entry.waiters.drain(..) {
                    let _ = waiter.send(());
                }
            }
        }
    }

    /// Channels nobody watches any more: forgotten here, to be unsubscribed.
    fn take_unwatched(&self) -> Vec<String> {
        let mut state = self.lock();
        let unwatched: Vec<String> = state
            .channels
            .iter()
            .filter(|(_, entry)| entry.members.is_empty() && entry.waiters.is_empty())
            .map(|(name, _)| name.clone())
            .collect();
        for name in &unwatched {
            state.channels.remove(name);
        }
        unwatched
    }
}

async fn run(
    client: redis::Client,
    hub: Arc<Inner>,
    mut commands: mpsc::Receiver<String>,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(50);
    let mut reconnecting = false;
    loop {
        let linked = tokio::select! {
            () = shutdown.cancelled() => return,
            linked = tokio::time::timeout(hub.settings.io_timeout, client.get_async_pubsub()) => linked,
        };
        let pubsub = match linked {
            Ok(Ok(pubsub)) => pubsub,
            failed => {
                let reason = match failed {
                    Ok(Err(error)) => error.to_string(),
                    _ => "timed out".to_owned(),
                };
                tracing::warn!(error = %reason, backoff_ms = backoff.as_millis() as u64, "pub/sub connect failed");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        let (mut sink, mut stream) = pubsub.split();
        let all: Vec<String> = hub.lock().channels.keys().cloned().collect();
        if subscribe(&hub, &mut sink, &all).await.is_err() {
            continue;
        }
        backoff = Duration::from_millis(50);
        hub.connected.store(true, Ordering::Release);
        if reconnecting {
            tracing::info!(channels = all.len(), "pub/sub link re-established");
            hub.resync_all();
        }
        reconnecting = true;

        let mut probe = tokio::time::interval(hub.settings.probe_interval);
        probe.tick().await;
        let mut sweep = tokio::time::interval(Duration::from_secs(2));
        loop {
            tokio::select! {
                () = shutdown.cancelled() => {
                    hub.connected.store(false, Ordering::Release);
                    return;
                }
                message = stream.next() => {
                    let Some(message) = message else {
                        tracing::warn!("pub/sub link dropped");
                        break;
                    };
                    let channel = message.get_channel_name().to_owned();
                    hub.dispatch(&channel, Bytes::copy_from_slice(message.get_payload_bytes()));
                }
                Some(first) = commands.recv() => {
                    let mut names = vec![first];
                    while names.len() < 512 {
                        match commands.try_recv() {
                            Ok(name) => names.push(name),
                            Err(_) => break,
                        }
                    }
                    if subscribe(&hub, &mut sink, &names).await.is_err() {
                        break;
                    }
                }
                _ = probe.tick() => {
                    // A subscribed connection answers PING with an array,
                    // not a status: any reply proves the link is alive.
                    let pong = tokio::time::timeout(hub.settings.io_timeout, sink.ping::<redis::Value>()).await;
                    if !matches!(pong, Ok(Ok(_))) {
                        tracing::warn!("pub/sub link did not answer its probe");
                        break;
                    }
                }
                _ = sweep.tick() => {
                    let unwatched = hub.take_unwatched();
                    if !unwatched.is_empty() {
                        let done = tokio::time::timeout(hub.settings.io_timeout, sink.unsubscribe(&unwatched)).await;
                        if !matches!(done, Ok(Ok(()))) {
                            break;
                        }
                    }
                }
            }
        }
        hub.connected.store(false, Ordering::Release);
        let mut state = hub.lock();
        for entry in state.channels.values_mut() {
            entry.confirmed = false;
        }
    }
}

/// SUBSCRIBEs to `names` (those still wanted) and confirms them.
async fn subscribe(hub: &Inner, sink: &mut PubSubSink, names: &[String]) -> Result<(), ()> {
    let wanted: Vec<String> = {
        let state = hub.lock();
        names
            .iter()
            .filter(|name| state.channels.contains_key(*name))
            .cloned()
            .collect()
    };
    for chunk in wanted.chunks(512) {
        match tokio::time::timeout(hub.settings.io_timeout, sink.subscribe(chunk)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::warn!(%error, "SUBSCRIBE failed");
                return Err(());
            }
            Err(_) => {
                tracing::warn!("SUBSCRIBE timed out");
                return Err(());
            }
        }
    }
    hub.confirm(&wanted);
    Ok(())
}
