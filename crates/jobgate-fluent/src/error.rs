//! The errors a caller of this crate can see. Delivery failures (a refused
//! connection, a missing ack) never reach the caller: the background task
//! retries them and counts what it had to drop.

use std::time::Duration;

/// Errors from configuring, starting or stopping a [`crate::Forwarder`].
#[derive(Debug, thiserror::Error)]
pub enum FluentError {
    /// `JOBGATE_FLUENTD_ADDR` (or the address given) is not `host:port`.
    #[error("invalid Fluentd address {address:?}: expected host:port with a port in 1..=65535")]
    InvalidAddress { address: String },
    /// [`crate::Forwarder::start`] was called outside a tokio runtime.
    #[error("the Fluentd forwarder must be started inside a tokio runtime")]
    NoRuntime,
    /// [`crate::Forwarder::shutdown`] gave up before every record was acked.
    #[error(
        "Fluentd forwarder shutdown timed out after {timeout:?} with {undelivered} records undelivered"
    )]
    ShutdownTimedOut { timeout: Duration, undelivered: u64 },
}

/// Why one attempt to deliver a batch failed; the batch is kept and re-sent.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DeliveryError {
    #[error("connecting to Fluentd timed out after {0:?}")]
    ConnectTimeout(Duration),
    #[error("Fluentd did not acknowledge the chunk within {0:?}")]
    AckTimeout(Duration),
    #[error("Fluentd closed the connection before acknowledging the chunk")]
    ConnectionClosed,
    #[error("Fluentd sent a response that is not msgpack")]
    MalformedResponse(#[source] rmpv::decode::Error),
    #[error("i/o error talking to Fluentd")]
    Io(#[from] std::io::Error),
}
