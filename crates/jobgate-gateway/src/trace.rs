//! W3C trace context of jobs and the spans around requests.
//!
//! A request's span continues the client's trace (HTTP `traceparent`
//! header, or the WebSocket `submit` message's) or starts one. Submitting a
//! job opens a producer span under it; the job's stored `traceparent` names
//! that producer span, so the worker's consumer span becomes its child and
//! one trace runs from the client to the Dask tasks.
//!
//! The per-job spans are built by [`ws_submit_span`] and [`producer_span`],
//! public so that the micro-benchmarks (`job_telemetry`) time the very
//! spans a submission makes.

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use jobgate_proto::{JobId, SubmitRequest};
use jobgate_store::{TraceContext, keys};
use opentelemetry::trace::SpanContext;
use tracing::field::Empty;
use tracing::{Instrument, Span};

use crate::telemetry::context::{record_ids, set_remote_parent};

/// The most characters of a client's `tracestate` a job carries: W3C Trace
/// Context asks every vendor to pass on at least 512.
const MAX_TRACESTATE_CHARS: usize = 512;

/// The span of one job's WebSocket `submit` (a `submit` frame, or one job
/// of a `submit_batch`): the message is the request, so its server span
/// continues the client's trace when the job names one.
pub fn ws_submit_span(
    request_id: &str,
    traceparent: Option<&str>,
    tracestate: Option<&str>,
) -> Span {
    let span = tracing::info_span!(
        "ws submit",
        otel.name = "WS submit",
        otel.kind = "server",
        request_id = request_id,
        trace_id = Empty,
        span_id = Empty,
    );
    set_remote_parent(&span, traceparent, tracestate);
    record_ids(&span);
    span
}

/// The producer span of `request`, job `job_id` of `queue`, a child of the
/// current span (the request's); and the job's trace context, which names
/// it, so the worker's consumer span becomes its child. `legacy_trace_id`
/// is the old API's free-form trace id, when the job came that way.
pub fn producer_span(
    queue: &str,
    request: &SubmitRequest,
    job_id: &JobId,
    legacy_trace_id: Option<&str>,
    client_traceparent: Option<&str>,
    tracestate: Option<&str>,
) -> (Span, TraceContext) {
    let span = tracing::info_span!(
        "publish",
        otel.name = %format!("publish {queue}"),
        otel.kind = "producer",
        messaging.system = "redis",
        messaging.operation.type = "send",
        messaging.operation.name = "publish",
        messaging.destination.name = %keys::queue(queue, keys::Band::for_priority(request.priority())),
        messaging.message.id = %job_id,
        jobgate.job.kind = request.kind.as_str(),
        jobgate.legacy_trace_id = Empty,
        job_id = %job_id,
        trace_id = Empty,
        span_id = Empty,
    );
    if let Some(legacy_trace_id) = legacy_trace_id {
        span.record("jobgate.legacy_trace_id", legacy_trace_id);
    }
    let context = job_context(&record_ids(&span), client_traceparent, tracestate);
    (span, context)
}

/// The job's trace context: the producer span's W3C context, with the
/// client's `tracestate` (when it sent one) carried along. Where no span
/// pipeline is installed (the library used without `telemetry::init`), the
/// client's trace is continued, or a new one started, with ids made here.
fn job_context(
    producer: &SpanContext,
    client_traceparent: Option<&str>,
    tracestate: Option<&str>,
) -> TraceContext {
    if !producer.is_valid() {
        return without_spans(client_traceparent, tracestate);
    }
    TraceContext {
        traceparent: format!(
            "00-{}-{}-{:02x}",
            producer.trace_id(),
            producer.span_id(),
            producer.trace_flags().to_u8()
        ),
        tracestate: tracestate
            .unwrap_or_default()
            .chars()
            .take(MAX_TRACESTATE_CHARS)
            .collect(),
        trace_id: producer.trace_id().to_string(),
    }
}

fn without_spans(traceparent: Option<&str>, tracestate: Option<&str>) -> TraceContext {
    let (trace_id, flags, tracestate) = match traceparent.and_then(parse_traceparent) {
        Some((trace_id, flags)) => (trace_id, flags, tracestate.unwrap_or_default()),
        // A tracestate without a valid traceparent belongs to no trace.
        None => (random_hex(16), "01".to_owned(), ""),
    };
    TraceContext {
        traceparent: format!("00-{trace_id}-{}-{flags}", random_hex(8)),
        tracestate: tracestate.chars().take(MAX_TRACESTATE_CHARS).collect(),
        trace_id,
    }
}

/// `(trace_id, flags)` of a valid version-00 `traceparent`.
fn parse_traceparent(value: &str) -> Option<(String, String)> {
    let mut parts = value.trim().split('-');
    let (version, trace_id, parent_id, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let valid = version == "00"
        && parts.next().is_none()
        && hex(trace_id, 32)
        && hex(parent_id, 16)
        && hex(flags, 2)
        && trace_id.bytes().any(|b| b != b'0')
        && parent_id.bytes().any(|b| b != b'0');
    valid.then(|| (trace_id.to_owned(), flags.to_owned()))
}

fn random_hex(bytes: usize) -> String {
    let mut out = String::with_capacity(bytes * 2);
    while out.len() < bytes * 2 {
        out.push_str(&uuid::Uuid::new_v4().simple().to_string());
    }
    out.truncate(bytes * 2);
    out
}

/// Middleware: every routed request runs in a server span that continues
/// the client's `traceparent`.
pub(crate) async fn request_span(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("", MatchedPath::as_str)
        .to_owned();
    let method = request.method().clone();
    let span = tracing::info_span!(
        "request",
        otel.name = %format!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route,
        http.response.status_code = Empty,
        trace_id = Empty,
        span_id = Empty,
    );
    {
        let header = |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok());
        set_remote_parent(&span, header("traceparent"), header("tracestate"));
    }
    record_ids(&span);
    let response = next.run(request).instrument(span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    response
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{SpanId, TraceFlags, TraceId, TraceState};

    use super::*;

    #[test]
    fn the_job_names_the_producer_span() {
        let producer = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("trace id"),
            SpanId::from_hex("00f067aa0ba902b7").expect("span id"),
            TraceFlags::SAMPLED,
            false,
            TraceState::NONE,
        );
        let context = job_context(&producer, None, Some("vendor=1"));
        assert_eq!(
            context.traceparent,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        assert_eq!(context.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(context.tracestate, "vendor=1");
    }

    #[test]
    fn without_spans_the_clients_trace_is_kept_or_one_is_started() {
        let client = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let kept = job_context(&SpanContext::empty_context(), Some(client), Some("v=1"));
        assert_eq!(kept.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(
            !kept.traceparent.contains("00f067aa0ba902b7"),
            "the job gets its own span id"
        );
        for bad in [
            None,
            Some("garbage"),
            Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
        ] {
            let started = job_context(&SpanContext::empty_context(), bad, Some("v=1"));
            assert!(parse_traceparent(&started.traceparent).is_some());
            assert_eq!(started.tracestate, "");
        }
    }
}

/// A submission's spans through the gateway's subscriber, with spans' W3C
/// ids only (`telemetry/ids.rs`) and through the OpenTelemetry layer.
#[cfg(test)]
mod span_tests {
    use jobgate_proto::{JobId, SubmitRequest};
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use serde_json::Value;

    use super::{producer_span, ws_submit_span};
    use crate::config::Config;
    use crate::telemetry::{self, CapturedLines};

    const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

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
        let captured = CapturedLines::default();
        let writer = captured.clone();
        let subscriber = telemetry::subscriber(&config, exporting, move || writer.clone());
        let request: SubmitRequest =
            serde_json::from_str(r#"{"kind":"echo","params":{}}"#).expect("a request");
        let job_id: JobId = "01a21ee8-bbce-72e1-80f0-787c4453cbec"
            .parse()
            .expect("an id");
        let traceparent = tracing::subscriber::with_default(subscriber, || {
            let request_span = ws_submit_span("1", traceparent, None);
            request_span.in_scope(|| tracing::info!("in the request"));
            let (producer, context) = request_span
                .in_scope(|| producer_span("default", &request, &job_id, None, traceparent, None));
            producer.in_scope(|| tracing::info!("job submitted"));
            context.traceparent
        });
        let text = captured.text();
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
