//! jobgate's wire types: what clients, the gateway and workers say to each other.
//!
//! This crate knows neither Redis nor HTTP. Each type here has a JSON Schema in
//! `proto-schemas/schemas/`, and the tests check real messages against those
//! schemas, so the Rust types, the Python SDK and the documents cannot drift.
//!
//! Events are the one message the gateway does not build: the job state
//! machine script writes them, and the gateway forwards their JSON verbatim.
//! [`EventHeader`] reads just enough of one to order and de-duplicate it.

pub mod batch;
mod error;
mod event;
mod job;
mod kinds;
pub mod legacy;
pub mod ws;

pub use error::{ErrorBody, ErrorCode};
pub use event::{EventHeader, EventPosition, EventType, FIRST_EPOCH, InvalidEventPosition};
pub use job::{
    DEFAULT_MAX_ATTEMPTS, DEFAULT_PRIORITY, JobId, JobLinks, JobList, JobSnapshot, JobStatus,
    MAX_DELAY_MS, MAX_KIND_LEN, Progress, SubmitRequest, SubmitResponse, ValidationError,
};
pub use kinds::{KindInfo, KindList, ParamsError, ParamsSchema};
