//! Extractors: the caller's [`Principal`], and body, path and query
//! extractors that answer bad input in the API's error format instead of
//! axum's plain-text rejections.
//!
//! A token comes as `Authorization: Bearer <token>` or — for browsers, whose
//! EventSource and WebSocket cannot set headers — as the `access_token`
//! query parameter.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use jobgate_proto::{ErrorCode, JobId};
use serde::de::DeserializeOwned;

use crate::auth::{Principal, unauthorized};
use crate::error::ApiError;
use crate::state::AppState;

/// A JSON body; rejections become `invalid_json`, `invalid_request`,
/// `unsupported_media_type` or `payload_too_large`.
#[derive(Debug)]
pub(crate) struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(request, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::JsonDataError(e) => ApiError::new(ErrorCode::InvalidRequest, e.body_text()),
        JsonRejection::JsonSyntaxError(e) => ApiError::new(ErrorCode::InvalidJson, e.body_text()),
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "the body must be JSON with Content-Type: application/json",
        ),
        JsonRejection::BytesRejection(e)
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE =>
        {
            ApiError::new(
                ErrorCode::PayloadTooLarge,
                "the body is over the size limit",
            )
        }
        other => ApiError::new(ErrorCode::InvalidRequest, other.body_text()),
    }
}

/// The `{id}` of a job route, parsed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct JobPath(pub JobId);

impl<S: Send + Sync> FromRequestParts<S> for JobPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(id) =
            axum::extract::Path::<String>::from_request_parts(parts, state)
                .await
                .map_err(|e: PathRejection| {
                    ApiError::new(ErrorCode::InvalidRequest, e.body_text())
                })?;
        id.parse().map(Self).map_err(|_| ApiError::invalid_job_id())
    }
}

/// A query string; rejections become `invalid_request`.
#[derive(Debug)]
pub(crate) struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| Self(value))
            .map_err(|e: QueryRejection| ApiError::new(ErrorCode::InvalidRequest, e.body_text()))
    }
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Some(verifier) = &state.auth else {
            return Ok(Principal {
                owner: state.config.default_owner.clone(),
                expires_at: None,
                admin: true,
            });
        };
        let token = bearer_token(parts).ok_or_else(|| {
            unauthorized("send a token as Authorization: Bearer, or as access_token for browsers")
        })?;
        verifier.verify(&token)
    }
}

/// A principal with the admin scope ([`crate::auth::ADMIN_SCOPE`]); any
/// other answers `403 forbidden` before the handler runs.
#[derive(Debug, Clone)]
pub(crate) struct Admin(pub Principal);

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let principal = Principal::from_request_parts(parts, state).await?;
        if !principal.admin {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "this needs a token with the jobgate:admin scope",
            ));
        }
        Ok(Self(principal))
    }
}

/// The token from the `Authorization` header, or the `access_token` query
/// parameter.
fn bearer_token(parts: &Parts) -> Option<String> {
    if let Some(value) = parts.headers.get(axum::http::header::AUTHORIZATION) {
        let value = value.to_str().ok()?;
        let (scheme, token) = value.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_owned());
    }
    let query = parts.uri.query()?;
    url_query_value(query, "access_token")
}

fn url_query_value(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == name).then(|| percent_decode(value))
    })
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%' && i + 2 < bytes.len())
            .then(|| Some(hex(bytes[i + 1])? * 16 + hex(bytes[i + 2])?))
            .flatten();
        match (escaped, bytes[i]) {
            (Some(byte), _) => {
                out.push(byte);
                i += 3;
                continue;
            }
            (None, b'+') => out.push(b' '),
            (None, byte) => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_access_token_query_parameter() {
        assert_eq!(
            url_query_value("after=3&access_token=a%2Eb+c", "access_token").as_deref(),
            Some("a.b c")
        );
        assert_eq!(url_query_value("after=3", "access_token"), None);
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }
}
