//! One selected log line, and which part of the system wrote it.

use serde_json::{Map, Value};

use crate::timestamp::Timestamp;

/// The `service` of the gateway's lines (crates/jobgate-gateway/src/telemetry.rs).
const GATEWAY_SERVICES: [&str; 2] = ["jobgate", "jobgate-gateway"];
/// The `service` of the Python worker's lines (workers/python/.../logs.py);
/// deployments may add a suffix (`jobgate-worker-pricing`).
const WORKER_SERVICE_PREFIX: &str = "jobgate-worker";
/// Fields that mark a worker line as written inside a Dask task.
const DASK_TASK_FIELDS: [&str; 4] = ["dask_key", "task_key", "dask_task", "dask_task_key"];
/// Thread name prefix of Dask's task threads (`Dask-Default-Threads-…`).
const DASK_THREAD_PREFIX: &str = "Dask-";

/// Which part of the system wrote a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// A client app (browser dashboard, SwiftUI app): any other `service`.
    Client,
    /// The Rust gateway.
    Gateway,
    /// The Python worker, outside Dask tasks.
    Worker,
    /// Code running inside a Dask task of the worker.
    DaskTask,
}

impl Role {
    /// Classifies a line by its `service`, and worker lines by the marks of a
    /// Dask task: a task key field, a Dask thread, a `distributed` logger.
    pub fn of(fields: &Map<String, Value>) -> Self {
        let text = |key: &str| fields.get(key).and_then(Value::as_str).unwrap_or("");
        let service = text("service");
        if GATEWAY_SERVICES.contains(&service) {
            return Self::Gateway;
        }
        if !service.starts_with(WORKER_SERVICE_PREFIX) {
            return Self::Client;
        }
        let in_dask_task = DASK_TASK_FIELDS.iter().any(|key| fields.contains_key(*key))
            || text("thread").starts_with(DASK_THREAD_PREFIX)
            || text("logger").starts_with("distributed");
        if in_dask_task {
            Self::DaskTask
        } else {
            Self::Worker
        }
    }

    /// `client`, `gateway`, `worker` or `dask task`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Gateway => "gateway",
            Self::Worker => "worker",
            Self::DaskTask => "dask task",
        }
    }
}

/// A log line that belongs to the narrative.
#[derive(Debug, Clone)]
pub struct Record {
    /// Its `timestamp`.
    pub timestamp: Timestamp,
    /// Who wrote it.
    pub role: Role,
    /// All its fields.
    pub fields: Map<String, Value>,
    /// The line's JSON object exactly as written (key order kept).
    pub raw: String,
    /// Index of its file in [`Trace::files`](crate::Trace::files).
    pub file: usize,
    /// Its line number in that file, from 1.
    pub line: u64,
}

impl Record {
    /// A field's value if it is a string.
    pub fn text(&self, key: &str) -> Option<&str> {
        self.fields.get(key).and_then(Value::as_str)
    }

    /// `service`, or `?` when missing.
    pub fn service(&self) -> &str {
        self.text("service").unwrap_or("?")
    }

    /// `trace_id`, if any.
    pub fn trace_id(&self) -> Option<&str> {
        self.text("trace_id")
    }

    /// `job_id`, if any.
    pub fn job_id(&self) -> Option<&str> {
        self.text("job_id")
    }

    /// The name the narrative gives the writer: the service name for a
    /// client (there are several kinds), the role otherwise.
    pub fn writer(&self) -> &str {
        match self.role {
            Role::Client => self.service(),
            role => role.name(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn role(line: Value) -> Role {
        match line {
            Value::Object(fields) => Role::of(&fields),
            _ => Role::Client,
        }
    }

    #[test]
    fn classifies_writers() {
        assert_eq!(role(json!({"service": "jobgate"})), Role::Gateway);
        assert_eq!(role(json!({"service": "jobgate-worker"})), Role::Worker);
        assert_eq!(
            role(json!({"service": "jobgate-worker", "task_key": "price-chunk-3"})),
            Role::DaskTask
        );
        assert_eq!(
            role(json!({"service": "jobgate-worker", "thread": "Dask-Default-Threads-81-0"})),
            Role::DaskTask
        );
        assert_eq!(role(json!({"service": "ios-app"})), Role::Client);
        assert_eq!(role(json!({"service": "dashboard"})), Role::Client);
    }
}
