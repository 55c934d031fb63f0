//! Who is asking. Every handler takes a [`Principal`], the owner of the
//! jobs it creates and the only one who may see them.
//!
//! Until token verification is configured, every request belongs to the
//! configured default owner; handlers already compare owners, so
//! verification only changes how the principal is found.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use crate::error::ApiError;
use crate::state::AppState;

/// The authenticated owner of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub owner: String,
}

impl Principal {
    /// Whether a job owned by `owner` is this principal's.
    pub fn owns(&self, owner: &str) -> bool {
        self.owner == owner
    }
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(
        _parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        Ok(Self {
            owner: state.config.default_owner.clone(),
        })
    }
}
