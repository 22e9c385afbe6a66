"""The local stack: a real Kubernetes control plane on loopback, from the binaries hack/testbin.sh builds,
with real runtime pods and a real Prometheus.

etcd, kube-apiserver (TLS, client-certificate admin, RBAC, service-account keys), kube-controller-manager,
kube-scheduler; fake nodes (some with `nvidia.com/gpu`) so that pods really get scheduled; the local kubelet
(hack/localkubelet) owning the served nodes (by default the GPU nodes), where every ModelDeployment pod runs
as a `python -m moe_runtime serve` process; KWOK playing the kubelet of the other nodes, whose pods stay API
objects; Prometheus scraping the Ready runtime pods through file-based discovery of `targets.json`.
Every process, its log and its state live in one folder; `down` stops exactly the processes recorded there.
What other tools rely on (the README's "local stack" contract): `<state dir>/kubeconfig`, `<state dir>/env`
(KUBECONFIG=..., PROMETHEUS_URL=...), `<state dir>/targets.json`, `<state dir>/services.json` (the Service proxy,
hack/localservices: `namespace/name` -> `127.0.0.1:PORT`).

    python hack/localcluster.py up   --state-dir .cluster     # KUBEBUILDER_ASSETS names the binaries
    python hack/localcluster.py down --state-dir .cluster
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from localkubelet import POD_MARKER

HACK = Path(__file__).resolve().parent
SERVICE_CIDR = "10.96.0.0/16"
GPU_PRODUCT = "NVIDIA-H100-80GB-HBM3"
GPUS_PER_NODE = 8
KWOK_STAGES = [
    "node/fast/node-initialize.yaml",
    "node/heartbeat/node-heartbeat.yaml",
    "pod/fast/pod-ready.yaml",
    "pod/fast/pod-complete.yaml",
    "pod/fast/pod-delete.yaml",
]
# Marks the nodes the local kubelet serves; with taint_served they also carry it as a NoSchedule taint, so
# that only pods asking for real processes land there.
LOCAL_KUBELET_LABEL = "moedeploy.dev/local-kubelet"
COMPONENTS = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
    "localkubelet",
    "localservices",
    "prometheus",
)


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


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def write_pki(pki: Path) -> None:
    """CA, apiserver serving cert, admin client cert (system:masters), service-account key pair."""
    pki.mkdir(parents=True, exist_ok=True)
    ca_key, ca_crt = pki / "ca.key", pki / "ca.crt"
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "3650",
        "-subj",
        "/CN=moedeploy-local-ca",
        "-keyout",
        str(ca_key),
        "-out",
        str(ca_crt),
    )

    def issue(name: str, subject: str, ext: str) -> None:
        key, csr, crt, extfile = (pki / f"{name}.{s}" for s in ("key", "csr", "crt", "ext"))
        extfile.write_text(ext)
        _openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-subj", subject, "-keyout", str(key), "-out", str(csr)
        )
        _openssl(
            "x509",
            "-req",
            "-in",
            str(csr),
            "-CA",
            str(ca_crt),
            "-CAkey",
            str(ca_key),
            "-CAcreateserial",
            "-days",
            "3650",
            "-extfile",
            str(extfile),
            "-out",
            str(crt),
        )

    issue(
        "apiserver",
        "/CN=kube-apiserver",
        "subjectAltName=IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,"
        "DNS:kubernetes.default.svc\nextendedKeyUsage=serverAuth\n",
    )
    issue("admin", "/O=system:masters/CN=admin", "extendedKeyUsage=clientAuth\n")
    _openssl("genrsa", "-out", str(pki / "sa.key"), "2048")
    _openssl("rsa", "-in", str(pki / "sa.key"), "-pubout", "-out", str(pki / "sa.pub"))


def kubeconfig_text(server: str, pki: Path) -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "moedeploy-local",
                    "cluster": {"server": server, "certificate-authority": str(pki / "ca.crt")},
                }
            ],
            "users": [
                {
                    "name": "admin",
                    "user": {
                        "client-certificate": str(pki / "admin.crt"),
                        "client-key": str(pki / "admin.key"),
                    },
                }
            ],
            "contexts": [
                {"name": "moedeploy-local", "context": {"cluster": "moedeploy-local", "user": "admin"}}
            ],
            "current-context": "moedeploy-local",
        },
        indent=2,
    )


def fake_node(name: str, gpus: int, served: bool = False, tainted: bool = False) -> dict:
    """A node for KWOK (annotated for it) or, when `served`, for the local kubelet (KWOK leaves it alone)."""
    capacity = {"cpu": "32", "memory": "256Gi", "pods": "110"}
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
    """One job scraping the runtime pods listed in targets.json (the labels come with each entry)."""
    return json.dumps(
        {
            "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
            "scrape_configs": [
                {
                    "job_name": "moe-runtime",
                    "file_sd_configs": [{"files": [str(targets_file)], "refresh_interval": "5s"}],
                }
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
    def prometheus_url(self) -> str:
        return read_env_file(self.env_file)["PROMETHEUS_URL"]

    @property
    def _pids(self) -> Path:
        return self.state_dir / "pids.json"

    # ---- lifecycle -------------------------------------------------------------------------------------

    def up(self, timeout: float = 90) -> None:
        if self.running():
            return
        self.down()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "logs").mkdir(exist_ok=True)
        pki = self.state_dir / "pki"
        write_pki(pki)
        ports = {
            name: free_port()
            for name in ("etcd", "etcd-peer", "apiserver", "kcm", "scheduler", "kwok", "prometheus")
        }
        server = f"https://127.0.0.1:{ports['apiserver']}"
        self.kubeconfig.write_text(kubeconfig_text(server, pki))
        (self.state_dir / "kwok.yaml").write_text(self._kwok_config())
        self.targets_file.write_text("[]\n")
        self.services_file.write_text("{}\n")
        (self.state_dir / "prometheus.yml").write_text(
            prometheus_config(self.targets_file, self.scrape_interval)
        )

        started: dict[str, subprocess.Popen] = {}
        try:
            started["etcd"] = self._start("etcd", self._binary("etcd", self._etcd_args(ports)))
            started["kube-apiserver"] = self._start(
                "kube-apiserver", self._binary("kube-apiserver", self._apiserver_args(ports, pki))
            )
            self._record_pids(started)
            self._wait_healthy(server, pki, started, timeout)
            for name, argv in (
                (
                    "kube-controller-manager",
                    self._binary("kube-controller-manager", self._controller_manager_args(ports, pki)),
                ),
                ("kube-scheduler", self._binary("kube-scheduler", self._scheduler_args(ports))),
                ("kwok", self._binary("kwok", self._kwok_args(ports))),
                ("localkubelet", self._kubelet_argv()),
                ("localservices", self._services_argv()),
                ("prometheus", self._prometheus_argv(ports)),
            ):
                started[name] = self._start(name, argv)
            self._record_pids(started)
            self._create_nodes()
            self._wait_nodes_ready(timeout)
            self._wait_default_service_account(timeout)
            prometheus_url = f"http://127.0.0.1:{ports['prometheus']}"
            self._wait_prometheus(prometheus_url, started, timeout)
            self.env_file.write_text(f"KUBECONFIG={self.kubeconfig}\nPROMETHEUS_URL={prometheus_url}\n")
        except BaseException:
            self.down(keep_logs=True)
            raise

    def running(self) -> bool:
        if not self._pids.exists() or not self.kubeconfig.exists():
            return False
        pids = json.loads(self._pids.read_text())
        if set(pids) != set(COMPONENTS) or not all(_alive(pid, name) for name, pid in pids.items()):
            return False
        if not self.env_file.exists():
            return False
        return self.kubectl("get", "--raw", "/readyz", check=False).returncode == 0

    def down(self, keep_logs: bool = False) -> None:
        if self._pids.exists():
            pids = json.loads(self._pids.read_text())
            # stop the clients of the apiserver first, etcd last
            for name in reversed(list(pids)):
                _terminate(pids[name], name)
        _kill_pod_processes(self.state_dir)
        if self.state_dir.exists():
            if keep_logs:
                for child in self.state_dir.iterdir():
                    if child.name != "logs":
                        shutil.rmtree(child) if child.is_dir() else child.unlink()
            else:
                shutil.rmtree(self.state_dir)

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
        return subprocess.run(
            [str(self.assets / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args],
            input=input,
            capture_output=True,
            text=True,
            check=check,
            timeout=120,
        )

    def api_client(self):
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))

    # ---- process arguments -----------------------------------------------------------------------------

    def _etcd_args(self, ports: dict[str, int]) -> list[str]:
        client, peer = f"http://127.0.0.1:{ports['etcd']}", f"http://127.0.0.1:{ports['etcd-peer']}"
        return [
            "--name",
            "default",
            "--data-dir",
            str(self.state_dir / "etcd"),
            "--listen-client-urls",
            client,
            "--advertise-client-urls",
            client,
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
            "--initial-cluster",
            f"default={peer}",
            "--unsafe-no-fsync",
            "--log-level",
            "warn",
        ]

    def _apiserver_args(self, ports: dict[str, int], pki: Path) -> list[str]:
        return [
            f"--etcd-servers=http://127.0.0.1:{ports['etcd']}",
            f"--secure-port={ports['apiserver']}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--cert-dir={self.state_dir / 'apiserver-certs'}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=RBAC",
            "--allow-privileged=true",
            "--disable-admission-plugins=ServiceAccount",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--enable-priority-and-fairness=false",
            # the endpoint reconciler refuses a loopback advertise address; nothing here needs the
            # `kubernetes` Service's endpoints
            "--endpoint-reconciler-type=none",
        ]

    def _component_args(self, port: int) -> list[str]:
        """What controller-manager and scheduler share: the admin identity, one instance, a loopback port."""
        kc = str(self.kubeconfig)
        return [
            f"--kubeconfig={kc}",
            f"--authentication-kubeconfig={kc}",
            f"--authorization-kubeconfig={kc}",
            "--leader-elect=false",
            f"--secure-port={port}",
            "--bind-address=127.0.0.1",
        ]

    def _controller_manager_args(self, ports: dict[str, int], pki: Path) -> list[str]:
        return [
            *self._component_args(ports["kcm"]),
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--controllers=*,-nodeipam",
        ]

    def _scheduler_args(self, ports: dict[str, int]) -> list[str]:
        return self._component_args(ports["scheduler"])

    def _kwok_args(self, ports: dict[str, int]) -> list[str]:
        return [
            f"--kubeconfig={self.kubeconfig}",
            f"--config={self.state_dir / 'kwok.yaml'}",
            "--manage-all-nodes=false",
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            "--node-ip=10.244.0.1",
            "--cidr=10.244.0.0/16",
            f"--server-address=127.0.0.1:{ports['kwok']}",
        ]

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

    def _prometheus_argv(self, ports: dict[str, int]) -> list[str]:
        return [
            shutil.which("prometheus") or "/usr/bin/prometheus",
            f"--config.file={self.state_dir / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.state_dir / 'prometheus'}",
            f"--web.listen-address=127.0.0.1:{ports['prometheus']}",
            "--storage.tsdb.retention.time=1d",
        ]

    def _kwok_config(self) -> str:
        stages = self.assets / "kwok-stages"
        return "\n---\n".join((stages / stage).read_text() for stage in KWOK_STAGES)

    # ---- steps -----------------------------------------------------------------------------------------

    def _binary(self, name: str, args: list[str]) -> list[str]:
        return [str(self.assets / name), *args]

    def _start(self, name: str, argv: list[str]) -> subprocess.Popen:
        return start_component(self.state_dir / "logs" / f"{name}.log", argv)

    def _record_pids(self, started: dict[str, subprocess.Popen]) -> None:
        self._pids.write_text(json.dumps({name: proc.pid for name, proc in started.items()}))

    def _wait_healthy(
        self, server: str, pki: Path, started: dict[str, subprocess.Popen], timeout: float
    ) -> None:
        context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        context.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{server}/readyz", context=context, timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            dead = exited(started)
            if dead or time.monotonic() > deadline:
                why = f"{', '.join(dead)} exited" if dead else f"not ready in {timeout}s"
                raise TimeoutError(f"kube-apiserver {why}; see {self.state_dir / 'logs'}")
            time.sleep(0.3)

    def _wait_prometheus(self, url: str, started: dict[str, subprocess.Popen], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            if exited({"prometheus": started["prometheus"]}) or time.monotonic() > deadline:
                raise TimeoutError(
                    f"Prometheus did not get ready; see {self.state_dir / 'logs' / 'prometheus.log'}"
                )
            time.sleep(0.3)

    def _create_nodes(self) -> None:
        served = set(self.served_nodes)
        nodes = [
            fake_node(n, GPUS_PER_NODE if n in self.gpu_nodes else 0, n in served, self.taint_served)
            for n in [*self.gpu_nodes, *self.cpu_nodes]
        ]
        self.kubectl(
            "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": nodes})
        )

    def _wait_nodes_ready(self, timeout: float) -> None:
        names = [*self.gpu_nodes, *self.cpu_nodes]
        self.kubectl(
            "wait", "--for=condition=Ready", f"--timeout={int(timeout)}s", *(f"node/{n}" for n in names)
        )
        # the node-lifecycle controller lifts the not-ready taint that admission put on the new nodes
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.kubectl("get", "nodes", "-o", "jsonpath={.items[*].spec.taints}").stdout
            if "not-ready" not in out:
                return
            time.sleep(0.5)
        raise TimeoutError("fake nodes kept their not-ready taints")

    def _wait_default_service_account(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.kubectl("get", "serviceaccount", "default", check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise TimeoutError("the serviceaccount controller did not create default/default")
            time.sleep(0.3)


def start_component(log_path: Path, argv: list[str]) -> subprocess.Popen:
    """Starts one component in its own session (so `down` can stop its whole group), output to `log_path`."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )


def exited(started: dict[str, subprocess.Popen]) -> list[str]:
    """The components this process started that have exited. Asked of the child handles, not of /proc: right
    after it starts, a child's /proc/<pid>/cmdline can still be empty, and it would read as dead."""
    return [name for name, proc in started.items() if proc.poll() is not None]


def _alive(pid: int, name: str) -> bool:
    """Whether `pid` still runs the component `name` (its binary, or the script a Python runs); for processes
    another invocation started, and before stopping one."""
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
        if not (state_dir / "pids.json").exists():
            print(f"no local cluster recorded in {state_dir}")
        LocalCluster(state_dir, assets=Path(os.environ.get("KUBEBUILDER_ASSETS", "/nonexistent"))).down()
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
