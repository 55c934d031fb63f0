//! The bounded record buffer between callers and the sending task.
//!
//! A tokio channel cannot drop its *oldest* item when full, and during an
//! outage the newest logs are the ones worth keeping, so this is a
//! `VecDeque` behind a `std::sync::Mutex` (held for a push or a pop, never
//! across an `.await`) plus a `Notify` that wakes the sending task.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

use crate::protocol::Event;
use crate::stats::ForwarderStats;

#[derive(Debug)]
pub(crate) struct RecordBuffer {
    events: Mutex<VecDeque<Event>>,
    capacity: usize,
    pushed: Notify,
    stats: Arc<ForwarderStats>,
}

impl RecordBuffer {
    pub(crate) fn new(capacity: usize, stats: Arc<ForwarderStats>) -> Self {
        let capacity = capacity.max(1);
        Self {
            events: Mutex::new(VecDeque::with_capacity(capacity.min(1024))),
            capacity,
            pushed: Notify::new(),
            stats,
        }
    }

    /// Adds `event`, dropping the oldest one if the buffer is full. Never
    /// waits for anything but the (briefly held) lock.
    pub(crate) fn push(&self, event: Event) {
        let mut events = self.lock();
        if events.len() >= self.capacity {
            events.pop_front();
            self.stats.add_dropped(1);
        }
        events.push_back(event);
        self.stats.set_queued(events.len());
        drop(events);
        self.pushed.notify_one();
    }

    /// Removes and returns up to `max` of the oldest events.
    pub(crate) fn take(&self, max: usize) -> Vec<Event> {
        let mut events = self.lock();
        let count = events.len().min(max);
        let taken: Vec<Event> = events.drain(..count).collect();
        self.stats.set_queued(events.len());
        taken
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Resolves after the next push (or at once if one happened since the
    /// last wake-up).
    pub(crate) async fn pushed(&self) {
        self.pushed.notified().await;
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Event>> {
        // A panic while holding this lock cannot leave the deque half-made.
        self.events.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::EventTime;

    fn event(n: u32) -> Event {
        let mut record = serde_json::Map::new();
        record.insert("n".into(), n.into());
        Event {
            time: EventTime {
                seconds: n,
                nanoseconds: 0,
            },
            record,
        }
    }

    #[test]
    fn drops_the_oldest_when_full() {
        let stats = Arc::new(ForwarderStats::default());
        let buffer = RecordBuffer::new(3, stats.clone());
        for n in 0..5 {
            buffer.push(event(n));
        }
        assert_eq!(stats.dropped(), 2);
        assert_eq!(stats.buffered(), 3);
        let kept: Vec<u32> = buffer.take(10).iter().map(|e| e.time.seconds).collect();
        assert_eq!(kept, [2, 3, 4]);
        assert_eq!(stats.buffered(), 0);
    }

    #[test]
    fn takes_at_most_max_in_order() {
        let buffer = RecordBuffer::new(10, Arc::default());
        for n in 0..5 {
            buffer.push(event(n));
        }
        let first: Vec<u32> = buffer.take(2).iter().map(|e| e.time.seconds).collect();
        assert_eq!(first, [0, 1]);
        assert_eq!(buffer.len(), 3);
    }
}
