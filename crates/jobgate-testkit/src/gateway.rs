//! The real gateway app, served in-process on an ephemeral port.

use std::net::SocketAddr;

use jobgate_gateway::{AppState, Config};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A gateway serving on `127.0.0.1:<ephemeral>`.
#[derive(Debug)]
pub struct TestGateway {
    pub addr: SocketAddr,
    pub state: AppState,
    server: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestGateway {
    /// Serves a gateway with the default config on `redis_url`.
    pub async fn start(redis_url: &str) -> Self {
        Self::start_with(Config::for_redis(redis_url)).await
    }

    /// Serves a gateway with `config` (its `listen` port is ignored: port 0).
    pub async fn start_with(config: Config) -> Self {
        config.validate().expect("valid test config");
        let state = jobgate_gateway::build_state(config, CancellationToken::new()).expect("state");
        Self::serve(state).await
    }

    /// Serves a gateway with a state built by the caller.
    pub async fn serve(state: AppState) -> Self {
        let gateway = Self::serve_unready(state).await;
        gateway.wait_ready().await;
        gateway
    }

    /// Serves a gateway with `config` without waiting for `/readyz` (for a
    /// gateway started while Redis is down).
    pub async fn start_unready(config: Config) -> Self {
        config.validate().expect("valid test config");
        let state = jobgate_gateway::build_state(config, CancellationToken::new()).expect("state");
        Self::serve_unready(state).await
    }

    async fn serve_unready(state: AppState) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(jobgate_gateway::serve(listener, state.clone()));
        Self {
            addr,
            state,
            server: Some(server),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `POST /v1/jobs` with `job` (no credentials); the new job's id.
    pub async fn submit(&self, job: serde_json::Value) -> String {
        submit_at(&self.url("/v1/jobs"), job).await
    }

    /// Submits an `echo` job with params `{"n": 1}`; its id.
    pub async fn submit_echo(&self) -> String {
        self.submit(serde_json::json!({"kind": "echo", "params": {"n": 1}}))
            .await
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/ws", self.addr)
    }

    /// `GET /readyz`: the status and the JSON body.
    pub async fn readyz(&self) -> (u16, serde_json::Value) {
        let answer = reqwest::get(self.url("/readyz")).await.expect("readyz");
        let status = answer.status().as_u16();
        (status, answer.json().await.expect("json"))
    }

    /// Waits until `/readyz` answers 200 (Redis and the pub/sub link up).
    pub async fn wait_ready(&self) {
        let client = reqwest::Client::new();
        for _ in 0..200 {
            if let Ok(response) = client.get(self.url("/readyz")).send().await
                && response.status().is_success()
            {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        panic!("the gateway did not become ready");
    }

    /// Graceful shutdown, as on SIGTERM.
    pub async fn shutdown(mut self) {
        self.state.shutdown.cancel();
        if let Some(server) = self.server.take() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), server).await;
        }
    }

    /// Abrupt death: every connection drops at once, nothing is flushed.
    pub fn kill(mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
        self.state.shutdown.cancel();
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
        self.state.shutdown.cancel();
    }
}

/// `POST url` with `job` (no credentials); the new job's id.
pub(crate) async fn submit_at(url: &str, job: serde_json::Value) -> String {
    let body: serde_json::Value = reqwest::Client::new()
        .post(url)
        .json(&job)
        .send()
        .await
        .expect("submit")
        .json()
        .await
        .expect("a JSON answer");
    body["job_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no job id: {body}"))
        .to_owned()
}

/// `GET url` (no credentials): the JSON body, whatever the status.
pub async fn get_json(url: &str) -> serde_json::Value {
    reqwest::get(url)
        .await
        .expect("get")
        .json()
        .await
        .expect("a JSON answer")
}
