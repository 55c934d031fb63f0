//! A real `redis-server` per test, on its own port and folder.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redis::aio::ConnectionLike;

use crate::free_port;

/// A `redis-server` child process, killed when dropped.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
    extra_args: Vec<String>,
    /// `user:password` for the harness's own connections, when ACLs are on.
    admin: Option<String>,
}

impl RedisServer {
    /// Starts a server with append-only persistence (fsync every write) in a
    /// fresh temporary folder, so a restart keeps every acknowledged write.
    pub fn start() -> Self {
        Self::start_with(&[] as &[&str])
    }

    /// As [`RedisServer::start`], with extra `redis-server` arguments (for
    /// example `--aclfile`, or [`crate::TlsFiles::redis_args`]);
    /// [`RedisServer::url`] then has no credentials.
    pub fn start_with(extra_args: &[impl AsRef<str>]) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "jobgate-redis-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("create the redis folder");
        let mut server = Self {
            port: free_port(),
            dir,
            child: None,
            extra_args: extra_args.iter().map(|a| a.as_ref().to_owned()).collect(),
            admin: None,
        };
        server.spawn();
        server
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The folder holding the server's data (and any file a test puts there).
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// The URL with `user:password`.
    pub fn url_as(&self, user: &str, password: &str) -> String {
        format!("redis://{user}:{password}@127.0.0.1:{}", self.port)
    }

    /// Makes the harness's own connections log in as `user`.
    pub fn use_admin(&mut self, user: &str, password: &str) {
        self.admin = Some(format!("{user}:{password}"));
    }

    /// A client for checking what the tests did.
    pub fn client(&self) -> redis::Client {
        let url = match &self.admin {
            Some(credentials) => format!("redis://{credentials}@127.0.0.1:{}", self.port),
            None => self.url(),
        };
        redis::Client::open(url).expect("redis url")
    }

    /// Waits until workers have registered every one of `kinds` (in the
    /// kinds registry, `jobgate:kinds:v2`).
    pub async fn wait_for_kinds(&self, kinds: &[&str]) {
        wait_for_kinds(&mut self.admin_connection().await, kinds).await;
    }

    /// Puts Redis at its memory limit: a big key (`jobgate-test:filler`),
    /// then `maxmemory` at half of what Redis then uses, so that with the
    /// default `noeviction` policy every write that needs memory is refused
    /// with `OOM`.
    pub async fn fill_memory(&self) {
        let mut conn = self.admin_connection().await;
        let _: i64 = redis::cmd("SETRANGE")
            .arg(FILLER)
            .arg(8_000_000)
            .arg("x")
            .query_async(&mut conn)
            .await
            .expect("setrange");
        let used = info_number(&mut conn, "memory", "used_memory").await;
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory")
            .arg(used / 2)
            .query_async(&mut conn)
            .await
            .expect("config set maxmemory");
    }

    /// Undoes [`RedisServer::fill_memory`]: the big key goes and the limit
    /// is lifted.
    pub async fn free_memory(&self) {
        let mut conn = self.admin_connection().await;
        let _: i64 = redis::cmd("DEL")
            .arg(FILLER)
            .query_async(&mut conn)
            .await
            .expect("del");
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory")
            .arg(0)
            .query_async(&mut conn)
            .await
            .expect("config set maxmemory");
    }

    /// Every key, sorted, except [`RedisServer::fill_memory`]'s.
    pub async fn keys(&self) -> Vec<String> {
        let mut conn = self.admin_connection().await;
        let mut keys: Vec<String> = redis::cmd("KEYS")
            .arg("*")
            .query_async(&mut conn)
            .await
            .expect("keys");
        keys.retain(|key| key != FILLER);
        keys.sort();
        keys
    }

    async fn admin_connection(&self) -> redis::aio::MultiplexedConnection {
        self.client()
            .get_multiplexed_async_connection()
            .await
            .expect("redis connection")
    }

    /// `kill -9`: the server stops at once, without saving.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port, from its AOF.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn spawn(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            self.child = Some(spawn_redis_server(self.port, &self.dir, &self.extra_args));
            if self.wait_ready(Duration::from_secs(5)) {
                return;
            }
            self.kill();
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on port {}",
                self.port
            );
            // The port was taken meanwhile: try another.
            self.port = free_port();
        }
    }

    fn wait_ready(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(_)) = child.try_wait()
            {
                return false;
            }
            // Up once it answers, even if only to refuse an anonymous PING
            // (ACL tests turn the default user off).
            match self
                .client()
                .get_connection_with_timeout(Duration::from_millis(200))
            {
                Ok(mut conn) => match redis::cmd("PING").query::<String>(&mut conn) {
                    Ok(_) => return true,
                    Err(error) if !error.is_io_error() => return true,
                    Err(_) => {}
                },
                Err(error) if !error.is_io_error() => return true,
                Err(_) => {}
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The key [`RedisServer::fill_memory`] fills Redis with.
const FILLER: &str = "jobgate-test:filler";

/// A number of `INFO <section>`, e.g. `blocked_clients` of `clients`
/// (clients Redis holds back: blocked, or paused by `CLIENT PAUSE`).
pub async fn info_number(
    conn: &mut redis::aio::MultiplexedConnection,
    section: &str,
    field: &str,
) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg(section)
        .query_async(conn)
        .await
        .expect("INFO");
    info.lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no number {field} in INFO {section}"))
}

fn redis_server_binary() -> String {
    std::env::var("JOBGATE_TEST_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into())
}

/// Starts `redis-server` on `127.0.0.1:port`, kept in `dir` with
/// append-only persistence (fsync every write) and no snapshots, with
/// `extra_args` after those; its output is dropped.
pub(crate) fn spawn_redis_server(
    port: u16,
    dir: &Path,
    extra_args: impl IntoIterator<Item = impl AsRef<OsStr>>,
) -> Child {
    Command::new(redis_server_binary())
        .args(["--port", &port.to_string()])
        .args(["--bind", "127.0.0.1"])
        .args(["--dir", dir.to_str().expect("utf-8 path")])
        .args(["--appendonly", "yes", "--appendfsync", "always"])
        .args(["--save", ""])
        .args(extra_args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server must be installed (make test installs it)")
}

/// Waits until workers have registered every one of `kinds` in the kinds
/// registry (`jobgate:kinds:v2`) that `conn` reaches.
pub(crate) async fn wait_for_kinds(conn: &mut impl ConnectionLike, kinds: &[&str]) {
    for _ in 0..600 {
        let registered: Vec<String> = redis::cmd("HKEYS")
            .arg("jobgate:kinds:v2")
            .query_async(conn)
            .await
            .unwrap_or_default();
        if kinds.iter().all(|k| registered.iter().any(|r| r == k)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no worker registered {kinds:?}");
}
