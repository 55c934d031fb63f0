//! The handle callers hold: [`Forwarder::send`] puts a record in the
//! bounded buffer and returns at once; a background task (see `sender`)
//! does everything that can wait or fail.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::buffer::RecordBuffer;
use crate::config::ForwarderConfig;
use crate::error::FluentError;
use crate::protocol::{Event, EventTime};
use crate::sender::Sender;
use crate::stats::ForwarderStats;

/// Forwards log records to Fluentd. Cheap to clone; every clone feeds the
/// same buffer and task. Dropping the last clone asks the task to flush and
/// stop; [`Forwarder::shutdown`] does the same and waits a bounded time.
#[derive(Debug, Clone)]
pub struct Forwarder {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    buffer: Arc<RecordBuffer>,
    stats: Arc<ForwarderStats>,
    shutdown: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
    _cancel_on_drop: DropGuard,
}

impl Forwarder {
    /// Spawns the sending task on the current tokio runtime. Does not
    /// connect yet: an unreachable Fluentd is not an error here, only a
    /// reason to buffer.
    pub fn start(config: ForwarderConfig) -> Result<Self, FluentError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| FluentError::NoRuntime)?;
        let stats = Arc::new(ForwarderStats::default());
        let buffer = Arc::new(RecordBuffer::new(config.buffer_capacity, stats.clone()));
        let shutdown = CancellationToken::new();
        let sender = Sender::new(config, buffer.clone(), stats.clone(), shutdown.clone());
        let task = runtime.spawn(sender.run());
        Ok(Self {
            inner: Arc::new(Inner {
                buffer,
                stats,
                _cancel_on_drop: shutdown.clone().drop_guard(),
                shutdown,
                task: Mutex::new(Some(task)),
            }),
        })
    }

    /// Queues `record`, stamped with the current time. Never blocks: when
    /// the buffer is full the oldest record is dropped and counted.
    pub fn send(&self, record: Map<String, Value>) {
        self.send_at(EventTime::now(), record);
    }

    /// Queues `record` with an explicit time.
    pub fn send_at(&self, time: EventTime, record: Map<String, Value>) {
        self.inner.buffer.push(Event { time, record });
    }

    /// Queues one already-formatted JSON log line. A line that is not a JSON
    /// object is forwarded as `{"message": <the line>}` rather than lost.
    pub fn send_line(&self, line: &str) {
        let line = line.trim_end_matches(['\n', '\r']);
        if line.trim().is_empty() {
            return;
        }
        let record = match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(map)) => map,
            _ => {
                let mut map = Map::new();
                map.insert("message".into(), Value::String(line.into()));
                map
            }
        };
        self.send(record);
    }

    /// The counters, for `/metrics`.
    pub fn stats(&self) -> Arc<ForwarderStats> {
        self.inner.stats.clone()
    }

    /// Stops taking new batches' linger time, sends what is buffered and
    /// waits for its acks, for at most `timeout`; then the task is aborted
    /// and what was left is reported. Records sent after this are kept in
    /// the buffer but no longer forwarded. A second call returns at once.
    pub async fn shutdown(&self, timeout: Duration) -> Result<(), FluentError> {
        self.inner.shutdown.cancel();
        let task = self
            .inner
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(mut task) = task else {
            return Ok(());
        };
        if tokio::time::timeout(timeout, &mut task).await.is_err() {
            task.abort();
            return Err(FluentError::ShutdownTimedOut {
                timeout,
                undelivered: self.inner.stats.buffered(),
            });
        }
        Ok(())
    }
}
