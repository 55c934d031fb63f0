"""Redis connections: the one factory, the per-thread clients, the node map.

``JOBGATE_REDIS_URL`` holds one URL or several comma-separated seed URLs
(``redis://a:7000,redis://b:7001``). ``open_client`` is the one place a
client is made from it: the first seed that answers is asked ``INFO
cluster``; on a Redis Cluster (``cluster_enabled:1``) the client is a
``redis.cluster.RedisCluster`` started from every seed (user, password and
TLS taken from the first URL: ``rediss://`` is TLS), otherwise the plain
``redis.Redis`` of that URL, as before clusters were supported. Several
seeds naming a Redis that is not a cluster are refused: they would be
different databases.

``RedisClients`` opens the client lazily, on first use, so that a worker
started before Redis waits for it (every use raises ``ConnectionError``
until a seed answers). On a single Redis each thread of the worker (the
read loop, every handler thread, the timer thread) then talks through its
own single-connection client taken once from a shared pool: that keeps the
blocking ``XREADGROUP`` of the read loop off everyone else's connection and
saves the pool check-out and check-in that redis-py does around every
command. On a cluster every thread shares the ``RedisCluster``, which keeps
a pool per node and routes each command by its key's slot.

``Nodes`` is the slot map the sharded subscriptions follow (``control.py``):
the node owning a channel's slot, a connection of one's own to it, and a
refresh after a failover. A single Redis is one node owning every slot.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.connection import Connection, SSLConnection, parse_url
from redis.exceptions import RedisClusterException, SlotNotCoveredError
from redis.retry import Retry

log = logging.getLogger(__name__)

#: A client of either kind: the worker's code is the same for both.
Client = redis.Redis | RedisCluster

#: Connection options every client of the worker uses.
_COMMON: dict[str, Any] = {"decode_responses": True, "protocol": 2}
#: How long opening a connection may take.
CONNECT_TIMEOUT_S = 5.0
#: Read timeout of a subscription connection: it reads only what ``select`` saw.
_PUBSUB_SOCKET_TIMEOUT_S = 5.0


#: Not annotated upstream: typed here once.
_parse_url: Callable[[str], dict[str, Any]] = parse_url
_cluster_node: Callable[[str, int], ClusterNode] = ClusterNode


def fixed_client(client: Client) -> Callable[[], Client]:
    """An accessor always giving ``client`` (where a per-thread accessor is taken)."""

    def current() -> Client:
        return client

    return current


class RedisSettingError(ValueError):
    """The Redis URL setting cannot be used."""


class ClusterUnavailableError(redis.ConnectionError):
    """The cluster cannot serve a command now: a slot has no master, or its
    slot map could not be read (a failover under way). Ridden out like a lost
    connection."""


def _transient(error: RedisClusterException) -> bool:
    # redis-py raises these outside its RedisError tree; the plain class is
    # what reading the slot map raises when no node answers or agrees.
    return isinstance(error, SlotNotCoveredError) or type(error) is RedisClusterException


def _word(arg: Any) -> str:
    return (arg.decode() if isinstance(arg, bytes) else str(arg)).upper()


def _keys_of(args: tuple[Any, ...]) -> list[Any] | None:
    """The keys of the worker's commands whose keys redis-py would otherwise
    ask a node for (``COMMAND GETKEYS``: a round trip per command, to a node
    that may be the one just lost); None for any other command."""
    command = _word(args[0])
    if command in ("EVAL", "EVALSHA") and len(args) > 2:
        return list(args[3 : 3 + int(args[2])])
    if command == "XREADGROUP":
        names = [_word(arg) for arg in args]
        if "STREAMS" in names:
            rest = args[names.index("STREAMS") + 1 :]
            return list(rest[: len(rest) // 2])
    return None


class _KnownKeys:
    """Finds the keys of ``EVAL``/``EVALSHA``/``XREADGROUP`` without asking a node."""

    def _get_command_keys(self, *args: Any) -> Any:
        keys = _keys_of(args)
        if keys is not None:
            return keys
        find: Any = super()._get_command_keys  # type: ignore[misc]  # the client's own
        return find(*args)


class _Pipeline(_KnownKeys, ClusterPipeline):
    def execute(self, raise_on_error: bool = True) -> list[Any]:
        try:
            result: list[Any] = super().execute(raise_on_error)
        except RedisClusterException as error:
            if _transient(error):
                raise ClusterUnavailableError(str(error)) from error
            raise
        return result


class WorkerCluster(_KnownKeys, RedisCluster):
    """``RedisCluster`` whose failures while the cluster reorganises are
    ``redis.ConnectionError``s, which every caller in the worker rides out,
    and which routes its scripts and stream reads without a round trip."""

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        execute: Any = super().execute_command  # not annotated upstream
        try:
            return execute(*args, **kwargs)
        except RedisClusterException as error:
            if _transient(error):
                raise ClusterUnavailableError(str(error)) from error
            raise

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> _Pipeline:
        if shard_hint:
            raise RedisClusterException("shard_hint is not supported in cluster mode")
        return _Pipeline(
            nodes_manager=self.nodes_manager,
            commands_parser=self.commands_parser,
            # As RedisCluster.pipeline passes it (annotated as a list upstream).
            startup_nodes=self.nodes_manager.startup_nodes,  # type: ignore[arg-type]
            result_callbacks=self.result_callbacks,
            cluster_response_callbacks=self.cluster_response_callbacks,
            read_from_replicas=self.read_from_replicas,
            load_balancing_strategy=self.load_balancing_strategy,
            reinitialize_steps=self.reinitialize_steps,
            retry=self.retry,
            lock=self._lock,
            transaction=transaction,
            event_dispatcher=self._event_dispatcher,
        )


def parse_seeds(setting: str) -> tuple[str, ...]:
    """The seed URLs of ``setting`` (one URL, or several separated by commas).

    Raises ``RedisSettingError`` naming what is wrong: an empty item, a
    scheme other than ``redis://``/``rediss://``/``unix://``, a socket path
    among several seeds, or seeds mixing TLS and plain connections.
    """
    seeds = tuple(part.strip() for part in setting.split(","))
    if not seeds or any(not seed for seed in seeds):
        raise RedisSettingError(f"empty URL in the Redis seed list {redact(setting)!r}")
    for seed in seeds:
        if not seed.startswith(("redis://", "rediss://", "unix://")):
            raise RedisSettingError(f"{redact(seed)!r} is not a redis:// or rediss:// URL")
    if len(seeds) > 1:
        if any(seed.startswith("unix://") for seed in seeds):
            raise RedisSettingError("a unix:// socket cannot be one of several Redis seeds")
        if len({urlsplit(seed).scheme for seed in seeds}) > 1:
            raise RedisSettingError("the Redis seeds mix redis:// and rediss:// URLs")
    for seed in seeds:
        try:
            _parse_url(seed)
            urlsplit(seed).port  # noqa: B018 - raises on a port that is not a number
        except ValueError as error:
            raise RedisSettingError(f"{redact(seed)!r}: {error}") from None
    return seeds


def redact(url: str) -> str:
    """``url`` without its password, for logs and errors."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else "***@"
    return parts._replace(netloc=user + netloc).geturl()


def _node_options(seed: str) -> dict[str, Any]:
    """What every node connection takes from the seed URL: user, password, TLS."""
    options = _parse_url(seed)
    for name in ("host", "port", "db", "path", "connection_class"):
        options.pop(name, None)
    if seed.startswith("rediss://"):
        options["ssl"] = True
    return options


@dataclass(frozen=True, slots=True)
class Detected:
    """What the first seed that answered said."""

    seed: str
    cluster: bool


def detect(seeds: tuple[str, ...]) -> Detected:
    """Ask the first seed that answers whether it is part of a Redis Cluster.

    Raises ``redis.ConnectionError`` when no seed answers, and
    ``redis.ResponseError`` when a seed refuses ``INFO`` (the worker's user
    needs it).
    """
    errors: list[str] = []
    for seed in seeds:
        probe = redis.Redis.from_url(
            seed,
            socket_connect_timeout=CONNECT_TIMEOUT_S,
            socket_timeout=CONNECT_TIMEOUT_S,
            retry=Retry(NoBackoff(), 0),
            **_COMMON,
        )
        try:
            info = probe.info("cluster")
        except (redis.ConnectionError, redis.TimeoutError) as error:
            errors.append(f"{redact(seed)}: {error}")
            continue
        finally:
            probe.close()
        return Detected(seed, int(info.get("cluster_enabled", 0)) == 1)
    raise redis.ConnectionError("no Redis seed answered (" + "; ".join(errors) + ")")


def open_client(setting: str, *, socket_timeout: float, single_connection: bool = False) -> Client:
    """The worker's Redis client for ``setting``: a ``RedisCluster`` on a cluster,
    otherwise ``redis.Redis`` (with one connection if ``single_connection``).

    Raises ``redis.ConnectionError`` while no seed answers.
    """
    seeds = parse_seeds(setting)
    detected = detect(seeds)
    if not detected.cluster:
        if len(seeds) > 1:
            raise RedisSettingError(
                f"{redact(detected.seed)} is not part of a Redis Cluster:"
                " give one URL for a single Redis, several only for a cluster"
            )
        return redis.Redis.from_url(
            detected.seed,
            socket_timeout=socket_timeout,
            socket_connect_timeout=CONNECT_TIMEOUT_S,
            health_check_interval=30,
            single_connection_client=single_connection,
            **_COMMON,
        )
    return _open_cluster(seeds, socket_timeout)


def _open_cluster(seeds: tuple[str, ...], socket_timeout: float) -> RedisCluster:
    if any(_parse_url(seed).get("db", 0) != 0 for seed in seeds):
        raise RedisSettingError("a Redis Cluster has only database 0: drop the /<db> of the URLs")
    startup_nodes = []
    for seed in seeds:
        parts = urlsplit(seed)
        startup_nodes.append(_cluster_node(parts.hostname or "127.0.0.1", parts.port or 6379))
    try:
        return WorkerCluster(
            startup_nodes=startup_nodes,
            socket_timeout=socket_timeout,
            socket_connect_timeout=CONNECT_TIMEOUT_S,
            health_check_interval=30,
            **_node_options(seeds[0]),
            **_COMMON,
        )
    except RedisClusterException as error:
        # The cluster answered but cannot serve yet (slots not all covered).
        raise ClusterUnavailableError(f"the Redis Cluster is not ready: {error}") from error


class Nodes:
    """The node owning each slot, and connections of one's own to any node."""

    def __init__(self, seed: str, cluster: RedisCluster | None) -> None:
        self._seed = seed
        self._cluster = cluster
        self._options = _node_options(seed)

    @property
    def is_cluster(self) -> bool:
        return self._cluster is not None

    def node_for(self, key: str) -> str:
        """The name (``host:port``) of the master serving ``key``'s slot.

        Raises ``redis.ConnectionError`` while no node serves the slot.
        """
        if self._cluster is None:
            return "single"
        cluster: Any = self._cluster  # not annotated upstream
        try:
            node = cluster.get_node_from_key(key)
        except RedisClusterException as error:
            raise redis.ConnectionError(f"no node serves the slot of {key}: {error}") from error
        return str(node.name)

    def open_link(self, node: str) -> Connection:
        """A connection of its own to ``node``, for sharded subscriptions.

        Connected now (raises ``redis.ConnectionError``); it does not retry
        or reconnect by itself: ``control.py`` notices a failure and
        subscribes again where the slot map says. ``close_link`` closes it.
        """
        options: dict[str, Any] = {
            "socket_timeout": _PUBSUB_SOCKET_TIMEOUT_S,
            "socket_connect_timeout": CONNECT_TIMEOUT_S,
            "retry": Retry(NoBackoff(), 0),
            **_COMMON,
        }
        if self._cluster is None:
            pool = redis.ConnectionPool.from_url(self._seed, **options)
        else:
            host, _, port = node.rpartition(":")
            options.update(self._options)
            if options.pop("ssl", False):
                options["connection_class"] = SSLConnection
            pool = redis.ConnectionPool(host=host, port=int(port), **options)
        get_connection: Any = pool.get_connection  # not annotated upstream
        connection: Connection = get_connection()
        return connection

    @staticmethod
    def close_link(connection: Connection) -> None:
        disconnect: Any = connection.disconnect  # not annotated upstream
        with contextlib.suppress(redis.RedisError, OSError):
            disconnect()

    def refresh(self) -> None:
        """Read the slot map again (after a node was lost or a slot moved)."""
        if self._cluster is not None:
            try:
                self._cluster.nodes_manager.initialize()
            except RedisClusterException as error:
                raise redis.ConnectionError(f"reading the slot map failed: {error}") from error


class RedisClients:
    """The worker's clients, opened on first use (see the module's docstring)."""

    def __init__(self, url: str, *, socket_timeout: float) -> None:
        self.url = url
        self._socket_timeout = socket_timeout
        self._lock = threading.Lock()
        self._client: Client | None = None
        self._nodes: Nodes | None = None
        self._local = threading.local()
        self._owned: list[redis.Redis] = []

    def _open(self) -> Client:
        with self._lock:
            if self._client is None:
                client = open_client(self.url, socket_timeout=self._socket_timeout)
                if isinstance(client, RedisCluster):
                    self._nodes = Nodes(parse_seeds(self.url)[0], client)
                    primaries: Any = client.get_primaries  # not annotated upstream
                    log.info(
                        "connected to a Redis Cluster",
                        extra={"nodes": sorted(node.name for node in primaries())},
                    )
                else:
                    self._nodes = Nodes(parse_seeds(self.url)[0], None)
                self._client = client
            return self._client

    @property
    def shared(self) -> Client:
        """The client for occasional calls (opened now if need be)."""
        client = self._client
        return client if client is not None else self._open()

    @property
    def is_cluster(self) -> bool:
        """Whether the client is a ``RedisCluster`` (opens it if need be)."""
        return isinstance(self.shared, RedisCluster)

    @property
    def nodes(self) -> Nodes:
        """The slot map (opens the client if need be)."""
        if self._nodes is None:
            self._open()
        if self._nodes is None:  # _open sets it or raises: never
            raise redis.ConnectionError("not connected")
        return self._nodes

    def current(self) -> Client:
        """This thread's client (a cluster's is shared by every thread)."""
        shared = self.shared
        if isinstance(shared, RedisCluster):
            return shared
        client: redis.Redis | None = getattr(self._local, "client", None)
        if client is None:
            client = redis.Redis(
                connection_pool=shared.connection_pool, single_connection_client=True
            )
            self._local.client = client
            with self._lock:
                self._owned.append(client)
        return client

    def close(self) -> None:
        with self._lock:
            owned, self._owned = self._owned, []
            client, self._client = self._client, None
        for thread_client in owned:
            with contextlib.suppress(redis.RedisError, OSError):
                thread_client.close()
        if client is not None:
            with contextlib.suppress(redis.RedisError, OSError):
                client.close()
            if isinstance(client, redis.Redis):
                client.connection_pool.disconnect()
