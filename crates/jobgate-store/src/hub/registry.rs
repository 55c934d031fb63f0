//! The hub's bookkeeping: which subscriptions watch which channel, which
//! master serves each channel (by the slot map), which channels a link has
//! subscribed to, and who waits for a confirmation.
//!
//! A plain struct, held under the hub's `std::sync::Mutex`: nothing here
//! awaits or talks to Redis (handing a message to a subscription is a
//! `try_send`, waking a link a `Notify`), so the lock is never held across
//! an `.await`, and the rules are unit-tested below without a server:
//!
//! - a channel is confirmed on one link (one connection to its master) once
//!   Redis pushes the `ssubscribe` confirmation there, and stops being so
//!   when that link drops, when Redis pushes `sunsubscribe` (its slot moved
//!   away), or when a new slot map names another master;
//! - a channel that was confirmed and lost is subscribed again (at its new
//!   master, or at the same one once it is back), and only then are its
//!   watchers told to resync: the history they re-read then holds
//!   everything published while it was lost;
//! - a channel nobody wants any more is forgotten by its link's sweep;
//! - a subscription whose queue is full is cut off.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::slots::{NodeName, SlotMap};
use super::{HubMessage, NodeState, Published};

/// One connection of a link to its master; a reconnect makes a new one.
pub(super) type LinkId = u64;

/// Channels whose last watcher left that make a link unsubscribe at once
/// ([`Registry::take_left`]), rather than at its next sweep: under load
/// they go in steady batches of this size instead of one large burst.
pub(super) const LEFT_BATCH: usize = 256;
/// The most channels kept for [`Registry::take_left`] per master (while its
/// link is down, say); the sweep finds the others.
const LEFT_MAX: usize = 65_536;

/// Members of a channel past this many are indexed by id.
const INDEXED_FROM: usize = 32;

/// The members of one channel: a list, as every message goes to each of
/// them, and past [`INDEXED_FROM`] an index by id too, so that the
/// thousands of watchers of one job leave in constant time each when it
/// ends (a search of the list for each would take time quadratic in their
/// number). Most channels have one member: a job and its submitter.
#[derive(Debug, Default)]
struct Members {
    list: Vec<Member>,
    /// Position in `list` by member id, once the list is long.
    index: Option<HashMap<u64, usize>>,
}

impl Members {
    fn insert(&mut self, member: &Member) {
        if let Some(index) = &mut self.index {
            index.insert(member.id, self.list.len());
        }
        self.list.push(member.clone());
        if self.index.is_none() && self.list.len() > INDEXED_FROM {
            self.reindex();
        }
    }

    fn remove(&mut self, member_id: u64) {
        let at = match &mut self.index {
            Some(index) => index.remove(&member_id),
            None => self.list.iter().position(|m| m.id == member_id),
        };
        let Some(at) = at else {
            return;
        };
        self.list.swap_remove(at);
        if let (Some(index), Some(moved)) = (&mut self.index, self.list.get(at)) {
            index.insert(moved.id, at);
        }
    }

    /// Keeps the members for which `keep` is true.
    fn retain(&mut self, keep: impl FnMut(&Member) -> bool) {
        let before = self.list.len();
        self.list.retain(keep);
        if self.list.len() != before && self.index.is_some() {
            self.reindex();
        }
    }

    fn reindex(&mut self) {
        let index = self
            .list
            .iter()
            .enumerate()
            .map(|(at, m)| (m.id, at))
            .collect();
        self.index = Some(index);
    }

    fn iter(&self) -> impl Iterator<Item = &Member> {
        self.list.iter()
    }

    fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

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
    members: Members,
    waiters: Vec<oneshot::Sender<()>>,
    /// The master whose link subscribes to the channel; `None` while no
    /// slot map names one.
    node: Option<NodeName>,
    /// The link on which Redis confirmed the subscription.
    confirmed_on: Option<LinkId>,
    /// Waits for a SSUBSCRIBE: in its master's queue, or for a slot map.
    queued: bool,
    /// Was delivered on a link that is gone: its members resync once it is
    /// confirmed again.
    lost: bool,
}

impl Channel {
    /// Someone watches the channel, or waits for its confirmation.
    fn is_wanted(&self) -> bool {
        !self.members.is_empty() || self.waiters.iter().any(|waiter| !waiter.is_closed())
    }
}

/// A master as the registry knows it.
#[derive(Debug)]
struct Node {
    /// Channels waiting for a SSUBSCRIBE on this master's link, in order.
    /// Names forgotten or routed elsewhere since are skipped when taken.
    queue: VecDeque<String>,
    /// Wakes the master's link when its queue gains a name.
    wake: Arc<Notify>,
    /// The link's connection, while it is up.
    link: Option<LinkId>,
    /// The last connection attempt failed, or the link dropped, and no
    /// attempt has succeeded since.
    down: bool,
    /// How many channels are routed here.
    channels: usize,
    /// Channels routed here whose last watcher left, in order, until the
    /// link takes them ([`Registry::take_left`]) or sweeps.
    left: Vec<String>,
}

impl Node {
    fn new() -> Self {
        Self {
            queue: VecDeque::new(),
            wake: Arc::new(Notify::new()),
            link: None,
            down: false,
            channels: 0,
            left: Vec::new(),
        }
    }
}

/// A live subscription and the channels it should re-read.
#[derive(Debug)]
struct Subscriber {
    member: Member,
    /// Channels that may have missed messages, not yet taken by the
    /// subscription; a `Resync` is on its way while this is not empty.
    stale: HashSet<String>,
}

/// What [`Registry::join`] found about the channel's confirmation.
#[derive(Debug)]
pub(super) enum Joined {
    /// Redis delivers the channel already: nothing to wait for.
    Confirmed,
    /// Resolves once Redis confirms the channel.
    Waiting(oneshot::Receiver<()>),
}

/// Every channel the hub handles, every master, every live subscription.
#[derive(Debug)]
pub(super) struct Registry {
    channels: HashMap<String, Channel>,
    subscriptions: HashMap<u64, Subscriber>,
    /// The slot map in use; `None` until one was read.
    map: Option<SlotMap>,
    nodes: HashMap<NodeName, Node>,
    /// Channels waiting for a slot map that names their master.
    unrouted: Vec<String>,
    /// Wakes the topology task: the slot map should be read again.
    refresh: Arc<Notify>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new(Arc::new(Notify::new()))
    }
}

impl Registry {
    pub(super) fn new(refresh: Arc<Notify>) -> Self {
        Self {
            channels: HashMap::new(),
            subscriptions: HashMap::new(),
            map: None,
            nodes: HashMap::new(),
            unrouted: Vec::new(),
            refresh,
        }
    }

    /// A new subscription, so that it can be told to resync.
    pub(super) fn add_subscription(&mut self, member: Member) {
        self.subscriptions.insert(
            member.id,
            Subscriber {
                member,
                stale: HashSet::new(),
            },
        );
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

    /// The channels of the subscription that may have missed messages since
    /// it last asked (what a `Resync` is about).
    pub(super) fn take_stale(&mut self, member_id: u64) -> Vec<String> {
        self.subscriptions
            .get_mut(&member_id)
            .map(|subscriber| subscriber.stale.drain().collect())
            .unwrap_or_default()
    }

    /// Adds `member` to `channel` (unless `already_member`), and tells
    /// whether to wait for Redis to confirm the channel. A channel no link
    /// subscribes to yet is queued at its master (whose link is woken).
    pub(super) fn join(&mut self, channel: &str, member: &Member, already_member: bool) -> Joined {
        let entry = self.channels.entry(channel.to_owned()).or_default();
        if !already_member {
            entry.members.insert(member);
        }
        if entry.confirmed_on.is_some() {
            return Joined::Confirmed;
        }
        let (tx, confirmed) = oneshot::channel();
        entry.waiters.push(tx);
        if !entry.queued {
            self.route(channel);
        }
        Joined::Waiting(confirmed)
    }

    /// Removes the member from `channel`. The channel itself stays until its
    /// link takes it among [`LEFT_BATCH`] others ([`Registry::take_left`],
    /// the link is woken) or sweeps it ([`Registry::take_unwatched`]).
    pub(super) fn leave(&mut self, channel: &str, member_id: u64) {
        let Some(entry) = self.channels.get_mut(channel) else {
            return;
        };
        entry.members.remove(member_id);
        if entry.is_wanted() {
            return;
        }
        let Some(node) = entry
            .node
            .as_ref()
            .and_then(|node| self.nodes.get_mut(node))
        else {
            return;
        };
        if node.left.len() < LEFT_MAX {
            node.left.push(channel.to_owned());
            if node.left.len() == LEFT_BATCH {
                node.wake.notify_one();
            }
        }
    }

    /// Hands one message to every member of `channel`; members whose queue
    /// is full are cut off.
    pub(super) fn dispatch(&mut self, channel: &str, payload: Bytes) {
        let Some(entry) = self.channels.get_mut(channel) else {
            return;
        };
        // One message for every member: its header is read once, by the
        // first feed that needs it.
        let message = Published::new(payload);
        entry.members.retain(|member| {
            match member.tx.try_send(HubMessage::Event(message.clone())) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    member.overflowed.cancel();
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
    }

    /// Redis confirmed `channel` on `link`, `node`'s connection: whoever
    /// waits is woken, and if the channel had been lost, its members are
    /// told to resync. A confirmation from a link or a master the channel no
    /// longer belongs to changes nothing.
    pub(super) fn confirmed(&mut self, channel: &str, node: &NodeName, link: LinkId) {
        if self.nodes.get(node).and_then(|n| n.link) != Some(link) {
            return;
        }
        let Some(entry) = self.channels.get_mut(channel) else {
            return;
        };
        if entry.node.as_ref() != Some(node) {
            return;
        }
        entry.confirmed_on = Some(link);
        entry.queued = false;
        for waiter in entry.waiters.drain(..) {
            let _ = waiter.send(());
        }
        if entry.lost {
            entry.lost = false;
            resync(&mut self.subscriptions, channel, entry.members.iter());
        }
    }

    /// Redis pushed `sunsubscribe` for `channel` on `link`: unasked, that
    /// means the channel's slot moved to another master. The channel is lost
    /// until a fresh slot map routes it again; the topology task is woken.
    /// (The answer to the link's own SUNSUBSCRIBE names a channel forgotten
    /// already, or one watched again and not confirmed yet: nothing changes.)
    pub(super) fn unsubscribed(&mut self, channel: &str, link: LinkId) {
        let Some(entry) = self.channels.get_mut(channel) else {
            return;
        };
        if entry.confirmed_on != Some(link) {
            return;
        }
        entry.confirmed_on = None;
        entry.lost = true;
        self.unroute(channel);
    }

    /// `node` refused to subscribe to `channel` (MOVED, ASK, CLUSTERDOWN…):
    /// the slot map is stale. The channel waits for a fresh one.
    pub(super) fn misrouted(&mut self, channel: &str, node: &NodeName) {
        let Some(entry) = self.channels.get(channel) else {
            return;
        };
        if entry.node.as_ref() == Some(node) && entry.confirmed_on.is_none() {
            self.unroute(channel);
        }
    }

    /// Up to `max` channels for `node`'s link to SSUBSCRIBE to, in the order
    /// they were queued. A channel nobody wants any more is left for the
    /// sweep.
    pub(super) fn take_pending(&mut self, node: &NodeName, max: usize) -> Vec<String> {
        let Some(queue) = self.nodes.get_mut(node).map(|n| &mut n.queue) else {
            return Vec::new();
        };
        let mut taken = Vec::new();
        while taken.len() < max {
            let Some(name) = queue.pop_front() else {
                break;
            };
            let Some(entry) = self.channels.get_mut(&name) else {
                continue;
            };
            if !entry.queued || entry.node.as_ref() != Some(node) || entry.confirmed_on.is_some() {
                continue;
            }
            entry.queued = false;
            if entry.is_wanted() {
                taken.push(name);
            }
        }
        taken
    }

    /// `node`'s link connected as `link`: every channel routed there that
    /// no link delivers is queued for it.
    pub(super) fn link_up(&mut self, node: &NodeName, link: LinkId) {
        let Some(state) = self.nodes.get_mut(node) else {
            return;
        };
        state.link = Some(link);
        state.down = false;
        for (name, entry) in &mut self.channels {
            if entry.node.as_ref() == Some(node) && entry.confirmed_on.is_none() && !entry.queued {
                entry.queued = true;
                state.queue.push_back(name.clone());
            }
        }
        state.wake.notify_one();
    }

    /// `node`'s link could not connect (`link` is `None`) or dropped: what
    /// it delivered is lost until it is subscribed to again, and the slot
    /// map is read again (the master may have failed over).
    pub(super) fn link_down(&mut self, node: &NodeName, link: Option<LinkId>) {
        let Some(state) = self.nodes.get_mut(node) else {
            return;
        };
        if link.is_some() && state.link != link {
            return;
        }
        state.link = None;
        state.down = true;
        if let Some(link) = link {
            for entry in self.channels.values_mut() {
                if entry.confirmed_on == Some(link) {
                    entry.confirmed_on = None;
                    entry.lost = true;
                }
            }
        }
        self.refresh.notify_one();
    }

    /// Once [`LEFT_BATCH`] channels of `node` were left by their last
    /// watcher: those still unwatched are forgotten here, and those `link`
    /// delivers are returned, to be unsubscribed. Fewer wait for the sweep.
    pub(super) fn take_left(&mut self, node: &NodeName, link: LinkId) -> Vec<String> {
        let Some(state) = self.nodes.get_mut(node) else {
            return Vec::new();
        };
        if state.left.len() < LEFT_BATCH {
            return Vec::new();
        }
        let left = std::mem::take(&mut state.left);
        let unwatched: Vec<String> = left
            .into_iter()
            .filter(|name| {
                self.channels
                    .get(name)
                    .is_some_and(|entry| !entry.is_wanted() && entry.node.as_ref() == Some(node))
            })
            .collect();
        self.forget(unwatched, link)
    }

    /// Channels of `node` nobody watches any more: forgotten here; those
    /// `link` delivers are returned, to be unsubscribed.
    pub(super) fn take_unwatched(&mut self, node: &NodeName, link: LinkId) -> Vec<String> {
        if let Some(state) = self.nodes.get_mut(node) {
            state.left.clear();
        }
        let unwatched: Vec<String> = self
            .channels
            .iter()
            .filter(|(_, entry)| {
                entry.node.as_ref().is_none_or(|n| n == node) && !entry.is_wanted()
            })
            .map(|(name, _)| name.clone())
            .collect();
        self.forget(unwatched, link)
    }

    /// Forgets `channels` (nobody watches them); returns those `link`
    /// delivers, to be unsubscribed.
    fn forget(&mut self, channels: Vec<String>, link: LinkId) -> Vec<String> {
        let mut subscribed = Vec::new();
        for name in channels {
            if let Some(entry) = self.channels.remove(&name) {
                self.count_out(entry.node.as_ref());
                if entry.confirmed_on == Some(link) {
                    subscribed.push(name);
                }
            }
        }
        subscribed
    }

    /// A new slot map: every channel whose master changed is queued at its
    /// new one (a channel delivered by the old one is lost until then), and
    /// channels that waited for a map are routed. Masters the map no longer
    /// names are forgotten (the topology task stops their links).
    pub(super) fn install_map(&mut self, map: SlotMap) {
        for master in map.masters() {
            self.nodes
                .entry(master.name.clone())
                .or_insert_with(Node::new);
        }
        self.nodes
            .retain(|name, _| map.masters().iter().any(|m| m.name == *name));
        self.map = Some(map);
        self.unrouted.clear();
        let names: Vec<String> = self.channels.keys().cloned().collect();
        for name in names {
            let Some(entry) = self.channels.get_mut(&name) else {
                continue;
            };
            let owner = self.map.as_ref().and_then(|map| map.owner(&name)).cloned();
            let moved = entry.node != owner;
            let node_gone = entry
                .node
                .as_ref()
                .is_some_and(|n| !self.nodes.contains_key(n));
            if moved || node_gone || entry.node.is_none() {
                if entry.confirmed_on.take().is_some() {
                    entry.lost = true;
                }
                entry.queued = false;
                if !entry.is_wanted() && entry.confirmed_on.is_none() {
                    // Nobody waits for it and no link delivers it.
                    let entry = self.channels.remove(&name);
                    if let Some(entry) = entry {
                        self.count_out(entry.node.as_ref());
                    }
                    continue;
                }
                self.route(&name);
            }
        }
    }

    /// Whether the hub needs nothing of the topology task: a slot map is in
    /// use, every channel has a master, and no master with channels is
    /// known to be unreachable.
    pub(super) fn is_settled(&self) -> bool {
        self.map.as_ref().is_some_and(SlotMap::is_complete)
            && self.unrouted.is_empty()
            && self.nodes.values().all(|n| n.channels == 0 || !n.down)
    }

    /// Whether events can be delivered: a slot map is in use, some link is
    /// up, and every master with channels has its link up.
    pub(super) fn is_connected(&self) -> bool {
        self.map.is_some()
            && self.nodes.values().any(|n| n.link.is_some())
            && self
                .nodes
                .values()
                .all(|n| n.channels == 0 || n.link.is_some())
    }

    /// Each master and its link, by name.
    pub(super) fn node_states(&self) -> Vec<NodeState> {
        let mut states: Vec<NodeState> = self
            .nodes
            .iter()
            .map(|(name, node)| NodeState {
                node: name.to_string(),
                linked: node.link.is_some(),
                channels: node.channels,
            })
            .collect();
        states.sort_by(|a, b| a.node.cmp(&b.node));
        states
    }

    /// The `Notify` that wakes `node`'s link.
    pub(super) fn wake_of(&self, node: &NodeName) -> Option<Arc<Notify>> {
        self.nodes.get(node).map(|n| Arc::clone(&n.wake))
    }

    /// Queues `channel` at the master the slot map names, waking its link,
    /// or for the next slot map when there is none.
    fn route(&mut self, channel: &str) {
        let owner = self
            .map
            .as_ref()
            .and_then(|map| map.owner(channel))
            .cloned();
        let owner = owner.filter(|owner| self.nodes.contains_key(owner));
        let Some(entry) = self.channels.get_mut(channel) else {
            return;
        };
        let previous = std::mem::replace(&mut entry.node, owner.clone());
        entry.queued = true;
        self.count_out(previous.as_ref());
        match owner.and_then(|owner| self.nodes.get_mut(&owner)) {
            Some(node) => {
                node.channels += 1;
                node.queue.push_back(channel.to_owned());
                node.wake.notify_one();
            }
            None => {
                self.unrouted.push(channel.to_owned());
                self.refresh.notify_one();
            }
        }
    }

    /// `channel` waits for a fresh slot map, which the topology task is
    /// asked to read.
    fn unroute(&mut self, channel: &str) {
        let Some(entry) = self.channels.get_mut(channel) else {
            return;
        };
        let previous = entry.node.take();
        entry.queued = true;
        self.count_out(previous.as_ref());
        self.unrouted.push(channel.to_owned());
        self.refresh.notify_one();
    }

    /// A channel no longer routed to `node`.
    fn count_out(&mut self, node: Option<&NodeName>) {
        if let Some(node) = node.and_then(|node| self.nodes.get_mut(node)) {
            node.channels = node.channels.saturating_sub(1);
        }
    }
}

/// Marks `channel` stale for each of `members`, and sends `Resync` to each
/// that had nothing stale yet (one already waits for the others); a member
/// whose queue is full is cut off.
fn resync<'a>(
    subscriptions: &mut HashMap<u64, Subscriber>,
    channel: &str,
    members: impl IntoIterator<Item = &'a Member>,
) {
    for member in members {
        let Some(subscriber) = subscriptions.get_mut(&member.id) else {
            continue;
        };
        let first = subscriber.stale.is_empty();
        subscriber.stale.insert(channel.to_owned());
        if first
            && let Err(mpsc::error::TrySendError::Full(_)) =
                subscriber.member.tx.try_send(HubMessage::Resync)
        {
            subscriber.member.overflowed.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHANNEL: &str = "jobgate:live:job:{0193a0b4-7c1e-7d4e-9a2b-1c2d3e4f5a6b}";
    const OTHER: &str = "jobgate:live:job:{other}";

    fn member(id: u64, capacity: usize) -> (Member, mpsc::Receiver<HubMessage>) {
        let (tx, rx) = mpsc::channel(capacity);
        let member = Member {
            id,
            tx,
            overflowed: CancellationToken::new(),
        };
        (member, rx)
    }

    fn node(name: &str) -> NodeName {
        Arc::from(name)
    }

    /// A registry over one standalone node whose link is up as link 1.
    fn linked() -> (Registry, NodeName) {
        let mut registry = Registry::default();
        let a = node("a:1");
        registry.install_map(SlotMap::single(a.clone()));
        registry.link_up(&a, 1);
        (registry, a)
    }

    fn waiting(joined: Joined) -> oneshot::Receiver<()> {
        match joined {
            Joined::Waiting(confirmed) => confirmed,
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
    fn a_channel_is_queued_once_and_every_waiter_is_woken_by_its_confirmation() {
        let (mut registry, a) = linked();
        let (alice, _alice_rx) = member(1, 4);
        let (bob, _bob_rx) = member(2, 4);
        let mut first = waiting(registry.join(CHANNEL, &alice, false));
        let mut second = waiting(registry.join(CHANNEL, &bob, false));
        assert_eq!(registry.take_pending(&a, 10), [CHANNEL], "asked for once");
        assert!(registry.take_pending(&a, 10).is_empty());
        assert!(first.try_recv().is_err(), "not confirmed yet");

        registry.confirmed(CHANNEL, &a, 1);
        assert_eq!(first.try_recv(), Ok(()));
        assert_eq!(second.try_recv(), Ok(()));
        assert!(matches!(
            registry.join(CHANNEL, &alice, true),
            Joined::Confirmed
        ));
    }

    #[test]
    fn of_many_watchers_those_who_left_or_were_cut_off_get_nothing_more() {
        let (mut registry, a) = linked();
        // Past INDEXED_FROM: the members are indexed by id.
        let count = 3 * INDEXED_FROM as u64;
        let mut receivers = Vec::new();
        for id in 0..count {
            // Member 7's queue holds one message: the second cuts it off.
            let (member, rx) = member(id, if id == 7 { 1 } else { 8 });
            let _ = registry.join(CHANNEL, &member, false);
            receivers.push(rx);
        }
        let _ = registry.take_pending(&a, 10);
        registry.confirmed(CHANNEL, &a, 1);

        registry.dispatch(CHANNEL, Bytes::from_static(b"one"));
        // Leaving from the front, the back and the middle, and twice.
        for id in [0, count - 1, 40, 41, 3, 40] {
            registry.leave(CHANNEL, id);
        }
        registry.dispatch(CHANNEL, Bytes::from_static(b"two"));
        registry.leave(CHANNEL, 8);
        registry.dispatch(CHANNEL, Bytes::from_static(b"three"));

        for (id, rx) in (0..count).zip(&mut receivers) {
            let expected: &[&str] = match id {
                0 | 3 | 40 | 41 => &["one"],
                _ if id == count - 1 => &["one"],
                7 => &["one"],
                8 => &["one", "two"],
                _ => &["one", "two", "three"],
            };
            assert_eq!(events(rx), expected, "member {id}");
        }
        // The others leave too: nobody wants the channel any more.
        for id in 0..count {
            registry.leave(CHANNEL, id);
        }
        assert!(!registry.channels[CHANNEL].is_wanted());
    }

    #[test]
    fn without_a_slot_map_a_channel_waits_and_asks_for_one() {
        let refresh = Arc::new(Notify::new());
        let mut registry = Registry::new(Arc::clone(&refresh));
        let (alice, _rx) = member(1, 4);
        let _confirmed = waiting(registry.join(CHANNEL, &alice, false));
        assert!(!registry.is_settled());
        assert!(!registry.is_connected());
        let a = node("a:1");
        registry.install_map(SlotMap::single(a.clone()));
        // Routed, but the link is not up yet: nothing is taken before it is.
        registry.link_up(&a, 1);
        assert_eq!(registry.take_pending(&a, 10), [CHANNEL]);
        assert!(registry.is_settled());
    }

    #[test]
    fn a_dropped_link_loses_its_channels_and_their_watchers_resync_once_confirmed_again() {
        let (mut registry, a) = linked();
        let (alice, mut alice_rx) = member(1, 4);
        let (bob, mut bob_rx) = member(2, 4);
        registry.add_subscription(alice.clone());
        registry.add_subscription(bob.clone());
        let _ = registry.join(CHANNEL, &alice, false);
        let _ = registry.join(OTHER, &bob, false);
        registry.take_pending(&a, 10);
        registry.confirmed(CHANNEL, &a, 1);
        registry.confirmed(OTHER, &a, 1);
        assert!(registry.is_connected());

        registry.link_down(&a, Some(1));
        assert!(!registry.is_connected());
        assert!(!registry.is_settled(), "a master with channels is down");
        // A late confirmation on the dead link changes nothing.
        registry.confirmed(CHANNEL, &a, 1);
        let _confirmed = waiting(registry.join(CHANNEL, &alice, true));

        registry.link_up(&a, 2);
        let mut pending = registry.take_pending(&a, 10);
        pending.sort();
        assert_eq!(pending, [CHANNEL, OTHER]);
        assert!(
            events(&mut alice_rx).is_empty(),
            "not before it is confirmed"
        );
        registry.confirmed(CHANNEL, &a, 2);
        assert_eq!(events(&mut alice_rx), ["resync"]);
        assert_eq!(registry.take_stale(alice.id), [CHANNEL]);
        assert!(
            events(&mut bob_rx).is_empty(),
            "bob's channel is not back yet"
        );
        registry.confirmed(OTHER, &a, 2);
        assert_eq!(events(&mut bob_rx), ["resync"]);
        assert_eq!(registry.take_stale(bob.id), [OTHER]);
    }

    #[test]
    fn only_the_watchers_of_the_lost_channels_resync() {
        let mut registry = Registry::default();
        let (a, b) = (node("a:1"), node("b:1"));
        // Two masters: CHANNEL's slot on a, OTHER's on b.
        let map = two_masters(&a, &b);
        registry.install_map(map);
        registry.link_up(&a, 1);
        registry.link_up(&b, 2);
        let (alice, mut alice_rx) = member(1, 4);
        let (bob, mut bob_rx) = member(2, 4);
        registry.add_subscription(alice.clone());
        registry.add_subscription(bob.clone());
        let _ = registry.join(CHANNEL_ON_A, &alice, false);
        let _ = registry.join(CHANNEL_ON_B, &bob, false);
        assert_eq!(registry.take_pending(&a, 10), [CHANNEL_ON_A]);
        assert_eq!(registry.take_pending(&b, 10), [CHANNEL_ON_B]);
        registry.confirmed(CHANNEL_ON_A, &a, 1);
        registry.confirmed(CHANNEL_ON_B, &b, 2);

        registry.link_down(&b, Some(2));
        registry.link_up(&b, 3);
        assert_eq!(registry.take_pending(&b, 10), [CHANNEL_ON_B]);
        registry.confirmed(CHANNEL_ON_B, &b, 3);
        assert!(events(&mut alice_rx).is_empty());
        assert_eq!(events(&mut bob_rx), ["resync"]);
        let states = registry.node_states();
        assert_eq!(states.len(), 2);
        assert!(states.iter().all(|s| s.linked && s.channels == 1));
    }

    #[test]
    fn an_unasked_sunsubscribe_reroutes_the_channel_to_its_new_master() {
        let mut registry = Registry::default();
        let (a, b) = (node("a:1"), node("b:1"));
        registry.install_map(two_masters(&a, &b));
        registry.link_up(&a, 1);
        registry.link_up(&b, 2);
        let (alice, mut rx) = member(1, 4);
        registry.add_subscription(alice.clone());
        let _ = registry.join(CHANNEL_ON_A, &alice, false);
        registry.take_pending(&a, 10);
        registry.confirmed(CHANNEL_ON_A, &a, 1);

        // a's slot moved to b: a pushes sunsubscribe.
        registry.unsubscribed(CHANNEL_ON_A, 1);
        assert!(!registry.is_settled(), "waits for a fresh slot map");
        // The fresh map: the slots that were a's are b's now.
        registry.install_map(two_masters(&b, &a));
        assert!(registry.take_pending(&a, 10).is_empty());
        assert_eq!(registry.take_pending(&b, 10), [CHANNEL_ON_A]);
        // A late confirmation from a is not b's.
        registry.confirmed(CHANNEL_ON_A, &a, 1);
        assert!(events(&mut rx).is_empty());
        registry.confirmed(CHANNEL_ON_A, &b, 2);
        assert_eq!(events(&mut rx), ["resync"]);
    }

    #[test]
    fn the_answer_to_the_links_own_sunsubscribe_changes_nothing() {
        let (mut registry, a) = linked();
        let (alice, _rx) = member(1, 4);
        let _ = registry.join(CHANNEL, &alice, false);
        registry.take_pending(&a, 10);
        registry.confirmed(CHANNEL, &a, 1);
        registry.leave(CHANNEL, alice.id);
        assert_eq!(registry.take_unwatched(&a, 1), [CHANNEL]);
        // Watched again before the SUNSUBSCRIBE was answered.
        let _confirmed = waiting(registry.join(CHANNEL, &alice, false));
        registry.unsubscribed(CHANNEL, 1);
        assert!(registry.is_settled(), "no slot map read for it");
        assert_eq!(registry.take_pending(&a, 10), [CHANNEL]);
    }

    #[test]
    fn a_moved_answer_sends_the_channel_back_for_a_fresh_map() {
        let (mut registry, a) = linked();
        let (alice, _rx) = member(1, 4);
        let _ = registry.join(CHANNEL, &alice, false);
        registry.take_pending(&a, 10);
        registry.misrouted(CHANNEL, &a);
        assert!(!registry.is_settled());
        registry.install_map(SlotMap::single(a.clone()));
        assert_eq!(registry.take_pending(&a, 10), [CHANNEL]);
        assert!(registry.is_settled());
    }

    #[test]
    fn a_message_reaches_each_member_once() {
        let (mut registry, _) = linked();
        let (alice, mut alice_rx) = member(1, 4);
        let (bob, mut bob_rx) = member(2, 4);
        let _ = registry.join(CHANNEL, &alice, false);
        let _ = registry.join(CHANNEL, &alice, true);
        let _ = registry.join(CHANNEL, &bob, false);
        registry.dispatch(CHANNEL, Bytes::from_static(b"e1"));
        registry.dispatch("jobgate:live:job:{nobody}", Bytes::from_static(b"e2"));
        assert_eq!(events(&mut alice_rx), ["e1"]);
        assert_eq!(events(&mut bob_rx), ["e1"]);

        registry.leave(CHANNEL, bob.id);
        registry.dispatch(CHANNEL, Bytes::from_static(b"e3"));
        assert_eq!(events(&mut alice_rx), ["e3"]);
        assert!(events(&mut bob_rx).is_empty());
    }

    #[test]
    fn a_member_whose_queue_is_full_is_cut_off() {
        let (mut registry, _) = linked();
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
    fn a_member_with_no_room_for_its_resync_is_cut_off_and_one_resync_covers_many_channels() {
        let (mut registry, a) = linked();
        let (full, mut full_rx) = member(1, 1);
        let (idle, mut idle_rx) = member(2, 4);
        registry.add_subscription(full.clone());
        registry.add_subscription(idle.clone());
        for channel in [CHANNEL, OTHER] {
            let _ = registry.join(channel, &full, false);
            let _ = registry.join(channel, &idle, false);
        }
        registry.take_pending(&a, 10);
        registry.confirmed(CHANNEL, &a, 1);
        registry.confirmed(OTHER, &a, 1);
        registry.dispatch(CHANNEL, Bytes::from_static(b"e1"));
        registry.link_down(&a, Some(1));
        registry.link_up(&a, 2);
        registry.take_pending(&a, 10);
        registry.confirmed(CHANNEL, &a, 2);
        registry.confirmed(OTHER, &a, 2);
        assert_eq!(events(&mut full_rx), ["e1"]);
        assert!(full.overflowed.is_cancelled(), "no room for the resync");
        assert_eq!(
            events(&mut idle_rx),
            ["e1", "resync"],
            "one for both channels"
        );
        let mut stale = registry.take_stale(idle.id);
        stale.sort();
        assert_eq!(stale, [CHANNEL, OTHER]);

        registry.remove_subscription(idle.id, [&CHANNEL.to_owned(), &OTHER.to_owned()]);
        assert!(registry.take_stale(idle.id).is_empty());
    }

    #[test]
    fn channels_nobody_wants_are_swept_once_and_only_subscribed_ones_unsubscribed() {
        let (mut registry, a) = linked();
        let (alice, _rx) = member(1, 4);
        let _ = registry.join(CHANNEL, &alice, false);
        let _ = registry.join(OTHER, &alice, false);
        registry.take_pending(&a, 10);
        registry.confirmed(CHANNEL, &a, 1);
        assert!(registry.take_unwatched(&a, 1).is_empty());

        registry.remove_subscription(alice.id, [&CHANNEL.to_owned(), &OTHER.to_owned()]);
        // OTHER was never confirmed: forgotten without an SUNSUBSCRIBE.
        assert_eq!(registry.take_unwatched(&a, 1), [CHANNEL]);
        assert!(registry.take_unwatched(&a, 1).is_empty());
        assert_eq!(registry.node_states()[0].channels, 0);
    }

    #[test]
    fn a_batch_of_left_channels_wakes_the_link_and_is_taken_at_once() {
        use futures_util::FutureExt as _;

        let (mut registry, a) = linked();
        let wake = registry.wake_of(&a).expect("a's link");
        let (alice, _rx) = member(1, 4);
        let names: Vec<String> = (0..LEFT_BATCH)
            .map(|i| format!("jobgate:live:job:{{job-{i}}}"))
            .collect();
        for name in &names {
            let _ = registry.join(name, &alice, false);
        }
        assert_eq!(registry.take_pending(&a, LEFT_BATCH).len(), LEFT_BATCH);
        for name in &names {
            registry.confirmed(name, &a, 1);
        }
        let _ = wake.notified().now_or_never();

        for name in &names[..LEFT_BATCH - 1] {
            registry.leave(name, alice.id);
        }
        assert!(wake.notified().now_or_never().is_none(), "not woken yet");
        assert!(
            registry.take_left(&a, 1).is_empty(),
            "fewer than a batch wait for the sweep"
        );
        // Watched again before the batch is taken: it stays.
        let _ = registry.join(&names[0], &alice, false);
        registry.leave(&names[LEFT_BATCH - 1], alice.id);
        assert!(
            wake.notified().now_or_never().is_some(),
            "woken by the batch"
        );

        let taken = registry.take_left(&a, 1);
        assert_eq!(taken, names[1..], "every other channel, in the order left");
        assert!(registry.take_left(&a, 1).is_empty(), "taken once");
        assert!(registry.take_unwatched(&a, 1).is_empty(), "forgotten");
        assert_eq!(registry.node_states()[0].channels, 1);
        registry.leave(&names[0], alice.id);
        assert_eq!(registry.take_unwatched(&a, 1), names[..1]);
    }

    #[test]
    fn a_channel_still_awaited_is_kept() {
        let (mut registry, a) = linked();
        let (alice, _rx) = member(1, 4);
        // Joined and left before Redis confirmed: the SSUBSCRIBE is still on
        // its way, and its waiter must be answered.
        let _confirmed = waiting(registry.join(CHANNEL, &alice, false));
        registry.leave(CHANNEL, alice.id);
        assert!(registry.take_unwatched(&a, 1).is_empty());
        registry.take_pending(&a, 10);
        registry.confirmed(CHANNEL, &a, 1);
        assert_eq!(registry.take_unwatched(&a, 1), [CHANNEL]);
    }

    #[test]
    fn a_channel_left_before_its_turn_is_not_subscribed() {
        let (mut registry, a) = linked();
        let (alice, _rx) = member(1, 4);
        drop(registry.join(CHANNEL, &alice, false));
        registry.leave(CHANNEL, alice.id);
        assert!(registry.take_pending(&a, 10).is_empty());
    }

    // Two masters for the tests: `a` owns slots 0–8191, `b` the rest.
    // CLUSTER KEYSLOT bar = 5061 (on a), foo = 12182 (on b).
    const CHANNEL_ON_A: &str = "jobgate:live:job:{bar}";
    const CHANNEL_ON_B: &str = "jobgate:live:job:{foo}";

    fn two_masters(a: &NodeName, b: &NodeName) -> SlotMap {
        use redis::Value;
        let master = |name: &NodeName| {
            let (host, port) = name.split_once(':').expect("host:port");
            Value::Array(vec![
                Value::BulkString(host.as_bytes().to_vec()),
                Value::Int(port.parse().expect("port")),
            ])
        };
        let reply = Value::Array(vec![
            Value::Array(vec![Value::Int(0), Value::Int(8191), master(a)]),
            Value::Array(vec![Value::Int(8192), Value::Int(16383), master(b)]),
        ]);
        SlotMap::from_cluster_slots(&reply, "unused").expect("a slot map")
    }
}
