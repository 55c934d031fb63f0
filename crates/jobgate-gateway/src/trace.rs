//! W3C trace context (`traceparent` / `tracestate`) carried by each job.

use jobgate_store::TraceContext;
use uuid::Uuid;

/// The trace context of a new job: the client's when it sent a valid
/// `traceparent`, else a new trace. Either way the job gets a span id of
/// its own (the gateway's producer span) as parent for the worker.
pub(crate) fn for_new_job(traceparent: Option<&str>, tracestate: Option<&str>) -> TraceContext {
    let (trace_id, flags, tracestate) = match traceparent.and_then(parse_traceparent) {
        Some((trace_id, flags)) => (trace_id, flags, tracestate.unwrap_or_default()),
        // A tracestate without a valid traceparent belongs to no trace.
        None => (random_hex(16), "01".to_owned(), ""),
    };
    let span_id = random_hex(8);
    TraceContext {
        traceparent: format!("00-{trace_id}-{span_id}-{flags}"),
        tracestate: tracestate.chars().take(512).collect(),
        trace_id,
    }
}

/// `(trace_id, flags)` of a valid version-00 `traceparent`.
pub(crate) fn parse_traceparent(value: &str) -> Option<(String, String)> {
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
        out.push_str(&Uuid::new_v4().simple().to_string());
    }
    out.truncate(bytes * 2);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_clients_trace() {
        let ctx = for_new_job(
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some("vendor=1"),
        );
        assert_eq!(ctx.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(
            ctx.traceparent
                .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-")
        );
        assert!(
            !ctx.traceparent.contains("00f067aa0ba902b7"),
            "the job gets its own span id"
        );
        assert_eq!(ctx.tracestate, "vendor=1");
    }

    #[test]
    fn starts_a_trace_for_missing_or_invalid_context() {
        for bad in [
            None,
            Some("garbage"),
            Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
        ] {
            let ctx = for_new_job(bad, Some("vendor=1"));
            assert!(parse_traceparent(&ctx.traceparent).is_some());
            assert_eq!(ctx.trace_id.len(), 32);
            assert_eq!(ctx.tracestate, "");
        }
    }
}
