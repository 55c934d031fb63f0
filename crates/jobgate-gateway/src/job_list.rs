//! `GET /v1/jobs`: the caller's jobs, newest first, filtered by status and
//! kind, a page at a time.
//!
//! The query is checked here, before Redis is asked anything: `limit` 1 to
//! [`MAX_LIMIT`] (default [`DEFAULT_LIMIT`]), `status` a comma-separated list
//! of job statuses, `kind` a kind name, `cursor` a `next_cursor` this
//! endpoint gave. Anything else is `422 invalid_request` naming the
//! parameter. The cursor is base64url (no padding) of the store's
//! `<score>:<job_id>` position: opaque to clients, stable while new jobs
//! arrive. One page reads at most [`SCAN_FACTOR`] × `limit` index entries,
//! so a page with filters may hold fewer jobs than `limit` while more exist:
//! a client goes on while `next_cursor` is not null.

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jobgate_proto::{ErrorCode, JobList, JobStatus, MAX_KIND_LEN};
use jobgate_store::{ListPosition, ListQuery};

use crate::auth::Principal;
use crate::error::ApiError;
use crate::extract::Query;
use crate::state::AppState;

/// Jobs on a page when the client does not say.
const DEFAULT_LIMIT: usize = 50;
/// The most jobs on one page.
const MAX_LIMIT: usize = 200;
/// One page reads at most this many index entries per job asked for.
const SCAN_FACTOR: usize = 10;
/// The longest cursor this endpoint gives (a u64 score, `:`, a job id, in
/// base64): anything longer is malformed without decoding it.
const MAX_CURSOR_LEN: usize = 96;

pub(crate) fn router() -> Router<AppState> {
    Router::new().route("/v1/jobs", get(list))
}

/// The query string, as sent.
#[derive(Debug, Default, serde::Deserialize)]
struct ListParams {
    status: Option<String>,
    kind: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

async fn list(
    State(state): State<AppState>,
    principal: Principal,
    Query(params): Query<ListParams>,
) -> Result<axum::Json<JobList>, ApiError> {
    let query = parse(params)?;
    let page = state.store.list_jobs(&principal.owner, &query).await?;
    Ok(axum::Json(JobList {
        jobs: page.jobs,
        next_cursor: page.next.map(|position| encode_cursor(&position)),
    }))
}

/// The store's query, or `invalid_request` naming the parameter.
fn parse(params: ListParams) -> Result<ListQuery, ApiError> {
    let invalid = |message: String| ApiError::new(ErrorCode::InvalidRequest, message);
    let limit = match params.limit.as_deref() {
        None => DEFAULT_LIMIT,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|limit| (1..=MAX_LIMIT).contains(limit))
            .ok_or_else(|| invalid(format!("limit: must be an integer from 1 to {MAX_LIMIT}")))?,
    };
    let statuses = match params.status.as_deref() {
        None => Vec::new(),
        Some(text) => text
            .split(',')
            .map(|status| {
                status.parse::<JobStatus>().map_err(|()| {
                    invalid(
                        "status: must be queued, running, completed, failed or cancelled \
                         (or several, comma-separated)"
                            .to_owned(),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    if let Some(kind) = &params.kind {
        let well_formed = (1..=MAX_KIND_LEN).contains(&kind.len())
            && kind
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b));
        if !well_formed {
            return Err(invalid(
                "kind: must be 1 to 128 letters, digits and _ . : -".to_owned(),
            ));
        }
    }
    let after = match params.cursor.as_deref() {
        None => None,
        Some(text) => Some(decode_cursor(text).ok_or_else(|| {
            invalid("cursor: not a cursor this endpoint gave (use next_cursor as is)".to_owned())
        })?),
    };
    Ok(ListQuery {
        statuses,
        kind: params.kind,
        limit,
        after,
        scan_max: limit * SCAN_FACTOR,
    })
}

fn encode_cursor(position: &ListPosition) -> String {
    URL_SAFE_NO_PAD.encode(position.to_string())
}

fn decode_cursor(text: &str) -> Option<ListPosition> {
    if text.len() > MAX_CURSOR_LEN {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(text).ok()?;
    std::str::from_utf8(&bytes).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> ListParams {
        let mut params = ListParams::default();
        for (name, value) in pairs {
            let value = Some((*value).to_owned());
            match *name {
                "status" => params.status = value,
                "kind" => params.kind = value,
                "limit" => params.limit = value,
                "cursor" => params.cursor = value,
                other => panic!("no parameter {other}"),
            }
        }
        params
    }

    #[test]
    fn a_cursor_reads_back_as_given() {
        let position = ListPosition {
            score: 1_796_000_000_123,
            job_id: "0193a0b4-7c1e-7d4e-9a2b-1c2d3e4f5a6b".parse().expect("id"),
        };
        let cursor = encode_cursor(&position);
        assert!(cursor.len() <= MAX_CURSOR_LEN, "{cursor}");
        assert_eq!(decode_cursor(&cursor), Some(position));
        let query = parse(params(&[("cursor", &cursor)])).expect("valid");
        assert_eq!(query.after, Some(position));
    }

    #[test]
    fn defaults_and_filters() {
        let query = parse(params(&[])).expect("valid");
        assert_eq!((query.limit, query.scan_max), (50, 500));
        assert!(query.statuses.is_empty() && query.kind.is_none() && query.after.is_none());
        let query = parse(params(&[
            ("limit", "200"),
            ("status", "queued,failed"),
            ("kind", "mc_option_price"),
        ]))
        .expect("valid");
        assert_eq!(query.limit, 200);
        assert_eq!(query.statuses, [JobStatus::Queued, JobStatus::Failed]);
        assert_eq!(query.kind.as_deref(), Some("mc_option_price"));
    }

    #[test]
    fn bad_parameters_are_named() {
        for (name, value) in [
            ("limit", "0"),
            ("limit", "201"),
            ("limit", "-1"),
            ("limit", "ten"),
            ("status", "done"),
            ("status", "queued,"),
            ("status", ""),
            ("kind", ""),
            ("kind", "a b"),
            ("cursor", ""),
            ("cursor", "not base64!"),
            ("cursor", "MTI"),
            ("cursor", &URL_SAFE_NO_PAD.encode("12:not-a-job")),
            ("cursor", &"A".repeat(MAX_CURSOR_LEN + 4)),
        ] {
            let error = parse(params(&[(name, value)])).expect_err(value);
            assert_eq!(error.code, ErrorCode::InvalidRequest);
            assert!(error.message.starts_with(name), "{}", error.message);
        }
    }
}
