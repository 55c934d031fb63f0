"""The manifests of deploy/k8s as data: every resource, and every pod they make.

A pod is described by what the checks need: its labels and its PodSpec. The
DaskCluster's pods are the ones the dask-kubernetes operator makes from it,
with the labels the operator adds.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

#: Files of the manifests folder that are not Kubernetes resources.
KUSTOMIZATION = "kustomization.yaml"

#: Environment variables the dask-kubernetes operator adds to the containers
#: of a DaskCluster's worker pods (and DASK_SCHEDULER_ADDRESS to job runners).
OPERATOR_WORKER_ENV = ("DASK_WORKER_NAME", "DASK_SCHEDULER_ADDRESS")


@dataclass
class Resource:
    """One document of one manifest file."""

    file: str
    body: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.body.get("kind", "?"))

    @property
    def name(self) -> str:
        return str((self.body.get("metadata") or {}).get("name", "?"))

    def __str__(self) -> str:
        return f"{self.file} {self.kind}/{self.name}"


@dataclass
class Pod:
    """A pod some resource makes: who makes it, its labels and spec."""

    owner: Resource
    role: str
    labels: dict[str, str]
    spec: dict[str, Any]
    #: Variables set in its containers by someone else (the Dask operator).
    injected_env: tuple[str, ...] = field(default=())

    def containers(self) -> Iterator[dict[str, Any]]:
        yield from self.spec.get("initContainers") or []
        yield from self.spec.get("containers") or []

    def port_names(self) -> set[str]:
        return {
            port["name"]
            for container in self.containers()
            for port in container.get("ports") or []
            if "name" in port
        }

    def port_numbers(self) -> set[int]:
        return {
            port["containerPort"]
            for container in self.containers()
            for port in container.get("ports") or []
            if "containerPort" in port
        }

    def __str__(self) -> str:
        return f"{self.owner} ({self.role} pod)"


def load_folder(folder: Path) -> list[Resource]:
    """Every resource of every *.yaml file in the folder but the kustomization."""
    resources = []
    for path in sorted(folder.glob("*.yaml")):
        if path.name == KUSTOMIZATION:
            continue
        for body in yaml.safe_load_all(path.read_text()):
            if body is not None:
                resources.append(Resource(path.name, body))
    return resources


def find(resources: list[Resource], kind: str, name: str) -> Resource | None:
    for resource in resources:
        if resource.kind == kind and resource.name == name:
            return resource
    return None


def pods_of(resources: list[Resource]) -> list[Pod]:
    """Every pod the resources make (workload templates and the Dask pods)."""
    pods = []
    for resource in resources:
        spec = resource.body.get("spec") or {}
        if resource.kind in ("Deployment", "StatefulSet", "Job", "DaemonSet"):
            template = spec.get("template") or {}
            labels = (template.get("metadata") or {}).get("labels") or {}
            pods.append(Pod(resource, resource.kind.lower(), labels, template.get("spec") or {}))
        elif resource.kind == "DaskCluster":
            pods.extend(dask_pods(resource))
    return pods


def dask_pods(cluster: Resource) -> list[Pod]:
    """The scheduler and worker pods the operator makes for a DaskCluster.

    The operator labels them with the cluster's own labels, the group's
    (spec.<role>.metadata.labels) and dask.org/cluster-name and
    dask.org/component.
    """
    cluster_labels = (cluster.body.get("metadata") or {}).get("labels") or {}
    pods = []
    for role in ("scheduler", "worker"):
        group = (cluster.body.get("spec") or {}).get(role) or {}
        labels = {
            **cluster_labels,
            **((group.get("metadata") or {}).get("labels") or {}),
            "dask.org/cluster-name": cluster.name,
            "dask.org/component": role,
        }
        injected = OPERATOR_WORKER_ENV if role == "worker" else ()
        pods.append(Pod(cluster, role, labels, group.get("spec") or {}, injected))
    return pods


def env_of(container: dict[str, Any]) -> dict[str, str]:
    """A container's plain `value` variables (valueFrom ones map to '')."""
    return {item["name"]: str(item.get("value", "")) for item in container.get("env") or []}


def container(pod: Pod, name: str) -> dict[str, Any] | None:
    for candidate in pod.containers():
        if candidate.get("name") == name:
            return candidate
    return None
