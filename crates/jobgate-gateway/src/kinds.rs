//! `GET /v1/kinds`: the job kinds workers registered, each with its queue and
//! the JSON Schema of its params (`null` when its worker registered none),
//! so that clients can build forms. Any authenticated caller may read it;
//! with `JOBGATE_ALLOWED_KINDS` set, only those kinds are listed.

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use jobgate_proto::KindList;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::state::AppState;

pub(crate) fn router() -> Router<AppState> {
    Router::new().route("/v1/kinds", get(list))
}

async fn list(
    _: Principal,
    State(state): State<AppState>,
) -> Result<axum::Json<KindList>, ApiError> {
    let allowed = &state.config.allowed_kinds;
    let mut kinds = state.store.kinds().await?;
    if !allowed.is_empty() {
        kinds.retain(|kind| allowed.contains(&kind.kind));
    }
    Ok(axum::Json(KindList { kinds }))
}
