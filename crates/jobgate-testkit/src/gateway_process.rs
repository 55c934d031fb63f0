//! The real `jobgate` binary as a child process, for what an in-process
//! [`crate::TestGateway`] cannot show: how the binary reads its environment
//! (`JOBGATE_*`, and `SSL_CERT_FILE` for the CAs it trusts).

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::free_port;

/// A `jobgate` child serving on `127.0.0.1:<free port>`, without auth;
/// killed when dropped.
#[derive(Debug)]
pub struct GatewayProcess {
    child: Child,
    address: String,
}

impl GatewayProcess {
    /// Starts `binary` (a test of the `jobgate` crate passes
    /// `env!("CARGO_BIN_EXE_jobgate")`) on `redis_url`, trusting only
    /// `ca_file`, when given, for Redis's TLS certificates.
    pub fn start(binary: &str, redis_url: &str, ca_file: Option<&Path>) -> Self {
        Self::spawn(binary, redis_url, ca_file, Stdio::null())
    }

    /// As [`GatewayProcess::start`], with its log lines (stderr) written to
    /// `log`, and no span exporter (`OTEL_EXPORTER_OTLP_ENDPOINT` unset), as
    /// the binary runs by default.
    pub fn start_logging(binary: &str, redis_url: &str, log: &Path) -> Self {
        let file = std::fs::File::create(log).expect("create the gateway's log file");
        Self::spawn(binary, redis_url, None, Stdio::from(file))
    }

    fn spawn(binary: &str, redis_url: &str, ca_file: Option<&Path>, stderr: Stdio) -> Self {
        let address = format!("127.0.0.1:{}", free_port());
        let mut command = Command::new(binary);
        command
            .env("JOBGATE_AUTH", "none")
            .env("JOBGATE_LISTEN", &address)
            .env("JOBGATE_REDIS_URL", redis_url)
            .env_remove("SSL_CERT_FILE")
            .env_remove("SSL_CERT_DIR")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdout(Stdio::null())
            .stderr(stderr);
        if let Some(ca_file) = ca_file {
            command.env("SSL_CERT_FILE", ca_file);
        }
        Self {
            child: command.spawn().expect("start jobgate"),
            address,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/ws", self.address)
    }

    /// `POST /v1/jobs` with `job`; the new job's id.
    pub async fn submit(&self, job: Value) -> String {
        crate::gateway::submit_at(&self.url("/v1/jobs"), job).await
    }

    /// Sends SIGTERM, as a service manager stops it, and waits for the exit.
    pub async fn terminate(&mut self) -> ExitStatus {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "SIGTERM could not be sent");
        for _ in 0..300 {
            if let Some(status) = self.child.try_wait().expect("wait for jobgate") {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("jobgate did not exit within 30 s of SIGTERM");
    }

    /// `/readyz` (status and body) once the gateway answers at all; when
    /// `until_ready`, waiting up to 10 s for 200.
    pub async fn readyz(&self, until_ready: bool) -> (u16, Value) {
        let mut last = (0, Value::Null);
        for _ in 0..100 {
            if let Ok(answer) = reqwest::get(self.url("/readyz")).await {
                let status = answer.status().as_u16();
                last = (status, answer.json().await.unwrap_or(Value::Null));
                if status == 200 || !until_ready {
                    return last;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        last
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
