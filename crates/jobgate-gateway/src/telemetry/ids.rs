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
