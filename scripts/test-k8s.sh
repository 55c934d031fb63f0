#!/usr/bin/env bash
# Validates the Kubernetes manifests of deploy/k8s offline (make test-k8s,
# part of make test); they cannot run here.
#
# - Every built-in resource against the strict Kubernetes JSON schemas of
#   kubernetes-validate for $kubernetes_version (an unknown field, a wrong
#   type or an unknown kind fails); the DaskCluster against the CRD the
#   dask-kubernetes operator ships, made as strict, and its pod specs and
#   scheduler Service as a Pod and a Service (deploy/k8s/test/strict_schemas.py).
# - The rules no schema states (deploy/k8s/test/*_rules.py): the gateway's
#   probes and termination grace, the worker's entry point and grace, Redis
#   Cluster settings and ACL users, selectors, references, the kustomization.
# - The scripts the Redis pods run parse (sh -n).
# - Broken copies: a misspelled field and a wrong type in the gateway's
#   Deployment and in the DaskCluster (also inside its pod spec), and a break
#   of several rules, must each fail, for the reason injected.
#
# The validators are pinned in deploy/k8s/test/requirements.txt and installed
# into .venv-k8s the first time (and when that file changes); after that no
# network is needed: the schemas are inside the packages.
set -euo pipefail
cd "$(dirname "$0")/.."
# No __pycache__ in deploy/k8s/test.
export PYTHONDONTWRITEBYTECODE=1

# The oldest Kubernetes minor version upstream still supports (1.35 to 1.37
# when these were written): what the manifests must be valid for.
readonly kubernetes_version=1.35
readonly venv=.venv-k8s
readonly requirements=deploy/k8s/test/requirements.txt
readonly checker=deploy/k8s/test/check_manifests.py
readonly python="$venv/bin/python"

install_validators() {
  local stamp="$venv/.installed"
  if [ -f "$stamp" ] && cmp -s "$requirements" "$stamp"; then
    return
  fi
  command -v python3 >/dev/null || { echo "test-k8s: python3 is required" >&2; exit 1; }
  echo "test-k8s: installing the pinned validators into $venv"
  python3 -m venv --clear "$venv"
  "$python" -m pip install --quiet --disable-pip-version-check --no-deps -r "$requirements"
  cp "$requirements" "$stamp"
}

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
failed=0
refused=0
copies=0

# The shell scripts of the Redis ConfigMap parse.
check_redis_scripts() {
  local script
  "$python" - "$work/redis" <<'PY'
import pathlib, sys, yaml
folder = pathlib.Path(sys.argv[1])
folder.mkdir()
config = yaml.safe_load(pathlib.Path("deploy/k8s/redis-config.yaml").read_text())
for name, text in config["data"].items():
    if name.endswith(".sh"):
        (folder / name).write_text(text)
PY
  for script in "$work"/redis/*.sh; do
    if ! sh -n "$script"; then
      echo "FAIL: ${script##*/} of deploy/k8s/redis-config.yaml does not parse"
      failed=1
    fi
  done
}

# expect_refused <what> <file> <sed script> <expected text>: a copy of the
# manifests with <file> edited must fail, with <expected text> in the report.
expect_refused() {
  local what=$1 file=$2 edit=$3 expected=$4 copy output
  copies=$((copies + 1))
  copy="$work/broken-$copies"
  mkdir "$copy"
  cp deploy/k8s/*.yaml "$copy/"
  sed -i -e "$edit" "$copy/$file"
  if cmp -s "deploy/k8s/$file" "$copy/$file"; then
    echo "FAIL: broken copy '$what': the edit changed nothing in $file"
    failed=1
    return
  fi
  if output="$("$python" "$checker" --kubernetes-version "$kubernetes_version" --manifests "$copy" --quiet)"; then
    echo "FAIL: broken copy '$what' passed validation"
    failed=1
  elif ! grep -qF -- "$expected" <<<"$output"; then
    echo "FAIL: broken copy '$what' was refused, but not for \"$expected\":"
    echo "$output"
    failed=1
  else
    refused=$((refused + 1))
    echo "refused: $what: $(grep -F -m 1 -- "$expected" <<<"$output")"
  fi
}

install_validators
started=$SECONDS

echo "== the manifests (Kubernetes $kubernetes_version, strict)"
"$python" "$checker" --kubernetes-version "$kubernetes_version" || failed=1
check_redis_scripts

echo "== broken copies, each must be refused"
# The gateway's Deployment: misspelled fields, wrong types, an unknown kind.
expect_refused "gateway: misspelled pod field" gateway.yaml \
  's/^      terminationGracePeriodSeconds: 25$/      terminationGracePeriodSecond: 25/' \
  "'terminationGracePeriodSecond' was unexpected"
expect_refused "gateway: misspelled container field" gateway.yaml \
  's/^          readinessProbe:$/          readinesProbe:/' \
  "'readinesProbe' was unexpected"
expect_refused "gateway: replicas of the wrong type" gateway.yaml \
  's/^  replicas: 2$/  replicas: two/' \
  "spec.replicas: 'two' is not of type 'integer'"
expect_refused "gateway: containerPort of the wrong type" gateway.yaml \
  's/^              containerPort: 8080$/              containerPort: "8080"/' \
  "'8080' is not of type 'integer'"
expect_refused "gateway: misspelled kind" gateway.yaml \
  's/^kind: Deployment$/kind: Deploymnt/' \
  "Couldn't find schema for kind Deploymnt"
# The DaskCluster: its own fields, and the pod spec inside it.
expect_refused "DaskCluster: misspelled field" dask-cluster.yaml \
  's/^    replicas: 2$/    replica: 2/' \
  "spec.worker: Additional properties are not allowed ('replica' was unexpected)"
expect_refused "DaskCluster: misspelled container field" dask-cluster.yaml \
  '0,/^          args:$/s//          argz:/' \
  "'argz' was unexpected"
expect_refused "DaskCluster: replicas of the wrong type" dask-cluster.yaml \
  's/^    replicas: 2$/    replicas: "2"/' \
  "spec.worker.replicas: '2' is not of type 'integer'"
expect_refused "DaskCluster: containerPort of the wrong type" dask-cluster.yaml \
  's/^              containerPort: 8786$/              containerPort: "8786"/' \
  "'8786' is not of type 'integer'"
# A field the CRD's older copy of the Service schema still has, which the
# Kubernetes schema no longer does: refused by the Service check alone.
expect_refused "DaskCluster: scheduler Service field removed from Kubernetes" dask-cluster.yaml \
  's/^      type: ClusterIP$/      type: ClusterIP\n      topologyKeys: ["*"]/' \
  "spec.scheduler.service (as a Service): spec: Additional properties are not allowed ('topologyKeys' was unexpected)"
# Rules.
expect_refused "gateway: termination grace too short" gateway.yaml \
  's/^      terminationGracePeriodSeconds: 25$/      terminationGracePeriodSeconds: 15/' \
  "must exceed its preStop sleep (5.0) plus JOBGATE_SHUTDOWN_GRACE_S (10.0)"
expect_refused "gateway: readiness on /healthz" gateway.yaml \
  's|^              path: /readyz$|              path: /healthz|' \
  "readinessProbe must be an httpGet of /readyz"
expect_refused "gateway: misspelled setting" gateway.yaml \
  's/^            - name: JOBGATE_SHUTDOWN_GRACE_S$/            - name: JOBGATE_SHUTDOWN_GRACE/' \
  "the gateway does not read JOBGATE_SHUTDOWN_GRACE "
# shellcheck disable=SC2016 # $(REDIS_PASSWORD) is the manifest's, not the shell's
expect_refused "gateway: undefined \$(VAR)" gateway.yaml \
  's/\$(REDIS_PASSWORD)@jobgate-redis-0/$(REDIS_PASWORD)@jobgate-redis-0/' \
  "refers to \$(REDIS_PASWORD)"
expect_refused "worker: termination grace without room for the give-back" worker.yaml \
  's/^      terminationGracePeriodSeconds: 60$/      terminationGracePeriodSeconds: 35/' \
  "for the give-back"
expect_refused "worker: Dask scheduler address" worker.yaml \
  's|tcp://jobgate-dask-scheduler:8786|tcp://jobgate-dask:8786|' \
  "DASK_SCHEDULER_ADDRESS 'tcp://jobgate-dask:8786'"
expect_refused "Redis: ACL user without a rule of deploy/redis/users.acl" redis-config.yaml \
  '/^    user jobgate-gateway /s/ +hdel / /' \
  "ACL user jobgate-gateway lacks +hdel"
expect_refused "Redis: Secret key misspelled" redis-cluster.yaml \
  '0,/key: admin-password$/s//key: admin-pasword/' \
  "'key': 'admin-pasword'"
expect_refused "NetworkPolicy: unknown named port" network-policies.yaml \
  's/port: cluster-bus$/port: clusterbus/' \
  "port 'clusterbus' is no port of the pods it protects"
expect_refused "kustomization: a manifest left out" kustomization.yaml \
  '/^  - worker.yaml$/d' \
  "does not list worker.yaml"

echo "test-k8s: $refused broken copies refused, in $((SECONDS - started)) s"
if [ "$failed" -ne 0 ]; then
  echo "test-k8s: FAILED" >&2
  exit 1
fi
echo "test-k8s: the manifests are valid"
