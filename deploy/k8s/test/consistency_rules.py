"""Rules on the manifests among themselves: what refers to something must find it.

Each rule returns its failures as sentences; none means it holds.

- every selector (Service, PodDisruptionBudget, NetworkPolicy and its peers in
  this namespace, a workload's own) selects a pod, and every named port it
  uses is a port of those pods;
- every Secret key, ConfigMap and ConfigMap key, $(VAR) in an env value or a
  command, named probe port and script run from a mounted ConfigMap exists;
- kustomization.yaml lists exactly the manifests, and uses only the fields
  checked here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from manifests import KUSTOMIZATION, Pod, Resource, find

#: Placeholder Secrets, applied by hand: not part of the kustomization.
EXAMPLE_SECRETS = "secrets.example.yaml"

#: The kustomization fields these manifests use; another one fails the check.
KUSTOMIZATION_FIELDS = {"apiVersion", "kind", "namespace", "resources"}

VARIABLE_REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")

Matcher = Callable[[dict[str, str]], list[Pod]]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def match_labels(selector: dict[str, Any] | None) -> dict[str, str] | None:
    """matchLabels of a LabelSelector; None without one, or with matchExpressions (unchecked)."""
    if not isinstance(selector, dict) or selector.get("matchExpressions"):
        return None
    return selector.get("matchLabels") or {}


def selector_rules(resources: list[Resource], pods: list[Pod]) -> list[str]:
    def matching(selector: dict[str, str]) -> list[Pod]:
        return [pod for pod in pods if selects(selector, pod.labels)]

    failures = []
    for resource in resources:
        spec = resource.body.get("spec") or {}
        if resource.kind in ("Deployment", "StatefulSet"):
            selector = match_labels(spec.get("selector"))
            labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
            if selector is not None and not selects(selector, labels):
                failures.append(f"{resource}: spec.selector does not select its pod template")
        elif resource.kind == "Service" and spec.get("selector"):
            failures += service_failures(resource, spec, matching(spec["selector"]))
        elif resource.kind == "PodDisruptionBudget":
            selector = match_labels(spec.get("selector"))
            if selector is not None and not matching(selector):
                failures.append(f"{resource}: its selector selects no pod")
        elif resource.kind == "NetworkPolicy":
            failures += network_policy_failures(resource, spec, matching)
        elif resource.kind == "DaskCluster":
            scheduler = (spec.get("scheduler") or {}).get("service") or {}
            own = [p for p in pods if p.owner is resource and p.role == "scheduler"]
            failures += service_failures(
                resource, scheduler, matching(scheduler.get("selector") or {})
            )
            if not any(selects(scheduler.get("selector") or {}, p.labels) for p in own):
                failures.append(f"{resource}: the scheduler Service does not select the scheduler")
    return failures


def service_failures(resource: Resource, spec: dict[str, Any], selected: list[Pod]) -> list[str]:
    if not selected:
        return [f"{resource}: the Service's selector selects no pod"]
    return [
        f"{resource}: targetPort {port['targetPort']!r} is no port of the pods it selects"
        for port in spec.get("ports") or []
        if isinstance(port.get("targetPort"), str)
        and not any(port["targetPort"] in pod.port_names() for pod in selected)
    ]


def network_policy_failures(
    resource: Resource, spec: dict[str, Any], matching: Matcher
) -> list[str]:
    failures = []
    selector = match_labels(spec.get("podSelector"))
    protected = matching(selector) if selector is not None else []
    if selector is not None and not protected:
        failures.append(f"{resource}: its podSelector selects no pod")
    for rule in spec.get("ingress") or []:
        for peer in rule.get("from") or []:
            peer_selector = match_labels(peer.get("podSelector"))
            # Pods of another namespace (the Dask operator's) are not in these manifests.
            if "namespaceSelector" in peer or peer_selector is None:
                continue
            if not matching(peer_selector):
                failures.append(f"{resource}: the peer {peer_selector} selects no pod")
        for port in rule.get("ports") or []:
            named = port.get("port")
            if isinstance(named, str) and not any(named in pod.port_names() for pod in protected):
                failures.append(f"{resource}: port {named!r} is no port of the pods it protects")
    return failures


def reference_rules(resources: list[Resource], pods: list[Pod]) -> list[str]:
    secrets = {
        r.name: {**(r.body.get("data") or {}), **(r.body.get("stringData") or {})}
        for r in resources
        if r.kind == "Secret"
    }
    config_maps = {r.name: r.body.get("data") or {} for r in resources if r.kind == "ConfigMap"}
    failures = []
    for pod in pods:
        volumes = {volume.get("name"): volume for volume in pod.spec.get("volumes") or []}
        for volume in volumes.values():
            if "configMap" in volume and volume["configMap"].get("name") not in config_maps:
                failures.append(f"{pod}: volume {volume.get('name')} names no ConfigMap here")
        for found in pod.containers():
            references = References(pod, volumes, secrets, config_maps)
            failures += [
                f"{pod} {found.get('name')}: {failure}" for failure in references.check(found)
            ]
    for resource in resources:
        if resource.kind == "StatefulSet":
            name = (resource.body.get("spec") or {}).get("serviceName", "")
            service = find(resources, "Service", name)
            if service is None or (service.body.get("spec") or {}).get("clusterIP") != "None":
                failures.append(f"{resource}: serviceName names no headless Service")
    return failures


class References:
    """What one pod's containers may refer to."""

    def __init__(
        self,
        pod: Pod,
        volumes: dict[str, Any],
        secrets: dict[str, dict[str, Any]],
        config_maps: dict[str, dict[str, Any]],
    ) -> None:
        self.pod = pod
        self.volumes = volumes
        self.secrets = secrets
        self.config_maps = config_maps

    def check(self, found: dict[str, Any]) -> list[str]:
        command = [
            str(word) for word in [*(found.get("command") or []), *(found.get("args") or [])]
        ]
        return [
            *self.env_failures(found, command),
            *self.probe_failures(found),
            *self.script_failures(found, command),
        ]

    def env_failures(self, found: dict[str, Any], command: list[str]) -> list[str]:
        """$(VAR) only after VAR is defined (else Kubernetes leaves it as it is); refs exist."""
        failures = []
        defined = set(self.pod.injected_env)
        for item in found.get("env") or []:
            for name in VARIABLE_REFERENCE.findall(str(item.get("value", ""))):
                if name not in defined:
                    failures.append(f"{item['name']} refers to $({name}), not defined before it")
            defined.add(item["name"])
            source = item.get("valueFrom") or {}
            for ref_kind, known in (
                ("secretKeyRef", self.secrets),
                ("configMapKeyRef", self.config_maps),
            ):
                ref = source.get(ref_kind)
                if ref and ref.get("key") not in known.get(ref.get("name"), {}):
                    failures.append(f"{item['name']}: {ref_kind} {ref} is in no manifest")
        for word in command:
            for name in VARIABLE_REFERENCE.findall(word):
                if name not in defined:
                    failures.append(f"the command refers to $({name}), which is not defined")
        return failures

    def probe_failures(self, found: dict[str, Any]) -> list[str]:
        failures = []
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            action = found.get(probe) or {}
            port = (action.get("httpGet") or action.get("tcpSocket") or {}).get("port")
            if isinstance(port, str) and not port.isdigit() and port not in self.pod.port_names():
                failures.append(f"{probe} port {port!r} is not a named port of the pod")
        return failures

    def script_failures(self, found: dict[str, Any], command: list[str]) -> list[str]:
        """A file run from a mounted ConfigMap must be one of its keys."""
        failures = []
        for mount in found.get("volumeMounts") or []:
            volume = self.volumes.get(mount.get("name")) or {}
            if "configMap" not in volume:
                continue
            name = volume["configMap"].get("name")
            prefix = str(mount.get("mountPath", "")).rstrip("/") + "/"
            for word in command:
                for path in re.findall(rf"{re.escape(prefix)}[\w.-]+", word):
                    if path.removeprefix(prefix) not in self.config_maps.get(name, {}):
                        failures.append(f"runs {path}, which ConfigMap {name} does not hold")
        return failures


def kustomization_rules(folder: Path, resources: list[Resource]) -> list[str]:
    """kustomization.yaml: known fields only, listing every manifest but the example Secrets."""
    try:
        kustomization = yaml.safe_load((folder / KUSTOMIZATION).read_text())
    except (OSError, yaml.YAMLError) as error:
        return [f"{KUSTOMIZATION}: {error}"]
    if not isinstance(kustomization, dict):
        return [f"{KUSTOMIZATION} is not a mapping"]
    failures = []
    unknown = sorted(set(kustomization) - KUSTOMIZATION_FIELDS)
    if unknown:
        failures.append(f"{KUSTOMIZATION}: {unknown} not among {sorted(KUSTOMIZATION_FIELDS)}")
    kind = (kustomization.get("apiVersion"), kustomization.get("kind"))
    if kind != ("kustomize.config.k8s.io/v1beta1", "Kustomization"):
        failures.append(f"{KUSTOMIZATION}: not a kustomize.config.k8s.io/v1beta1 Kustomization")
    listed = set(kustomization.get("resources") or [])
    on_disk = {path.name for path in folder.glob("*.yaml")} - {KUSTOMIZATION, EXAMPLE_SECRETS}
    failures += [
        f"{KUSTOMIZATION} lists {name}, not a manifest here" for name in sorted(listed - on_disk)
    ]
    failures += [f"{KUSTOMIZATION} does not list {name}" for name in sorted(on_disk - listed)]
    namespace = kustomization.get("namespace")
    if [r.name for r in resources if r.kind == "Namespace"] != [namespace]:
        failures.append(
            f"{KUSTOMIZATION}: namespace {namespace!r} is not the one namespace.yaml makes"
        )
    for resource in resources:
        own = (resource.body.get("metadata") or {}).get("namespace")
        if own is not None and own != namespace:
            failures.append(f"{resource}: namespace {own!r}, not {namespace!r}")
    return failures
