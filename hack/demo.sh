#!/usr/bin/env bash
# The main job, end to end on one machine (`make demo`):
#   1. a real local control plane with fake GPU nodes (hack/localcluster.py),
#   2. the Helm chart (CRD, RBAC), and the operator as a process with the chart's ServiceAccount identity,
#   3. a small random Qwen3-MoE checkpoint and a real runtime process serving it over the OpenAI API,
#   4. a ModelDeployment applied with kubectl, reconciled into GPU pods that turn Ready, scaled, deleted.
# KWOK's fake nodes run no containers, so the runtime answers from the local process the pods would run.
# KEEP=1 leaves the cluster, operator and runtime running afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
PY=$root/.venv/bin/python
export KUBEBUILDER_ASSETS=${KUBEBUILDER_ASSETS:-$(bash hack/testbin.sh)}
export PATH=$KUBEBUILDER_ASSETS:$PATH
export KUBECONFIG=$root/.cluster/kubeconfig
work=$(mktemp -d /tmp/moedeploy-demo.XXXXXX)
pids=()
cluster_was_up=1

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
cleanup() {
  [ "${KEEP:-}" = 1 ] && { echo "KEEP=1: left running (pids ${pids[*]:-}); make cluster-down stops the cluster"; return; }
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ "$cluster_was_up" = 1 ] || $PY hack/localcluster.py down --state-dir .cluster >/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
wait_http() {  # url, seconds
  for _ in $(seq "$2"); do curl -fsS "$1" >/dev/null 2>&1 && return 0; sleep 1; done
  echo "no answer from $1" >&2; return 1
}

step "Local control plane"
cluster_was_up=0
$PY hack/localcluster.py status --state-dir .cluster >/dev/null && cluster_was_up=1
$PY hack/localcluster.py up --state-dir .cluster
kubectl get nodes -o custom-columns='NODE:.metadata.name,GPUS:.status.allocatable.nvidia\.com/gpu,PRODUCT:.metadata.labels.nvidia\.com/gpu\.product'

step "helm install: the CRD, the operator's Deployment, ServiceAccount and least-privilege RBAC"
helm upgrade --install moedeploy helm/moedeploy -n moedeploy-system --create-namespace --wait --timeout 2m
kubectl describe clusterrole moedeploy | sed -n '/PolicyRule/,$p'
# KWOK's pods run no containers, so the operator runs here as a process, with the chart's ServiceAccount
# identity: what it can do is exactly what the chart grants.
cp "$KUBECONFIG" "$work/operator.kubeconfig"
token=$(kubectl create token moedeploy -n moedeploy-system --duration=1h)
KUBECONFIG=$work/operator.kubeconfig kubectl config set-credentials moedeploy-operator --token="$token" >/dev/null
KUBECONFIG=$work/operator.kubeconfig kubectl config set-context --current --user=moedeploy-operator >/dev/null
KUBECONFIG=$work/operator.kubeconfig $PY -m moe_operator run --all-namespaces >"$work/operator.log" 2>&1 &
pids+=($!)
echo "operator running as system:serviceaccount:moedeploy-system:moedeploy (log: $work/operator.log)"

step "A small random Qwen3-MoE checkpoint and a real runtime serving it"
$PY -m moe_runtime make-checkpoint --family qwen3_moe --out "$work/qwen3-moe-demo" --num-experts 8 --top-k 2
port=$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
MOE_RUNTIME_PORT=$port MOE_RUNTIME_HOST=127.0.0.1 $PY -m moe_runtime serve --model "$work/qwen3-moe-demo" \
  --served-model-name qwen3-moe-demo >"$work/runtime.log" 2>&1 &
pids+=($!)

step "kubectl apply a ModelDeployment"
cat >"$work/md.yaml" <<EOF
apiVersion: moedeploy.dev/v1alpha1
kind: ModelDeployment
metadata:
  name: qwen3-moe-demo
spec:
  replicas: 2
  minReplicas: 1
  maxReplicas: 4
  model:
    family: qwen3_moe
    name: qwen3-moe-demo
    source:
      hostPath:
        path: $work/qwen3-moe-demo
  runtime:
    image: moedeploy/runtime:0.1.0
    resources:
      gpu: 1
      gpuType: NVIDIA-H100-80GB-HBM3
    batching:
      maxQueue: 64
EOF
cat "$work/md.yaml"
kubectl apply -f "$work/md.yaml"
kubectl wait --for=condition=Ready md/qwen3-moe-demo --timeout=120s
kubectl get md
kubectl get deployment,service,configmap -l moedeploy.dev/model-deployment=qwen3-moe-demo
kubectl get pods -l moedeploy.dev/model-deployment=qwen3-moe-demo -o wide

step "The runtime answers over the OpenAI API (random weights: the words are noise, the machinery is real)"
wait_http "http://127.0.0.1:$port/ready" 180
curl -sS "http://127.0.0.1:$port/v1/models"; echo
curl -sS "http://127.0.0.1:$port/v1/chat/completions" -H 'Content-Type: application/json' \
  -d '{"model": "qwen3-moe-demo", "messages": [{"role": "user", "content": "Hello, experts!"}], "max_tokens": 12, "temperature": 0}'
echo
echo "a bad request gets a 400 in the OpenAI error format:"
curl -sS "http://127.0.0.1:$port/v1/completions" -H 'Content-Type: application/json' \
  -d '{"model": "qwen3-moe-demo", "prompt": "hi", "max_tokens": -1}'
echo
echo "metrics:"
curl -sS "http://127.0.0.1:$port/metrics" | grep -E '^moe_runtime_(requests_total|generation_tokens_total|expert_tokens_total\{.*layer="0")' | head -8

step "kubectl scale md qwen3-moe-demo --replicas=3"
kubectl scale md qwen3-moe-demo --replicas=3
kubectl wait --for=jsonpath='{.status.readyReplicas}'=3 md/qwen3-moe-demo --timeout=120s
kubectl get md qwen3-moe-demo
kubectl get events --field-selector involvedObject.kind=ModelDeployment --sort-by=.metadata.creationTimestamp -o custom-columns='REASON:.reason,MESSAGE:.message' | tail -6

step "Delete: the children go with it"
# foreground: the API server removes the ModelDeployment only after the garbage collector removed its children
kubectl delete md qwen3-moe-demo --cascade=foreground --wait=true --timeout=60s
kubectl get deployment,service,configmap,pods -l moedeploy.dev/model-deployment=qwen3-moe-demo
echo
echo "demo finished"
