"""A full pass over every served ModelDeployment at a fixed interval, from one background thread.

It repairs what no watched event announces (a ConfigMap or Service edited by hand) and catches up after
a pass that failed. A kopf timer would do the same per object, but kopf guards timers with a finalizer,
which would make deleting a ModelDeployment hang whenever the operator is not running.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from moe_operator.kube import Kube
from moe_operator.reconcile import Reconciler

logger = logging.getLogger(__name__)


class Resync:
    def __init__(
        self, kube: Kube, reconciler: Reconciler, namespaces: Sequence[str], interval: float
    ) -> None:
        self._kube = kube
        self._reconciler = reconciler
        self._namespaces = namespaces or [None]  # None: every namespace
        self._interval = interval
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="resync", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def _run(self) -> None:
        while not self._stopped.wait(self._interval):
            try:
                found = [
                    md
                    for namespace in self._namespaces
                    for md in self._kube.list_model_deployments(namespace)
                ]
            except Exception:
                logger.exception("listing ModelDeployments to resync failed; the next resync retries")
                continue
            for namespace, name in found:
                if self._stopped.is_set():
                    return
                try:
                    self._reconciler.reconcile(namespace, name)
                except Exception:
                    logger.exception("resync of %s/%s failed; the next resync retries", namespace, name)
