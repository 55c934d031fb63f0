//! The background task: takes batches from the buffer (up to
//! `batch_max_records`, or whatever came within `batch_linger`), sends each
//! as one chunk and waits for its ack. A batch whose ack does not come is
//! kept and sent again, with the same chunk id, on a new connection after a
//! backoff, so delivery is at-least-once while Fluentd is up.
//!
//! Only one batch is on the wire at a time: log volume is modest, and it
//! keeps the ack bookkeeping to a single `Option`.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::buffer::RecordBuffer;
use crate::config::ForwarderConfig;
use crate::error::DeliveryError;
use crate::protocol::{Event, acked_chunk, decode_prefix, encode_batch, new_chunk_id};
use crate::stats::ForwarderStats;

#[derive(Debug)]
pub(crate) struct Sender {
    config: ForwarderConfig,
    buffer: Arc<RecordBuffer>,
    stats: Arc<ForwarderStats>,
    shutdown: CancellationToken,
    connection: Option<Connection>,
    pending: Option<Batch>,
    backoff: Backoff,
    has_connected: bool,
    in_outage: bool,
}

/// An encoded chunk waiting for its ack.
#[derive(Debug)]
struct Batch {
    chunk_id: String,
    payload: Vec<u8>,
    records: usize,
    written: bool,
}

#[derive(Debug)]
struct Connection {
    stream: TcpStream,
    received: Vec<u8>,
    /// Has carried an acked batch: Fluentd may have closed it since, so a
    /// failure on it is retried at once on a fresh connection.
    reused: bool,
}

impl Sender {
    pub(crate) fn new(
        config: ForwarderConfig,
        buffer: Arc<RecordBuffer>,
        stats: Arc<ForwarderStats>,
        shutdown: CancellationToken,
    ) -> Self {
        let backoff = Backoff::new(config.backoff_initial, config.backoff_max);
        Self {
            config,
            buffer,
            stats,
            shutdown,
            connection: None,
            pending: None,
            backoff,
            has_connected: false,
            in_outage: false,
        }
    }

    /// Runs until shutdown is requested and everything buffered is acked.
    pub(crate) async fn run(mut self) {
        loop {
            let batch = match self.pending.take() {
                Some(batch) => batch,
                None => {
                    let events = self.next_events().await;
                    if events.is_empty() {
                        if self.shutdown.is_cancelled() {
                            return;
                        }
                        continue;
                    }
                    match self.encode(events) {
                        Some(batch) => batch,
                        None => continue,
                    }
                }
            };
            self.deliver(batch).await;
        }
    }

    /// Waits for records, then lingers for more up to a full batch. Once
    /// shutdown is requested it no longer waits at all.
    async fn next_events(&self) -> Vec<Event> {
        let max = self.config.batch_max_records.max(1);
        if self.shutdown.is_cancelled() {
            return self.buffer.take(max);
        }
        while self.buffer.len() == 0 {
            tokio::select! {
                () = self.buffer.pushed() => {}
                () = self.shutdown.cancelled() => return self.buffer.take(max),
            }
        }
        let deadline = Instant::now() + self.config.batch_linger;
        while self.buffer.len() < max {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => break,
                () = self.buffer.pushed() => {}
                () = self.shutdown.cancelled() => break,
            }
        }
        self.buffer.take(max)
    }

    fn encode(&self, events: Vec<Event>) -> Option<Batch> {
        let chunk_id = new_chunk_id();
        match encode_batch(&self.config.tag, &events, self.config.mode, &chunk_id) {
            Ok(payload) => {
                self.stats.set_in_flight(events.len());
                Some(Batch {
                    chunk_id,
                    payload,
                    records: events.len(),
                    written: false,
                })
            }
            Err(error) => {
                self.stats.add_dropped(events.len() as u64);
                tracing::warn!(records = events.len(), %error, "could not encode log records for Fluentd; dropped them");
                None
            }
        }
    }

    /// One attempt at `batch`; on failure it stays pending for the next.
    async fn deliver(&mut self, mut batch: Batch) {
        let mut retry_at_once = false;
        let outcome = match self.connection.take() {
            Some(connection) => {
                retry_at_once = connection.reused;
                self.send_on(connection, &mut batch).await
            }
            None => match self.connect().await {
                Ok(connection) => self.send_on(connection, &mut batch).await,
                Err(error) => Err(error),
            },
        };
        match outcome {
            Ok(()) => {
                self.stats.set_in_flight(0);
                self.stats.add_forwarded(batch.records as u64);
                self.backoff.reset();
                if self.in_outage {
                    self.in_outage = false;
                    tracing::info!(address = %self.config.address, dropped_total = self.stats.dropped(), "Fluentd reachable again; log forwarding resumed");
                }
            }
            Err(error) => {
                self.pending = Some(batch);
                if retry_at_once {
                    tracing::debug!(%error, "Fluentd connection went stale; retrying on a new one");
                    return;
                }
                if !self.in_outage {
                    self.in_outage = true;
                    tracing::warn!(address = %self.config.address, %error, "cannot forward logs to Fluentd; buffering and retrying");
                }
                self.pause().await;
            }
        }
    }

    async fn connect(&mut self) -> Result<Connection, DeliveryError> {
        let address = (self.config.address.host(), self.config.address.port());
        let timeout = self.config.connect_timeout;
        let stream = tokio::time::timeout(timeout, TcpStream::connect(address))
            .await
            .map_err(|_| DeliveryError::ConnectTimeout(timeout))??;
        stream.set_nodelay(true)?;
        if self.has_connected {
            self.stats.add_reconnect();
        }
        self.has_connected = true;
        Ok(Connection {
            stream,
            received: Vec::new(),
            reused: false,
        })
    }

    /// Writes the batch and waits for its ack, within `ack_timeout`; keeps
    /// the connection only if that worked.
    async fn send_on(
        &mut self,
        mut connection: Connection,
        batch: &mut Batch,
    ) -> Result<(), DeliveryError> {
        if batch.written {
            self.stats.add_resent_batch();
        }
        batch.written = true;
        let timeout = self.config.ack_timeout;
        tokio::time::timeout(timeout, connection.send_and_await_ack(batch))
            .await
            .map_err(|_| DeliveryError::AckTimeout(timeout))??;
        connection.reused = true;
        self.connection = Some(connection);
        Ok(())
    }

    /// Sleeps the backoff delay; cut short by a shutdown request, once.
    async fn pause(&mut self) {
        let delay = self.backoff.next_delay();
        if self.shutdown.is_cancelled() {
            tokio::time::sleep(delay).await;
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = self.shutdown.cancelled() => {}
        }
    }
}

impl Connection {
    async fn send_and_await_ack(&mut self, batch: &Batch) -> Result<(), DeliveryError> {
        self.stream.write_all(&batch.payload).await?;
        loop {
            if let Some((response, used)) =
                decode_prefix(&self.received).map_err(DeliveryError::MalformedResponse)?
            {
                self.received.drain(..used);
                if acked_chunk(&response) == Some(batch.chunk_id.as_str()) {
                    return Ok(());
                }
                // An ack for some other chunk, or a value we do not know:
                // keep waiting for ours.
                continue;
            }
            if self.stream.read_buf(&mut self.received).await? == 0 {
                return Err(DeliveryError::ConnectionClosed);
            }
        }
    }
}
