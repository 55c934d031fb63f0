//! The hub's bookkeeping: which subscriptions watch which channel, which
//! channels Redis has confirmed, and who waits for a confirmation.
//!
//! A plain struct, held under the hub's `std::sync::Mutex`: nothing here
//! awaits or talks to Redis (handing a message to a subscription is a
//! `try_send`), so the lock is never held across an `.await`, and the rules
//! — the first waiter asks for the SUBSCRIBE, a full queue cuts its
//! subscription off, a channel nobody wants is forgotten — are unit-tested
//! below without a server.

use std::collections::HashMap;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::HubMessage;

/// One subscription as the registry knows it: where its messages go.
#[derive(Debug, Clone)]
pub(super) struct Member {
    pub(super) id: u64,
    pub(super) tx: mpsc::Sender<HubMessage>,
    /// Fired when the member's queue was full and it was cut off.
    pub(super) overflowed: CancellationToken,
}

#[derive(Debug, Default)]
struct Channel {
    members: Vec<Member>,
    /// Redis delivers the channel's messages on the current link.
    confirmed: bool,
    waiters: Vec<oneshot::Sender<()>>,
}

/// What [`Registry::join`] found about the channel's confirmation.
#[derive(Debug)]
pub(super) enum Joined {
    /// Redis delivers the channel already: nothing to wait for.
    Confirmed,
    /// Resolves once Redis confirms the channel. `ask_to_subscribe`: no one
    /// waited before, so the caller must have the link SUBSCRIBE to it.
    Waiting {
        confirmed: oneshot::Receiver<()>,
        ask_to_subscribe: bool,
    },
}

/// Every channel the hub handles and every live subscription.
#[derive(Debug, Default)]
pub(super) struct Registry {
    channels: HashMap<String, Channel>,
    /// Every live subscription, for `Resync`.
    subscriptions: HashMap<u64, Member>,
}

impl Registry {
    /// A new subscription, so that it gets `Resync` after a reconnect.
    pub(super) fn add_subscription(&mut self, member: Member) {
        self.subscriptions.insert(member.id, member);
    }

    /// A dropped subscription leaves `channels` and gets no more `Resync`.
    pub(super) fn remove_subscription<'a>(
        &mut self,
        member_id: u64,
        channels: impl IntoIterator<Item = &'a String>,
    ) {
        self.subscriptions.remove(&member_id);
        for channel in channels {
            self.leave(channel, member_id);
        }
    }

    /// Adds `member` to `channel` (unless `already_member`), and tells
    /// whether to wait for Redis to confirm the channel.
    pub(super) fn join(&mut self, channel: &str, member: &Member, already_member: bool) -> Joined {
        let entry = self.channels.entry(channel.to_owned()).or_default();
        if !already_member {
            entry.members.push(member.clone());
        }
        if entry.confirmed {
            return Joined::Confirmed;
        }
        let (tx, confirmed) = oneshot::channel();
        let ask_to_subscribe = entry.waiters.is_empty();
        entry.waiters.push(tx);
        Joined::Waiting {
            confirmed,
            ask_to_subscribe,
        }
    }

    /// Removes the member from `channel`. The channel itself stays until
    /// [`Registry::take_unwatched`].
    pub(super) fn leave(&mut self, channel: &str, member_id: u64) {
        if let Some(entry) = self.channels.get_mut(channel) {
            entry.members.retain(|m| m.id != member_id);
        }
    }

    /// Hands one message to every member of `channel`; members whose queue
    /// is full are cut off.
    pub(super) fn dispatch(&mut self, channel: &str, payload: Bytes) {
        let Some(entry) = self.channels.get_mut(channel) else {
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

    /// Tells every subscription that anything may have been missed;
    /// subscriptions whose queue is full are cut off.
    pub(super) fn resync_all(&self) {
        for member in self.subscriptions.values() {
            if let Err(mpsc::error::TrySendError::Full(_)) = member.tx.try_send(HubMessage::Resync)
            {
                member.overflowed.cancel();
            }
        }
    }

    /// Marks channels confirmed and wakes whoever waits for them.
    pub(super) fn confirm<'a>(&mut self, names: impl IntoIterator<Item = &'a String>) {
        for name in names {
            if let Some(entry) = self.channels.get_mut(name) {
                entry.confirmed = true;
                for waiter in entry.waiters.drain(..) {
                    let _ = waiter.send(());
                }
            }
        }
    }

    /// The link went down: no channel is confirmed until it is subscribed
    /// to again on the next link.
    pub(super) fn link_lost(&mut self) {
        for entry in self.channels.values_mut() {
            entry.confirmed = false;
        }
    }

    /// Every channel the hub handles (to subscribe to on a new link).
    pub(super) fn channel_names(&self) -> Vec<String> {
        self.channels.keys().cloned().collect()
    }

    /// Those of `names` that are still handled (a SUBSCRIBE asked for
    /// earlier may name a channel forgotten since).
    pub(super) fn still_wanted(&self, names: &[String]) -> Vec<String> {
        names
            .iter()
            .filter(|name| self.channels.contains_key(*name))
            .cloned()
            .collect()
    }

    /// Channels nobody watches any more: forgotten here, to be unsubscribed.
    pub(super) fn take_unwatched(&mut self) -> Vec<String> {
        let unwatched: Vec<String> = self
            .channels
            .iter()
            .filter(|(_, entry)| entry.members.is_empty() && entry.waiters.is_empty())
            .map(|(name, _)| name.clone())
            .collect();
        for name in &unwatched {
            self.channels.remove(name);
        }
        unwatched
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHANNEL: &str = "jobgate:live:job:0193a0b4-7c1e-7d4e-9a2b-1c2d3e4f5a6b";

    fn member(id: u64, capacity: usize) -> (Member, mpsc::Receiver<HubMessage>) {
        let (tx, rx) = mpsc::channel(capacity);
        let member = Member {
            id,
            tx,
            overflowed: CancellationToken::new(),
        };
        (member, rx)
    }

    fn waiting(joined: Joined) -> (oneshot::Receiver<()>, bool) {
        match joined {
            Joined::Waiting {
                confirmed,
                ask_to_subscribe,
            } => (confirmed, ask_to_subscribe),
            Joined::Confirmed => panic!("expected to wait for a confirmation"),
        }
    }

    fn events(rx: &mut mpsc::Receiver<HubMessage>) -> Vec<String> {
        std::iter::from_fn(|| rx.try_recv().ok())
            .map(|message| match message {
                HubMessage::Event(json) => String::from_utf8_lossy(&json).into_owned(),
                HubMessage::Resync => "resync".to_owned(),
            })
            .collect()
    }

    #[test]
    fn only_the_first_waiter_asks_for_the_subscribe_and_all_are_woken() {
        let mut registry = Registry::default();
        let (alice, _alice_rx) = member(1, 4);
        let (bob, _bob_rx) = member(2, 4);
        let (mut first, ask) = waiting(registry.join(CHANNEL, &alice, false));
        assert!(ask);
        let (mut second, ask) = waiting(registry.join(CHANNEL, &bob, false));
        assert!(!ask, "a SUBSCRIBE is on its way already");
        assert!(first.try_recv().is_err(), "not confirmed yet");

        registry.confirm(&[CHANNEL.to_owned()]);
        assert_eq!(first.try_recv(), Ok(()));
        assert_eq!(second.try_recv(), Ok(()));
        assert!(matches!(
            registry.join(CHANNEL, &alice, true),
            Joined::Confirmed
        ));
    }

    #[test]
    fn a_lost_link_makes_watchers_wait_and_ask_again() {
        let mut registry = Registry::default();
        let (alice, _rx) = member(1, 4);
        let _ = registry.join(CHANNEL, &alice, false);
        registry.confirm(&[CHANNEL.to_owned()]);
        registry.link_lost();
        let (_confirmed, ask) = waiting(registry.join(CHANNEL, &alice, true));
        assert!(ask);
        assert_eq!(registry.channel_names(), [CHANNEL]);
    }

    #[test]
    fn a_message_reaches_each_member_once() {
        let mut registry = Registry::default();
        let (alice, mut alice_rx) = member(1, 4);
        let (bob, mut bob_rx) = member(2, 4);
        let _ = registry.join(CHANNEL, &alice, false);
        let _ = registry.join(CHANNEL, &alice, true);
        let _ = registry.join(CHANNEL, &bob, false);
        registry.dispatch(CHANNEL, Bytes::from_static(b"e1"));
        registry.dispatch("jobgate:live:job:other", Bytes::from_static(b"e2"));
        assert_eq!(events(&mut alice_rx), ["e1"]);
        assert_eq!(events(&mut bob_rx), ["e1"]);

        registry.leave(CHANNEL, bob.id);
        registry.dispatch(CHANNEL, Bytes::from_static(b"e3"));
        assert_eq!(events(&mut alice_rx), ["e3"]);
        assert!(events(&mut bob_rx).is_empty());
    }

    #[test]
    fn a_member_whose_queue_is_full_is_cut_off() {
        let mut registry = Registry::default();
        let (slow, mut slow_rx) = member(1, 1);
        let (fast, mut fast_rx) = member(2, 4);
        let _ = registry.join(CHANNEL, &slow, false);
        let _ = registry.join(CHANNEL, &fast, false);
        registry.dispatch(CHANNEL, Bytes::from_static(b"e1"));
        assert!(!slow.overflowed.is_cancelled());
        registry.dispatch(CHANNEL, Bytes::from_static(b"e2"));
        assert!(slow.overflowed.is_cancelled());
        assert!(!fast.overflowed.is_cancelled());
        // Cut off: nothing more, even once its queue has room again.
        assert_eq!(events(&mut slow_rx), ["e1"]);
        registry.dispatch(CHANNEL, Bytes::from_static(b"e3"));
        assert!(events(&mut slow_rx).is_empty());
        assert_eq!(events(&mut fast_rx), ["e1", "e2", "e3"]);
    }

    #[test]
    fn every_subscription_is_told_to_resync() {
        let mut registry = Registry::default();
        let (idle, mut idle_rx) = member(1, 4);
        let (full, mut full_rx) = member(2, 1);
        registry.add_subscription(idle.clone());
        registry.add_subscription(full.clone());
        let _ = registry.join(CHANNEL, &full, false);
        registry.dispatch(CHANNEL, Bytes::from_static(b"e1"));
        registry.resync_all();
        assert_eq!(events(&mut idle_rx), ["resync"]);
        assert_eq!(events(&mut full_rx), ["e1"]);
        assert!(full.overflowed.is_cancelled(), "no room for the resync");
        assert!(!idle.overflowed.is_cancelled());

        registry.remove_subscription(idle.id, []);
        registry.resync_all();
        assert!(events(&mut idle_rx).is_empty());
    }

    #[test]
    fn channels_nobody_wants_are_forgotten_once() {
        let mut registry = Registry::default();
        let (alice, _rx) = member(1, 4);
        let other = "jobgate:live:job:other".to_owned();
        let _ = registry.join(CHANNEL, &alice, false);
        let _ = registry.join(&other, &alice, false);
        registry.confirm(&[CHANNEL.to_owned(), other.clone()]);
        assert!(registry.take_unwatched().is_empty());

        registry.remove_subscription(alice.id, [&other]);
        assert_eq!(registry.take_unwatched(), std::slice::from_ref(&other));
        assert!(registry.take_unwatched().is_empty());
        assert_eq!(
            registry.still_wanted(&[CHANNEL.to_owned(), other]),
            [CHANNEL]
        );
    }

    #[test]
    fn a_channel_still_awaited_is_kept() {
        let mut registry = Registry::default();
        let (alice, _rx) = member(1, 4);
        // Joined and left before Redis confirmed: the SUBSCRIBE is still on
        // its way, and its waiter must be answered.
        let (_confirmed, _) = waiting(registry.join(CHANNEL, &alice, false));
        registry.leave(CHANNEL, alice.id);
        assert!(registry.take_unwatched().is_empty());
        registry.confirm(&[CHANNEL.to_owned()]);
        assert_eq!(registry.take_unwatched(), [CHANNEL]);
    }
}
