"""Rules on each component's manifests, against the code that will run in them.

Each rule returns its failures as sentences; none means it holds.

- gateway: readiness on /readyz, liveness on /healthz, a termination grace
  longer than the preStop sleep plus JOBGATE_SHUTDOWN_GRACE_S, only JOBGATE_*
  variables that crates/jobgate-gateway/src/config.rs defines, what its
  `validate` demands (JWT with one key source; the listen port is one the
  container declares), Redis seeds that are nodes of the StatefulSet;
- worker: an entry point the repository defines, only JOBGATE_* variables the
  SDK reads, a termination grace with room for the give-back after
  JOBGATE_GRACE_S, DASK_SCHEDULER_ADDRESS at the DaskCluster's scheduler
  Service, Redis seeds;
- Redis: six nodes (three masters with a replica each) and a set-up Job that
  agrees, persistence and noeviction, ACL users keeping every rule of
  deploy/redis/users.acl, every password placeholder filled in.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from manifests import Pod, Resource, container, env_of, find

#: Kubernetes' terminationGracePeriodSeconds when a pod sets none.
DEFAULT_TERMINATION_GRACE_S = 30

#: What a worker does after JOBGATE_GRACE_S before it exits: give back the
#: jobs still running (a `release` each, after waiting up to 2 s for a
#: `start` under way), close the Dask client, flush spans (up to 5 s).
WORKER_GIVE_BACK_MARGIN_S = 15

#: A Redis Cluster of three masters, each with one replica.
REDIS_CLUSTER_NODES = 6
REDIS_PORT = 6379

#: (kind, name, container) of each workload the rules look at.
GATEWAY = ("Deployment", "jobgate-gateway", "gateway")
WORKER = ("Deployment", "jobgate-worker", "worker")
REDIS = ("StatefulSet", "jobgate-redis", "redis")
REDIS_SETUP_JOB = ("Job", "jobgate-redis-cluster-create", "create-cluster")
REDIS_CONFIG = "jobgate-redis-config"

JWT_KEY_SOURCES = ("JOBGATE_JWT_SECRET", "JOBGATE_JWT_PUBLIC_KEY", "JOBGATE_JWKS_FILE")
REDIS_SETTINGS = (
    ("appendonly", "yes"),
    ("maxmemory-policy", "noeviction"),
    ("cluster-enabled", "yes"),
)


class Repository:
    """What the rules read of the code: the settings the components accept."""

    def __init__(self, root: Path) -> None:
        self.root = root
        config_rs = (root / "crates/jobgate-gateway/src/config.rs").read_text()
        self.gateway_env = set(re.findall(r'env = "(JOBGATE_[A-Z0-9_]+)"', config_rs))
        self.gateway_defaults = {
            name: float(value.replace("_", ""))
            for name, value in re.findall(
                r'env = "(JOBGATE_[A-Z0-9_]+)",\s*default_value_t = ([0-9_]+)', config_rs
            )
        }
        worker_src = root / "workers/python/src/jobgate_worker"
        sources = "\n".join(path.read_text() for path in sorted(worker_src.glob("*.py")))
        self.worker_env = set(re.findall(r'"(JOBGATE_[A-Z0-9_]+)"', sources))
        grace = re.search(r"grace_s: float = ([0-9.]+)", (worker_src / "settings.py").read_text())
        self.worker_grace_default_s = float(grace.group(1)) if grace else None
        self.redis_acl = (root / "deploy/redis/users.acl").read_text()

    def defines_attribute(self, module: str, attribute: str) -> bool:
        """Whether `module` (dotted, under the repository) assigns `attribute` at top level."""
        base = self.root.joinpath(*module.split("."))
        for path in (base / "__init__.py", base.with_suffix(".py")):
            if path.is_file():
                pattern = rf"^{re.escape(attribute)}\s*[:=]"
                return re.search(pattern, path.read_text(), re.MULTILINE) is not None
        return False


Workload = tuple[Resource, Pod, dict[str, Any]]


def workload(
    resources: list[Resource], pods: list[Pod], wanted: tuple[str, str, str]
) -> tuple[Workload | None, str]:
    """(resource, pod, container) of a workload, or why there is none."""
    kind, name, container_name = wanted
    resource = find(resources, kind, name)
    pod = next((p for p in pods if p.owner is resource), None)
    found = container(pod, container_name) if pod else None
    if resource is None or pod is None or found is None:
        return None, f"{kind}/{name} with a container {container_name!r} is missing"
    return (resource, pod, found), ""


def number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def termination_grace_s(pod: Pod) -> float | None:
    return number(pod.spec.get("terminationGracePeriodSeconds", DEFAULT_TERMINATION_GRACE_S))


def pre_stop_sleep_s(found: dict[str, Any]) -> float:
    """Seconds the preStop hook sleeps: a sleep action, or an exec of `sleep N`."""
    hook = (found.get("lifecycle") or {}).get("preStop") or {}
    if "sleep" in hook:
        return number(hook["sleep"].get("seconds")) or 0.0
    command = " ".join(str(word) for word in (hook.get("exec") or {}).get("command") or [])
    match = re.search(r"\bsleep\s+([0-9.]+)", command)
    return float(match.group(1)) if match else 0.0


def probe_path(found: dict[str, Any], probe: str) -> str | None:
    return ((found.get(probe) or {}).get("httpGet") or {}).get("path")


def unknown_variables(env: dict[str, str], known: set[str]) -> list[str]:
    return sorted(name for name in env if name.startswith("JOBGATE_") and name not in known)


def redis_seed_failures(url_list: str, user: str, resources: list[Resource]) -> list[str]:
    """Each comma-separated seed: redis(s)://<user>:…@<statefulset>-<n>.<service>:6379."""
    redis = find(resources, REDIS[0], REDIS[1])
    if redis is None:
        return ["there is no Redis StatefulSet to point at"]
    spec = redis.body.get("spec") or {}
    node = re.compile(rf"{re.escape(redis.name)}-(\d+)\.{re.escape(str(spec.get('serviceName')))}")
    failures = []
    for seed in url_list.split(","):
        parts = urlsplit(seed)
        match = node.fullmatch(parts.hostname or "")
        if parts.scheme not in ("redis", "rediss"):
            failures.append(f"seed {seed!r} is not a redis:// or rediss:// URL")
        elif parts.username != user:
            failures.append(f"seed {seed!r} does not log in as the ACL user {user}")
        elif match is None or int(match.group(1)) >= int(spec.get("replicas") or 0):
            failures.append(f"seed host {parts.hostname!r} is not a pod of the Redis StatefulSet")
        elif parts.port != REDIS_PORT:
            failures.append(f"seed {parts.hostname!r} is not on port {REDIS_PORT}")
    return failures


def gateway_rules(resources: list[Resource], pods: list[Pod], repo: Repository) -> list[str]:
    found, missing = workload(resources, pods, GATEWAY)
    if found is None:
        return [missing]
    _, pod, gateway = found
    env = env_of(gateway)
    failures = []
    if probe_path(gateway, "readinessProbe") != "/readyz":
        failures.append("the gateway's readinessProbe must be an httpGet of /readyz")
    if probe_path(gateway, "livenessProbe") != "/healthz":
        failures.append("the gateway's livenessProbe must be an httpGet of /healthz")
    grace_name = "JOBGATE_SHUTDOWN_GRACE_S"
    grace_s = number(env.get(grace_name, repo.gateway_defaults.get(grace_name)))
    sleep_s = pre_stop_sleep_s(gateway)
    termination_s = termination_grace_s(pod)
    if sleep_s <= 0:
        failures.append("the gateway needs a preStop sleep, so endpoint removal comes first")
    if grace_s is None or termination_s is None or termination_s <= sleep_s + grace_s:
        failures.append(
            f"the gateway's terminationGracePeriodSeconds ({termination_s}) must exceed its "
            f"preStop sleep ({sleep_s}) plus {grace_name} ({grace_s})"
        )
    unknown = unknown_variables(env, repo.gateway_env)
    if unknown:
        failures.append(f"the gateway does not read {', '.join(unknown)} (not in config.rs)")
    if env.get("JOBGATE_AUTH") != "jwt":
        failures.append("JOBGATE_AUTH must be jwt: none is refused on a non-loopback address")
    key_sources = [name for name in JWT_KEY_SOURCES if name in env]
    if len(key_sources) != 1:
        failures.append(f"set exactly one JWT key source, not {key_sources or 'none'}")
    listen = env.get("JOBGATE_LISTEN", "")
    port = listen.rpartition(":")[2]
    if not port.isdigit() or int(port) not in pod.port_numbers():
        failures.append(f"JOBGATE_LISTEN {listen!r} is not on a declared containerPort")
    seeds = env.get("JOBGATE_REDIS_URL", "")
    failures += [
        f"gateway JOBGATE_REDIS_URL: {failure}"
        for failure in redis_seed_failures(seeds, "jobgate-gateway", resources)
    ]
    return failures


def worker_rules(resources: list[Resource], pods: list[Pod], repo: Repository) -> list[str]:
    found, missing = workload(resources, pods, WORKER)
    if found is None:
        return [missing]
    _, pod, worker = found
    env = env_of(worker)
    failures = []
    command = [*(worker.get("command") or []), *(worker.get("args") or [])]
    if len(command) != 2 or command[0] != "jobgate-worker" or ":" not in command[1]:
        failures.append(f"the worker's command must be jobgate-worker <module>:<attr>: {command}")
    else:
        module, _, attribute = command[1].partition(":")
        if not repo.defines_attribute(module, attribute):
            failures.append(f"{module} defines no {attribute} in the repository")
    unknown = unknown_variables(env, repo.worker_env)
    if unknown:
        failures.append(f"the worker SDK does not read {', '.join(unknown)}")
    grace_s = number(env.get("JOBGATE_GRACE_S", repo.worker_grace_default_s))
    termination_s = termination_grace_s(pod)
    if grace_s is None or termination_s is None:
        failures.append("the worker's grace and terminationGracePeriodSeconds must be numbers")
    elif termination_s < grace_s + WORKER_GIVE_BACK_MARGIN_S:
        failures.append(
            f"the worker's terminationGracePeriodSeconds ({termination_s}) must be at least "
            f"JOBGATE_GRACE_S ({grace_s}) + {WORKER_GIVE_BACK_MARGIN_S} s for the give-back"
        )
    failures += dask_address_failures(resources, env.get("DASK_SCHEDULER_ADDRESS"))
    seeds = env.get("JOBGATE_REDIS_URL", "")
    failures += [
        f"worker JOBGATE_REDIS_URL: {failure}"
        for failure in redis_seed_failures(seeds, "jobgate-worker", resources)
    ]
    return failures


def dask_address_failures(resources: list[Resource], address: str | None) -> list[str]:
    """DASK_SCHEDULER_ADDRESS must be tcp://<DaskCluster>-scheduler:<its tcp-comm port>."""
    clusters = [r for r in resources if r.kind == "DaskCluster"]
    if len(clusters) != 1:
        return [f"expected one DaskCluster, found {len(clusters)}"]
    cluster = clusters[0]
    service = ((cluster.body.get("spec") or {}).get("scheduler") or {}).get("service") or {}
    ports = [p.get("port") for p in service.get("ports") or [] if p.get("name") == "tcp-comm"]
    parts = urlsplit(address or "")
    host = f"{cluster.name}-scheduler"
    if parts.scheme != "tcp" or (parts.hostname or "").split(".")[0] != host:
        return [f"DASK_SCHEDULER_ADDRESS {address!r} is not tcp://{host}:<port>"]
    if parts.port not in ports:
        return [f"DASK_SCHEDULER_ADDRESS {address!r}: the Service's tcp-comm ports are {ports}"]
    return []


def acl_rules(text: str) -> dict[str, set[str]]:
    """user -> its ACL rules, passwords left out."""
    users = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "user":
            users[words[1]] = {w for w in words[2:] if not w.startswith((">", "#", "<", "!"))}
    return users


def redis_rules(resources: list[Resource], pods: list[Pod], repo: Repository) -> list[str]:
    redis, missing = workload(resources, pods, REDIS)
    job, job_missing = workload(resources, pods, REDIS_SETUP_JOB)
    config = find(resources, "ConfigMap", REDIS_CONFIG)
    if redis is None or job is None or config is None:
        return [m for m in (missing, job_missing) if m] or [f"ConfigMap/{REDIS_CONFIG} is missing"]
    failures = []
    statefulset_spec = redis[0].body.get("spec") or {}
    replicas = statefulset_spec.get("replicas")
    if replicas != REDIS_CLUSTER_NODES:
        failures.append(f"the Redis StatefulSet has {replicas} pods, not {REDIS_CLUSTER_NODES}")
    job_env = env_of(job[2])
    if job_env.get("REDIS_NODES") != str(replicas):
        failures.append(f"the set-up Job's REDIS_NODES is not the StatefulSet's {replicas}")
    names = (job_env.get("REDIS_STATEFULSET"), job_env.get("REDIS_SERVICE"))
    if names != (redis[0].name, statefulset_spec.get("serviceName")):
        failures.append(f"the set-up Job names {names}, not the StatefulSet and its Service")
    data = config.body.get("data") or {}
    settings = {
        tuple(line.split(None, 1))
        for line in data.get("redis.conf", "").splitlines()
        if line.strip() and not line.startswith("#")
    }
    for needed in REDIS_SETTINGS:
        if needed not in settings:
            failures.append(f"redis.conf lacks `{' '.join(needed)}`")
    template = data.get("users.acl.template", "")
    ours = acl_rules(template)
    for user, rules in acl_rules(repo.redis_acl).items():
        lacking = sorted(rules - ours.get(user, set()))
        if lacking:
            failures.append(f"ACL user {user} lacks {' '.join(lacking)} of deploy/redis/users.acl")
    placeholders = set(re.findall(r"@([A-Z_]+)@", template))
    filled = set(re.findall(r"s/@([A-Z_]+)@/", data.get("start.sh", "")))
    if placeholders != filled:
        failures.append(f"start.sh fills {sorted(filled)}; the ACL has {sorted(placeholders)}")
    return failures
