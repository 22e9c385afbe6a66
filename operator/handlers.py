"""kopf registrations. Each handler hands its object to the Reconciler and does nothing else."""

from __future__ import annotations

from typing import Any

import kopf
from kubernetes import client, config

from moe_operator.events import Event
from moe_operator.kube import Kube
from moe_operator.naming import GROUP, MANAGED_BY, MANAGED_BY_LABEL, PLURAL, VERSION, controlling_owner
from moe_operator.reconcile import Reconciler
from moe_operator.resync import Resync

RESYNC_SECONDS = 60
RETRY_SECONDS = 5
HANDLER_THREADS = 32


def post_event(md: Any, event: Event) -> None:
    kopf.event(md, type=event.type, reason=event.reason, message=event.message)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # kopf's bookkeeping goes into annotations under our prefix, never into the status the operator owns.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
    # No on.delete handler and no timers, hence no finalizer: ownerReferences let the garbage collector
    # remove the children, and deleting a ModelDeployment never waits for the operator.
    # Without scanning kopf needs no access to CRDs or Namespaces; the CRD is installed before the operator.
    settings.scanning.disabled = True
    settings.execution.default_backoff = RETRY_SECONDS
    # handlers spend their time waiting for the API server, not computing: more threads, more throughput
    settings.execution.max_workers = HANDLER_THREADS
    settings.posting.reporting_component = "moe-operator"
    configuration = client.Configuration()
    config.load_config(client_configuration=configuration)
    configuration.connection_pool_maxsize = HANDLER_THREADS + 1  # one more for the resync thread
    kube = Kube(client.ApiClient(configuration))
    memo.reconciler = Reconciler(kube, post_event)
    memo.resync = Resync(kube, memo.reconciler, memo.namespaces, RESYNC_SECONDS)
    memo.resync.start()


@kopf.on.cleanup()
def stop_resync(memo: kopf.Memo, **_: Any) -> None:
    memo.resync.stop()


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
def model_deployment_changed(namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
    memo.reconciler.reconcile(namespace, name)


@kopf.on.event("apps", "v1", "deployments", labels={MANAGED_BY_LABEL: MANAGED_BY})
def owned_deployment_changed(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    owner = controlling_owner(body)
    # type None is the initial listing at start-up, which the resume handlers already cover
    if type is not None and owner is not None:
        memo.reconciler.reconcile(body["metadata"]["namespace"], owner, full=False)
