//! One master's link: the hub's own pub/sub connection to it.
//!
//! The connection speaks RESP3, so Redis's `smessage`, `ssubscribe` and
//! `sunsubscribe` arrive as pushes, handed to [`PushHandler`] by redis-rs's
//! connection task in the order Redis sent them: messages are dispatched to
//! subscriptions at once (a `try_send` each, no queue in between), and the
//! registry learns from the confirmations which channels the connection
//! delivers. The task itself connects (with backoff), SSUBSCRIBEs to what
//! the registry queues for this master, probes the link and SUNSUBSCRIBEs
//! from channels nobody watches: as soon as a batch of them was left by
//! their last watcher, and the rest in a sweep every few seconds.
//!
//! redis-rs takes the first push that confirms a subscription as the reply
//! to the command in flight, whichever it is. So each SSUBSCRIBE and
//! SUNSUBSCRIBE names one channel (a batch is a pipeline of them), and each
//! reply is checked to be the confirmation expected: anything else — an
//! unasked `sunsubscribe` taken for a reply, say — means replies and
//! commands no longer match, and the connection is dropped and made again.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ProtocolVersion, PushInfo, PushKind, ServerErrorKind, Value};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::Inner;
use super::registry::LinkId;
use super::slots::NodeName;

/// The most channels one pipeline of SSUBSCRIBEs names. Watches that pile
/// up while the link is busy (a burst of new sessions, or every channel
/// after a reconnect) go out in batches: one round trip each would be
/// slow, one pipeline for all of them an unbounded request and reply.
const SUBSCRIBE_BATCH: usize = 512;
/// The first pause before connecting again; it doubles up to
/// [`MAX_RECONNECT_BACKOFF`] while connecting fails.
const MIN_RECONNECT_BACKOFF: Duration = Duration::from_millis(50);
const MAX_RECONNECT_BACKOFF: Duration = Duration::from_secs(2);
/// How often every channel nobody watches is SUNSUBSCRIBEd: those fewer
/// than a batch left lately, and those no leave named (a waiter that gave
/// up, a subscription cut off); a channel watched again meanwhile stays
/// subscribed. Under load, channels go sooner, a batch at a time.
const SWEEP_INTERVAL: Duration = Duration::from_secs(2);

/// Why a connection ended.
enum Ended {
    /// The link was told to stop.
    Stopped,
    /// The connection failed; the reason, for the log.
    Broken(String),
}

/// Runs `node`'s link until `stop` fires. `info` is where the master is
/// reached.
pub(super) async fn run(
    node: NodeName,
    info: redis::ConnectionInfo,
    hub: Arc<Inner>,
    stop: CancellationToken,
) {
    let Some(wake) = hub.lock().wake_of(&node) else {
        return;
    };
    let mut backoff = MIN_RECONNECT_BACKOFF;
    let mut reconnecting = false;
    loop {
        let link = hub
            .next_link
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dropped = CancellationToken::new();
        let handler = PushHandler {
            hub: Arc::clone(&hub),
            node: node.clone(),
            link,
            dropped: dropped.clone(),
        };
        let connected = tokio::select! {
            () = stop.cancelled() => return,
            connected = connect(&info, hub.settings.io_timeout, handler) => connected,
        };
        let mut conn = match connected {
            Ok(conn) => conn,
            Err(reason) => {
                tracing::warn!(node = %node, error = %reason, backoff_ms = backoff.as_millis() as u64, "pub/sub connect failed");
                hub.lock().link_down(&node, None);
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_RECONNECT_BACKOFF);
                continue;
            }
        };
        backoff = MIN_RECONNECT_BACKOFF;
        hub.lock().link_up(&node, link);
        if reconnecting {
            tracing::info!(node = %node, "pub/sub link re-established");
        } else {
            tracing::debug!(node = %node, "pub/sub link up");
        }
        reconnecting = true;
        let ended = serve(&mut conn, &hub, &node, link, &wake, &dropped, &stop).await;
        hub.lock().link_down(&node, Some(link));
        match ended {
            Ended::Stopped => return,
            Ended::Broken(reason) => {
                tracing::warn!(node = %node, error = %reason, "pub/sub link dropped");
            }
        }
    }
}

/// Opens a RESP3 connection whose pushes go to `handler`.
async fn connect(
    info: &redis::ConnectionInfo,
    io_timeout: Duration,
    handler: PushHandler,
) -> Result<MultiplexedConnection, String> {
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    let client = redis::Client::open(info.clone().set_redis_settings(settings))
        .map_err(|e| e.to_string())?;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(io_timeout))
        .set_response_timeout(Some(io_timeout))
        .set_push_sender(move |push: PushInfo| -> Result<(), Infallible> {
            handler.handle(push);
            Ok(())
        });
    match tokio::time::timeout(
        io_timeout,
        client.get_multiplexed_async_connection_with_config(&config),
    )
    .await
    {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err("timed out".to_owned()),
    }
}

/// Serves one connection until it fails or the link is stopped.
async fn serve(
    conn: &mut MultiplexedConnection,
    hub: &Inner,
    node: &NodeName,
    link: LinkId,
    wake: &Notify,
    dropped: &CancellationToken,
    stop: &CancellationToken,
) -> Ended {
    let mut probe = tokio::time::interval(hub.settings.probe_interval);
    probe.tick().await;
    let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
    sweep.tick().await;
    loop {
        let step = tokio::select! {
            () = stop.cancelled() => return Ended::Stopped,
            () = dropped.cancelled() => Err("the connection closed".to_owned()),
            () = wake.notified() => match subscribe_pending(conn, hub, node).await {
                Ok(()) => {
                    let left = hub.lock().take_left(node, link);
                    unsubscribe(conn, hub, &left).await
                }
                failed => failed,
            },
            _ = probe.tick() => probe_link(conn, hub).await,
            _ = sweep.tick() => {
                let unwatched = hub.lock().take_unwatched(node, link);
                unsubscribe(conn, hub, &unwatched).await
            }
        };
        if let Err(reason) = step {
            return Ended::Broken(reason);
        }
    }
}

/// SSUBSCRIBEs to every channel queued for this master, a batch at a time.
/// Confirmations reach the registry as pushes before the replies come back;
/// a channel refused because the slot map is stale goes back to wait for a
/// fresh one.
async fn subscribe_pending(
    conn: &mut MultiplexedConnection,
    hub: &Inner,
    node: &NodeName,
) -> Result<(), String> {
    loop {
        let batch = hub.lock().take_pending(node, SUBSCRIBE_BATCH);
        if batch.is_empty() {
            return Ok(());
        }
        let replies = one_per_channel(conn, hub, "SSUBSCRIBE", &batch).await?;
        for (channel, reply) in batch.iter().zip(replies) {
            match reply {
                Value::Push {
                    kind: PushKind::SSubscribe,
                    data,
                } if names(&data, channel) => {}
                Value::ServerError(error) if is_topology_error(error.kind()) => {
                    tracing::info!(node = %node, channel, error = %error.code(), "SSUBSCRIBE refused; reading the slot map again");
                    hub.lock().misrouted(channel, node);
                }
                other => return Err(format!("SSUBSCRIBE {channel} answered {other:?}")),
            }
        }
    }
}

/// SUNSUBSCRIBEs from `channels`, which nobody watches any more, a batch
/// at a time.
async fn unsubscribe(
    conn: &mut MultiplexedConnection,
    hub: &Inner,
    channels: &[String],
) -> Result<(), String> {
    for batch in channels.chunks(SUBSCRIBE_BATCH) {
        let replies = one_per_channel(conn, hub, "SUNSUBSCRIBE", batch).await?;
        for (channel, reply) in batch.iter().zip(replies) {
            match reply {
                Value::Push {
                    kind: PushKind::SUnsubscribe,
                    data,
                } if names(&data, channel) => {}
                other => return Err(format!("SUNSUBSCRIBE {channel} answered {other:?}")),
            }
        }
    }
    Ok(())
}

/// Sends `command` once per channel, in one pipeline, and returns each
/// reply (errors included, as values).
async fn one_per_channel(
    conn: &mut MultiplexedConnection,
    hub: &Inner,
    command: &str,
    channels: &[String],
) -> Result<Vec<Value>, String> {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for channel in channels {
        pipe.cmd(command).arg(channel);
    }
    match tokio::time::timeout(
        hub.settings.io_timeout,
        pipe.query_async::<Vec<Value>>(conn),
    )
    .await
    {
        Ok(Ok(replies)) if replies.len() == channels.len() => Ok(replies),
        Ok(Ok(replies)) => Err(format!(
            "{command}: {} replies for {} channels",
            replies.len(),
            channels.len()
        )),
        Ok(Err(error)) => Err(format!("{command}: {error}")),
        Err(_) => Err(format!("{command} timed out")),
    }
}

/// PING: a RESP3 connection answers `PONG` even while subscribed.
async fn probe_link(conn: &mut MultiplexedConnection, hub: &Inner) -> Result<(), String> {
    let pong = tokio::time::timeout(
        hub.settings.io_timeout,
        redis::cmd("PING").query_async::<Value>(conn),
    )
    .await;
    match pong {
        Ok(Ok(Value::SimpleString(pong))) if pong == "PONG" => Ok(()),
        Ok(Ok(other)) => Err(format!("PING answered {other:?}")),
        Ok(Err(error)) => Err(format!("PING: {error}")),
        Err(_) => Err("the link did not answer its probe".to_owned()),
    }
}

/// Errors that say this master does not (or not now) serve the channel's
/// slot: the slot map must be read again.
fn is_topology_error(kind: Option<ServerErrorKind>) -> bool {
    matches!(
        kind,
        Some(
            ServerErrorKind::Moved
                | ServerErrorKind::Ask
                | ServerErrorKind::TryAgain
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::MasterDown
        )
    )
}

/// Whether a push's data starts with `channel`.
fn names(data: &[Value], channel: &str) -> bool {
    data.first()
        .and_then(channel_name)
        .is_some_and(|name| name == channel)
}

fn channel_name(value: &Value) -> Option<&str> {
    match value {
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok(),
        Value::SimpleString(text) => Some(text),
        _ => None,
    }
}

/// Takes one connection's pushes, in the order Redis sent them.
struct PushHandler {
    hub: Arc<Inner>,
    node: NodeName,
    link: LinkId,
    /// Fired when redis-rs reports the connection closed.
    dropped: CancellationToken,
}

impl PushHandler {
    fn handle(&self, push: PushInfo) {
        let PushInfo { kind, data } = push;
        match kind {
            PushKind::SMessage | PushKind::Message => {
                let mut data = data.into_iter();
                let (Some(channel), Some(Value::BulkString(payload))) = (data.next(), data.next())
                else {
                    return;
                };
                if let Some(channel) = channel_name(&channel) {
                    self.hub.lock().dispatch(channel, Bytes::from(payload));
                }
            }
            PushKind::SSubscribe => {
                if let Some(channel) = data.first().and_then(channel_name) {
                    self.hub.lock().confirmed(channel, &self.node, self.link);
                }
            }
            PushKind::SUnsubscribe => {
                if let Some(channel) = data.first().and_then(channel_name) {
                    self.hub.lock().unsubscribed(channel, self.link);
                }
            }
            PushKind::Disconnection => self.dropped.cancel(),
            _ => {}
        }
    }
}
