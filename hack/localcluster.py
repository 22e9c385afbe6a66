"""The local stack: a real Kubernetes control plane on loopback, from the binaries hack/testbin.sh builds,
with real runtime pods and a real Prometheus.

kwokctl's binary runtime starts the control plane (`kwokctl create cluster`, configured by `kwokctl_config`):
it writes the PKI and the kubeconfig and runs etcd, kube-apiserver (TLS, client-certificate admin, RBAC,
service-account keys), kube-controller-manager, kube-scheduler, KWOK and Prometheus from our binaries, named
by path so that it downloads nothing, with its flags completed by `FLAGS`. This module adds the rest: fake
nodes (some with `nvidia.com/gpu`) so that pods really get scheduled; the local kubelet (hack/localkubelet)
owning the served nodes (by default the GPU nodes), where every ModelDeployment pod runs as a
`python -m moe_runtime serve` process, while KWOK plays the kubelet of the other nodes, whose pods stay API
objects; Prometheus' configuration, scraping the Ready runtime pods through file-based discovery of
`targets.json`; bounded waits that fail at once, with the log, when a component exits; and the stop.
Every process, its log and its state live in one folder (kwokctl's in `kwokctl/`); `down` stops exactly the
processes recorded there, each checked to still be the component it started, and the pod processes, also
after an `up` that failed half-way. What other tools rely on (docs/local-stack.md): `<state dir>/kubeconfig`,
`<state dir>/env` (KUBECONFIG=..., PROMETHEUS_URL=...), `<state dir>/targets.json`, `<state dir>/services.json`
(the Service proxy, hack/localservices: `namespace/name` -> `127.0.0.1:PORT`).

    python hack/localcluster.py up   --state-dir .cluster     # KUBEBUILDER_ASSETS names the binaries
    python hack/localcluster.py down --state-dir .cluster
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from localkubelet import POD_MARKER

HACK = Path(__file__).resolve().parent
SERVICE_CIDR = "10.96.0.0/16"
GPU_PRODUCT = "NVIDIA-H100-80GB-HBM3"
GPUS_PER_NODE = 8
# KWOK's stages, from its module (hack/testbin.sh copies them): nodes turn Ready and post heartbeats, pods
# turn Ready, complete and go away when deleted
KWOK_STAGES = [
    "node/fast/node-initialize.yaml",
    "node/heartbeat/node-heartbeat.yaml",
    "pod/fast/pod-ready.yaml",
    "pod/fast/pod-complete.yaml",
    "pod/fast/pod-delete.yaml",
]
# What kwokctl's flags for each component (sigs.k8s.io/kwok pkg/kwokctl/components) lack or set otherwise;
# the flags in OVERRIDE replace kwokctl's own, the others are added.
FLAGS = {
    "etcd": {"unsafe-no-fsync": "true", "log-level": "warn"},
    "kube-apiserver": {
        "authorization-mode": "RBAC",
        "disable-admission-plugins": "ServiceAccount",
        "service-cluster-ip-range": SERVICE_CIDR,
        "advertise-address": "127.0.0.1",  # for machines without a default route
        # the endpoint reconciler refuses a loopback advertise address; nothing here needs the `kubernetes`
        # Service's endpoints
        "endpoint-reconciler-type": "none",
        "enable-priority-and-fairness": "false",
    },
    "kube-controller-manager": {
        "service-cluster-ip-range": SERVICE_CIDR,
        "controllers": "*,-nodeipam",
        "leader-elect": "false",
    },
    "kube-scheduler": {"leader-elect": "false"},
    "kwok-controller": {
        # only the nodes annotated for it: the served nodes are the local kubelet's
        "manage-all-nodes": "false",
        "manage-nodes-with-annotation-selector": "kwok.x-k8s.io/node=fake",
        "node-lease-duration-seconds": "0",  # heartbeats come from the node-heartbeat stage
        "node-ip": "10.244.0.1",
        "cidr": "10.244.0.0/16",
    },
}
OVERRIDE = {"authorization-mode", "manage-all-nodes", "node-lease-duration-seconds", "node-ip", "config.file"}
# kwokctl's options naming our binaries, so that it never downloads one
BINARIES = {
    "etcdBinary": "etcd",
    "kubeApiserverBinary": "kube-apiserver",
    "kubeControllerManagerBinary": "kube-controller-manager",
    "kubeSchedulerBinary": "kube-scheduler",
    "kwokControllerBinary": "kwok",
    "kubectlBinary": "kubectl",
}
KWOKCTL_CLUSTER = "moedeploy"
# Marks the nodes the local kubelet serves; with taint_served they also carry it as a NoSchedule taint, so
# that only pods asking for real processes land there.
LOCAL_KUBELET_LABEL = "moedeploy.dev/local-kubelet"
# The processes of the stack in the order they start (kwokctl names each after its binary); `down` stops
# them in reverse, the clients of the apiserver first and etcd last.
COMPONENTS = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok-controller",
    "prometheus",
    "localkubelet",
    "localservices",
)


class KubectlFailed(subprocess.CalledProcessError):
    """A kubectl that failed, saying what kubectl said."""

    def __str__(self) -> str:
        return f"{super().__str__()}: {(self.stderr or '').strip()}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def assets_dir() -> Path:
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if not assets:
        assets = subprocess.run(
            ["bash", str(Path(__file__).with_name("testbin.sh"))], check=True, capture_output=True, text=True
        ).stdout.strip()
    return Path(assets)


def kwokctl_config(assets: Path, prometheus_port: int, prometheus_config_file: Path) -> str:
    """kwokctl's configuration: the binary runtime on loopback, our binaries by path, FLAGS, KWOK_STAGES,
    and its Prometheus on our configuration."""
    options = {
        "runtime": "binary",
        "bindAddress": "127.0.0.1",
        **{option: str(assets / binary) for option, binary in BINARIES.items()},
        "enable": ["prometheus"],
        "prometheusBinary": shutil.which("prometheus") or "/usr/bin/prometheus",
        "prometheusPort": prometheus_port,
        # the controller-manager's own node-monitor period (5 s) and grace period (50 s): kwokctl's
        # heartbeatFactor (5) would stretch them
        "heartbeatFactor": 1,
        "kubeControllerManagerNodeMonitorGracePeriodMilliseconds": 50_000,
    }
    flags = {**FLAGS, "prometheus": {"config.file": str(prometheus_config_file)}}
    patches = [
        {
            "name": name,
            "extraArgs": [{"key": k, "value": v, "override": k in OVERRIDE} for k, v in args.items()],
        }
        for name, args in flags.items()
    ]
    configuration = {
        "apiVersion": "config.kwok.x-k8s.io/v1alpha1",
        "kind": "KwokctlConfiguration",
        "options": options,
        "componentsPatches": patches,
    }
    stages = [(assets / "kwok-stages" / stage).read_text() for stage in KWOK_STAGES]
    return "\n---\n".join([json.dumps(configuration, indent=2), *stages])


def fake_node(name: str, gpus: int, served: bool = False, tainted: bool = False) -> dict:
    """A node for KWOK (annotated for it) or, when `served`, for the local kubelet (KWOK leaves it alone)."""
    # ephemeral-storage: pods that download their model into an emptyDir request it, as on a real node
    capacity = {"cpu": "32", "memory": "256Gi", "pods": "110", "ephemeral-storage": "1Ti"}
    labels = {
        "type": "local-kubelet" if served else "kwok",
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
    }
    if gpus:
        capacity["nvidia.com/gpu"] = str(gpus)
        labels["nvidia.com/gpu.product"] = GPU_PRODUCT
        labels["nvidia.com/gpu.count"] = str(gpus)
    metadata: dict = {"name": name, "labels": labels}
    spec: dict = {}
    if served:
        labels[LOCAL_KUBELET_LABEL] = "true"
        if tainted:
            spec["taints"] = [{"key": LOCAL_KUBELET_LABEL, "value": "true", "effect": "NoSchedule"}]
    else:
        metadata["annotations"] = {"kwok.x-k8s.io/node": "fake"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": metadata,
        "spec": spec,
        "status": {"capacity": capacity, "allocatable": capacity},
    }


def prometheus_config(targets_file: Path, scrape_interval: str) -> str:
    """A job scraping the runtime pods listed in targets.json (the labels come with each entry), and one for the
    pods' sidecars the local kubelet lists beside it (sidecar-targets.json)."""
    jobs = {"moe-runtime": targets_file, "sidecars": targets_file.with_name("sidecar-targets.json")}
    return json.dumps(
        {
            "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
            "scrape_configs": [
                {"job_name": job, "file_sd_configs": [{"files": [str(path)], "refresh_interval": "5s"}]}
                for job, path in jobs.items()
            ],
        },
        indent=2,
    )


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=value lines of `<state dir>/env`."""
    pairs = (
        line.split("=", 1)
        for line in path.read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    return {key.strip(): value.strip() for key, value in pairs}


@dataclass
class LocalCluster:
    state_dir: Path
    assets: Path = field(default_factory=assets_dir)
    gpu_nodes: list[str] = field(default_factory=lambda: ["gpu-node-0", "gpu-node-1"])
    cpu_nodes: list[str] = field(default_factory=lambda: ["cpu-node-0"])
    # the nodes whose ModelDeployment pods run as real processes (None: the GPU nodes); KWOK gets the rest
    served_nodes: list[str] | None = None
    # served nodes carry a NoSchedule taint: only pods tolerating it land there (tests that need KWOK's
    # cheap pods on GPU nodes and real processes elsewhere in one cluster)
    taint_served: bool = False
    scrape_interval: str = "1s"

    def __post_init__(self) -> None:
        if self.served_nodes is None:
            self.served_nodes = list(self.gpu_nodes)
        unknown = set(self.served_nodes) - {*self.gpu_nodes, *self.cpu_nodes}
        if unknown:
            raise ValueError(f"served nodes {sorted(unknown)} are neither GPU nor CPU nodes")

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def env_file(self) -> Path:
        return self.state_dir / "env"

    @property
    def targets_file(self) -> Path:
        return self.state_dir / "targets.json"

    @property
    def services_file(self) -> Path:
        """`namespace/name` -> the loopback address that forwards to the Service's Ready endpoints."""
        return self.state_dir / "services.json"

    @property
    def pods_dir(self) -> Path:
        """Where the local kubelet keeps each pod's log (`<namespace>_<pod>.log`) and volumes."""
        return self.state_dir / "pods"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def prometheus_url(self) -> str:
        return read_env_file(self.env_file)["PROMETHEUS_URL"]

    @property
    def _kwokctl_workdir(self) -> Path:
        """What kwokctl keeps of the cluster: PKI, etcd's and Prometheus' data, PID files (KWOK_WORKDIR)."""
        return self.state_dir / "kwokctl" / "clusters" / KWOKCTL_CLUSTER

    # ---- lifecycle -------------------------------------------------------------------------------------

    def up(self, timeout: float = 120) -> None:
        """Starts the stack unless it runs; TimeoutError (with the logs) when it does not come up: a
        component exited, or `timeout` passed."""
        if self.running():
            return
        self.down()
        deadline = time.monotonic() + timeout
        self.logs_dir.mkdir(parents=True)
        # kwokctl writes each component's log into its workdir's logs/: let that be ours, which outlives it
        self._kwokctl_workdir.mkdir(parents=True)
        (self._kwokctl_workdir / "logs").symlink_to(self.logs_dir)
        self.targets_file.write_text("[]\n")
        self.services_file.write_text("{}\n")
        self.targets_file.with_name("sidecar-targets.json").write_text("[]\n")
        prometheus = self.state_dir / "prometheus.yml"
        prometheus.write_text(prometheus_config(self.targets_file, self.scrape_interval))
        port = free_port()
        prometheus_url = f"http://127.0.0.1:{port}"
        config = self.state_dir / "kwokctl.yaml"
        config.write_text(kwokctl_config(self.assets, port, prometheus))
        create = None
        try:
            create = self._start("kwokctl", self._kwokctl_argv(config), env=self._kwokctl_env())
            self._wait("kwokctl create cluster", lambda: create.poll() is not None, deadline)
            if create.returncode:
                raise TimeoutError(f"kwokctl create cluster failed ({create.returncode})\n{self.log_tails()}")
            self._wait("kube-apiserver", self._api_ready, deadline)
            # the nodes first: the kubelet's first heartbeat makes its nodes Ready (the next comes 10 s later)
            self._create_nodes()
            kubelet = self._start("localkubelet", self._kubelet_argv())
            (self._kwokctl_workdir / "pids" / "localkubelet.pid").write_text(str(kubelet.pid))
            services = self._start("localservices", self._services_argv())
            (self._kwokctl_workdir / "pids" / "localservices.pid").write_text(str(services.pid))
            self._wait("the nodes", self._nodes_ready, deadline)
            self._wait("the default ServiceAccount", self._default_service_account, deadline)
            self._wait("Prometheus", lambda: _http_ok(f"{prometheus_url}/-/ready"), deadline)
            (self.state_dir / "pids.json").write_text(json.dumps(self.pids()))
            self.env_file.write_text(f"KUBECONFIG={self.kubeconfig}\nPROMETHEUS_URL={prometheus_url}\n")
        except BaseException:
            if create is not None:
                _terminate(create.pid, "kwokctl")
            self.down(keep_logs=True)
            raise

    def running(self) -> bool:
        pids = self.pids()
        if not all(name in pids and _alive(pids[name], name) for name in COMPONENTS):
            return False
        return self.env_file.exists() and self._api_ready()

    def down(self, keep_logs: bool = False) -> None:
        pids = self.pids()
        for name in sorted(pids, key=lambda n: COMPONENTS.index(n) if n in COMPONENTS else -1, reverse=True):
            _terminate(pids[name], name)
        _kill_pod_processes(self.state_dir)
        if self.state_dir.exists():
            if keep_logs:
                for child in self.state_dir.iterdir():
                    if child.name != "logs":
                        shutil.rmtree(child) if child.is_dir() else child.unlink()
            else:
                shutil.rmtree(self.state_dir)

    def pids(self) -> dict[str, int]:
        """The stack's processes by component: those in `pids.json` and in kwokctl's PID files."""
        listed = self.state_dir / "pids.json"
        pids = json.loads(listed.read_text()) if listed.exists() else {}
        for path in (self._kwokctl_workdir / "pids").glob("*.pid"):
            with contextlib.suppress(OSError, ValueError):  # being written
                pids[path.stem] = int(path.read_text())
        return pids

    def log_tails(self, names: list[str] | None = None, chars: int = 2000) -> str:
        """The end of each component's log (of the named ones only, when given)."""
        logs = sorted(self.logs_dir.glob("*.log")) if self.logs_dir.exists() else []
        return "".join(
            f"--- {log.name}\n{log.read_text(errors='replace')[-chars:]}\n"
            for log in logs
            if names is None or log.stem in names
        )

    # ---- helpers for callers ---------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        path = f"{self.assets}{os.pathsep}{os.environ.get('PATH', '')}"
        return {
            **os.environ,
            **(read_env_file(self.env_file) if self.env_file.exists() else {}),
            "KUBECONFIG": str(self.kubeconfig),
            "KUBEBUILDER_ASSETS": str(self.assets),
            "PATH": path,
        }

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess:
        done = subprocess.run(
            [str(self.assets / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and done.returncode != 0:
            raise KubectlFailed(done.returncode, done.args, done.stdout, done.stderr)
        return done

    def api_client(self):
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))

    # ---- steps -----------------------------------------------------------------------------------------

    def _kwokctl_argv(self, config: Path) -> list[str]:
        return [
            str(self.assets / "kwokctl"),
            f"--config={config}",
            f"--name={KWOKCTL_CLUSTER}",
            "create",
            "cluster",
            f"--kubeconfig={self.kubeconfig}",
        ]

    def _kwokctl_env(self) -> dict[str, str]:
        """Its workdir in ours, our kubectl first on PATH, and no KWOK_* setting of the caller's."""
        env = {key: value for key, value in os.environ.items() if not key.startswith("KWOK_")}
        path = f"{self.assets}{os.pathsep}{env.get('PATH', '')}"
        return {**env, "KWOK_WORKDIR": str(self._kwokctl_workdir.parent.parent), "PATH": path}

    def _kubelet_argv(self) -> list[str]:
        return [
            sys.executable,
            str(HACK / "localkubelet"),
            f"--kubeconfig={self.kubeconfig}",
            f"--nodes={','.join(self.served_nodes)}",
            f"--state-dir={self.state_dir}",
            f"--targets={self.targets_file}",
        ]

    def _services_argv(self) -> list[str]:
        """The Service proxy (hack/localservices): Services reachable on loopback, as kube-proxy makes them."""
        return [
            sys.executable,
            str(HACK / "localservices"),
            f"--kubeconfig={self.kubeconfig}",
            f"--state-dir={self.state_dir}",
        ]

    def _start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        return start_component(self.logs_dir / f"{name}.log", argv, env)

    def _wait(self, what: str, done: Callable[[], bool], deadline: float) -> None:
        """Until done(); TimeoutError when a component exits first (with its log) or the deadline passes."""
        while not done():
            dead = [name for name, pid in self.pids().items() if not _alive(pid, name)]
            if dead:
                raise TimeoutError(
                    f"{', '.join(dead)} exited while waiting for {what}\n{self.log_tails(dead)}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} not ready in time; see the logs in {self.logs_dir}")
            time.sleep(0.3)

    def _api_ready(self) -> bool:
        return self.kubectl("get", "--raw", "/readyz", "--request-timeout=5s", check=False).returncode == 0

    def _create_nodes(self) -> None:
        served = set(self.served_nodes)
        nodes = [
            fake_node(n, GPUS_PER_NODE if n in self.gpu_nodes else 0, n in served, self.taint_served)
            for n in [*self.gpu_nodes, *self.cpu_nodes]
        ]
        self.kubectl(
            "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": nodes})
        )

    def _nodes_ready(self) -> bool:
        """Every node Ready, and rid of the not-ready taint that admission put on it (the node-lifecycle
        controller lifts it)."""
        listed = self.kubectl("get", "nodes", "-o", "json", check=False)
        if listed.returncode:
            return False
        nodes = {node["metadata"]["name"]: node for node in json.loads(listed.stdout)["items"]}

        def ready(node: dict) -> bool:
            conditions = {c["type"]: c["status"] for c in node.get("status", {}).get("conditions", [])}
            taints = {t["key"] for t in node["spec"].get("taints", [])}
            return conditions.get("Ready") == "True" and "node.kubernetes.io/not-ready" not in taints

        return all(name in nodes and ready(nodes[name]) for name in [*self.gpu_nodes, *self.cpu_nodes])

    def _default_service_account(self) -> bool:
        return self.kubectl("get", "serviceaccount", "default", check=False).returncode == 0


def start_component(log_path: Path, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    """Starts one process in its own session (so `down` can stop its whole group), output to `log_path`."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _alive(pid: int, name: str) -> bool:
    """Whether `pid` still runs the component `name` (its binary, or the script a Python runs): a PID file
    can outlive its process, and the PID be reused."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:2]
    except OSError:
        return False
    if state == "Z":
        return False
    if argv == [b""]:
        return True  # still in exec: its command line is not in place yet
    return any(Path(arg.decode()).name == name for arg in argv)


def _terminate(pid: int, name: str, grace: float = 10) -> None:
    if not _alive(pid, name):
        return
    os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while _alive(pid, name) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid, name):
        os.killpg(pid, signal.SIGKILL)


def _kill_pod_processes(state_dir: Path) -> None:
    """Pod processes whose kubelet died without stopping them (they carry its state dir in their environment)."""
    marker = f"{POD_MARKER}={state_dir.resolve()}".encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if marker in (proc / "environ").read_bytes().split(b"\0"):
                os.kill(int(proc.name), signal.SIGKILL)
        except OSError:
            pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--state-dir", type=Path, default=Path(".cluster"))
    parser.add_argument(
        "--served-nodes",
        help="comma-separated nodes whose ModelDeployment pods run as local processes (default: the GPU nodes; "
        "'' for none)",
    )
    parser.add_argument("--scrape-interval", default="1s", help="Prometheus' scrape interval (default 1s)")
    args = parser.parse_args(argv)
    state_dir = args.state_dir.resolve()
    if args.command == "down":
        cluster = LocalCluster(state_dir, assets=Path(os.environ.get("KUBEBUILDER_ASSETS", "/nonexistent")))
        if not cluster.pids():
            print(f"no local cluster recorded in {state_dir}")
        cluster.down()
        print("local cluster stopped")
        return 0
    served = None if args.served_nodes is None else [n for n in args.served_nodes.split(",") if n]
    cluster = LocalCluster(state_dir, served_nodes=served, scrape_interval=args.scrape_interval)
    if args.command == "status":
        print("running" if cluster.running() else "not running")
        return 0 if cluster.running() else 1
    started = time.monotonic()
    already = cluster.running()
    cluster.up()
    print(
        "local cluster already running"
        if already
        else f"local cluster up in {time.monotonic() - started:.1f}s"
    )
    print(f"  set -a; . {cluster.env_file}; set +a    # KUBECONFIG, PROMETHEUS_URL")
    print(f"  export PATH={cluster.assets}:$PATH    # kubectl, helm, ...")
    print(f"  kubectl get nodes    # GPU nodes: {', '.join(cluster.gpu_nodes)}")
    print(
        f"  pods on {', '.join(cluster.served_nodes) or 'no node'} run as local processes: {cluster.targets_file}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
