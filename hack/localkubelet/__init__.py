"""A local kubelet for the fake GPU nodes of the local cluster (hack/localcluster.py).

It owns the nodes it serves, as a kubelet owns its node: it posts their heartbeats, and for every pod bound to
them it does what a kubelet does, with local processes instead of containers. A pod of a ModelDeployment
(label `moedeploy.dev/model-deployment`) runs as real processes, one per container: `python -m moe_runtime
serve`, or vLLM's CPU build for a container running `vllm` (hack/vllm-serve.sh), beside sidecars such as the
adapter sync: env and envFrom resolved from the API, volume paths mapped to host paths, a free loopback port per
container, the containers' own probes deciding Ready (all of them), restarts with back-off, preStop + SIGTERM +
grace + SIGKILL on deletion, output in `<state dir>/pods/<namespace>_<pod>.log` (a sidecar's in
`<namespace>_<pod>.<container>.log`). Init containers are skipped. Other pods are reported Running
and Ready without running anything, as KWOK would. KWOK manages the other nodes: pods there stay API objects.

Files: launch.py / env.py / volumes.py (what to run), probes.py and lifecycle.py (a container's life),
podstatus.py / node.py / targets.py (what it reports) are pure; api.py, process.py and kubelet.py do the I/O.

    python hack/localkubelet --kubeconfig .cluster/kubeconfig --nodes gpu-node-0,gpu-node-1 --state-dir .cluster
"""

# In every pod process's environment: the kubelet's state dir. `localcluster.py down` finds pod processes by it
# even when their kubelet died without stopping them.
POD_MARKER = "MOEDEPLOY_LOCAL_KUBELET"
