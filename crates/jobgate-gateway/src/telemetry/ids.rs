//! W3C ids for spans when no span exporter is configured.
//!
//! Without an exporter, all the gateway needs of a span is its W3C trace
//! and span id: its log lines carry them, and a job's `traceparent` names
//! its producer span, so the worker's spans and log lines join the same
//! trace. [`W3cIds`] gives each span those ids (a child its parent's trace
//! and flags, a root a new trace, sampled) and nothing else, where the
//! OpenTelemetry layer would also build, time and end a span that nothing
//! exports. With an exporter, the OpenTelemetry layer runs instead
//! (`telemetry::subscriber`); [`super::context`] reads and sets the ids
//! through whichever runs.

use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};
use tracing::Subscriber;
use tracing_subscriber::registry::LookupSpan;

/// The layer that gives spans their [`SpanIds`].
#[derive(Debug, Default)]
pub(super) struct W3cIds {
    generator: RandomIdGenerator,
}

/// A span's W3C ids, kept in its extensions.
#[derive(Debug, Clone, Copy)]
pub(super) struct SpanIds {
    pub(super) trace_id: TraceId,
    pub(super) span_id: SpanId,
    pub(super) flags: TraceFlags,
}

impl SpanIds {
    /// The ids as the span context of a local span.
    pub(super) fn span_context(self) -> SpanContext {
        SpanContext::new(
            self.trace_id,
            self.span_id,
            self.flags,
            false,
            TraceState::NONE,
        )
    }

    /// Continues `remote`'s trace (a client's `traceparent`).
    pub(super) fn continue_trace(&mut self, remote: &SpanContext) {
        self.trace_id = remote.trace_id();
        self.flags = remote.trace_flags();
    }
}

impl<S> tracing_subscriber::Layer<S> for W3cIds
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        _attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let Some(span) = ctx.span(id) else { return };
        let parent = span
            .parent()
            .and_then(|parent| parent.extensions().get::<SpanIds>().copied());
        let ids = SpanIds {
            trace_id: parent.map_or_else(|| self.generator.new_trace_id(), |p| p.trace_id),
            span_id: self.generator.new_span_id(),
            flags: parent.map_or(TraceFlags::SAMPLED, |p| p.flags),
        };
        span.extensions_mut().insert(ids);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use jobgate_proto::{JobId, SubmitRequest};
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use serde_json::Value;

    use crate::config::Config;
    use crate::trace;

    const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What a WebSocket submission's telemetry gives, with spans' ids only
    /// (`exporting` None) or through the span pipeline: the job's
    /// `traceparent`, the `ws submit` span's ids (from a line logged in it)
    /// and the `job submitted` line.
    struct Submitted {
        traceparent: String,
        request_ids: (String, String),
        line: Value,
    }

    fn submit(exporting: Option<&SdkTracerProvider>, traceparent: Option<&str>) -> Submitted {
        let config = Config::for_redis("redis://127.0.0.1:6379");
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = super::super::subscriber(&config, exporting, move || writer.clone());
        let request: SubmitRequest =
            serde_json::from_str(r#"{"kind":"echo","params":{}}"#).expect("a request");
        let job_id: JobId = "01a21ee8-bbce-72e1-80f0-787c4453cbec"
            .parse()
            .expect("an id");
        let traceparent = tracing::subscriber::with_default(subscriber, || {
            let request_span = trace::ws_submit_span("1", traceparent, None);
            request_span.in_scope(|| tracing::info!("in the request"));
            let (producer, context) = request_span.in_scope(|| {
                trace::producer_span("default", &request, &job_id, None, traceparent, None)
            });
            producer.in_scope(|| tracing::info!("job submitted"));
            context.traceparent
        });
        let text = String::from_utf8(captured.0.lock().expect("lock").clone()).expect("utf-8");
        let lines: Vec<Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).expect("a JSON line"))
            .collect();
        let ids = |line: &Value| {
            (
                line["trace_id"].as_str().expect("trace_id").to_owned(),
                line["span_id"].as_str().expect("span_id").to_owned(),
            )
        };
        Submitted {
            traceparent,
            request_ids: ids(&lines[0]),
            line: lines[1].clone(),
        }
    }

    /// Both ways agree: the request continues the client's trace (or starts
    /// one), the producer is its child in the same trace, the job's
    /// `traceparent` names the producer with the trace's flags, and the
    /// line inside the producer carries the producer's ids.
    fn check(exporting: Option<&SdkTracerProvider>) {
        for (client, flags) in [
            (Some(format!("00-{CLIENT_TRACE}-00f067aa0ba902b7-01")), "01"),
            (Some(format!("00-{CLIENT_TRACE}-00f067aa0ba902b7-00")), "00"),
            (None, "01"),
        ] {
            let submitted = submit(exporting, client.as_deref());
            let parts: Vec<&str> = submitted.traceparent.split('-').collect();
            let (trace_id, producer_id) = (parts[1], parts[2]);
            if client.is_some() {
                assert_eq!(trace_id, CLIENT_TRACE);
            } else {
                assert_eq!(trace_id.len(), 32);
                assert_ne!(trace_id, "0".repeat(32));
            }
            assert_eq!(parts[3], flags, "{}", submitted.traceparent);
            assert_eq!(submitted.line["trace_id"], trace_id);
            assert_eq!(submitted.line["span_id"], producer_id);
            let (request_trace, request_span) = &submitted.request_ids;
            assert_eq!(request_trace, trace_id);
            assert_ne!(request_span, producer_id);
            assert_ne!(request_span, "00f067aa0ba902b7");
        }
    }

    #[test]
    fn spans_ids_alone_give_a_job_the_trace_the_span_pipeline_does() {
        check(None);
        check(Some(&SdkTracerProvider::builder().build()));
    }

    #[test]
    fn every_span_and_trace_gets_ids_of_its_own() {
        let a = submit(None, None);
        let b = submit(None, None);
        assert_ne!(a.traceparent, b.traceparent);
        assert_ne!(a.request_ids.0, b.request_ids.0);
    }
}
