//! Test harness shared by jobgate's integration tests and benchmarks.
//!
//! Everything here is real: [`RedisServer`] runs `redis-server` on an
//! ephemeral port (and can kill and restart it, with its AOF, for fault
//! injection); [`RedisCluster`] runs a Redis Cluster of such servers (and
//! can kill a master, wait for its replica's promotion, move a slot);
//! [`TestGateway`] serves the real app on port 0, [`GatewayProcess`] runs
//! the real binary; [`TlsFiles`] are a CA and a server certificate for
//! Redis's TLS port;
//! [`PythonWorker`] runs the real `jobgate-worker` from the repo's `.venv`;
//! [`WsClient`] and [`SseClient`] are real WebSocket and SSE clients;
//! [`Schemas`] validates messages against `proto-schemas/schemas`;
//! [`EchoStack`] is the usual single-server setup of those together.

mod clients;
mod driver;
mod forward_receiver;
mod gateway;
mod gateway_process;
mod redis_cluster;
mod redis_server;
mod schemas;
mod stack;
mod tls;
mod worker;

use std::path::PathBuf;

pub use clients::{SseClient, SseEvent, WsClient};
pub use driver::{DriverConnection, JobDriver, event_position};
pub use forward_receiver::{
    ForwardMessage, ForwardMode, ForwardReceiver, ForwardRecord, ForwardTime,
};
pub use gateway::{TestGateway, get_json};
pub use gateway_process::GatewayProcess;
pub use redis_cluster::RedisCluster;
pub use redis_server::{RedisServer, info_number};
pub use schemas::Schemas;
pub use stack::EchoStack;
pub use tls::TlsFiles;
pub use worker::PythonWorker;

/// The repository's root folder.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the repository root exists")
}

/// A TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    listener.local_addr().expect("local addr").port()
}
