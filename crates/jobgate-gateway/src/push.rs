//! What every push channel (WebSocket session, SSE stream) does with an
//! event it sends: count it and take its JSON text as the job script wrote it.

use std::sync::atomic::Ordering;

use axum::extract::ws::Utf8Bytes;
use jobgate_store::FeedEvent;

use crate::metrics::Metrics;

/// The event's JSON, counted as pushed. The job script writes events as
/// JSON text, so they are UTF-8; an event that is not (written into Redis
/// by something else) is sent with its invalid bytes replaced, and logged.
pub(crate) fn event_text(metrics: &Metrics, event: &FeedEvent) -> Utf8Bytes {
    metrics.events_pushed.fetch_add(1, Ordering::Relaxed);
    Utf8Bytes::try_from(event.json.clone()).unwrap_or_else(|_| {
        tracing::warn!(
            job_id = %event.job_id,
            seq = event.seq,
            "event is not UTF-8; sending it with its invalid bytes replaced"
        );
        Utf8Bytes::from(String::from_utf8_lossy(&event.json).into_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use jobgate_proto::{EventType, JobId};

    fn event(json: &'static [u8]) -> FeedEvent {
        FeedEvent {
            job_id: JobId::new(),
            seq: 3,
            epoch: 1,
            event: EventType::Progress,
            ts: 1,
            json: bytes::Bytes::from_static(json),
        }
    }

    #[test]
    fn an_event_is_sent_as_written_and_counted() {
        let metrics = Metrics::default();
        let text = event_text(&metrics, &event(br#"{"seq":3}"#));
        assert_eq!(text.as_str(), r#"{"seq":3}"#);
        assert_eq!(metrics.events_pushed.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn an_event_that_is_not_utf8_keeps_its_valid_text() {
        let metrics = Metrics::default();
        let text = event_text(&metrics, &event(b"{\"note\":\"a\xffb\"}"));
        assert_eq!(text.as_str(), "{\"note\":\"a\u{fffd}b\"}");
    }
}
