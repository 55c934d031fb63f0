//! The usual single-server setup of an integration test, in one value.

use crate::{JobDriver, RedisServer, Schemas, TestGateway};

/// A real Redis, a gateway serving it with the default config, a
/// hand-driven worker that registered the `echo` kind, and the schemas.
#[derive(Debug)]
pub struct EchoStack {
    pub redis: RedisServer,
    pub gateway: TestGateway,
    pub driver: JobDriver,
    pub schemas: Schemas,
}

impl EchoStack {
    pub async fn start() -> Self {
        let redis = RedisServer::start();
        let driver = JobDriver::with_kinds(&redis.url(), &["echo"]).await;
        let gateway = TestGateway::start(&redis.url()).await;
        Self {
            redis,
            gateway,
            driver,
            schemas: Schemas::load(),
        }
    }
}
