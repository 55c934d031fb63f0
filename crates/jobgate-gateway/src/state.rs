//! The application state: one `Clone` struct of cheap handles.

use std::sync::Arc;

use axum::extract::FromRef;
use jobgate_store::{EventHub, Feed, JobStore};
use tokio_util::sync::CancellationToken;

use crate::config::Config;

#[derive(Debug, Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub store: JobStore,
    pub hub: EventHub,
    /// Fires when the server shuts down: sessions and streams end.
    pub shutdown: CancellationToken,
}

impl AppState {
    /// A feed for one client connection.
    pub fn feed(&self) -> Feed {
        Feed::new(self.store.clone(), self.hub.clone())
    }
}

impl FromRef<AppState> for JobStore {
    fn from_ref(state: &AppState) -> Self {
        state.store.clone()
    }
}
