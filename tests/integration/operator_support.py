"""Helpers for the operator's integration tests: waiting, the operator as a process, reading models back."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, TypeVar

import yaml
from kubernetes import client

from tests.paths import ROOT
from tests.waiting import wait_for

CRD_FILE = ROOT / "crds" / "modeldeployments.yaml"
EXAMPLES = ROOT / "examples"
GROUP, VERSION, PLURAL = "moedeploy.dev", "v1alpha1", "modeldeployments"

T = TypeVar("T")


def small_md(name: str, **spec) -> dict:
    """A ModelDeployment of one GPU per pod for KWOK's nodes (its model path exists nowhere); `spec` sets
    top-level spec fields, replacing the defaults whole."""
    return {
        "apiVersion": "moedeploy.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {
            "model": {"family": "mixtral", "source": {"hostPath": {"path": "/srv/mixtral"}}},
            "runtime": {"image": "moe-runtime:1", "resources": {"gpu": 1}},
            **spec,
        },
    }


def install_crd(cluster) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{PLURAL}.{GROUP}")


# Tests deploy from host folders and test images: a policy that allows what the tests use.
OPEN_POLICY = {
    "allowedSourceKinds": ["*"],
    "allowedHostPathPrefixes": ["*"],
    "allowedImagePrefixes": ["*"],
    "allowedTolerationKeys": ["*"],
    "allowSecretReferences": True,
}


class OperatorProcess:
    """`python -m moe_operator run` in a child process, with its log in a file."""

    def __init__(
        self, cluster, args: list[str], log_path: Path, policy: dict | None = None, env: dict | None = None
    ) -> None:
        self._cluster = cluster
        self._extra_env = env or {}
        self.policy_path = log_path.with_name("policy.yaml")
        self.policy_path.write_text(yaml.safe_dump(OPEN_POLICY if policy is None else policy))
        self._args = [*args, "--policy-file", str(self.policy_path)]
        self.log_path = log_path
        self._proc: subprocess.Popen | None = None

    def start(self) -> None:
        env = {**self._cluster.env(), "PYTHONUNBUFFERED": "1", **self._extra_env}
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "moe_operator", "run", *self._args],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def stop(self, kill: bool = False) -> None:
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    def restart(self, kill: bool = False) -> None:
        self.stop(kill=kill)
        self.start()

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def errors(self) -> list[str]:
        """Log lines at ERROR level or tracebacks."""
        return [line for line in self.log().splitlines() if "[ERROR" in line or line.startswith("Traceback")]


class Models:
    """ModelDeployments and their children in one namespace, read through the Python client."""

    def __init__(self, cluster, namespace: str) -> None:
        api = cluster.api_client()
        self.namespace = namespace
        self.custom = client.CustomObjectsApi(api)
        self.apps = client.AppsV1Api(api)
        self.core = client.CoreV1Api(api)
        self._as_dict = api.sanitize_for_serialization
        self._cluster = cluster

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess:
        return self._cluster.kubectl("-n", self.namespace, *args, input=input, check=check)

    def apply(self, body: dict[str, Any]) -> None:
        self.kubectl("apply", "-f", "-", input=json.dumps(body))

    def get(self, name: str) -> dict[str, Any] | None:
        try:
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
        except client.ApiException as err:
            if err.status == 404:
                return None
            raise

    def patch_spec(self, name: str, spec: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name, {"spec": spec},
            _content_type="application/merge-patch+json",
        )  # fmt: skip

    def deployment(self, name: str) -> dict[str, Any] | None:
        try:
            return self._as_dict(self.apps.read_namespaced_deployment(name, self.namespace))
        except client.ApiException as err:
            if err.status == 404:
                return None
            raise

    def pods(self, name: str) -> list[dict[str, Any]]:
        found = self.core.list_namespaced_pod(
            self.namespace, label_selector=f"moedeploy.dev/model-deployment={name}"
        )
        return [self._as_dict(pod) for pod in found.items]

    def condition(self, name: str, kind: str) -> dict[str, Any] | None:
        md = self.get(name) or {}
        return next((c for c in md.get("status", {}).get("conditions", ()) if c["type"] == kind), None)

    def wait_ready(
        self, name: str, revision: str | None = None, replicas: int | None = None, timeout: float = 90
    ):
        """Waits until the current generation is fully rolled out (no canary left, the stable revision is the
        spec's) and Ready=True (and at that revision / replica count if given)."""

        def ready() -> dict[str, Any] | None:
            md = self.get(name)
            status = (md or {}).get("status", {})
            conditions = {c["type"]: c for c in status.get("conditions", ())}
            ok = (
                md is not None
                and status.get("observedGeneration") == md["metadata"]["generation"]
                and conditions.get("Ready", {}).get("status") == "True"
                and conditions.get("Progressing", {}).get("status") == "False"
                and status.get("stableRevision") == status.get("currentRevision")
                and "canary" not in status
                and (revision is None or status.get("currentRevision") == revision)
                and (replicas is None or status.get("readyReplicas") == replicas)
            )
            return md if ok else None

        return wait_for(ready, timeout=timeout, what=f"ModelDeployment {name} to be Ready")

    def events(self, name: str) -> list[dict[str, Any]]:
        found = self.core.list_namespaced_event(
            self.namespace, field_selector=f"involvedObject.name={name},involvedObject.kind=ModelDeployment"
        )
        return [self._as_dict(event) for event in found.items]


def example(name: str) -> dict[str, Any]:
    return yaml.safe_load((EXAMPLES / name).read_text())


def static_pvc(namespace: str, claim: str) -> list[dict[str, Any]]:
    """A PersistentVolume bound in advance to a claim, so that pods using the claim can be scheduled."""
    volume = f"{namespace}-{claim}"
    return [
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": volume},
            "spec": {
                "capacity": {"storage": "100Gi"},
                "accessModes": ["ReadOnlyMany"],
                "storageClassName": "",
                "hostPath": {"path": f"/srv/{claim}"},
                "claimRef": {"namespace": namespace, "name": claim},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim, "namespace": namespace},
            "spec": {
                "accessModes": ["ReadOnlyMany"],
                "storageClassName": "",
                "volumeName": volume,
                "resources": {"requests": {"storage": "100Gi"}},
            },
        },
    ]
