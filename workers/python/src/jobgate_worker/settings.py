"""Runtime settings of a worker process: one typed, validated struct.

Defaults come first, then the environment (``Settings.from_env``), then the
command line; tests build ``Settings`` directly instead of setting env vars.

| env var | default | meaning |
|---|---|---|
| ``JOBGATE_REDIS_URL`` | ``redis://127.0.0.1:6379`` | Redis: one URL, or cluster seeds (a,b,…) |
| ``DASK_SCHEDULER_ADDRESS`` | unset: a local cluster | Dask scheduler to connect to |
| ``JOBGATE_DASK_CONNECT_TIMEOUT_S`` | 10 | longest a connect to the scheduler takes |
| ``JOBGATE_DASK_NO_WORKERS_TIMEOUT_S`` | 30 | no Dask worker this long: waiting jobs retried |
| ``JOBGATE_DASK_SCHEDULER_TIMEOUT_S`` | 30 | scheduler silent this long: waiting jobs retried |
| ``JOBGATE_DASK_CHECK_INTERVAL_S`` | 1 | scheduler looked at this often while jobs wait |
| ``JOBGATE_PROTO_DIR`` | found above the package | folder holding ``redis/jobgate.lua`` |
| ``JOBGATE_QUEUE`` | the ``Worker``'s queue | queue override |
| ``JOBGATE_CONSUMER`` | ``<hostname>-<pid>`` | consumer name in the group |
| ``JOBGATE_CONCURRENCY`` | 4 | handler threads |
| ``JOBGATE_LEASE_MS`` | 10000 | lease; entries idle longer are reclaimed |
| ``JOBGATE_GRACE_S`` | 30 | shutdown grace for running jobs |
| ``JOBGATE_LOG_LEVEL`` | ``INFO`` | log level |
| ``OTEL_EXPORTER_OTLP_ENDPOINT`` | unset: no OTLP | OTLP/HTTP base URL (``<url>/v1/traces``) |
| ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` | unset | full OTLP/HTTP traces URL (wins) |
| ``JOBGATE_SPAN_FILE`` | unset | append every finished span to this file as a JSON line |
| ``JOBGATE_FLUENTD_ADDR`` | unset: stderr only | ``host:port`` of a Fluentd Forward input |
| ``JOBGATE_FLUENTD_BUFFER`` | 10000 | log records kept while Fluentd is away (oldest dropped) |

Recovery time: a worker killed mid-job renewed its entry at most one
renewal interval before; the entry becomes reclaimable ``lease_ms`` after
that renewal, another worker's next reclaim scan (every
``reclaim_interval_s``) takes it, ``start`` fences the lost attempt and the
handler runs again. So a crashed worker's job completes within
``lease_ms + reclaim_interval_s`` + one ``start`` + the handler's own time
after the kill: 10 s + 1 s + a few ms + handler at the defaults (measured in
``benches/RESULTS.md``). Renewal (every ``lease_ms / 3``, 3.3 s) costs one
script call per band holding entries; a scan is one ``XAUTOCLAIM`` per band.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .clients import RedisSettingError, parse_seeds
from .dask_health import DaskTimeouts
from .fluentd import parse_address
from .tracing import OTLP_ENDPOINT_ENV, OTLP_TRACES_ENDPOINT_ENV, SPAN_FILE_ENV
from .tracing import otlp_traces_endpoint as traces_endpoint_from

#: The Dask timeouts' defaults, written once (in ``DaskTimeouts``).
_DASK_DEFAULTS = DaskTimeouts()


def default_consumer() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class SettingsError(ValueError):
    """A setting has an invalid value."""


@dataclass(frozen=True, slots=True)
class Settings:
    #: One URL, or the comma-separated seed URLs of a Redis Cluster.
    redis_url: str = "redis://127.0.0.1:6379"
    #: Overrides the queue the ``Worker`` was declared with.
    queue: str | None = None
    consumer: str = field(default_factory=default_consumer)
    #: Handler threads: how many jobs run at once.
    concurrency: int = 4
    #: An entry not renewed for this long is reclaimed by another worker
    #: (see "Recovery time" below for why 10 s).
    lease_ms: int = 10_000
    #: On SIGTERM/SIGINT, how long running jobs may take to finish.
    grace_s: float = 30.0
    #: Longest a blocking XREADGROUP waits (also bounds how fast a stop is noticed).
    block_ms: int = 1_000
    #: How often the registered kinds are written to ``jobgate:kinds`` again.
    kinds_refresh_s: float = 30.0
    #: How often the heartbeat (``jobgate:workers:{<queue>}``) is written.
    heartbeat_s: float = 5.0
    dask_scheduler_address: str | None = None
    #: Dask timeouts (``dask_health.DaskTimeouts``): connect, no workers,
    #: unanswered scheduler, and how often it is looked at.
    dask_connect_timeout_s: float = _DASK_DEFAULTS.connect_s
    dask_no_workers_timeout_s: float = _DASK_DEFAULTS.no_workers_s
    dask_scheduler_timeout_s: float = _DASK_DEFAULTS.scheduler_s
    dask_check_interval_s: float = _DASK_DEFAULTS.check_interval_s
    proto_dir: str | None = None
    log_level: str = "INFO"
    #: Where spans are exported over OTLP/HTTP (the full traces URL); None: not at all.
    otlp_traces_endpoint: str | None = None
    #: A file every finished span is appended to as one JSON line; None: none.
    span_file: str | None = None
    #: ``host:port`` of Fluentd's Forward input; None: logs go to stderr only.
    fluentd_address: str | None = None
    #: Log records buffered while Fluentd cannot be reached (the oldest are dropped).
    fluentd_buffer: int = 10_000

    @property
    def lease_renew_interval_s(self) -> float:
        """How often the renewer process renews held entries: three times a lease."""
        return self.lease_ms / 3000

    @property
    def reclaim_interval_s(self) -> float:
        """How often the read loop looks for entries idle past the lease: a tenth of it."""
        return min(max(self.lease_ms / 10_000, 0.05), 5.0)

    @property
    def dask_timeouts(self) -> DaskTimeouts:
        return DaskTimeouts(
            connect_s=self.dask_connect_timeout_s,
            no_workers_s=self.dask_no_workers_timeout_s,
            scheduler_s=self.dask_scheduler_timeout_s,
            check_interval_s=self.dask_check_interval_s,
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}

        def take(name: str, attribute: str, convert: type = str) -> None:
            raw = env.get(name, "").strip()
            if raw:
                try:
                    values[attribute] = convert(raw)
                except ValueError as error:
                    raise SettingsError(
                        f"{name}={raw!r} is not a valid {convert.__name__}"
                    ) from error

        take("JOBGATE_REDIS_URL", "redis_url")
        take("DASK_SCHEDULER_ADDRESS", "dask_scheduler_address")
        take("JOBGATE_DASK_CONNECT_TIMEOUT_S", "dask_connect_timeout_s", float)
        take("JOBGATE_DASK_NO_WORKERS_TIMEOUT_S", "dask_no_workers_timeout_s", float)
        take("JOBGATE_DASK_SCHEDULER_TIMEOUT_S", "dask_scheduler_timeout_s", float)
        take("JOBGATE_DASK_CHECK_INTERVAL_S", "dask_check_interval_s", float)
        take("JOBGATE_PROTO_DIR", "proto_dir")
        take("JOBGATE_QUEUE", "queue")
        take("JOBGATE_CONSUMER", "consumer")
        take("JOBGATE_CONCURRENCY", "concurrency", int)
        take("JOBGATE_LEASE_MS", "lease_ms", int)
        take("JOBGATE_GRACE_S", "grace_s", float)
        take("JOBGATE_HEARTBEAT_S", "heartbeat_s", float)
        take("JOBGATE_LOG_LEVEL", "log_level")
        take(SPAN_FILE_ENV, "span_file")
        take("JOBGATE_FLUENTD_ADDR", "fluentd_address")
        take("JOBGATE_FLUENTD_BUFFER", "fluentd_buffer", int)
        endpoint = traces_endpoint_from(env)
        if endpoint:
            values["otlp_traces_endpoint"] = endpoint
        values.update({key: value for key, value in overrides.items() if value is not None})
        return cls(**values).validated()

    def with_overrides(self, **overrides: Any) -> Settings:
        return replace(self, **overrides).validated()

    def validated(self) -> Settings:
        if self.concurrency < 1:
            raise SettingsError("concurrency must be at least 1")
        if self.lease_ms < 100:
            raise SettingsError("lease_ms must be at least 100")
        if self.grace_s < 0:
            raise SettingsError("grace_s must not be negative")
        if self.heartbeat_s <= 0:
            raise SettingsError("heartbeat_s must be positive")
        if self.block_ms < 1:
            raise SettingsError("block_ms must be at least 1")
        if not self.consumer:
            raise SettingsError("consumer must not be empty")
        try:
            parse_seeds(self.redis_url)
        except RedisSettingError as error:
            raise SettingsError(f"JOBGATE_REDIS_URL: {error}") from None
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "WARN", "ERROR"):
            raise SettingsError(f"unknown log level {self.log_level!r}")
        if self.otlp_traces_endpoint is not None and not self.otlp_traces_endpoint.startswith(
            ("http://", "https://")
        ):
            raise SettingsError(
                f"{OTLP_ENDPOINT_ENV} / {OTLP_TRACES_ENDPOINT_ENV} must be an http(s) URL,"
                f" got {self.otlp_traces_endpoint!r}"
            )
        if self.fluentd_address is not None:
            try:
                parse_address(self.fluentd_address)
            except ValueError as error:
                raise SettingsError(f"JOBGATE_FLUENTD_ADDR: {error}") from None
        self._validate_dask()
        if self.fluentd_buffer < 1:
            raise SettingsError("fluentd_buffer must be at least 1")
        return self

    def _validate_dask(self) -> None:
        for name in (
            "dask_connect_timeout_s",
            "dask_no_workers_timeout_s",
            "dask_scheduler_timeout_s",
            "dask_check_interval_s",
        ):
            if not getattr(self, name) > 0:
                raise SettingsError(f"{name} must be positive")
