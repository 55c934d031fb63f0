//! Redis over TLS: the real `jobgate` binary and the real worker talk to a
//! `redis-server` that only they reach through its TLS port, verifying its
//! certificate against a private CA; a gateway that does not trust the CA
//! refuses the server.

use std::time::Duration;

use jobgate_testkit::{GatewayProcess, PythonWorker, RedisServer, SseClient, TlsFiles, free_port};
use serde_json::json;

/// The `jobgate` binary built for these tests.
const JOBGATE: &str = env!("CARGO_BIN_EXE_jobgate");

#[tokio::test]
async fn jobs_run_over_tls_with_the_servers_certificate_verified() {
    let dir = std::env::temp_dir().join(format!("jobgate-tls-{}", std::process::id()));
    let tls = TlsFiles::generate(&dir);
    let tls_port = free_port();
    let redis = RedisServer::start_with(&tls.redis_args(tls_port));
    let tls_url = format!("rediss://localhost:{tls_port}");

    let worker_url = format!("{tls_url}?ssl_ca_certs={}", tls.ca_file.display());
    let _worker = PythonWorker::start(&worker_url, "tls-worker", &[]);
    redis.wait_for_kinds(&["echo"]).await;

    let gateway = GatewayProcess::start(JOBGATE, &tls_url, Some(&tls.ca_file));
    assert_eq!(
        gateway.readyz(true).await.0,
        200,
        "the gateway reaches Redis over TLS"
    );
    let job_id = gateway
        .submit(json!({"kind": "echo", "params": {"over": "tls"}}))
        .await;
    let mut sse = SseClient::connect(&gateway.url(&format!("/v1/jobs/{job_id}/events")), None)
        .await
        .expect("sse");
    let events = sse.collect(Duration::from_secs(30)).await.expect("events");
    let last = events.last().expect("events").json();
    assert_eq!(last["data"]["result"], json!({"over": "tls"}));

    // Without the CA the server's certificate is not trusted: not ready.
    let distrustful = GatewayProcess::start(JOBGATE, &tls_url, None);
    assert_eq!(distrustful.readyz(false).await.0, 503);
    let _ = std::fs::remove_dir_all(&dir);
}
