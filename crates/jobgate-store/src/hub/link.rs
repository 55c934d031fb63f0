//! The hub's task: the one pub/sub connection to Redis.
//!
//! It connects (with backoff), SUBSCRIBEs to every channel the registry
//! holds, then serves the link until it drops or stops answering its probe:
//! it dispatches each message, SUBSCRIBEs to what `watch` asks for (in
//! batches, one request at a time, so an unsubscribe never overtakes a
//! later subscribe) and UNSUBSCRIBEs, now and then, from channels nobody
//! watches. After a reconnect every subscription is told to resync. The
//! bookkeeping itself is the registry's (`registry.rs`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use redis::aio::PubSubSink;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Inner;

/// The most channels one SUBSCRIBE names. Watches that pile up while the
/// link is busy (a burst of new sessions, or every channel after a
/// reconnect) go out in batches: one command per channel would cost a round
/// trip each, one command for all of them an unbounded request and reply.
const SUBSCRIBE_BATCH: usize = 512;
/// The first pause before reconnecting; it doubles up to
/// [`MAX_RECONNECT_BACKOFF`] while connecting fails.
const MIN_RECONNECT_BACKOFF: Duration = Duration::from_millis(50);
const MAX_RECONNECT_BACKOFF: Duration = Duration::from_secs(2);
/// How often channels whose last watcher left are UNSUBSCRIBEd, in one
/// command rather than one by one as they are left; a channel watched
/// again meanwhile stays subscribed.
const SWEEP_INTERVAL: Duration = Duration::from_secs(2);

/// Runs the link until `shutdown` fires. `commands` carries the names of
/// channels to SUBSCRIBE to.
pub(super) async fn run(
    client: redis::Client,
    hub: Arc<Inner>,
    mut commands: mpsc::Receiver<String>,
    shutdown: CancellationToken,
) {
    let mut backoff = MIN_RECONNECT_BACKOFF;
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
                backoff = (backoff * 2).min(MAX_RECONNECT_BACKOFF);
                continue;
            }
        };
        let (mut sink, mut stream) = pubsub.split();
        let all = hub.lock().channel_names();
        if subscribe(&hub, &mut sink, &all).await.is_err() {
            continue;
        }
        backoff = MIN_RECONNECT_BACKOFF;
        hub.connected.store(true, Ordering::Release);
        if reconnecting {
            tracing::info!(channels = all.len(), "pub/sub link re-established");
            hub.lock().resync_all();
        }
        reconnecting = true;

        let mut probe = tokio::time::interval(hub.settings.probe_interval);
        probe.tick().await;
        let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
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
                    hub.lock().dispatch(&channel, Bytes::copy_from_slice(message.get_payload_bytes()));
                }
                Some(first) = commands.recv() => {
                    let mut names = vec![first];
                    while names.len() < SUBSCRIBE_BATCH {
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
                    let unwatched = hub.lock().take_unwatched();
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
        hub.lock().link_lost();
    }
}

/// SUBSCRIBEs to `names` (those still wanted), [`SUBSCRIBE_BATCH`] at a
/// time, and confirms them.
async fn subscribe(hub: &Inner, sink: &mut PubSubSink, names: &[String]) -> Result<(), ()> {
    let wanted = hub.lock().still_wanted(names);
    for batch in wanted.chunks(SUBSCRIBE_BATCH) {
        match tokio::time::timeout(hub.settings.io_timeout, sink.subscribe(batch)).await {
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
    hub.lock().confirm(&wanted);
    Ok(())
}
