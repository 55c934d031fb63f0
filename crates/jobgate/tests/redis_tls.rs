//! Redis over TLS: the real `jobgate` binary and the real worker talk to a
//! `redis-server` that only they reach through its TLS port, verifying its
//! certificate against a private CA; a gateway that does not trust the CA
//! refuses the server.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use jobgate_testkit::{PythonWorker, RedisServer, SseClient, free_port};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use serde_json::{Value, json};

/// A CA, and a certificate for `localhost`/`127.0.0.1` it signed, as PEM files.
fn certificates(dir: &Path) -> (String, String, String) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "jobgate test CA");
    let ca =
        CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("key")).expect("ca");
    let server_key = KeyPair::generate().expect("key");
    let server = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("params")
        .signed_by(&server_key, &ca)
        .expect("server certificate");
    std::fs::create_dir_all(dir).expect("dir");
    let write = |name: &str, pem: String| {
        let path = dir.join(name);
        std::fs::write(&path, pem).expect("write pem");
        path.to_str().expect("utf-8").to_owned()
    };
    (
        write("ca.pem", ca.pem()),
        write("server.pem", server.pem()),
        write("server.key", server_key.serialize_pem()),
    )
}

struct Gateway {
    child: Child,
    address: String,
}

impl Gateway {
    fn start(redis_url: &str, ca_file: Option<&str>) -> Self {
        let address = format!("127.0.0.1:{}", free_port());
        let mut command = Command::new(env!("CARGO_BIN_EXE_jobgate"));
        command
            .env("JOBGATE_AUTH", "none")
            .env("JOBGATE_LISTEN", &address)
            .env("JOBGATE_REDIS_URL", redis_url)
            .env_remove("SSL_CERT_FILE")
            .env_remove("SSL_CERT_DIR")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(ca_file) = ca_file {
            command.env("SSL_CERT_FILE", ca_file);
        }
        Self {
            child: command.spawn().expect("start jobgate"),
            address,
        }
    }

    /// `/readyz`'s status once the gateway answers at all.
    async fn readiness(&self, wait_for_ready: bool) -> u16 {
        let client = reqwest::Client::new();
        let mut last = 0;
        for _ in 0..100 {
            if let Ok(answer) = client
                .get(format!("http://{}/readyz", self.address))
                .send()
                .await
            {
                last = answer.status().as_u16();
                if last == 200 || !wait_for_ready {
                    return last;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        last
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn jobs_run_over_tls_with_the_servers_certificate_verified() {
    let dir = std::env::temp_dir().join(format!("jobgate-tls-{}", std::process::id()));
    let (ca, cert, key) = certificates(&dir);
    let tls_port = free_port().to_string();
    let redis = RedisServer::start_with(&[
        "--tls-port",
        &tls_port,
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca,
        "--tls-auth-clients",
        "no",
    ]);
    let tls_url = format!("rediss://localhost:{tls_port}");

    let worker_url = format!("{tls_url}?ssl_ca_certs={ca}");
    let _worker = PythonWorker::start(&worker_url, "tls-worker", &[]);
    redis.wait_for_kinds(&["echo"]).await;

    let gateway = Gateway::start(&tls_url, Some(&ca));
    assert_eq!(
        gateway.readiness(true).await,
        200,
        "the gateway reaches Redis over TLS"
    );
    let submitted: Value = reqwest::Client::new()
        .post(format!("http://{}/v1/jobs", gateway.address))
        .json(&json!({"kind": "echo", "params": {"over": "tls"}}))
        .send()
        .await
        .expect("submit")
        .json()
        .await
        .expect("json");
    let job_id = submitted["job_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{submitted}"));
    let mut sse = SseClient::connect(
        &format!("http://{}/v1/jobs/{job_id}/events", gateway.address),
        None,
    )
    .await
    .expect("sse");
    let events = sse.collect(Duration::from_secs(30)).await.expect("events");
    let last = events.last().expect("events").json();
    assert_eq!(last["data"]["result"], json!({"over": "tls"}));

    // Without the CA the server's certificate is not trusted: not ready.
    let distrustful = Gateway::start(&tls_url, None);
    assert_eq!(distrustful.readiness(false).await, 503);
    let _ = std::fs::remove_dir_all(&dir);
}
