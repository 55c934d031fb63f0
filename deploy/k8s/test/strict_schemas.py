"""Strict schema validation: an unknown field or a wrong type is an error.

Built-in kinds are validated by kubernetes-validate against its strict
Kubernetes JSON schemas (every object closed to unknown properties). A kind it
has no schema for is an error here (kubernetes-validate itself only warns), so
a misspelled `kind` or `apiVersion` fails too.

A DaskCluster is validated against the openAPIV3Schema of the CRD the
dask-kubernetes operator ships in its Helm chart, made strict the way the
Kubernetes schemas are: `additionalProperties: false` wherever an object lists
its `properties` and does not carry `x-kubernetes-preserve-unknown-fields`.
Its metadata is validated as an ObjectMeta, and the pod specs and the
scheduler's Service spec inside it as a Pod and a Service: the operator
creates those from them, and the Kubernetes schemas are newer than the CRD's
copy (and would still apply where the CRD preserves unknown fields).
"""

from __future__ import annotations

import functools
import importlib.metadata
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

from manifests import Resource

#: Where the operator's Helm chart keeps the DaskCluster CRD, in the wheel.
DASK_CRD_PATH = (
    "dask_kubernetes/operator/deployment/helm/dask-kubernetes-operator/crds/daskcluster.yaml"
)

#: Custom kinds validated against a CRD here: kind -> CRD file in dask-kubernetes.
CUSTOM_KINDS = {"DaskCluster": DASK_CRD_PATH}


def where(path: Iterable[Any]) -> str:
    return ".".join(str(part) for part in path) or "(top)"


def validate_builtin(body: dict[str, Any], kubernetes_version: str) -> list[str]:
    """Errors of one built-in resource against the strict Kubernetes schema."""
    try:
        kubernetes_validate.validate(body, kubernetes_version, strict=True)
    except kubernetes_validate.ValidationError as error:
        return [f"{where(error.path)}: {error.message}"]
    except kubernetes_validate.SchemaNotFoundError as error:
        return [f"no Kubernetes {kubernetes_version} schema: {error.message}"]
    return []


def validate_embedded(kind: str, name: str, field: str, spec: Any, version: str) -> list[str]:
    """Errors of a spec that a resource carries for another kind (a pod spec, a Service spec)."""
    body = {"apiVersion": "v1", "kind": kind, "metadata": {"name": name}, "spec": spec}
    return [f"{field} (as a {kind}): {error}" for error in validate_builtin(body, version)]


def validate_metadata(metadata: Any, version: str) -> list[str]:
    """Errors of a custom resource's metadata, checked as any object's ObjectMeta."""
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata}
    return [f"metadata: {error}" for error in validate_builtin(body, version)]


def close_objects(schema: dict[str, Any], path: str, preserved: list[str]) -> dict[str, Any]:
    """A copy of a structural schema with every listed-properties object closed.

    Appends to `preserved` the paths that keep unknown fields
    (`x-kubernetes-preserve-unknown-fields: true`), which stay open.
    """
    schema = dict(schema)
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        preserved.append(path)
    elif "properties" in schema:
        schema.setdefault("additionalProperties", False)
    if "properties" in schema:
        schema["properties"] = {
            name: close_objects(sub, f"{path}.{name}", preserved)
            for name, sub in schema["properties"].items()
        }
    if isinstance(schema.get("items"), dict):
        schema["items"] = close_objects(schema["items"], f"{path}[]", preserved)
    if isinstance(schema.get("additionalProperties"), dict):
        schema["additionalProperties"] = close_objects(
            schema["additionalProperties"], f"{path}.*", preserved
        )
    for keyword in ("allOf", "anyOf", "oneOf"):
        if keyword in schema:
            schema[keyword] = [close_objects(sub, path, preserved) for sub in schema[keyword]]
    return schema


def crd_file(relative_path: str) -> Path:
    """A file of the installed dask-kubernetes wheel (read, never imported)."""
    located = importlib.metadata.distribution("dask-kubernetes").locate_file(relative_path)
    return Path(str(located))


@functools.cache
def custom_validator(
    kind: str, api_version: str
) -> tuple[jsonschema.Draft7Validator, tuple[str, ...]]:
    """The strict validator of one custom kind and version, and its preserved paths."""
    crd = yaml.safe_load(crd_file(CUSTOM_KINDS[kind]).read_text())
    group = crd["spec"]["group"]
    served = {
        version["name"]: version for version in crd["spec"]["versions"] if version.get("served")
    }
    wanted_group, _, wanted_version = api_version.partition("/")
    if wanted_group != group or wanted_version not in served:
        raise LookupError(
            f"the {kind} CRD serves {', '.join(f'{group}/{v}' for v in served)}, not {api_version}"
        )
    preserved: list[str] = []
    schema = close_objects(served[wanted_version]["schema"]["openAPIV3Schema"], "", preserved)
    # The API server checks these itself; they are not in a CRD's schema.
    schema["properties"] = {
        "apiVersion": {"const": api_version},
        "kind": {"const": kind},
        "metadata": {"type": "object"},
        **schema["properties"],
    }
    schema["required"] = ["apiVersion", "kind", "metadata", *schema.get("required", [])]
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema), tuple(preserved)


def validate_custom(resource: Resource, kubernetes_version: str) -> list[str]:
    """Errors of a custom resource: its CRD's schema, strict, and what it embeds."""
    body = resource.body
    try:
        validator, _preserved = custom_validator(resource.kind, str(body.get("apiVersion")))
    except LookupError as error:
        return [str(error)]
    errors = [
        f"{where(error.absolute_path)}: {error.message}"
        for error in sorted(
            validator.iter_errors(body), key=lambda e: list(map(str, e.absolute_path))
        )
    ]
    errors += validate_metadata(body.get("metadata"), kubernetes_version)
    if resource.kind == "DaskCluster":
        errors += validate_dask_embedded(resource, kubernetes_version)
    return errors


def validate_dask_embedded(cluster: Resource, kubernetes_version: str) -> list[str]:
    """The DaskCluster's pod specs as Pods, its scheduler Service spec as a Service."""
    spec = cluster.body.get("spec")
    if not isinstance(spec, dict):
        return []
    errors = []
    for role in ("scheduler", "worker"):
        group = spec.get(role)
        if isinstance(group, dict) and "spec" in group:
            errors += validate_embedded(
                "Pod",
                f"{cluster.name}-{role}",
                f"spec.{role}.spec",
                group["spec"],
                kubernetes_version,
            )
    scheduler = spec.get("scheduler")
    if isinstance(scheduler, dict) and "service" in scheduler:
        errors += validate_embedded(
            "Service",
            f"{cluster.name}-scheduler",
            "spec.scheduler.service",
            scheduler["service"],
            kubernetes_version,
        )
    return errors


def preserved_paths(kind: str, api_version: str) -> tuple[str, ...]:
    """Where the CRD of a custom kind keeps unknown fields (validated as Pods, if pod specs)."""
    return custom_validator(kind, api_version)[1]


def validate(resource: Resource, kubernetes_version: str) -> list[str]:
    """Errors of one resource, built-in or custom."""
    if resource.kind in CUSTOM_KINDS:
        return validate_custom(resource, kubernetes_version)
    return validate_builtin(resource.body, kubernetes_version)
