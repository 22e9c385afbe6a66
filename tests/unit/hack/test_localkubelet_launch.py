"""The local kubelet maps a pod's container onto a local process (hack/localkubelet/launch.py, volumes.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from localkubelet.env import ConfigError, PodContext
from localkubelet.launch import plan_launch
from localkubelet.volumes import Mounts, UnsupportedVolume, container_mounts, plan_volumes

PYTHON = "/venv/bin/python"


def runtime_pod(model_volume: dict | None, cpu: str | None = "2", args: tuple[str, ...] = ()) -> dict:
    """A pod as today's operator renders it (operator/moe_operator/decisions/render.py)."""
    env = [{"name": "HOME", "value": "/tmp"}]
    if cpu:
        cpu_request = {"containerName": "runtime", "resource": "requests.cpu", "divisor": "1"}
        env.append({"name": "OMP_NUM_THREADS", "valueFrom": {"resourceFieldRef": cpu_request}})
    mounts = [{"name": "tmp", "mountPath": "/tmp"}]
    volumes = [{"name": "tmp", "emptyDir": {}}]
    if model_volume:
        volumes.append({"name": "model", **model_volume})
        mounts.append({"name": "model", "mountPath": "/models", "readOnly": True})
    container = {
        "name": "runtime",
        "image": "moe-runtime:1",
        "command": ["python", "-m", "moe_runtime", "serve"],
        "args": ["--model", "/models", *args],
        "ports": [{"name": "http", "containerPort": 8000}],
        "envFrom": [{"configMapRef": {"name": "md-7f3a"}}],
        "env": env,
        "resources": {"requests": {"cpu": cpu}} if cpu else {},
        "volumeMounts": mounts,
    }
    return {
        "metadata": {"name": "md-7f3a-x1", "namespace": "ns", "uid": "u"},
        "spec": {"nodeName": "gpu-node-0", "containers": [container], "volumes": volumes},
    }


def launch_of(pod: dict, config: dict | None = None):
    config = {"MOE_RUNTIME_MODEL": "/models", "MOE_RUNTIME_PORT": "8000"} if config is None else config
    container = pod["spec"]["containers"][0]
    ctx = PodContext(pod, container, "10.245.0.3", "10.245.0.1", config_maps={"md-7f3a": config}.get)
    return plan_launch(
        ctx, "/state/pods/ns_p", port=41234, python=PYTHON, host_env={"PATH": "/venv/bin:/usr/bin"}
    )


def test_operator_pod_runs_the_venv_python_on_the_host_paths():
    launch = launch_of(runtime_pod({"hostPath": {"path": "/data/ckpt", "type": "Directory"}}))
    assert launch.argv == [PYTHON, "-m", "moe_runtime", "serve", "--model", "/data/ckpt"]
    assert launch.env["MOE_RUNTIME_MODEL"] == "/data/ckpt"
    assert launch.env["HOME"] == "/state/pods/ns_p/volumes/tmp"
    assert launch.volumes["tmp"].host_path == "/state/pods/ns_p/volumes/tmp"
    assert launch.image_paths == []
    assert launch.cwd == "/state/pods/ns_p"


def test_loopback_port_beats_the_config_map_and_env():
    pod = runtime_pod({"hostPath": {"path": "/data/ckpt"}})
    pod["spec"]["containers"][0]["env"].append({"name": "MOE_RUNTIME_HOST", "value": "0.0.0.0"})
    launch = launch_of(pod)
    assert (launch.env["MOE_RUNTIME_PORT"], launch.env["MOE_RUNTIME_HOST"]) == ("41234", "127.0.0.1")


def test_torch_threads_follow_the_cpu_request_or_one():
    assert launch_of(runtime_pod({"hostPath": {"path": "/d"}}, cpu="1500m")).env["OMP_NUM_THREADS"] == "2"
    assert launch_of(runtime_pod({"hostPath": {"path": "/d"}}, cpu=None)).env["OMP_NUM_THREADS"] == "1"
    without_variable = runtime_pod({"hostPath": {"path": "/d"}}, cpu="3")
    without_variable["spec"]["containers"][0]["env"].pop()
    assert launch_of(without_variable).env["OMP_NUM_THREADS"] == "3"


def test_image_env_and_path_come_first_and_the_spec_can_override_them():
    pod = runtime_pod({"hostPath": {"path": "/d"}})
    pod["spec"]["containers"][0]["env"].append({"name": "PYTHONUNBUFFERED", "value": "0"})
    env = launch_of(pod).env
    assert env["PATH"] == "/venv/bin:/usr/bin" and env["PYTHONUNBUFFERED"] == "0"
    assert env["HOSTNAME"] == "md-7f3a-x1"


@pytest.mark.parametrize(
    ("volume", "kind"),
    [
        ({"persistentVolumeClaim": {"claimName": "weights"}}, "persistentVolumeClaim"),
        ({"image": {"reference": "models/qwen:1"}}, "image"),
        ({"csi": {"driver": "x"}}, "csi"),
    ],
)
def test_volumes_without_local_meaning_are_refused_by_name(volume, kind):
    with pytest.raises(UnsupportedVolume, match=rf'volume "model": {kind} volumes are not supported'):
        launch_of(runtime_pod(volume))


def test_a_model_inside_the_image_is_named_as_an_image_path():
    pod = runtime_pod(None)
    pod["spec"]["containers"][0]["args"] = ["--model", "/opt/model"]
    launch = launch_of(pod, {"MOE_RUNTIME_MODEL": "/opt/model"})
    assert launch.image_paths == ["/opt/model", "/opt/model"]


def test_port_flags_in_args_are_refused():
    with pytest.raises(ConfigError, match="args set --port=9000"):
        launch_of(runtime_pod({"hostPath": {"path": "/d"}}, args=("--port=9000",)))


def test_a_container_without_command_is_refused():
    pod = runtime_pod({"hostPath": {"path": "/d"}})
    del pod["spec"]["containers"][0]["command"]
    with pytest.raises(ConfigError, match="sets no command"):
        launch_of(pod)


def test_command_and_args_expand_variables():
    pod = runtime_pod({"hostPath": {"path": "/d"}}, args=("--served-model-name", "$(NAME)"))
    pod["spec"]["containers"][0]["env"].append({"name": "NAME", "value": "qwen"})
    assert launch_of(pod).argv[-2:] == ["--served-model-name", "qwen"]


def test_nested_mounts_and_sub_paths():
    pod = {
        "metadata": {"name": "p"},
        "spec": {"volumes": [{"name": "a", "hostPath": {"path": "/host/a"}}, {"name": "b", "emptyDir": {}}]},
    }
    volumes = plan_volumes(pod, "/pods/p")
    container = {
        "volumeMounts": [
            {"name": "a", "mountPath": "/data"},
            {"name": "b", "mountPath": "/data/cache"},
            {"name": "a", "mountPath": "/weights", "subPath": "w1"},
        ]
    }
    mounts = container_mounts(container, volumes)
    assert mounts.host_path("/data/x") == "/host/a/x"
    assert mounts.host_path("/data/cache/y") == "/pods/p/volumes/b/y"
    assert mounts.host_path("/weights") == "/host/a/w1"
    assert mounts.host_path("/database") is None
    assert mounts.map_value("--cache=/data/cache") == "--cache=/pods/p/volumes/b"


MOUNT_PATHS = st.lists(
    st.from_regex(r"/[a-z]{1,3}(/[a-z]{1,3})?", fullmatch=True), min_size=1, max_size=4, unique=True
)


@given(MOUNT_PATHS, st.text(alphabet="/abcxyz=-", max_size=15))
def test_values_outside_every_mount_are_never_changed(mount_paths, value):
    mounts = Mounts(
        tuple(sorted(((m, f"/host{i}") for i, m in enumerate(mount_paths)), key=lambda e: -len(e[0])))
    )
    tail = value if value.startswith("/") else value.partition("=")[2]
    mapped = mounts.map_value(value)
    if not tail.startswith("/") or mounts.host_path(tail) is None:
        assert mapped == value
    else:
        assert mapped.endswith(mounts.host_path(tail))


def vllm_pod(args: tuple[str, ...] = ()) -> dict:
    """A vLLM pod with its adapter sidecar, as the operator renders it (decisions/engine_pod.py)."""
    pod = runtime_pod({"hostPath": {"path": "/data/ckpt", "type": "Directory"}}, cpu=None)
    engine = pod["spec"]["containers"][0]
    engine.update(command=["vllm", "serve"], args=["/models", "--served-model-name", "m", *args])
    del engine["envFrom"]
    pod["spec"]["volumes"] += [
        {"name": "adapters", "configMap": {"name": "md-adapters"}},
        {"name": "adapter-host-1", "hostPath": {"path": "/data/loras", "type": "Directory"}},
    ]
    engine["volumeMounts"].append({"name": "adapter-host-1", "mountPath": "/adapters/adapter-host-1"})
    sidecar = {
        "name": "adapter-sync",
        "command": ["python", "-m", "moe_runtime", "adapter-sync"],
        "args": [
            "--engine",
            "vllm",
            "--engine-url",
            "http://127.0.0.1:8000",
            "--lora-list",
            "/etc/a/adapters.json",
        ],
        "env": [{"name": "MOE_RUNTIME_PORT", "value": "8001"}],
        "ports": [{"name": "adapter-sync", "containerPort": 8001}],
        "volumeMounts": [{"name": "adapters", "mountPath": "/etc/a"}],
    }
    pod["spec"]["containers"].append(sidecar)
    return pod


def launch_container(pod: dict, index: int, port: int, pod_ports: dict[int, int]):
    ctx = PodContext(pod, pod["spec"]["containers"][index], "10.245.0.3", "10.245.0.1")
    return plan_launch(ctx, "/state/pods/ns_p", port, PYTHON, {"PATH": "/usr/bin"}, pod_ports=pod_ports)


def test_a_vllm_container_runs_vllm_serve_from_the_vllm_environment_on_its_loopback_port():
    from localkubelet.launch import VLLM_SERVE

    launch = launch_container(vllm_pod(("--port", "8000", "--host=0.0.0.0")), 0, 41000, {8000: 41000})
    assert launch.argv == [
        "bash", VLLM_SERVE, "vllm", "serve", "/data/ckpt", "--served-model-name", "m",
        "--host", "127.0.0.1", "--port", "41000",
    ]  # fmt: skip
    assert VLLM_SERVE.endswith("hack/vllm-serve.sh")


def test_a_sidecar_reaches_the_engine_through_the_pods_ports_on_its_own_port():
    launch = launch_container(vllm_pod(), 1, 41001, {8000: 41000, 8001: 41001})
    assert launch.argv[:4] == [PYTHON, "-m", "moe_runtime", "adapter-sync"]
    assert "http://127.0.0.1:41000" in launch.argv
    assert launch.env["MOE_RUNTIME_PORT"] == "41001"
    # the adapter list in the sidecar's volume names the engine's folders: they map through every container
    assert launch.pod_mounts.host_path("/adapters/adapter-host-1/sql") == "/data/loras/sql"
    assert launch.mounts.host_path("/adapters/adapter-host-1/sql") is None


@given(st.integers(min_value=1, max_value=65535), st.integers(min_value=1, max_value=65535))
def test_only_ports_of_the_pod_are_remapped(declared, other):
    from localkubelet.launch import map_pod_ports

    table = {declared: 50000}
    assert map_pod_ports(f"http://localhost:{declared}/v1", table) == "http://127.0.0.1:50000/v1"
    if other != declared:
        assert map_pod_ports(f"http://127.0.0.1:{other}/v1", table) == f"http://127.0.0.1:{other}/v1"
    assert map_pod_ports(f"http://10.0.0.1:{declared}/v1", table) == f"http://10.0.0.1:{declared}/v1"


def test_pods_find_the_machines_vllm_whatever_their_home():
    from localkubelet.kubelet import vllm_env

    assert vllm_env({"HOME": "/root"}) == {"MOEDEPLOY_CACHE": "/root/.cache/moedeploy"}
    assert vllm_env({"HOME": "/root", "XDG_CACHE_HOME": "/c"}) == {"MOEDEPLOY_CACHE": "/c/moedeploy"}
    given = {"MOEDEPLOY_CACHE": "/x", "MOEDEPLOY_VLLM_VENV": "/v", "OTHER": "1"}
    assert vllm_env(given) == {"MOEDEPLOY_CACHE": "/x", "MOEDEPLOY_VLLM_VENV": "/v"}
