//! `POST /v1/client-logs`: client apps' log lines join the gateway's, so
//! one `trace_id` tells the story from the tap in the app to the Dask task.
//! Records are checked against `proto-schemas/schemas/client_logs.json`,
//! stamped with the authenticated owner (a client cannot log as another),
//! and forwarded to Fluentd (tag `jobgate.client`), or written to stderr when
//! no Fluentd is configured.

use std::io::Write as _;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::post;
use jobgate_proto::ErrorCode;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::auth::Principal;
use crate::error::ApiError;
use crate::extract::Json;
use crate::state::AppState;

const MAX_BATCH_BYTES: usize = 256 * 1024;
const MAX_RECORDS: usize = 500;
const MAX_FIELDS: usize = 40;
const MAX_STRING: usize = 8192;

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/client-logs", post(accept))
        .layer(DefaultBodyLimit::max(MAX_BATCH_BYTES))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Batch {
    records: Vec<Map<String, Value>>,
}

async fn accept(
    State(state): State<AppState>,
    principal: Principal,
    Json(batch): Json<Batch>,
) -> Result<impl IntoResponse, ApiError> {
    if batch.records.is_empty() || batch.records.len() > MAX_RECORDS {
        return Err(invalid(format!("records: send 1 to {MAX_RECORDS} records")));
    }
    for (index, record) in batch.records.iter().enumerate() {
        check_record(record).map_err(|message| invalid(format!("records[{index}].{message}")))?;
    }
    let received_at = crate::telemetry::rfc3339_now();
    let count = batch.records.len();
    let mut stderr = std::io::stderr().lock();
    for mut record in batch.records {
        record.insert("owner".into(), Value::String(principal.owner.clone()));
        record.insert("source".into(), Value::String("client".into()));
        record.insert("received_at".into(), Value::String(received_at.clone()));
        match &state.client_logs {
            Some(forwarder) => forwarder.send(record),
            None => {
                let _ = writeln!(stderr, "{}", Value::Object(record));
            }
        }
    }
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(serde_json::json!({"accepted": count})),
    ))
}

fn invalid(message: String) -> ApiError {
    ApiError::new(ErrorCode::InvalidRequest, message)
}

/// Checks one record against the client log schema.
fn check_record(record: &Map<String, Value>) -> Result<(), String> {
    if record.len() > MAX_FIELDS {
        return Err(format!("has more than {MAX_FIELDS} fields"));
    }
    let text = |name: &str| record.get(name).and_then(Value::as_str);
    if !text("timestamp").is_some_and(is_rfc3339) {
        return Err(
            "timestamp: an RFC 3339 time is required, e.g. 2026-11-27T21:04:05.100Z".into(),
        );
    }
    if !matches!(text("level"), Some("debug" | "info" | "warn" | "error")) {
        return Err("level: one of debug, info, warn, error".into());
    }
    if text("message").is_none() {
        return Err("message: a string is required".into());
    }
    let service_ok = text("service").is_some_and(|s| {
        (1..=64).contains(&s.len())
            && s.bytes()
                .next()
                .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
    });
    if !service_ok {
        return Err("service: lower-case letters, digits and . _ - (1 to 64)".into());
    }
    for (name, length) in [("trace_id", 32), ("span_id", 16)] {
        if let Some(value) = record.get(name) {
            let hex = value.as_str().is_some_and(|v| {
                v.len() == length
                    && v.bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            });
            if !hex {
                return Err(format!("{name}: {length} lower-case hex digits"));
            }
        }
    }
    if let Some(job_id) = record.get("job_id")
        && job_id
            .as_str()
            .and_then(|j| j.parse::<jobgate_proto::JobId>().ok())
            .is_none()
    {
        return Err("job_id: a job id".into());
    }
    for (name, value) in record {
        if value.as_str().is_some_and(|v| v.len() > MAX_STRING) {
            return Err(format!("{name}: longer than {MAX_STRING} bytes"));
        }
    }
    Ok(())
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`, with plausible ranges.
fn is_rfc3339(text: &str) -> bool {
    let bytes = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| {
        bytes
            .get(range.clone())
            .is_some_and(|part| part.iter().all(u8::is_ascii_digit))
            && std::str::from_utf8(&bytes[range])
                .ok()
                .and_then(|s| s.parse::<u32>().ok())
                .is_some()
    };
    let number = |range: std::ops::Range<usize>| -> u32 {
        std::str::from_utf8(&bytes[range])
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(99)
    };
    if bytes.len() < 20 || bytes.len() > 40 || !digits(0..4) || !digits(5..7) || !digits(8..10) {
        return false;
    }
    if bytes[4] != b'-' || bytes[7] != b'-' || !matches!(bytes[10], b'T' | b't' | b' ') {
        return false;
    }
    if !digits(11..13)
        || bytes[13] != b':'
        || !digits(14..16)
        || bytes[16] != b':'
        || !digits(17..19)
    {
        return false;
    }
    let ranges_ok = (1..=12).contains(&number(5..7))
        && (1..=31).contains(&number(8..10))
        && number(11..13) < 24
        && number(14..16) < 60
        && number(17..19) < 61;
    let mut rest = &text[19..];
    if let Some(fraction) = rest.strip_prefix('.') {
        let end = fraction
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(fraction.len());
        if end == 0 {
            return false;
        }
        rest = &fraction[end..];
    }
    let zone_ok = matches!(rest, "Z" | "z")
        || (rest.len() == 6
            && matches!(rest.as_bytes()[0], b'+' | b'-')
            && rest.as_bytes()[3] == b':'
            && rest[1..3].bytes().all(|b| b.is_ascii_digit())
            && rest[4..6].bytes().all(|b| b.is_ascii_digit()));
    ranges_ok && zone_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(json: &str) -> Map<String, Value> {
        serde_json::from_str(json).expect("object")
    }

    #[test]
    fn accepts_a_record_of_the_shared_schema() {
        let ok = record(
            r#"{"timestamp":"2026-11-27T21:04:05.100Z","level":"info","message":"tap","service":"ios-app","trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","screen":"pricing"}"#,
        );
        assert_eq!(check_record(&ok), Ok(()));
    }

    #[test]
    fn knows_an_rfc3339_time() {
        for good in [
            "2026-11-27T21:04:05Z",
            "2026-11-27T21:04:05.100Z",
            "2026-11-27T21:04:05.1+01:00",
        ] {
            assert!(is_rfc3339(good), "{good}");
        }
        for bad in [
            "0000000000",
            "2026-13-27T21:04:05Z",
            "2026-11-27T21:04:05",
            "2026-11-27T21:04:05.Z",
            "2026-11-27 21:04",
        ] {
            assert!(!is_rfc3339(bad), "{bad}");
        }
    }

    #[test]
    fn names_the_bad_field() {
        for (json, field) in [
            (
                r#"{"level":"info","message":"m","service":"s"}"#,
                "timestamp",
            ),
            (
                r#"{"timestamp":"2026-11-27T21:04:05Z","level":"loud","message":"m","service":"s"}"#,
                "level",
            ),
            (
                r#"{"timestamp":"2026-11-27T21:04:05Z","level":"info","message":"m","service":"Bad Name"}"#,
                "service",
            ),
            (
                r#"{"timestamp":"2026-11-27T21:04:05Z","level":"info","message":"m","service":"s","trace_id":"xyz"}"#,
                "trace_id",
            ),
        ] {
            let error = check_record(&record(json)).expect_err(json);
            assert!(error.starts_with(field), "{error}");
        }
    }
}
