#!/usr/bin/env bash
# End-to-end check on a real cluster: kind + KubeRay + the distill-operator chart. See docs/e2e.md.
#
#   make e2e                      # or: bash scripts/e2e.sh
#   E2E_KEEP=1 make e2e           # keep the kind cluster afterwards
#   E2E_JOB=my-job.yaml E2E_EXPECT=Succeeded E2E_TIMEOUT=3600 make e2e   # a real training run
#
# Needs docker, kind, helm and kubectl (helm and kubectl from `make tools` are used if present).
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER=${E2E_CLUSTER:-distill-e2e}
KUBERAY_VERSION=${KUBERAY_VERSION:-1.7.0}
NS=${E2E_NAMESPACE:-distill-e2e}
OPERATOR_IMAGE=${OPERATOR_IMAGE:-ghcr.io/distill-operator/operator:e2e}
# The default job runs on a plain Ray image: the cluster starts, the trainer module is missing,
# so the job fails with KubeRay's reason; that exercises every step of the operator cheaply.
TRAINER_IMAGE=${E2E_TRAINER_IMAGE:-rayproject/ray:2.41.0-py311-cpu}
JOB_FILE=${E2E_JOB:-}
EXPECT=${E2E_EXPECT:-Failed}
TIMEOUT=${E2E_TIMEOUT:-900}
FAKE_GPUS=${E2E_FAKE_GPUS:-4}
KUBECTL=${KUBECTL:-$( [ -x .tools/bin/kubectl ] && echo .tools/bin/kubectl || echo kubectl )}
HELM=${HELM:-$( [ -x .tools/bin/helm ] && echo .tools/bin/helm || echo helm )}

log() { printf '\n== %s\n' "$*"; }
fail() { printf '\nE2E FAILED: %s\n' "$*" >&2; exit 1; }

preflight() {
  for tool in docker kind "$HELM" "$KUBECTL"; do
    command -v "$tool" >/dev/null || fail "$tool not found (see docs/e2e.md)"
  done
  docker info >/dev/null 2>&1 || fail "docker daemon not reachable"
}

cleanup() {
  local status=$?
  if [ "$status" -ne 0 ]; then
    log "diagnostics"
    "$KUBECTL" get distilljobs,rayjobs,rayclusters,pods -A -o wide || true
    "$KUBECTL" -n distill-system logs -l app.kubernetes.io/name=distill-operator --tail=100 || true
  fi
  if [ -z "${E2E_KEEP:-}" ]; then
    kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
  fi
  exit "$status"
}

create_cluster() {
  log "kind cluster $CLUSTER"
  kind get clusters | grep -qx "$CLUSTER" || kind create cluster --name "$CLUSTER" --wait 120s
  "$KUBECTL" config use-context "kind-$CLUSTER" >/dev/null
}

# The rollout group always asks for a GPU (vLLM). On a GPU-less kind node, advertise a few fake
# `nvidia.com/gpu` so the pods are scheduled; nothing in the default job touches a GPU.
advertise_fake_gpus() {
  [ "$FAKE_GPUS" -gt 0 ] || return 0
  log "advertising $FAKE_GPUS fake nvidia.com/gpu per node (scheduling only)"
  local node patch
  patch="[{\"op\": \"add\", \"path\": \"/status/capacity/nvidia.com~1gpu\", \"value\": \"$FAKE_GPUS\"}]"
  for node in $("$KUBECTL" get nodes -o name); do
    "$KUBECTL" patch "$node" --subresource=status --type=json -p "$patch" >/dev/null
  done
}

install_kuberay() {
  log "KubeRay operator $KUBERAY_VERSION"
  "$HELM" repo add kuberay https://ray-project.github.io/kuberay-helm/ --force-update >/dev/null
  "$HELM" upgrade --install kuberay-operator kuberay/kuberay-operator \
    --version "$KUBERAY_VERSION" --namespace kuberay-system --create-namespace --wait
}

install_operator() {
  log "distill-operator from this checkout ($OPERATOR_IMAGE)"
  docker build --quiet -t "$OPERATOR_IMAGE" . >/dev/null
  kind load docker-image "$OPERATOR_IMAGE" --name "$CLUSTER"
  "$HELM" upgrade --install distill-operator charts/distill-operator \
    --namespace distill-system --create-namespace --wait --timeout 5m \
    --set image.repository="${OPERATOR_IMAGE%:*}" --set image.tag="${OPERATOR_IMAGE##*:}" \
    --set image.pullPolicy=Never
}

# A small job: one pod per role, a GPU only where the API requires one (rollout), a small head
# and grader.
smoke_job() {
  cat <<EOF
apiVersion: distill.dev/v1alpha1
kind: DistillJob
metadata:
  name: e2e
spec:
  student: {model: Qwen/Qwen2.5-0.5B}
  teacher: {model: Qwen/Qwen2.5-0.5B-Instruct}
  algorithm: {rolloutN: 2}
  training: {batchSize: 2, ppoMiniBatchSize: 2, totalSteps: 2}
  data: {train: /tmp/data/train.parquet}
  grader: {replicas: 1, cpu: 500m, memory: 512Mi, image: $TRAINER_IMAGE}
  image: $TRAINER_IMAGE
  ttlSecondsAfterFinished: 60
  resources:
    head: {cpu: "1", memory: 2Gi}
    rollout: {replicas: 1, gpusPerReplica: 1, tensorParallelSize: 1, cpu: "1", memory: 2Gi}
    actor: {replicas: 1, gpusPerReplica: 0, cpu: "1", memory: 2Gi}
    teacher: {replicas: 1, gpusPerReplica: 0, cpu: "1", memory: 2Gi}
EOF
}

job_name() { "$KUBECTL" -n "$NS" get distilljobs -o jsonpath='{.items[0].metadata.name}'; }

wait_phase() {
  local name=$1 deadline=$((SECONDS + TIMEOUT)) phase=""
  while [ "$SECONDS" -lt "$deadline" ]; do
    phase=$("$KUBECTL" -n "$NS" get dj "$name" -o jsonpath='{.status.phase}')
    [ "$phase" = "$EXPECT" ] && return 0
    case "$phase" in Succeeded|Failed) break ;; esac
    sleep 5
  done
  fail "DistillJob $name is '$phase', expected $EXPECT"
}

run_job() {
  log "namespace $NS (Pod Security Standard: restricted, enforced)"
  "$KUBECTL" create namespace "$NS" --dry-run=client -o yaml | "$KUBECTL" apply -f - >/dev/null
  "$KUBECTL" label namespace "$NS" --overwrite pod-security.kubernetes.io/enforce=restricted

  log "DistillJob"
  if [ -n "$JOB_FILE" ]; then
    "$KUBECTL" -n "$NS" apply -f "$JOB_FILE"
  else
    smoke_job | "$KUBECTL" -n "$NS" apply -f -
  fi
  local name
  name=$(job_name)
  local deadline=$((SECONDS + 60))
  until [ -n "$("$KUBECTL" -n "$NS" get dj "$name" -o jsonpath='{.status.phase}')" ]; do
    [ "$SECONDS" -lt "$deadline" ] || fail "the operator reported no phase within 60s"
    sleep 2
  done
  "$KUBECTL" -n "$NS" get rayjob "$(
    "$KUBECTL" -n "$NS" get dj "$name" -o jsonpath='{.status.rayJobName}')" >/dev/null \
    || fail "no RayJob for $name"

  log "Ray head pod admitted under 'restricted' and running (read-only root filesystem)"
  local head="distill.dev/job=$name,distill.dev/component=trainer"
  # `kubectl wait -l` fails at once while no pod matches, and KubeRay creates the head a moment
  # after the RayJob.
  deadline=$((SECONDS + TIMEOUT))
  until [ -n "$("$KUBECTL" -n "$NS" get pod -l "$head" -o name)" ]; do
    [ "$SECONDS" -lt "$deadline" ] || fail "KubeRay created no Ray head pod within ${TIMEOUT}s"
    sleep 2
  done
  "$KUBECTL" -n "$NS" wait pod --for=condition=Ready --timeout="${TIMEOUT}s" -l "$head" \
    || fail "the Ray head pod did not become Ready"

  log "waiting for phase $EXPECT (up to ${TIMEOUT}s)"
  wait_phase "$name"
  "$KUBECTL" -n "$NS" wait dj "$name" --for=condition=Created --timeout=10s >/dev/null \
    || fail "condition Created is not True"
  if [ "$EXPECT" = "Succeeded" ] || [ "$EXPECT" = "Failed" ]; then
    "$KUBECTL" -n "$NS" wait dj "$name" --for=condition="$EXPECT" --timeout=10s >/dev/null \
      || fail "condition $EXPECT is not True"
  fi
  "$KUBECTL" -n "$NS" get dj "$name" -o wide
  "$KUBECTL" -n "$NS" describe dj "$name" | sed -n '/^Events:/,$p'
  # The driver's output is in the submitter Job, named after the RayJob.
  "$KUBECTL" -n "$NS" logs "job/$("$KUBECTL" -n "$NS" get dj "$name" \
    -o jsonpath='{.status.rayJobName}')" --tail=20 || true
  if [ "$EXPECT" = "Failed" ]; then
    # Not the ResultsNotKept warning every job without spec.checkpoint gets.
    "$KUBECTL" -n "$NS" get events --field-selector "involvedObject.name=$name,type=Warning" \
      --no-headers | grep -v ResultsNotKept | grep -q . \
      || fail "no Warning event for the failed job"
  fi

  log "deleting the DistillJob removes what it owns"
  "$KUBECTL" -n "$NS" delete dj "$name" --wait=true
  "$KUBECTL" -n "$NS" wait --for=delete rayjob,deployment,service,configmap,networkpolicy \
    -l "distill.dev/job=$name" --timeout=180s 2>/dev/null || true
  [ -z "$("$KUBECTL" -n "$NS" get rayjob,deployment -l "distill.dev/job=$name" -o name)" ] \
    || fail "owned objects of $name are still there"
}

preflight
trap cleanup EXIT
create_cluster
advertise_fake_gpus
install_kuberay
install_operator
run_job
log "E2E PASSED"
