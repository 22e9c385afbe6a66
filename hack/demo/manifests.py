"""The ModelDeployment the demo applies, at each of its revisions. Intervals are shortened to seconds so the
whole loop fits in a few minutes; everything else is the production code path."""

from __future__ import annotations

import copy

NAME = "qwen3-moe-demo"
NAMESPACE = "demo"
TARGET_QUEUE = 3  # waiting requests per Ready pod the autoscaler aims for
MAX_REPLICAS = 3


def model_deployment(checkpoint: str, **runtime: object) -> dict:
    """The demo's ModelDeployment; `runtime` overrides fields of spec.runtime.batching (a new revision)."""
    batching = {"maxQueue": 256, "maxBatchSequences": 2, "tokenBudget": 256, "prefillChunk": 128,
                "requestTimeoutSeconds": 300, **runtime}  # fmt: skip
    return copy.deepcopy(
        {
            "apiVersion": "moedeploy.dev/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": NAME, "namespace": NAMESPACE},
            "spec": {
                "replicas": 1,
                "minReplicas": 1,
                "maxReplicas": MAX_REPLICAS,
                "model": {"family": "qwen3_moe", "name": NAME, "source": {"hostPath": {"path": checkpoint}}},
                "runtime": {
                    "image": "moedeploy/runtime:0.1.0",
                    "resources": {"gpu": 1, "cpu": "1"},
                    "batching": batching,
                    "startupTimeoutSeconds": 600,
                    "drainDelaySeconds": 2,
                },
                "autoscaling": {
                    "enabled": True,
                    "targetQueueDepth": TARGET_QUEUE,
                    "intervalSeconds": 2,
                    "metricWindowSeconds": 4,
                    "scaleUp": {"stabilizationWindowSeconds": 0, "maxPods": 2, "periodSeconds": 4},
                    "scaleDown": {"stabilizationWindowSeconds": 15, "maxPods": 2, "periodSeconds": 5},
                },
                "rollout": {"strategy": "Canary", "canaryReplicas": 1, "maxSurge": 2, "maxUnavailable": 0},
                # judged against the stable track in the same windows: a busy machine slows both alike
                "slo": {
                    "maxRelativeIncrease": 0.5,
                    "p99LatencySeconds": 120,  # a backstop: a request running longer than this fails a window
                    "maxErrorRatio": 0.01,
                    "analysisIntervalSeconds": 6,
                    "scrapeIntervalSeconds": 1,
                    "metricDelaySeconds": 2,
                    "initialDelaySeconds": 2,
                    "measurements": 2,
                    "failureLimit": 1,
                    "minRequests": 3,
                    "bakeSeconds": 12,
                },
            },
        }
    )


# The demo's policy, given to the chart: the default one is for shared clusters and refuses host folders.
def chart_values(workdir: str) -> dict:
    return {
        "operator": {
            "watchNamespaces": [NAMESPACE],
            "policy": {
                "allowedSourceKinds": ["hostPath", "pvc", "image", "uri"],
                "allowedHostPathPrefixes": [workdir],
                "allowedImagePrefixes": ["moedeploy/"],
            },
        }
    }
