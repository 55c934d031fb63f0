//! A Fluentd Forward-protocol (v1) receiver for tests: a TCP server on
//! `127.0.0.1` that decodes msgpack the way `in_forward` does, written from
//! the spec and independently of `jobgate-fluent`'s encoder so that each
//! checks the other.
//!
//! It understands the three event modes, told apart by the second element
//! of the message array: Message `[tag, time, record, option?]`, Forward
//! `[tag, [[time, record], ...], option?]` and PackedForward `[tag,
//! bin|str(<entry><entry>...), option?]`; `time` is an integer or an
//! EventTime (ext type 0: big-endian u32 seconds, u32 nanoseconds); a bare
//! `nil` is a heartbeat. When the option has a `chunk` it answers
//! `{"ack": chunk}`. CompressedPackedForward (gzip) and the handshake phase
//! are not supported: the receiver closes such connections.
//!
//! It can be stopped (listener and every connection closed) and restarted
//! on the same port, and told to withhold an ack (keep the records, close
//! the connection without answering) to exercise a client's re-send.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmpv::Value as Msgpack;
use serde_json::Value as Json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

/// A record as the receiver got it.
#[derive(Debug, Clone, PartialEq)]
pub struct ForwardRecord {
    pub tag: String,
    pub time: ForwardTime,
    pub record: Json,
}

/// An event's time: from an EventTime, or whole seconds from an integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ForwardTime {
    pub seconds: u64,
    pub nanoseconds: u32,
    /// Whether it came as an EventTime ext value (not a plain integer).
    pub event_time: bool,
}

/// The carrier mode of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardMode {
    Message,
    Forward,
    PackedForward,
}

/// One message (one msgpack array) as the receiver got it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardMessage {
    pub tag: String,
    pub mode: ForwardMode,
    /// The option's `chunk`, if any.
    pub chunk: Option<String>,
    /// The option's `size`, if any.
    pub size: Option<u64>,
    /// How many records it held.
    pub records: usize,
    /// Whether the receiver answered `{"ack": chunk}`.
    pub acked: bool,
}

#[derive(Debug, Default)]
struct Shared {
    collected: Mutex<Collected>,
    acks_to_withhold: AtomicUsize,
}

#[derive(Debug, Default)]
struct Collected {
    records: Vec<ForwardRecord>,
    messages: Vec<ForwardMessage>,
}

/// The test receiver. Dropping it stops it.
#[derive(Debug)]
pub struct ForwardReceiver {
    port: u16,
    shared: Arc<Shared>,
    running: Option<(CancellationToken, JoinHandle<()>)>,
}

impl ForwardReceiver {
    /// Listens on an ephemeral port of 127.0.0.1.
    pub async fn start() -> Self {
        let listener = bind(0).expect("bind the forward receiver");
        let port = listener.local_addr().expect("local addr").port();
        let mut receiver = Self {
            port,
            shared: Arc::default(),
            running: None,
        };
        receiver.serve(listener);
        receiver
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`, the form of `JOBGATE_FLUENTD_ADDR`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Closes the listener and every open connection, and waits until they
    /// are closed. Collected records are kept.
    pub async fn stop(&mut self) {
        if let Some((stop, task)) = self.running.take() {
            stop.cancel();
            let _ = task.await;
        }
    }

    /// Listens again on the same port (after [`Self::stop`]).
    pub async fn restart(&mut self) {
        self.stop().await;
        let mut attempts = 0;
        let listener = loop {
            match bind(self.port) {
                Ok(listener) => break listener,
                Err(_) if attempts < 100 => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(error) => panic!("rebind port {}: {error}", self.port),
            }
        };
        self.serve(listener);
    }

    /// The next message carrying a chunk is kept but not acked: the
    /// receiver closes that connection instead, like a Fluentd that died
    /// before answering.
    pub fn withhold_next_ack(&self) {
        self.shared.acks_to_withhold.fetch_add(1, Ordering::SeqCst);
    }

    /// Every record received so far, in arrival order.
    pub fn records(&self) -> Vec<ForwardRecord> {
        self.shared.lock().records.clone()
    }

    /// Every message received so far, in arrival order.
    pub fn messages(&self) -> Vec<ForwardMessage> {
        self.shared.lock().messages.clone()
    }

    /// Waits until `done(records)` holds; panics after `timeout`.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        done: impl Fn(&[ForwardRecord]) -> bool,
    ) -> Vec<ForwardRecord> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let records = self.records();
            if done(&records) {
                return records;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "forward receiver: condition not met within {timeout:?}; {} records, {} messages",
                    records.len(),
                    self.shared.lock().messages.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until at least `count` records have arrived.
    pub async fn wait_for_records(&self, count: usize, timeout: Duration) -> Vec<ForwardRecord> {
        self.wait_until(timeout, |records| records.len() >= count)
            .await
    }

    fn serve(&mut self, listener: TcpListener) {
        let stop = CancellationToken::new();
        let task = tokio::spawn(accept_loop(listener, self.shared.clone(), stop.clone()));
        self.running = Some((stop, task));
    }
}

impl Drop for ForwardReceiver {
    fn drop(&mut self) {
        if let Some((stop, task)) = self.running.take() {
            stop.cancel();
            task.abort();
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Collected> {
        self.collected
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Binds with SO_REUSEADDR so a restart can take the port back at once.
fn bind(port: u16) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(([127, 0, 0, 1], port).into())?;
    socket.listen(128)
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    connections.spawn(serve_connection(stream, shared.clone()));
                }
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    connections.shutdown().await;
}

/// Reads messages until the peer closes, a message is malformed or an ack
/// is withheld.
async fn serve_connection(mut stream: TcpStream, shared: Arc<Shared>) {
    let mut received = Vec::new();
    loop {
        loop {
            let mut rest = received.as_slice();
            let value = match rmpv::decode::read_value(&mut rest) {
                Ok(value) => value,
                Err(
                    rmpv::decode::Error::InvalidMarkerRead(error)
                    | rmpv::decode::Error::InvalidDataRead(error),
                ) if error.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(_) => return,
            };
            let used = received.len() - rest.len();
            received.drain(..used);
            if value.is_nil() {
                continue; // heartbeat
            }
            let Some((message, records)) = decode_message(&value) else {
                return;
            };
            let chunk = message.chunk.clone();
            let withhold = chunk.is_some()
                && shared
                    .acks_to_withhold
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
            {
                let mut collected = shared.lock();
                collected.records.extend(records);
                collected.messages.push(ForwardMessage {
                    acked: chunk.is_some() && !withhold,
                    ..message
                });
            }
            if withhold {
                return;
            }
            if let Some(chunk) = chunk {
                let ack = Msgpack::Map(vec![(Msgpack::from("ack"), Msgpack::from(chunk))]);
                let mut bytes = Vec::new();
                if rmpv::encode::write_value(&mut bytes, &ack).is_err()
                    || stream.write_all(&bytes).await.is_err()
                {
                    return;
                }
            }
        }
        match stream.read_buf(&mut received).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// One message array in any of the three modes, or `None` if malformed.
fn decode_message(value: &Msgpack) -> Option<(ForwardMessage, Vec<ForwardRecord>)> {
    let parts = value.as_array()?;
    let tag = parts.first()?.as_str()?.to_owned();
    let second = parts.get(1)?;
    let (mode, entries, option) = match second {
        Msgpack::Array(entries) => (ForwardMode::Forward, entries.clone(), parts.get(2)),
        Msgpack::Binary(stream) => (ForwardMode::PackedForward, unpack(stream)?, parts.get(2)),
        Msgpack::String(stream) => (
            ForwardMode::PackedForward,
            unpack(stream.as_bytes())?,
            parts.get(2),
        ),
        _ => {
            let entry = Msgpack::Array(vec![second.clone(), parts.get(2)?.clone()]);
            (ForwardMode::Message, vec![entry], parts.get(3))
        }
    };
    let option = |name: &str| {
        option?
            .as_map()?
            .iter()
            .find(|(key, _)| key.as_str() == Some(name))
            .map(|(_, value)| value.clone())
    };
    if option("compressed").is_some() {
        return None;
    }
    let records = entries
        .iter()
        .map(|entry| {
            let pair = entry.as_array()?;
            let [time, record] = pair.as_slice() else {
                return None;
            };
            if !record.is_map() {
                return None;
            }
            Some(ForwardRecord {
                tag: tag.clone(),
                time: decode_time(time)?,
                record: to_json(record),
            })
        })
        .collect::<Option<Vec<_>>>()?;
    let message = ForwardMessage {
        tag,
        mode,
        chunk: option("chunk").and_then(|chunk| chunk.as_str().map(str::to_owned)),
        size: option("size").and_then(|size| size.as_u64()),
        records: records.len(),
        acked: false,
    };
    Some((message, records))
}

/// The entries of a PackedForward stream: msgpack values back to back.
fn unpack(mut stream: &[u8]) -> Option<Vec<Msgpack>> {
    let mut entries = Vec::new();
    while !stream.is_empty() {
        entries.push(rmpv::decode::read_value(&mut stream).ok()?);
    }
    Some(entries)
}

fn decode_time(time: &Msgpack) -> Option<ForwardTime> {
    match time {
        Msgpack::Ext(0, data) if data.len() == 8 => Some(ForwardTime {
            seconds: u64::from(u32::from_be_bytes([data[0], data[1], data[2], data[3]])),
            nanoseconds: u32::from_be_bytes([data[4], data[5], data[6], data[7]]),
            event_time: true,
        }),
        Msgpack::Integer(seconds) => Some(ForwardTime {
            seconds: seconds.as_u64()?,
            nanoseconds: 0,
            event_time: false,
        }),
        _ => None,
    }
}

fn to_json(value: &Msgpack) -> Json {
    match value {
        Msgpack::Nil => Json::Null,
        Msgpack::Boolean(flag) => Json::Bool(*flag),
        Msgpack::Integer(number) => number
            .as_u64()
            .map(Json::from)
            .or_else(|| number.as_i64().map(Json::from))
            .unwrap_or(Json::Null),
        Msgpack::F32(number) => Json::from(f64::from(*number)),
        Msgpack::F64(number) => Json::from(*number),
        Msgpack::String(text) => Json::String(String::from_utf8_lossy(text.as_bytes()).into()),
        Msgpack::Binary(bytes) => Json::String(String::from_utf8_lossy(bytes).into()),
        Msgpack::Array(items) => Json::Array(items.iter().map(to_json).collect()),
        Msgpack::Map(pairs) => Json::Object(
            pairs
                .iter()
                .map(|(key, value)| {
                    let key = match key.as_str() {
                        Some(text) => text.to_owned(),
                        None => key.to_string(),
                    };
                    (key, to_json(value))
                })
                .collect(),
        ),
        Msgpack::Ext(ext_type, data) => serde_json::json!({ "ext_type": ext_type, "data": data }),
    }
}
