//! The real Python worker (`jobgate-worker`) as a subprocess.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use crate::repo_root;

/// A `jobgate-worker examples.pricing:worker` process, killed when dropped.
#[derive(Debug)]
pub struct PythonWorker {
    child: Option<Child>,
    pub consumer: String,
}

impl PythonWorker {
    /// Starts the example worker against `redis_url` with extra CLI args.
    pub fn start(redis_url: &str, consumer: &str, extra_args: &[&str]) -> Self {
        Self::start_app(
            redis_url,
            "examples.pricing:worker",
            None,
            consumer,
            extra_args,
        )
    }

    /// Starts `app` (`module:attribute`), importable from the repository
    /// root or from `python_path`.
    pub fn start_app(
        redis_url: &str,
        app: &str,
        python_path: Option<&std::path::Path>,
        consumer: &str,
        extra_args: &[&str],
    ) -> Self {
        Self::start_app_with_env(redis_url, app, python_path, consumer, extra_args, &[])
    }

    /// As [`PythonWorker::start_app`], with extra environment variables.
    pub fn start_app_with_env(
        redis_url: &str,
        app: &str,
        python_path: Option<&std::path::Path>,
        consumer: &str,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let root = repo_root();
        let binary = Self::binary();
        assert!(
            binary.exists(),
            "{} is missing: run `make venv` (make test does) first",
            binary.display()
        );
        let mut command = Command::new(binary);
        if let Some(path) = python_path {
            command.env("PYTHONPATH", path);
        }
        command.envs(env.iter().copied());
        let child = command
            .arg(app)
            .args(["--consumer", consumer])
            .args(extra_args)
            .current_dir(&root)
            .env("JOBGATE_REDIS_URL", redis_url)
            .env("PYTHONUNBUFFERED", "1")
            .stdout(Stdio::null())
            .stderr(if std::env::var_os("JOBGATE_TEST_WORKER_LOGS").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .expect("start jobgate-worker");
        Self {
            child: Some(child),
            consumer: consumer.to_owned(),
        }
    }

    /// `.venv/bin/jobgate-worker` in the repository.
    pub fn binary() -> PathBuf {
        repo_root().join(".venv/bin/jobgate-worker")
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait for the process to exit.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        child.wait().ok()
    }
}

impl Drop for PythonWorker {
    fn drop(&mut self) {
        self.kill();
    }
}
