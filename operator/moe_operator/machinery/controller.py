"""Worker threads that take ModelDeployment keys off the work queue and reconcile them.

A pass that asks to be looked at again later is scheduled then; one that read a stale object is retried at
once; one that failed (the API server away, a refusal already reported in the status) is retried with a
per-object back-off, so a broken object never loops hot and never holds up the others.
"""

from __future__ import annotations

import logging
import threading
import time

from moe_operator.machinery.errors import Refused, StaleRead
from moe_operator.machinery.workqueue import WorkQueue

log = logging.getLogger(__name__)

STALE_RETRY_S = 0.2


class Controller:
    def __init__(self, reconciler, queue: WorkQueue, workers: int, metrics) -> None:
        """`metrics`: counters `reconciles` (by outcome), histogram `reconcile_duration`, gauge `work_queue_depth`."""
        self._reconciler = reconciler
        self._queue = queue
        self._metrics = metrics
        self._threads = [
            threading.Thread(target=self._work, name=f"reconcile-{i}", daemon=True) for i in range(workers)
        ]
        self.started = False

    def start(self) -> None:
        self.started = True
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 30) -> bool:
        """Takes no more keys and waits for the passes under way; whether every worker has ended."""
        self._queue.shutdown()
        deadline = time.monotonic() + timeout
        for thread in self._threads if self.started else ():
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in self._threads)

    def _work(self) -> None:
        while (key := self._queue.get()) is not None:
            started = time.monotonic()
            outcome = "ok"
            try:
                result = self._reconciler.reconcile(*key)
            except StaleRead as stale:
                outcome = "requeued"
                log.debug("%s/%s: %s; again in %.1fs", *key, stale, STALE_RETRY_S)
                self._queue.add_after(key, STALE_RETRY_S)
            except Refused as refused:
                outcome = "error"
                delay = self._queue.failed(key)
                log.warning("%s/%s: %s (retrying in %.0fs)", *key, refused, delay)
            except Exception:
                outcome = "error"
                delay = self._queue.failed(key)
                log.exception("%s/%s: reconcile failed; retrying in %.0fs", *key, delay)
            else:
                self._queue.forget(key)
                if result.requeue_after is not None:
                    self._queue.add_after(key, result.requeue_after)
            finally:
                self._queue.done(key)
                self._metrics.reconciles.labels(outcome).inc()
                self._metrics.reconcile_duration.observe(time.monotonic() - started)
                self._metrics.work_queue_depth.set(len(self._queue))
