"""The local kubelet's loop: watches the pods bound to its nodes, runs ModelDeployment pods as processes,
probes them, reports their status, stops them on deletion, and keeps the targets file and node
heartbeats current. Decisions live in lifecycle.py / launch.py / podstatus.py; this file does the I/O.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localkubelet import POD_MARKER
from localkubelet.api import Api, Events
from localkubelet.env import ConfigError, PodContext
from localkubelet.launch import Launch, plan_launch
from localkubelet.lifecycle import BACKOFF_CAP_S, BACKOFF_INITIAL_S, Container, Signal, plan_stop, stop_signal
from localkubelet.node import node_status
from localkubelet.podstatus import placeholder_status, pod_status
from localkubelet.probes import container_probes
from localkubelet.process import (
    MountError,
    prepare_volumes,
    refresh_config_volumes,
    run_probe,
    send,
    spawn,
)
from localkubelet.serviceaccount import mounts_token, service_account, token_kubeconfig, token_request
from localkubelet.targets import (
    MODEL_DEPLOYMENT_LABEL,
    SIDECAR_TARGETS,
    Serving,
    file_sd,
    pod_addresses,
    sidecar_sd,
    write_atomically,
)
from localkubelet.volumes import UnsupportedVolume

log = logging.getLogger("localkubelet")

TICK_S = 0.2
RETRY_S = 5.0  # a container that could not be created is tried again after this long
# A running pod's configMap/secret volumes follow their objects this often (a real kubelet: about a minute).
CONFIG_SYNC_S = 1.0
GONE_GRACE_S = 2.0  # a pod removed from the API without us: its process gets this long after SIGTERM
DEFAULT_GRACE_S = 30.0
WATCH_TIMEOUT_S = 300
ADDRESSES_FILE = "pod-addresses.json"
# Where pods find the local pod network (the router's --endpoint-address-map reads it).
ADDRESS_MAP_ENV = "MOE_RUNTIME_ENDPOINT_ADDRESS_MAP"


@dataclass(frozen=True)
class Settings:
    nodes: tuple[str, ...]
    state_dir: Path
    targets_file: Path
    heartbeat_s: float = 10.0
    backoff_initial_s: float = BACKOFF_INITIAL_S
    backoff_cap_s: float = BACKOFF_CAP_S
    shutdown_grace_s: float = 5.0
    node_ip: str = "10.245.0.1"

    @property
    def pods_dir(self) -> Path:
        return self.state_dir / "pods"

    @property
    def addresses_file(self) -> Path:
        """The local pod network: each running pod's `podIP:containerPort` -> the loopback port it listens on."""
        return self.state_dir / ADDRESSES_FILE

    @property
    def sidecar_targets_file(self) -> Path:
        """The metrics ports of the pods' other containers (file_sd), beside the targets file."""
        return self.targets_file.with_name(SIDECAR_TARGETS)


@dataclass
class Run:
    """One container of a pod and its process. Its loopback port is chosen once for the pod's life, so that the
    pod's other containers keep reaching it across restarts."""

    name: str
    container: Container
    port: int
    process: subprocess.Popen | None = None
    probes_running: dict[str, Future] = field(default_factory=dict)
    launch: Launch | None = None  # how its process was started: its volumes are kept in step with the API


@dataclass
class PodWorker:
    """What the kubelet tracks for one ModelDeployment pod: every container runs as a process of its own; the
    first one serves (its port is the pod's target), the others are sidecars."""

    pod: dict[str, Any]
    runs: list[Run]
    pod_ip: str
    start_time: float
    reported: dict[str, Any] | None = None
    gone: bool = False  # removed from the API by someone else
    told: set[str] = field(default_factory=set)  # messages already written to the pod's log
    config_synced_at: float = 0.0

    @property
    def key(self) -> str:
        return f"{self.pod['metadata']['namespace']}_{self.pod['metadata']['name']}"

    @property
    def terminating(self) -> bool:
        return self.gone or self.pod["metadata"].get("deletionTimestamp") is not None

    @property
    def main(self) -> Run:
        return self.runs[0]

    @property
    def running(self) -> bool:
        return any(run.process is not None for run in self.runs)

    @property
    def ready(self) -> bool:
        return all(run.container.ready for run in self.runs)

    def ports(self) -> dict[int, int]:
        """Every port the pod's containers declare -> the loopback port of its container."""
        table = {}
        for run, spec in zip(self.runs, self.pod["spec"]["containers"], strict=False):
            for port in spec.get("ports") or ():
                table.setdefault(port["containerPort"], run.port)
        return table


class Kubelet:
    def __init__(self, api: Api, settings: Settings) -> None:
        self.api, self.settings = api, settings
        self.events = Events(api)
        self.inbox: queue.Queue = queue.Queue()
        self.workers: dict[str, PodWorker] = {}  # by pod uid
        self.placeholders: dict[str, dict[str, Any]] = {}  # pods of other kinds, by uid: reported Running
        self.probe_pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="probe")
        self.stopping = threading.Event()
        self._ips = 1
        self._targets: list | None = None
        self._addresses: dict | None = None
        self._sidecar_targets: list | None = None
        self._heartbeat_at = 0.0
        self._allocatable: dict[str, dict[str, str]] = {}
        self._version = api.server_version()
        self._host_env = {
            "PATH": os.pathsep.join(
                [str(Path(sys.executable).parent), os.environ.get("PATH", "/usr/bin:/bin")]
            ),
            POD_MARKER: str(settings.state_dir),
            ADDRESS_MAP_ENV: str(settings.addresses_file),
            # where `make vllm` installed vLLM for this machine: pods set HOME to their own folder, so the
            # cache folder hack/vllm-serve.sh derives from HOME would be theirs
            **vllm_env(os.environ),
        }

    # ---- the loop ----------------------------------------------------------------------------------------

    def run(self) -> None:
        for node in self.settings.nodes:
            threading.Thread(target=self._watch, args=(node,), name=f"watch-{node}", daemon=True).start()
        self._write_targets()
        while not self.stopping.is_set():
            self._take_news(timeout=TICK_S)
            now = time.time()
            if now >= self._heartbeat_at:
                self._heartbeat(now)
            for worker in list(self.workers.values()):
                try:
                    self._step(worker, now)
                except Exception:
                    log.exception("pod %s", worker.key)
            self._write_targets()
        self._shutdown()

    def stop(self, *_: Any) -> None:
        self.stopping.set()

    def _watch(self, node: str) -> None:
        """Feeds the inbox: a full list of the node's pods, then its changes; lists again after any break."""
        while not self.stopping.is_set():
            try:
                pods, version = self.api.list_pods(node)
                self.inbox.put(("SYNC", node, pods))
                for kind, pod in self.api.watch_pods(node, version, WATCH_TIMEOUT_S):
                    if kind == "ERROR":
                        break
                    if kind != "BOOKMARK":
                        self.inbox.put((kind, node, pod))
            except Exception as err:
                log.warning("watch of pods on %s broke (%s); listing again", node, err)
                time.sleep(1)

    def _take_news(self, timeout: float) -> None:
        try:
            news = [self.inbox.get(timeout=timeout)]
        except queue.Empty:
            return
        while not self.inbox.empty():
            news.append(self.inbox.get_nowait())
        for kind, node, payload in news:
            if kind == "SYNC":
                present = {pod["metadata"]["uid"] for pod in payload}
                for uid, worker in self.workers.items():
                    if worker.pod["spec"].get("nodeName") == node and uid not in present:
                        worker.gone = True
                for pod in payload:
                    self._saw(pod)
            elif kind == "DELETED":
                uid = payload["metadata"]["uid"]
                self.placeholders.pop(uid, None)
                if uid in self.workers:
                    self.workers[uid].gone = True
            else:
                self._saw(payload)

    def _saw(self, pod: dict[str, Any]) -> None:
        try:
            self._track(pod)
        except Exception:  # an API hiccup about one pod must not stop the kubelet; the next change retries
            log.exception("pod %s/%s", pod["metadata"].get("namespace"), pod["metadata"].get("name"))

    def _track(self, pod: dict[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        if uid in self.workers:
            self.workers[uid].pod = pod
        elif MODEL_DEPLOYMENT_LABEL in (pod["metadata"].get("labels") or {}):
            if pod["metadata"].get("deletionTimestamp") is None:
                self.workers[uid] = self._new_worker(pod)
            else:  # being deleted before it ever ran here
                self.api.delete_pod(pod)
        else:
            self._placeholder(pod)

    def _new_worker(self, pod: dict[str, Any]) -> PodWorker:
        spec = pod["spec"]
        runs = [
            Run(
                name=c["name"],
                container=Container(
                    restart_policy=spec.get("restartPolicy", "Always"),
                    backoff_initial=self.settings.backoff_initial_s,
                    backoff_cap=self.settings.backoff_cap_s,
                ),
                port=_free_port(),
            )
            for c in spec["containers"]
        ]
        self._ips += 1
        pod_ip = f"10.245.{self._ips // 250}.{self._ips % 250 + 2}"
        return PodWorker(pod=pod, runs=runs, pod_ip=pod_ip, start_time=time.time())

    def _placeholder(self, pod: dict[str, Any]) -> None:
        """Pods that are not ModelDeployments' are reported Running and Ready, as KWOK does, and deleted
        at once when asked."""
        uid = pod["metadata"]["uid"]
        if pod["metadata"].get("deletionTimestamp") is not None:
            self.api.delete_pod(pod)
            self.placeholders.pop(uid, None)
        elif uid not in self.placeholders:
            self._ips += 1
            ip = f"10.245.{self._ips // 250}.{self._ips % 250 + 2}"
            self.api.patch_pod_status(
                pod, placeholder_status(pod, now=time.time(), pod_ip=ip, host_ip=self.settings.node_ip)
            )
            self.placeholders[uid] = pod

    # ---- one pod -----------------------------------------------------------------------------------------

    def _step(self, worker: PodWorker, now: float) -> None:
        for run in worker.runs:
            if run.process is not None and (returncode := run.process.poll()) is not None:
                self._exited(worker, run, returncode, now)
        if worker.terminating and not worker.running:
            self._finish(worker)
            return
        for run in worker.runs:
            self._step_container(worker, run, now)
        if worker.running and now >= worker.config_synced_at + CONFIG_SYNC_S:
            self._sync_config_volumes(worker, now)
        if not worker.gone:
            self._report(worker, now)

    def _step_container(self, worker: PodWorker, run: Run, now: float) -> None:
        container = run.container
        if worker.terminating and container.stop is None and run.process is not None:
            self._begin_stop(worker, run, now, then_restart=False, reason="Stopping container")
        stopping = container.stop is not None and run.process is not None
        if stopping and (sig := stop_signal(container.stop, now)) is not None:
            log.info(
                "%s/%s: %s to pid %d (%s)",
                worker.key, run.name, sig.value, run.process.pid, container.stop.reason,
            )  # fmt: skip
            send(run.process, signal.SIGKILL if sig is Signal.KILL else signal.SIGTERM)
        if run.process is None and not worker.terminating and container.due_to_start(now):
            self._start(worker, run, now)
        self._probe(worker, run, now)

    def _start(self, worker: PodWorker, run: Run, now: float) -> None:
        pod, container = worker.pod, run.container
        spec_container = next(c for c in pod["spec"]["containers"] if c["name"] == run.name)
        namespace = pod["metadata"]["namespace"]
        port = run.port
        context = PodContext(
            pod=pod,
            container=spec_container,
            pod_ip=worker.pod_ip,
            host_ip=self.settings.node_ip,
            node_allocatable=self._node_allocatable(pod["spec"]["nodeName"]),
            config_maps=lambda name: self.api.config_map(namespace, name),
            secrets=lambda name: self.api.secret(namespace, name),
        )
        pod_dir = self.settings.pods_dir / worker.key
        try:
            host_env = {**self._host_env, **self._credentials(pod, pod_dir)}
            launch = plan_launch(
                context, str(pod_dir), port, sys.executable, host_env, pod_ports=worker.ports()
            )
            prepare_volumes(launch.volumes, self._reader(namespace), launch.pod_mounts)
            if missing := [path for path in launch.image_paths if not os.path.exists(path)]:
                raise ImagePathError(
                    f"{', '.join(missing)} is in no volume: it would come from the image "
                    f'"{spec_container.get("image", "")}", and the local kubelet runs no images; give the model '
                    "as a hostPath source"
                )
        except UnsupportedVolume as err:
            self._could_not_start(
                worker, run, "ContainerCreating", "FailedMount", str(err), retry_at=float("inf")
            )
            return
        except MountError as err:
            self._could_not_start(
                worker, run, "ContainerCreating", "FailedMount", str(err), retry_at=now + RETRY_S
            )
            return
        except ConfigError as err:
            self._could_not_start(
                worker, run, "CreateContainerConfigError", "Failed", f"Error: {err}", now + RETRY_S
            )
            return
        except ImagePathError as err:
            self._could_not_start(
                worker, run, "CreateContainerError", "Failed", f"Error: {err}", now + RETRY_S
            )
            return
        probes = container_probes(spec_container, port)
        for probe in probes.values():
            if probe.action == "unsupported":
                self.events.emit(
                    pod, "Warning", "ProbeNotSupported", f"{probe.kind}: {probe.problem}; not run"
                )
        container.probes = {kind: probe for kind, probe in probes.items() if probe.action != "unsupported"}
        run.process = spawn(launch, self._log_path(worker, run))
        run.launch = launch
        container.started_process(now)
        name = spec_container["name"]
        log.info("%s/%s: started pid %d on 127.0.0.1:%d", worker.key, name, run.process.pid, port)
        self.events.emit(pod, "Normal", "Created", f"Created container {name}")
        self.events.emit(
            pod, "Normal", "Started",
            f"Started container {name} (restart {container.restart_count}): pid {run.process.pid}, "
            f"listening on 127.0.0.1:{port}",
        )  # fmt: skip

    def _credentials(self, pod: dict[str, Any], pod_dir: Path) -> dict[str, str]:
        """KUBECONFIG with a token of the pod's ServiceAccount, unless the pod opts out (serviceaccount.py)."""
        if not mounts_token(pod):
            return {}
        namespace, account = pod["metadata"]["namespace"], service_account(pod)
        try:
            token = self.api.service_account_token(namespace, account, token_request(pod))
        except Exception as err:
            raise ConfigError(f"no token for serviceaccount {namespace}/{account}: {err}") from err
        server, ca_file = self.api.server()
        path = pod_dir / "serviceaccount" / "kubeconfig"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(token_kubeconfig(server, ca_file, token, namespace)))
        path.chmod(0o600)
        return {"KUBECONFIG": str(path)}

    def _reader(self, namespace: str):
        return lambda v: (self.api.config_map if v.kind == "configMap" else self.api.secret)(
            namespace, v.source
        )

    def _sync_config_volumes(self, worker: PodWorker, now: float) -> None:
        """ConfigMap and Secret volumes follow their objects while the pod runs (the kubelet's sync)."""
        worker.config_synced_at = now
        launch = next((run.launch for run in worker.runs if run.launch is not None), None)
        if launch is None:
            return
        try:
            namespace = worker.pod["metadata"]["namespace"]
            changed = refresh_config_volumes(launch.volumes, self._reader(namespace), launch.pod_mounts)
        except Exception as err:
            log.warning("%s: refreshing its configMap/secret volumes failed: %s", worker.key, err)
            return
        if changed:
            log.info("%s: updated volume(s) %s", worker.key, ", ".join(changed))

    def _could_not_start(
        self, worker: PodWorker, run: Run, waiting: str, reason: str, message: str, retry_at: float
    ) -> None:
        run.container.could_not_start(waiting, message, retry_at)
        self.events.emit(worker.pod, "Warning", reason, message)
        if message not in worker.told:  # otherwise the pod's log would be empty and say nothing
            worker.told.add(message)
            log_path = self._log_path(worker, run)
            log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(log_path, "a") as out:
                out.write(f"local-kubelet: {reason}: {message}\n")

    def _exited(self, worker: PodWorker, run: Run, returncode: int, now: float) -> None:
        container = run.container
        log.info("%s/%s: pid %d exited with %d", worker.key, run.name, run.process.pid, returncode)
        run.process = None
        for future in run.probes_running.values():
            future.cancel()
        run.probes_running.clear()
        container.exited(returncode, now)
        stop = container.stop
        if stop is not None and not stop.then_restart:
            return  # stopped for the pod's deletion: _step finishes the pod once every container is gone
        container.stop = None
        if container.waiting_reason == "CrashLoopBackOff":
            self.events.emit(
                worker.pod, "Warning", "BackOff", f"Back-off restarting failed container {run.name}"
            )

    def _begin_stop(self, worker: PodWorker, run: Run, now: float, then_restart: bool, reason: str) -> None:
        metadata, spec = worker.pod["metadata"], worker.pod["spec"]
        spec_container = next(c for c in spec["containers"] if c["name"] == run.name)
        if worker.gone:
            grace, prestop = GONE_GRACE_S, 0.0
        else:
            grace = metadata.get("deletionGracePeriodSeconds")
            if grace is None or then_restart:
                grace = spec.get("terminationGracePeriodSeconds", DEFAULT_GRACE_S)
            prestop = _prestop_sleep(spec_container)
        run.container.stop = plan_stop(now, float(grace), prestop, then_restart, reason)
        name = run.name
        message = (
            f"Container {name} {reason.lower()}, will be restarted"
            if then_restart
            else f"Stopping container {name}"
        )
        self.events.emit(worker.pod, "Normal", "Killing", message)

    def _finish(self, worker: PodWorker) -> None:
        """The container is gone: remove the pod object (last step of a graceful deletion) and its folders."""
        if not worker.gone:
            self.api.delete_pod(worker.pod)
        shutil.rmtree(self.settings.pods_dir / worker.key, ignore_errors=True)
        self.events.forget(worker.pod["metadata"]["uid"])
        self.workers.pop(worker.pod["metadata"]["uid"], None)
        log.info("%s: removed", worker.key)

    def _probe(self, worker: PodWorker, run: Run, now: float) -> None:
        container = run.container
        for kind, future in list(run.probes_running.items()):
            if not future.done():
                continue
            del run.probes_running[kind]
            ok, why = future.result()
            if not ok:
                self.events.emit(worker.pod, "Warning", "Unhealthy", f"{_title(kind)} probe failed: {why}")
            restart_reason = container.probed(kind, ok, now)
            if restart_reason and container.stop is None and run.process is not None:
                self._begin_stop(
                    worker, run, now, then_restart=True, reason=f"failed {_title(kind).lower()} probe"
                )
        if run.process is None:
            return
        for kind in container.due_probes(now):
            if kind not in run.probes_running:
                run.probes_running[kind] = self.probe_pool.submit(run_probe, container.probes[kind])

    def _report(self, worker: PodWorker, now: float) -> None:
        def container_id(run: Run) -> str:
            return f"local://{run.process.pid}" if run.process else "local://"

        status = pod_status(
            worker.pod,
            worker.main.container,
            now=now,
            start_time=worker.start_time,
            pod_ip=worker.pod_ip,
            host_ip=self.settings.node_ip,
            container_id=container_id(worker.main),
            others=[(run.container, container_id(run)) for run in worker.runs[1:]],
        )
        if status == worker.reported:
            return
        try:
            self.api.patch_pod_status(worker.pod, status)
            worker.reported = status
        except Exception as err:
            log.warning("%s: status patch failed: %s", worker.key, err)

    # ---- the machine -------------------------------------------------------------------------------------

    def _write_targets(self) -> None:
        serving = [
            Serving(w.pod, w.main.port, w.ready, w.terminating)
            for w in self.workers.values()
            if w.main.process is not None
        ]
        targets = file_sd(serving)
        if targets != self._targets:
            write_atomically(self.settings.targets_file, targets)
            self._targets = targets
            log.info("targets: %s", ", ".join(t["labels"]["pod"] for t in targets) or "none")
        addresses = pod_addresses((w.pod_ip, w.ports()) for w in self.workers.values() if w.running)
        if addresses != self._addresses:
            write_atomically(self.settings.addresses_file, addresses)
            self._addresses = addresses
        sidecars = sidecar_sd(
            (w.pod, run.name, run.port)
            for w in self.workers.values()
            for run in w.runs[1:]
            if run.process is not None and not w.terminating
        )
        if sidecars != self._sidecar_targets:
            write_atomically(self.settings.sidecar_targets_file, sidecars)
            self._sidecar_targets = sidecars

    def _heartbeat(self, now: float) -> None:
        self._heartbeat_at = now + self.settings.heartbeat_s
        for name in self.settings.nodes:
            try:
                node = self.api.node(name)
                if node is None:
                    continue
                self._allocatable[name] = dict((node.get("status") or {}).get("allocatable") or {})
                status = node_status(node, now=now, address=self.settings.node_ip, version=self._version)
                self.api.patch_node_status(name, status)
            except Exception as err:
                log.warning("heartbeat of node %s failed: %s", name, err)

    def _node_allocatable(self, node: str) -> Mapping[str, str]:
        return self._allocatable.get(node, {})

    def _log_path(self, worker: PodWorker, run: Run) -> Path:
        """The serving container's output is the pod's log; a sidecar's goes beside it, named after it."""
        suffix = "" if run is worker.main else f".{run.name}"
        return self.settings.pods_dir / f"{worker.key}{suffix}.log"

    def _shutdown(self) -> None:
        """Stopping the kubelet stops every process it runs: SIGTERM, then SIGKILL after a short grace."""
        running = [r.process for w in self.workers.values() for r in w.runs if r.process is not None]
        for process in running:
            send(process, signal.SIGTERM)
        deadline = time.monotonic() + self.settings.shutdown_grace_s
        while any(p.poll() is None for p in running) and time.monotonic() < deadline:
            time.sleep(0.05)
        for process in running:
            send(process, signal.SIGKILL)
            process.wait()
        write_atomically(self.settings.targets_file, [])
        write_atomically(self.settings.addresses_file, {})
        write_atomically(self.settings.sidecar_targets_file, [])
        self.probe_pool.shutdown(wait=False, cancel_futures=True)


class ImagePathError(Exception):
    """The container refers to files that would come from its image."""


def vllm_env(environ: Mapping[str, str]) -> dict[str, str]:
    """MOEDEPLOY_CACHE as hack/ensure-vllm.sh resolves it for the kubelet's user, and any MOEDEPLOY_VLLM_*
    setting of the kubelet's environment."""
    cache = environ.get("MOEDEPLOY_CACHE") or os.path.join(
        environ.get("XDG_CACHE_HOME")
        or os.path.join(environ.get("HOME") or os.path.expanduser("~"), ".cache"),
        "moedeploy",
    )
    return {"MOEDEPLOY_CACHE": cache, **{k: v for k, v in environ.items() if k.startswith("MOEDEPLOY_VLLM_")}}


def _prestop_sleep(container: Mapping[str, Any]) -> float:
    pre_stop = (container.get("lifecycle") or {}).get("preStop") or {}
    return float((pre_stop.get("sleep") or {}).get("seconds", 0))


def _title(kind: str) -> str:
    return kind.removesuffix("Probe").capitalize()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
