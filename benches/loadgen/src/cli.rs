//! Command-line options of `jobgate-loadgen`.

use std::time::Duration;

use clap::{Parser, ValueEnum};

/// Drives a running jobgate gateway on this machine and reports
/// submit-to-`completed` latency (HDR histogram), throughput, errors and the
/// gateway's CPU time and peak RSS.
#[derive(Debug, Clone, Parser)]
#[command(name = "jobgate-loadgen", version, about)]
pub(crate) struct Cli {
    /// What to run.
    #[arg(long, value_enum, default_value_t = Mode::Ws)]
    pub(crate) mode: Mode,

    /// The gateway's base URL; only loopback addresses are accepted.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub(crate) url: String,

    /// A bearer token (JWT) sent with every request and WebSocket handshake,
    /// for a gateway that authenticates.
    #[arg(long, env = "JOBGATE_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,

    /// The scenario's name in the report (default: the mode).
    #[arg(long)]
    pub(crate) scenario: Option<String>,

    /// Jobs to submit.
    #[arg(long, default_value_t = 1000)]
    pub(crate) jobs: u64,

    /// Jobs submitted first and left out of the figures.
    #[arg(long, default_value_t = 0)]
    pub(crate) warmup: u64,

    /// Jobs in flight at once (1 = sequential). With `--rate`, the most in
    /// flight before the rate can no longer be kept.
    #[arg(long, default_value_t = 1)]
    pub(crate) concurrency: usize,

    /// Submit at this fixed rate (jobs/s) instead of keeping `--concurrency`
    /// in flight; latency then counts from each job's scheduled time, so a
    /// stalled gateway cannot hide its stall.
    #[arg(long)]
    pub(crate) rate: Option<f64>,

    /// Job kind.
    #[arg(long, default_value = "echo")]
    pub(crate) kind: String,

    /// Job params (a JSON object).
    #[arg(long, default_value = "{}")]
    pub(crate) params: String,

    /// WebSocket sessions (ws: jobs are spread over them; idle: sessions to
    /// open; fanout: WebSocket watchers). Default: ws min(concurrency, 100),
    /// idle 1000, fanout 1000.
    #[arg(long)]
    pub(crate) sessions: Option<usize>,

    /// `--mode ws`: send up to this many jobs in one `submit_batch` frame —
    /// a session puts every job it has been handed and not yet sent into
    /// one frame. 1 (the default): one `submit` frame per job.
    #[arg(long, default_value_t = 1)]
    pub(crate) batch: usize,

    /// SSE streams: in `--mode sse`, M long-lived `/v1/events` streams that
    /// must each see every job's `completed` (0: one stream per job); in
    /// `--mode fanout`, the SSE watchers of the job.
    #[arg(long)]
    pub(crate) sse_streams: Option<usize>,

    /// Longest time to keep submitting, in seconds; default 120 (idle: how
    /// long the sessions are held open after the measurement; default 0).
    #[arg(long)]
    pub(crate) duration: Option<f64>,

    /// A job not finished this long (s) after its submission counts as an error.
    #[arg(long, default_value_t = 30.0)]
    pub(crate) job_timeout: f64,

    /// `--mode poll`: interval between `GET /status/{id}` of one job, in ms.
    #[arg(long, default_value_t = 2000)]
    pub(crate) poll_interval_ms: u64,

    /// `--mode fanout`: how long the worker holds the job before its first
    /// progress event, giving the watchers time to subscribe.
    #[arg(long, default_value_t = 5000)]
    pub(crate) fanout_delay_ms: u64,

    /// `--mode fanout`: progress events the job reports.
    #[arg(long, default_value_t = 20)]
    pub(crate) fanout_steps: u64,

    /// `--mode fanout`: ms between progress events.
    #[arg(long, default_value_t = 100)]
    pub(crate) fanout_step_ms: u64,

    /// Connections opened at once (idle, fanout).
    #[arg(long, default_value_t = 200)]
    pub(crate) connect_concurrency: usize,

    /// The gateway's pid: its CPU time and RSS are reported.
    #[arg(long)]
    pub(crate) gateway_pid: Option<u32>,

    /// redis-server's pid: its CPU time is reported.
    #[arg(long)]
    pub(crate) redis_pid: Option<u32>,

    /// Worker pids (comma-separated): their CPU time is reported.
    #[arg(long, value_delimiter = ',')]
    pub(crate) worker_pids: Vec<u32>,

    /// A target to check, as `<field><=<value>` or `<field>>=<value>`,
    /// e.g. `p99_ms<=3` (repeatable; all must hold).
    #[arg(long = "target")]
    pub(crate) targets: Vec<String>,

    /// Another scenario to compare this one with in `--mode report`
    /// (latency and request-count ratios).
    #[arg(long)]
    pub(crate) compare_with: Option<String>,

    /// Free text stored with the scenario.
    #[arg(long)]
    pub(crate) note: Option<String>,

    /// Print the scenario as one JSON object instead of a table.
    #[arg(long)]
    pub(crate) json: bool,

    /// `--mode report`: a file of scenario JSON objects, one per line.
    #[arg(long)]
    pub(crate) input: Option<std::path::PathBuf>,

    /// `--mode report`: where to write the scenarios as one JSON array.
    #[arg(long)]
    pub(crate) output: Option<std::path::PathBuf>,
}

/// What the load generator does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Mode {
    /// Submit over WebSocket sessions; measure to the pushed `completed`.
    Ws,
    /// `POST /v1/jobs`, then SSE (one stream per job, or `--sse-streams`
    /// long-lived `/v1/events` streams).
    Sse,
    /// The old client: `POST /submit`, then `GET /status/{id}` every interval.
    Poll,
    /// Open idle WebSocket sessions; report the gateway's RSS per session.
    Idle,
    /// One job watched by SSE streams and WebSocket sessions.
    Fanout,
    /// Print the table of a file of scenario results and write them as JSON.
    Report,
}

impl Mode {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Ws => "ws",
            Self::Sse => "sse",
            Self::Poll => "poll",
            Self::Idle => "idle",
            Self::Fanout => "fanout",
            Self::Report => "report",
        }
    }
}

impl Cli {
    pub(crate) fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.concurrency >= 1, "--concurrency must be at least 1");
        anyhow::ensure!(self.jobs >= 1, "--jobs must be at least 1");
        if let Some(duration) = self.duration {
            anyhow::ensure!(
                (0.0..=3600.0).contains(&duration),
                "--duration must be in [0, 3600] s"
            );
        }
        anyhow::ensure!(
            self.job_timeout > 0.0 && self.job_timeout <= 600.0,
            "--job-timeout must be in (0, 600] s"
        );
        if let Some(rate) = self.rate {
            anyhow::ensure!(
                rate > 0.0 && rate <= 1_000_000.0,
                "--rate must be in (0, 1e6] jobs/s"
            );
        }
        anyhow::ensure!(
            self.poll_interval_ms >= 10,
            "--poll-interval-ms must be at least 10"
        );
        anyhow::ensure!(
            (1..=5000).contains(&self.connect_concurrency),
            "--connect-concurrency must be 1 to 5000"
        );
        let params: serde_json::Value = serde_json::from_str(&self.params)
            .map_err(|e| anyhow::anyhow!("--params is not JSON: {e}"))?;
        anyhow::ensure!(params.is_object(), "--params must be a JSON object");
        for target in &self.targets {
            crate::report::Target::parse(target)?;
        }
        Ok(())
    }

    pub(crate) fn scenario_name(&self) -> String {
        self.scenario
            .clone()
            .unwrap_or_else(|| self.mode.name().to_owned())
    }

    pub(crate) fn duration(&self) -> Duration {
        let default = if self.mode == Mode::Idle { 0.0 } else { 120.0 };
        Duration::from_secs_f64(self.duration.unwrap_or(default))
    }

    pub(crate) fn job_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.job_timeout)
    }

    /// The params with their exact spelling, compacted.
    pub(crate) fn params_json(&self) -> String {
        serde_json::from_str::<serde_json::Value>(&self.params)
            .map(|value| value.to_string())
            .unwrap_or_else(|_| "{}".to_owned())
    }
}
