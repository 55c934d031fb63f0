"""Checks the Kubernetes manifests of deploy/k8s offline; scripts/test-k8s.sh runs it.

    check_manifests.py --kubernetes-version 1.35 [--manifests DIR] [--quiet]

First every resource against its schema, strictly (strict_schemas.py), then
the rules no schema can express (component_rules.py, consistency_rules.py). Prints one line per
resource and per failure; exits 1 if anything failed. --manifests points it
at another folder (scripts/test-k8s.sh gives it broken copies).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

import component_rules
import consistency_rules
import strict_schemas
from manifests import load_folder, pods_of

REPOSITORY = Path(__file__).resolve().parents[3]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kubernetes-version", required=True, help="e.g. 1.35")
    parser.add_argument("--manifests", type=Path, default=REPOSITORY / "deploy/k8s")
    parser.add_argument("--quiet", action="store_true", help="print failures only")
    args = parser.parse_args(argv)

    try:
        resources = load_folder(args.manifests)
    except yaml.YAMLError as not_yaml:
        print(f"FAIL {args.manifests}: not YAML: {not_yaml}")
        return 1
    failures = 0
    for resource in resources:
        errors = strict_schemas.validate(resource, args.kubernetes_version)
        for error in errors:
            print(f"FAIL {resource}: {error}")
        failures += len(errors)
        if not errors and not args.quiet:
            print(f"ok   {resource}")

    pods = pods_of(resources)
    repo = component_rules.Repository(REPOSITORY)
    rules: dict[str, Callable[[], list[str]]] = {
        "gateway": lambda: component_rules.gateway_rules(resources, pods, repo),
        "worker": lambda: component_rules.worker_rules(resources, pods, repo),
        "redis": lambda: component_rules.redis_rules(resources, pods, repo),
        "selectors": lambda: consistency_rules.selector_rules(resources, pods),
        "references": lambda: consistency_rules.reference_rules(resources, pods),
        "kustomization": lambda: consistency_rules.kustomization_rules(args.manifests, resources),
    }
    for name, rule in rules.items():
        try:
            problems = rule()
        except Exception as error:  # a broken manifest may not have the shape a rule expects
            problems = [f"could not be checked: {type(error).__name__}: {error}"]
        for problem in problems:
            print(f"FAIL rule {name}: {problem}")
        failures += len(problems)
        if not problems and not args.quiet:
            print(f"ok   rule {name}")

    if failures:
        print(f"{failures} failure(s) in {args.manifests}")
        return 1
    if not args.quiet:
        print(
            f"{len(resources)} resources valid (Kubernetes {args.kubernetes_version}, strict), "
            f"{len(rules)} rules hold"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
