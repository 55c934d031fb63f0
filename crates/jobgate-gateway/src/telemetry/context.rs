//! W3C trace context on the gateway's spans: a client's `traceparent`
//! becomes a span's remote parent, and a span's trace and span ids become
//! fields that every log line inside it carries.

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Registry;
use tracing_subscriber::registry::LookupSpan;

use super::ids::SpanIds;

/// Records the span's W3C ids as its `trace_id` and `span_id` fields, so
/// every log line inside it carries them. Spans that log must declare both
/// fields (`trace_id = tracing::field::Empty, span_id = …`).
pub fn record_ids(span: &tracing::Span) -> opentelemetry::trace::SpanContext {
    let context = with_ids(span, |ids| ids.span_context())
        .unwrap_or_else(|| span.context().span().span_context().clone());
    if context.is_valid() {
        span.record("trace_id", tracing::field::display(context.trace_id()));
        span.record("span_id", tracing::field::display(context.span_id()));
    }
    context
}

/// Sets `span`'s parent from a W3C `traceparent` (and `tracestate`), when valid.
pub fn set_remote_parent(
    span: &tracing::Span,
    traceparent: Option<&str>,
    tracestate: Option<&str>,
) {
    let Some(traceparent) = traceparent else {
        return;
    };
    let carrier = Carrier {
        traceparent,
        tracestate: tracestate.unwrap_or_default(),
    };
    let parent = TraceContextPropagator::new().extract(&carrier);
    let remote = parent.span().span_context().clone();
    if remote.is_valid() && with_ids(span, |ids| ids.continue_trace(&remote)).is_none() {
        let _ = span.set_parent(parent);
    }
}

/// Runs `f` on `span`'s ids where [`super::ids::W3cIds`] gives spans
/// theirs; `None` where the OpenTelemetry layer does (or `span` is
/// disabled).
fn with_ids<R>(span: &tracing::Span, f: impl FnOnce(&mut SpanIds) -> R) -> Option<R> {
    span.with_subscriber(|(id, dispatch)| {
        let registry = dispatch.downcast_ref::<Registry>()?;
        let data = registry.span(id)?;
        let mut extensions = data.extensions_mut();
        extensions.get_mut::<SpanIds>().map(f)
    })
    .flatten()
}

struct Carrier<'a> {
    traceparent: &'a str,
    tracestate: &'a str,
}

impl opentelemetry::propagation::Extractor for Carrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => Some(self.traceparent),
            "tracestate" => Some(self.tracestate),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}
