//! The application state: one `Clone` struct of cheap handles.

use std::sync::Arc;

use jobgate_proto::ErrorCode;
use jobgate_store::{EventHub, Feed, JobStore, WarmIds};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{Principal, Verifier};
use crate::batcher::Batcher;
use crate::config::Config;
use crate::error::ApiError;
use crate::limits::{OwnerConnections, OwnerSlot};
use crate::metrics::Metrics;

#[derive(Debug, Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub store: JobStore,
    pub hub: EventHub,
    /// Fires when the server shuts down: sessions and streams end.
    pub shutdown: CancellationToken,
    /// One permit per open WebSocket session or SSE stream.
    pub connections: Arc<Semaphore>,
    /// The WebSocket sessions' tasks. An upgraded connection leaves the
    /// HTTP server's hands, so its graceful shutdown does not wait for
    /// them; `serve` does, so that each session writes its close frame.
    pub sessions: TaskTracker,
    /// Token verification; `None` with `JOBGATE_AUTH=none`.
    pub auth: Option<Arc<Verifier>>,
    /// Where client apps' log lines go (Fluentd), when configured.
    pub client_logs: Option<jobgate_fluent::Forwarder>,
    /// Counters and gauges for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Creates submitted jobs in batches (see `batcher.rs`).
    pub(crate) batcher: Batcher,
    /// Job ids with their channels subscribed ahead, for WebSocket submits.
    pub(crate) warm_ids: WarmIds,
    /// Open long-lived connections per owner.
    pub(crate) owner_connections: Arc<OwnerConnections>,
}

/// A long-lived connection's place under the global and per-owner limits;
/// released when dropped.
#[derive(Debug)]
pub struct ConnectionPermit {
    _global: OwnedSemaphorePermit,
    _owner: OwnerSlot,
}

impl AppState {
    /// A permit for one long-lived connection, held for its whole life;
    /// `too_many_connections` when the gateway is full, `shutting_down`
    /// once it is stopping.
    pub fn connection_permit(&self, principal: &Principal) -> Result<ConnectionPermit, ApiError> {
        if self.shutdown.is_cancelled() {
            return Err(ApiError::new(
                ErrorCode::ShuttingDown,
                "the gateway is shutting down",
            ));
        }
        let global = Arc::clone(&self.connections)
            .try_acquire_owned()
            .map_err(|_| {
                ApiError::new(
                    ErrorCode::TooManyConnections,
                    "the gateway holds as many connections as it may; retry later",
                )
            })?;
        let owner = self
            .owner_connections
            .acquire(&principal.owner, self.config.max_connections_per_owner)
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::TooManyConnections,
                    "this owner holds as many connections as it may; close one first",
                )
            })?;
        Ok(ConnectionPermit {
            _global: global,
            _owner: owner,
        })
    }

    /// A feed for one client connection.
    pub fn feed(&self) -> Feed {
        Feed::new(self.store.clone(), self.hub.clone())
    }
}
