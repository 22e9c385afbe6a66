"""kopf registrations: the watch streams feed the manager's cache and work queue; nothing else happens here.

No state-changing kopf handlers (create/update/resume), no timers: kopf writes nothing on the objects and adds
no finalizer, so deleting a ModelDeployment never waits for the operator.
"""

from __future__ import annotations

from typing import Any

import kopf

from moe_operator.decisions.naming import (
    GROUP,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    MODEL_DEPLOYMENT_LABEL,
    PLURAL,
    VERSION,
)
from moe_operator.manager import WATCHED, Manager

RESOURCES = {  # kind -> kopf resource selector
    "ModelDeployment": (GROUP, VERSION, PLURAL),
    "Deployment": ("apps", "v1", "deployments"),
    "ConfigMap": ("v1", "configmaps"),
    "Service": ("v1", "services"),
    "PodDisruptionBudget": ("policy", "v1", "poddisruptionbudgets"),
    "Pod": ("v1", "pods"),
    "ServiceAccount": ("v1", "serviceaccounts"),
    "Role": ("rbac.authorization.k8s.io", "v1", "roles"),
    "RoleBinding": ("rbac.authorization.k8s.io", "v1", "rolebindings"),
}


# A start that failed (the API server answering 429 while it initialises a new CRD's storage, say) is retried
# in seconds rather than kopf's default minute.
STARTUP_RETRY_S = 5


@kopf.on.startup(backoff=STARTUP_RETRY_S)
def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # Without scanning kopf needs no access to CRDs or Namespaces; the CRD is installed before the operator.
    settings.scanning.disabled = True
    # kopf's own events would repeat its log; the operator posts the events that matter itself
    settings.posting.enabled = False
    for kind, selector in WATCHED.items():
        if selector:  # filtered by the API server, not after the fact
            settings.watching.label_selectors[RESOURCES[kind]] = selector
    if "manager" not in memo:  # a retry takes up the manager of the failed try, whose metrics port is bound
        memo.manager = Manager(memo.options)
    memo.manager.start()


@kopf.on.cleanup()
def stop(memo: kopf.Memo, **_: Any) -> None:
    memo.manager.stop()


def _feeds(kind: str):
    async def observe(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        memo.manager.observe(kind, type, body)

    observe.__name__ = f"observe_{kind.lower()}"
    return observe


kopf.on.event(*RESOURCES["ModelDeployment"])(_feeds("ModelDeployment"))
for _kind, _labels in (
    ("Deployment", {MANAGED_BY_LABEL: MANAGED_BY}),
    ("ConfigMap", {MANAGED_BY_LABEL: MANAGED_BY}),
    ("Service", {MANAGED_BY_LABEL: MANAGED_BY}),
    ("PodDisruptionBudget", {MANAGED_BY_LABEL: MANAGED_BY}),
    ("Pod", {MODEL_DEPLOYMENT_LABEL: kopf.PRESENT}),
    ("ServiceAccount", {MANAGED_BY_LABEL: MANAGED_BY}),
    ("Role", {MANAGED_BY_LABEL: MANAGED_BY}),
    ("RoleBinding", {MANAGED_BY_LABEL: MANAGED_BY}),
):
    kopf.on.event(*RESOURCES[_kind], labels=_labels)(_feeds(_kind))
