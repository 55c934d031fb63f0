//! A session's frames waiting for the socket: a bounded queue, written to
//! any [`Sink`] in batches (every frame the sink takes, then one flush).
//!
//! Generic over the sink so that its claims — bounded, in order, nothing
//! lost or sent twice when a write is cancelled — are tested here with an
//! in-memory sink instead of a socket.

use std::collections::VecDeque;
use std::task::{Context, Poll};

use futures_util::{Sink, SinkExt};

/// Frames a session gathers before it writes them, even while more input
/// is ready (see [`Outbox::is_backlogged`]).
const BACKLOG: usize = 64;

/// Frames waiting for the socket, at most `limit`.
#[derive(Debug)]
pub(super) struct Outbox<M> {
    queue: VecDeque<M>,
    limit: usize,
    /// Frames were handed to the sink but not yet flushed.
    unflushed: bool,
}

impl<M> Outbox<M> {
    pub(super) fn new(limit: usize) -> Self {
        Self {
            queue: VecDeque::new(),
            limit: limit.max(1),
            unflushed: false,
        }
    }

    /// Queues `message`; `false` when the queue is full (the client is not
    /// reading).
    pub(super) fn push(&mut self, message: M) -> bool {
        if self.queue.len() >= self.limit {
            return false;
        }
        self.queue.push_back(message);
        true
    }

    /// Whether so many frames wait that they should be written now, even
    /// with more input ready: a quarter of the limit, or [`BACKLOG`].
    pub(super) fn is_backlogged(&self) -> bool {
        self.queue.len() >= BACKLOG.min(self.limit / 4).max(1)
    }

    /// Whether [`Outbox::write`] has anything to do.
    pub(super) fn has_work(&self) -> bool {
        self.unflushed || !self.queue.is_empty()
    }

    /// Hands every queued frame the sink takes to it, then flushes them
    /// with one write. Cancel-safe: a frame leaves the queue only once the
    /// sink has taken it, and what the sink holds is flushed by the next
    /// call.
    pub(super) async fn write<S>(&mut self, sink: &mut S) -> Result<(), S::Error>
    where
        S: Sink<M> + Unpin,
    {
        std::future::poll_fn(|cx| self.poll_write(sink, cx)).await
    }

    fn poll_write<S>(&mut self, sink: &mut S, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>>
    where
        S: Sink<M> + Unpin,
    {
        while !self.queue.is_empty() {
            match sink.poll_ready_unpin(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => return Poll::Pending,
            }
            if let Some(frame) = self.queue.pop_front() {
                sink.start_send_unpin(frame)?;
                self.unflushed = true;
            }
        }
        match sink.poll_flush_unpin(cx) {
            Poll::Ready(Ok(())) => {
                self.unflushed = false;
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;

    use futures_channel::mpsc;
    use futures_util::{FutureExt as _, StreamExt as _};

    use super::*;

    /// A socket in memory: takes at most `room` frames until they are
    /// flushed, and flushes only while `flushing` is set, so a test decides
    /// when a write has to wait.
    #[derive(Debug, Default)]
    struct Socket {
        room: usize,
        flushing: bool,
        taken: Vec<u32>,
        flushed: Vec<u32>,
    }

    impl Sink<u32> for Socket {
        type Error = std::convert::Infallible;

        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            if self.taken.len() < self.room {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            }
        }

        fn start_send(mut self: Pin<&mut Self>, frame: u32) -> Result<(), Self::Error> {
            self.taken.push(frame);
            Ok(())
        }

        fn poll_flush(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Result<(), Self::Error>> {
            if !self.flushing {
                return Poll::Pending;
            }
            let taken = std::mem::take(&mut self.taken);
            self.flushed.extend(taken);
            Poll::Ready(Ok(()))
        }

        fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            self.poll_flush(cx)
        }
    }

    fn outbox(frames: std::ops::Range<u32>, limit: usize) -> Outbox<u32> {
        let mut outbox = Outbox::new(limit);
        for frame in frames {
            assert!(outbox.push(frame), "frame {frame} fits");
        }
        outbox
    }

    #[test]
    fn a_full_outbox_refuses_the_next_frame_and_keeps_the_rest() {
        let mut outbox = outbox(0..3, 3);
        assert!(!outbox.push(3), "the fourth frame does not fit");
        let mut socket = Socket {
            room: 10,
            flushing: true,
            ..Socket::default()
        };
        assert!(outbox.write(&mut socket).now_or_never().is_some());
        assert_eq!(socket.flushed, [0, 1, 2]);
        assert!(!outbox.has_work());
        assert!(outbox.push(3), "room again once written");
    }

    #[test]
    fn every_frame_the_sink_takes_goes_out_in_one_flush() {
        let (sender, mut receiver) = mpsc::channel::<u32>(64);
        let mut sender = sender;
        let mut outbox = outbox(0..5, 16);
        assert!(outbox.write(&mut sender).now_or_never().is_some());
        let received: Vec<u32> =
            std::iter::from_fn(|| receiver.next().now_or_never().flatten()).collect();
        assert_eq!(received, [0, 1, 2, 3, 4]);
    }

    #[test]
    fn a_write_cancelled_while_the_socket_is_full_loses_and_repeats_nothing() {
        let mut outbox = outbox(0..6, 16);
        let mut socket = Socket {
            room: 2,
            flushing: false,
            ..Socket::default()
        };
        // The socket takes two frames, cannot flush them, and takes no more:
        // the write waits, and the session drops it (another branch of its
        // select won).
        assert!(outbox.write(&mut socket).now_or_never().is_none());
        assert_eq!(socket.taken, [0, 1]);
        assert!(outbox.has_work());
        // Frames queued after the cancelled write follow the earlier ones.
        assert!(outbox.push(6));
        socket.room = 3;
        assert!(outbox.write(&mut socket).now_or_never().is_none());
        assert_eq!(socket.taken, [0, 1, 2]);
        // The socket drains: the next write sends the rest, each frame once.
        socket.flushing = true;
        socket.room = 100;
        assert!(outbox.write(&mut socket).now_or_never().is_some());
        assert_eq!(socket.flushed, [0, 1, 2, 3, 4, 5, 6]);
        assert!(!outbox.has_work());
    }

    #[test]
    fn frames_taken_but_not_flushed_are_flushed_by_the_next_write() {
        let mut outbox = outbox(0..2, 16);
        let mut socket = Socket {
            room: 10,
            flushing: false,
            ..Socket::default()
        };
        assert!(outbox.write(&mut socket).now_or_never().is_none());
        assert_eq!(socket.taken, [0, 1]);
        // The queue is empty, but the outbox still has work: the flush.
        assert!(outbox.has_work(), "an unflushed write is work");
        socket.flushing = true;
        assert!(outbox.write(&mut socket).now_or_never().is_some());
        assert_eq!(socket.flushed, [0, 1]);
        assert!(!outbox.has_work());
    }

    #[test]
    fn a_dropped_receiver_ends_the_write_with_an_error() {
        let (mut sender, receiver) = mpsc::channel::<u32>(4);
        drop(receiver);
        let mut outbox = outbox(0..1, 4);
        let result = outbox.write(&mut sender).now_or_never();
        assert!(matches!(result, Some(Err(_))));
    }
}
