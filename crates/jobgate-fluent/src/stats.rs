//! Counters a forwarder keeps, shared as `Arc<ForwarderStats>` so the
//! gateway's `/metrics` can read them without touching the forwarder.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// What happened to the records handed to a [`crate::Forwarder`].
#[derive(Debug, Default)]
pub struct ForwarderStats {
    forwarded: AtomicU64,
    dropped: AtomicU64,
    queued: AtomicU64,
    in_flight: AtomicU64,
    reconnects: AtomicU64,
    resent_batches: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatsSnapshot {
    pub forwarded: u64,
    pub dropped: u64,
    pub buffered: u64,
    pub reconnects: u64,
    pub resent_batches: u64,
}

impl ForwarderStats {
    /// Records Fluentd has acknowledged.
    pub fn forwarded(&self) -> u64 {
        self.forwarded.load(Relaxed)
    }

    /// Records dropped because the buffer was full (oldest first), or
    /// because they could not be encoded.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }

    /// Records accepted but not yet acknowledged: waiting in the buffer or
    /// in the batch on the wire.
    pub fn buffered(&self) -> u64 {
        self.queued.load(Relaxed) + self.in_flight.load(Relaxed)
    }

    /// Connections opened after the first one (after a failure or a close).
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Relaxed)
    }

    /// Batches sent again because their ack did not come.
    pub fn resent_batches(&self) -> u64 {
        self.resent_batches.load(Relaxed)
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            forwarded: self.forwarded(),
            dropped: self.dropped(),
            buffered: self.buffered(),
            reconnects: self.reconnects(),
            resent_batches: self.resent_batches(),
        }
    }

    pub(crate) fn add_dropped(&self, records: u64) {
        self.dropped.fetch_add(records, Relaxed);
    }

    pub(crate) fn set_queued(&self, records: usize) {
        self.queued.store(records as u64, Relaxed);
    }

    pub(crate) fn set_in_flight(&self, records: usize) {
        self.in_flight.store(records as u64, Relaxed);
    }

    pub(crate) fn add_forwarded(&self, records: u64) {
        self.forwarded.fetch_add(records, Relaxed);
    }

    pub(crate) fn add_reconnect(&self) {
        self.reconnects.fetch_add(1, Relaxed);
    }

    pub(crate) fn add_resent_batch(&self) {
        self.resent_batches.fetch_add(1, Relaxed);
    }
}
