"""The operator policy as the admin's file says it now: reloaded when the file changes (a mounted ConfigMap
is updated in place by the kubelet), the last good one kept when the new one cannot be read."""

from __future__ import annotations

import logging
import os
import threading

import yaml

from moe_operator.decisions.policy import Policy

log = logging.getLogger(__name__)


def load_policy(path: str) -> Policy:
    with open(path) as file:
        return Policy.from_mapping(yaml.safe_load(file) or {})


class PolicySource:
    def __init__(self, path: str | None) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._stamp: float | None = None
        self._policy = Policy()
        if path is not None:
            self._policy = load_policy(path)  # a broken file at start is an error, not a silent default
            self._stamp = os.stat(path).st_mtime

    def __call__(self) -> Policy:
        if self._path is None:
            return self._policy
        try:
            stamp = os.stat(self._path).st_mtime
        except OSError:
            return self._policy
        with self._lock:
            if stamp != self._stamp:
                self._stamp = stamp
                try:
                    self._policy = load_policy(self._path)
                    log.info("reloaded the operator policy from %s", self._path)
                except (OSError, ValueError) as err:
                    log.error("keeping the previous operator policy: %s: %s", self._path, err)
            return self._policy
