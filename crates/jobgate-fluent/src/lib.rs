//! Ships jobgate's JSON log lines to Fluentd over its Forward protocol v1.
//!
//! [`Forwarder::send`] never blocks: it puts the record in a bounded buffer
//! whose oldest records are dropped (and counted) when Fluentd is away. A
//! background task batches records into chunks, sends each with a unique
//! `chunk` id, waits for `{"ack": chunk}` and re-sends what was not acked,
//! reconnecting with exponential backoff. [`TeeMakeWriter`] plugs this into
//! a `tracing_subscriber` fmt layer next to stderr.
//!
//! This crate knows tokio and tracing, and nothing of axum or Redis: the
//! gateway and any other Rust component can use it.
//!
//! ```no_run
//! # async fn example() -> Result<(), jobgate_fluent::FluentError> {
//! use jobgate_fluent::{Forwarder, ForwarderConfig, TeeMakeWriter};
//!
//! let address = "127.0.0.1:24224".parse()?;
//! let forwarder = Forwarder::start(ForwarderConfig::new(address, "gateway"))?;
//! let writer = TeeMakeWriter::new(std::io::stderr, Some(forwarder.clone()));
//! tracing_subscriber::fmt().with_writer(writer).init();
//! // ... serve ...
//! forwarder.shutdown(std::time::Duration::from_secs(2)).await?;
//! # Ok(()) }
//! ```

mod backoff;
mod buffer;
mod config;
mod error;
mod forwarder;
pub mod protocol;
mod sender;
mod stats;
mod writer;

pub use config::{FLUENTD_ADDR_ENV, FluentdAddress, ForwarderConfig, Mode};
pub use error::FluentError;
pub use forwarder::Forwarder;
pub use protocol::{Event, EventTime};
pub use stats::{ForwarderStats, StatsSnapshot};
pub use writer::{TeeMakeWriter, TeeWriter};
