"""A ModelDeployment whose weights come from object storage, end to end: the operator renders the download
(endpoint, region, credentials from a Secret, a cache volume), the local kubelet runs the pod as a real runtime
process, which downloads from a real S3 server before it reports Ready, and serves. And a pod that crash-loops
says so in the ModelDeployment's status within seconds, not after the progress deadline."""

from __future__ import annotations

import httpx
import pytest

from tests.integration.local_stack import local_md, targets
from tests.integration.model_download.conftest import PREFIX
from tests.integration.model_download.s3server import REGION
from tests.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_weights_from_s3_are_downloaded_before_the_pod_serves(cluster, models, operator, created, s3, bucket):
    models.apply(
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-credentials"}, "type": "Opaque",
         "stringData": {"AWS_ACCESS_KEY_ID": s3.key_id, "AWS_SECRET_ACCESS_KEY": s3.secret}}
    )  # fmt: skip
    source = {"uri": f"s3://{bucket}/{PREFIX}", "cache": {"sizeLimit": "1Gi"},
              "s3": {"endpoint": s3.url, "region": REGION, "credentialsSecret": "s3-credentials"}}  # fmt: skip
    name = created(local_md("from-s3", source))
    models.wait_ready(name, replicas=1, timeout=300)

    (entry,) = targets(cluster.targets_file, models.namespace, name).values()
    answer = httpx.post(
        f"http://{entry['targets'][0]}/v1/completions",
        json={"model": name, "prompt": "Hello", "max_tokens": 4, "temperature": 0},
        timeout=120,
    )
    assert answer.status_code == 200, answer.text
    (pod,) = models.pods(name)
    log = (cluster.pods_dir / f"{models.namespace}_{pod['metadata']['name']}.log").read_text()
    assert f"s3://{bucket}/{PREFIX}" in log, "the runtime said where it downloaded from"


def test_a_crash_looping_pod_degrades_the_model_deployment_at_once(
    cluster, models, operator, created, tmp_path
):
    not_a_checkpoint = tmp_path / "empty-folder"
    not_a_checkpoint.mkdir()
    name = created(local_md("crashing", {"hostPath": {"path": str(not_a_checkpoint)}}))

    def degraded():
        condition = models.condition(name, "Degraded") or {}
        return condition if condition.get("reason") == "CrashLoopBackOff" else None

    condition = wait_for(degraded, timeout=180, what="Degraded=True CrashLoopBackOff")
    assert "last exit code 1" in condition["message"], condition["message"]
    assert any(event["reason"] == "CrashLoopBackOff" for event in models.events(name))
