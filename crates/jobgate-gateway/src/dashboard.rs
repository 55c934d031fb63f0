//! The browser dashboard at `/`: one static page that submits pricing jobs
//! and follows every job of the caller through `/v1/events`, and its admin
//! views at `/dashboard/admin.js` (queues and workers, dead letters), which
//! the page shows only to a token with the admin scope.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::state::AppState;

const PAGE: &str = include_str!("../../../examples/dashboard/index.html");
const ADMIN_SCRIPT: &str = include_str!("../../../examples/dashboard/admin.js");

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(page))
        .route("/dashboard/admin.js", get(admin_script))
}

async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
            ),
        ],
        PAGE,
    )
}

/// Public like the page: the script carries no data, the admin API it calls
/// checks the scope.
async fn admin_script() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        ADMIN_SCRIPT,
    )
}
