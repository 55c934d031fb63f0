//! The browser dashboard at `/`: one static page and its scripts, compiled
//! in from `examples/dashboard`. The page (`app.js`, with `form.js` and
//! `jobs.js`) lists the caller's jobs, follows them live and submits new
//! ones through `@jobgate/client`, whose browser bundle the dashboard keeps
//! a copy of (`jobgate-client.js`, checked against a fresh build by
//! `scripts/test-dashboard.sh`); `admin.js` adds the admin views (queues and
//! workers, dead letters), shown only to a token with the admin scope.
//!
//! Every file is public: none carries data, and the API they call checks
//! the token.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::state::AppState;

const PAGE: &str = include_str!("../../../examples/dashboard/index.html");

/// The page's scripts, each at `/dashboard/<name>`.
const SCRIPTS: [(&str, &str); 5] = [
    (
        "/dashboard/app.js",
        include_str!("../../../examples/dashboard/app.js"),
    ),
    (
        "/dashboard/form.js",
        include_str!("../../../examples/dashboard/form.js"),
    ),
    (
        "/dashboard/jobs.js",
        include_str!("../../../examples/dashboard/jobs.js"),
    ),
    (
        "/dashboard/jobgate-client.js",
        include_str!("../../../examples/dashboard/jobgate-client.js"),
    ),
    (
        "/dashboard/admin.js",
        include_str!("../../../examples/dashboard/admin.js"),
    ),
];

/// Scripts only from the gateway itself (no inline script); the page
/// connects only to it (`'self'` covers its `ws:`/`wss:` too); `data:`
/// images for its empty favicon, which spares a request that would 404.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; style-src 'self' 'unsafe-inline'; \
     img-src 'self' data:; script-src 'self'; connect-src 'self'; frame-ancestors 'none'";

pub(crate) fn router() -> Router<AppState> {
    SCRIPTS.iter().fold(
        Router::new().route("/", get(page)),
        |router, &(path, text)| router.route(path, get(move || script(text))),
    )
}

async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        ],
        PAGE,
    )
}

async fn script(text: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        text,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_every_script_it_needs_from_the_gateway() {
        assert!(PAGE.contains(r#"<script type="module" src="/dashboard/app.js">"#));
        assert!(PAGE.contains(r#"<script src="/dashboard/admin.js">"#));
        let app = SCRIPTS[0].1;
        for import in ["./jobgate-client.js", "./form.js", "./jobs.js"] {
            assert!(app.contains(import), "app.js imports {import}");
        }
    }

    #[test]
    fn no_script_polls_on_a_fixed_interval_or_writes_html() {
        for (path, text) in SCRIPTS {
            assert!(!text.contains("setInterval"), "{path} polls");
            assert!(!text.contains("innerHTML"), "{path} writes HTML");
        }
    }
}
