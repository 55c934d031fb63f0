//! The gateway's configuration: one typed struct, from flags or `JOBGATE_*`
//! environment variables, validated before any port is bound.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

/// How requests are authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthMode {
    /// A JWT on every request: `sub` is the owner.
    Jwt,
    /// No authentication: every job belongs to `JOBGATE_DEFAULT_OWNER`.
    /// Development only; refused on a non-loopback address.
    None,
}

/// Settings of `jobgate serve` (the default command).
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address the HTTP/WebSocket/SSE API listens on.
    #[arg(long, env = "JOBGATE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Redis URL (`redis://` or `rediss://`, optionally with user and
    /// password), or several comma-separated seed URLs of a Redis Cluster
    /// (same scheme, user and password). Whether Redis is a cluster is
    /// asked of the first seed that answers (`INFO cluster`).
    #[arg(
        long,
        env = "JOBGATE_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,

    /// Threads serving connections; 0 means one per CPU. A gateway sharing
    /// a small machine with Redis and workers does better with fewer
    /// (`benches/RESULTS.md`).
    #[arg(long, env = "JOBGATE_THREADS", default_value_t = 0)]
    pub threads: usize,

    /// Seconds a finished job's record and event history are kept.
    #[arg(long, env = "JOBGATE_RETENTION_S", default_value_t = 86_400)]
    pub retention_s: u64,

    /// Most events one job's history keeps (progress is coalesced by workers,
    /// so a job rarely comes near it).
    #[arg(long, env = "JOBGATE_HISTORY_MAX", default_value_t = 10_000)]
    pub history_max: u64,

    /// Most jobs kept in an owner's index, the newest: what `GET /v1/jobs`
    /// lists and `/v1/events` replays from (older jobs stay readable by id).
    #[arg(long, env = "JOBGATE_OWNER_INDEX_MAX", default_value_t = 10_000)]
    pub owner_index_max: u64,

    /// Events buffered per connection before it is closed as a slow consumer
    /// (WebSocket close code 4008; an SSE stream ends).
    #[arg(long, env = "JOBGATE_OUTBOUND_QUEUE", default_value_t = 1024)]
    pub outbound_queue: usize,

    /// Most jobs waiting in one queue; past it submissions get
    /// `429 queue_full` with `Retry-After`. 0: no limit.
    #[arg(long, env = "JOBGATE_MAX_QUEUE_LENGTH", default_value_t = 100_000)]
    pub max_queue_length: u64,

    /// Most open WebSocket sessions and SSE streams; past it new ones get
    /// `503 too_many_connections`.
    #[arg(long, env = "JOBGATE_MAX_CONNECTIONS", default_value_t = 20_000)]
    pub max_connections: usize,

    /// Largest `params` of one job, in bytes (413 `payload_too_large`).
    #[arg(long, env = "JOBGATE_MAX_PARAMS_BYTES", default_value_t = 262_144)]
    pub max_params_bytes: usize,

    /// Deepest nesting of arrays and objects in `params` (422 `invalid_request`).
    #[arg(long, env = "JOBGATE_MAX_JSON_DEPTH", default_value_t = 32)]
    pub max_json_depth: usize,

    /// Submissions one owner may make per minute, over all gateways
    /// (429 `rate_limited` with `Retry-After`). 0: no limit.
    #[arg(long, env = "JOBGATE_SUBMITS_PER_MINUTE", default_value_t = 6_000)]
    pub submits_per_minute: u64,

    /// Most jobs in one `submit_batch` frame or `POST /v1/jobs/batch`
    /// (a larger batch is refused whole with `invalid_request`). Each job
    /// counts against `JOBGATE_SUBMITS_PER_MINUTE` on its own.
    #[arg(long, env = "JOBGATE_MAX_BATCH_JOBS", default_value_t = jobgate_proto::batch::DEFAULT_MAX_BATCH_JOBS)]
    pub max_batch_jobs: usize,

    /// WebSocket messages one session may send per second (bursts of twice
    /// as many); past it messages are answered with `rate_limited`.
    #[arg(long, env = "JOBGATE_WS_MESSAGES_PER_S", default_value_t = 500)]
    pub ws_messages_per_s: u32,

    /// Open WebSocket sessions and SSE streams per owner on one gateway.
    #[arg(long, env = "JOBGATE_MAX_CONNECTIONS_PER_OWNER", default_value_t = 200)]
    pub max_connections_per_owner: usize,

    /// Jobs one WebSocket session may watch at once.
    #[arg(
        long,
        env = "JOBGATE_MAX_SUBSCRIPTIONS_PER_SESSION",
        default_value_t = 1_000
    )]
    pub max_subscriptions_per_session: usize,

    /// Job kinds accepted, comma-separated; empty: every kind a worker registered.
    #[arg(long, env = "JOBGATE_ALLOWED_KINDS", value_delimiter = ',')]
    pub allowed_kinds: Vec<String>,

    /// The job kind of the old API's `POST /submit` when its
    /// `computation_params` names none, and the kind that gets a
    /// `computation_params` string that is not a JSON object (as
    /// `{"computation_params": "<the string>"}`), whose handler decides.
    #[arg(long, env = "JOBGATE_LEGACY_KIND", default_value = jobgate_proto::legacy::DEFAULT_LEGACY_KIND)]
    pub legacy_kind: String,

    /// Browser origins allowed to open WebSocket sessions and to call the API
    /// cross-origin (CORS), comma-separated, e.g. `https://app.example.com`.
    /// Empty: only same-origin pages (and non-browser clients, which send no
    /// `Origin`).
    #[arg(long, env = "JOBGATE_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// Seconds an `Idempotency-Key` keeps naming the job it created.
    #[arg(long, env = "JOBGATE_IDEMPOTENCY_TTL_S", default_value_t = 86_400)]
    pub idempotency_ttl_s: u64,

    /// Seconds between the server's WebSocket pings; a ping unanswered for as
    /// long closes the session.
    #[arg(long, env = "JOBGATE_WS_PING_INTERVAL_S", default_value_t = 20)]
    pub ws_ping_interval_s: u64,

    /// Largest request body, and largest WebSocket message, in bytes.
    #[arg(long, env = "JOBGATE_MAX_BODY_BYTES", default_value_t = 1_048_576)]
    pub max_body_bytes: usize,

    /// Seconds in-flight requests get to finish after SIGTERM/SIGINT.
    #[arg(long, env = "JOBGATE_SHUTDOWN_GRACE_S", default_value_t = 10)]
    pub shutdown_grace_s: u64,

    /// Authentication: `jwt`, or `none` for development on loopback. There
    /// is no default: the gateway refuses to start until it is set.
    #[arg(long, env = "JOBGATE_AUTH", value_enum)]
    pub auth: Option<AuthMode>,

    /// HS256 shared secret (at least 32 bytes).
    #[arg(long, env = "JOBGATE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// PEM file with an RSA (RS256) or EC P-256 (ES256) public key.
    #[arg(long, env = "JOBGATE_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,

    /// JWKS file (keys chosen by the token's `kid`).
    #[arg(long, env = "JOBGATE_JWKS_FILE")]
    pub jwks_file: Option<PathBuf>,

    /// Required `aud` claim, when set.
    #[arg(long, env = "JOBGATE_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Required `iss` claim, when set.
    #[arg(long, env = "JOBGATE_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Seconds of clock skew allowed on `exp` and `nbf`.
    #[arg(long, env = "JOBGATE_JWT_LEEWAY_S", default_value_t = 30)]
    pub jwt_leeway_s: u64,

    /// The owner of every job while authentication is off.
    #[arg(long, env = "JOBGATE_DEFAULT_OWNER", default_value = "local")]
    pub default_owner: String,

    /// Fluentd's Forward input (`host:port`): every log line also goes there,
    /// buffered while Fluentd is away (oldest dropped first, counted).
    #[arg(long, env = "JOBGATE_FLUENTD_ADDR")]
    pub fluentd_addr: Option<jobgate_fluent::FluentdAddress>,

    /// Log lines kept for Fluentd while it is unreachable; past it the
    /// oldest are dropped (and counted).
    #[arg(long, env = "JOBGATE_FLUENTD_BUFFER", default_value_t = 10_000)]
    pub fluentd_buffer: usize,

    /// Log filter (tracing `EnvFilter` syntax), e.g. `info` or `jobgate=debug`.
    #[arg(long, env = "JOBGATE_LOG", default_value = "info")]
    pub log: String,
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

impl ConfigError {
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

impl Config {
    /// Checks what clap cannot: ranges and the shape of the Redis URL.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |message: &str| Err(ConfigError(message.to_owned()));
        let schemes_ok = self
            .redis_url
            .split(',')
            .map(str::trim)
            .all(|seed| seed.starts_with("redis://") || seed.starts_with("rediss://"));
        if !schemes_ok {
            return fail(
                "JOBGATE_REDIS_URL must start with redis:// or rediss:// (every seed, when several are listed)",
            );
        }
        if let Err(error) = jobgate_store::check_url(&self.redis_url) {
            return Err(ConfigError(format!("JOBGATE_REDIS_URL: {error}")));
        }
        if self.retention_s == 0 {
            return fail("JOBGATE_RETENTION_S must be at least 1");
        }
        if self.history_max < 16 {
            return fail("JOBGATE_HISTORY_MAX must be at least 16");
        }
        if self.owner_index_max == 0 {
            return fail("JOBGATE_OWNER_INDEX_MAX must be at least 1");
        }
        if self.outbound_queue < 16 {
            return fail("JOBGATE_OUTBOUND_QUEUE must be at least 16");
        }
        if self.max_connections == 0 {
            return fail("JOBGATE_MAX_CONNECTIONS must be at least 1");
        }
        if self.max_connections_per_owner == 0 || self.max_subscriptions_per_session == 0 {
            return fail(
                "per-owner connection and per-session subscription limits must be at least 1",
            );
        }
        if self.max_batch_jobs == 0 {
            return fail("JOBGATE_MAX_BATCH_JOBS must be at least 1");
        }
        if self.ws_messages_per_s == 0 || self.max_json_depth == 0 || self.max_params_bytes == 0 {
            return fail(
                "JOBGATE_WS_MESSAGES_PER_S, JOBGATE_MAX_JSON_DEPTH and JOBGATE_MAX_PARAMS_BYTES must be at least 1",
            );
        }
        if let Some(origin) = self
            .allowed_origins
            .iter()
            .find(|o| !(o.starts_with("http://") || o.starts_with("https://")) || o.ends_with('/'))
        {
            return Err(ConfigError(format!(
                "JOBGATE_ALLOWED_ORIGINS: {origin:?} is not an origin like https://app.example.com"
            )));
        }
        if self.idempotency_ttl_s == 0 {
            return fail("JOBGATE_IDEMPOTENCY_TTL_S must be at least 1");
        }
        if self.ws_ping_interval_s == 0 {
            return fail("JOBGATE_WS_PING_INTERVAL_S must be at least 1");
        }
        if self.max_body_bytes < 1024 {
            return fail("JOBGATE_MAX_BODY_BYTES must be at least 1024");
        }
        if self.legacy_kind.trim().is_empty() {
            return fail("JOBGATE_LEGACY_KIND must not be empty");
        }
        if self.default_owner.is_empty() {
            return fail("JOBGATE_DEFAULT_OWNER must not be empty");
        }
        match self.auth {
            None => {
                return fail(
                    "JOBGATE_AUTH must be set: jwt (with JOBGATE_JWT_SECRET, JOBGATE_JWT_PUBLIC_KEY \
                     or JOBGATE_JWKS_FILE), or none for development on a loopback address",
                );
            }
            Some(AuthMode::None) if !self.listen.ip().is_loopback() => {
                return fail(
                    "JOBGATE_AUTH=none is refused on a non-loopback JOBGATE_LISTEN address",
                );
            }
            Some(_) => {}
        }
        self.jwt_keys()?;
        Ok(())
    }

    pub fn retention(&self) -> Duration {
        Duration::from_secs(self.retention_s)
    }

    pub fn ws_ping_interval(&self) -> Duration {
        Duration::from_secs(self.ws_ping_interval_s)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_s)
    }

    /// A configuration for tests: every default, from the same argument
    /// definitions `jobgate serve` parses (so defaults live in one place),
    /// with the Redis URL given and authentication off (loopback). The
    /// process environment is not read: tests pass their settings here.
    pub fn for_redis(redis_url: impl Into<String>) -> Self {
        use clap::{CommandFactory as _, FromArgMatches as _};
        let command = Defaults::command().mut_args(|arg| arg.env(None::<&str>));
        let redis_url: String = redis_url.into();
        let matches = command
            .try_get_matches_from([
                "jobgate",
                "--listen",
                "127.0.0.1:0",
                "--redis-url",
                &redis_url,
                "--auth",
                "none",
            ])
            .unwrap_or_else(|error| panic!("the test configuration does not parse: {error}"));
        Defaults::from_arg_matches(&matches)
            .unwrap_or_else(|error| panic!("the test configuration does not parse: {error}"))
            .config
    }

    /// Where JWTs are verified from, checked for shape (exactly one source,
    /// a secret long enough); `None` unless `JOBGATE_AUTH=jwt`. Reading and
    /// parsing the key files is the verifier's.
    pub fn jwt_keys(&self) -> Result<Option<JwtKeys<'_>>, ConfigError> {
        let Some(AuthMode::Jwt) = self.auth else {
            return Ok(None);
        };
        let keys = match (&self.jwt_secret, &self.jwt_public_key, &self.jwks_file) {
            (Some(secret), None, None) if secret.len() < MIN_JWT_SECRET_LEN => {
                return Err(ConfigError(format!(
                    "JOBGATE_JWT_SECRET must be at least {MIN_JWT_SECRET_LEN} bytes"
                )));
            }
            (Some(secret), None, None) => JwtKeys::Secret(secret),
            (None, Some(path), None) => JwtKeys::PublicKeyPem(path),
            (None, None, Some(path)) => JwtKeys::Jwks(path),
            (None, None, None) => {
                return Err(ConfigError::new(
                    "JOBGATE_AUTH=jwt needs JOBGATE_JWT_SECRET, JOBGATE_JWT_PUBLIC_KEY or JOBGATE_JWKS_FILE",
                ));
            }
            _ => {
                return Err(ConfigError::new(
                    "set only one of JOBGATE_JWT_SECRET, JOBGATE_JWT_PUBLIC_KEY and JOBGATE_JWKS_FILE",
                ));
            }
        };
        Ok(Some(keys))
    }
}

/// The shortest HS256 secret accepted (bytes).
pub const MIN_JWT_SECRET_LEN: usize = 32;

/// The one source of JWT verification keys a configuration names.
#[derive(Debug, Clone, Copy)]
pub enum JwtKeys<'a> {
    /// `JOBGATE_JWT_SECRET`: an HS256 shared secret.
    Secret(&'a str),
    /// `JOBGATE_JWT_PUBLIC_KEY`: a PEM file with an RSA or EC public key.
    PublicKeyPem(&'a std::path::Path),
    /// `JOBGATE_JWKS_FILE`: a JWK set, keys chosen by `kid`.
    Jwks(&'a std::path::Path),
}

/// [`Config`] alone as a command line, for [`Config::for_redis`].
#[derive(clap::Parser)]
struct Defaults {
    #[command(flatten)]
    config: Config,
}
