//! One `redis-server` of a test cluster: its ports (client, bus, and TLS
//! when asked), its folder, and starting and killing it.

use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use crate::redis_server::spawn_redis_server;
use crate::{TlsFiles, free_port};

/// How long a node may be silent before the others mark it failed: short,
/// so a failover takes a couple of seconds.
const NODE_TIMEOUT_MS: u64 = 1000;

/// One `redis-server` of the cluster.
#[derive(Debug)]
pub(super) struct ClusterNode {
    pub(super) port: u16,
    bus_port: u16,
    /// With TLS: the TLS client port and the files.
    pub(super) tls: Option<(u16, TlsFiles)>,
    dir: PathBuf,
    child: Option<Child>,
}

impl ClusterNode {
    /// A node kept in `dir`, not started yet.
    pub(super) fn new(dir: PathBuf, tls: Option<&TlsFiles>) -> Self {
        Self {
            port: 0,
            bus_port: 0,
            tls: tls.map(|files| (0, files.clone())),
            dir,
            child: None,
        }
    }

    pub(super) fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub(super) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Spawns on fresh free ports until one pair is really free.
    pub(super) fn spawn_on_free_ports(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            self.port = free_port();
            self.bus_port = free_port();
            if let Some((tls_port, _)) = self.tls.as_mut() {
                *tls_port = free_port();
            }
            let distinct = self.port != self.bus_port
                && self
                    .tls
                    .as_ref()
                    .is_none_or(|(tls_port, _)| ![self.port, self.bus_port].contains(tls_port));
            if distinct && self.try_spawn() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not start in cluster mode"
            );
        }
    }

    /// Spawns on the node's own ports (a restart).
    pub(super) fn spawn(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.try_spawn() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not restart on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn try_spawn(&mut self) -> bool {
        let mut args: Vec<String> = [
            "--cluster-enabled",
            "yes",
            "--cluster-port",
            &self.bus_port.to_string(),
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            &NODE_TIMEOUT_MS.to_string(),
            // A replica may take over however long it was cut off: tests
            // kill masters right after writing.
            "--cluster-replica-validity-factor",
            "0",
        ]
        .map(str::to_owned)
        .into();
        if let Some((tls_port, files)) = &self.tls {
            args.extend(files.redis_args(*tls_port));
            args.extend(["--tls-cluster".to_owned(), "yes".to_owned()]);
        }
        self.child = Some(spawn_redis_server(self.port, &self.dir, args));
        if self.wait_answering(Duration::from_secs(5)) {
            return true;
        }
        self.kill();
        false
    }

    fn wait_answering(&mut self, within: Duration) -> bool {
        let client =
            redis::Client::open(format!("redis://127.0.0.1:{}", self.port)).expect("redis url");
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(_)) = child.try_wait()
            {
                return false;
            }
            if let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_millis(200))
                && redis::cmd("PING").query::<String>(&mut conn).is_ok()
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}
