"""`python -m tests.integration.runtime_server.faulty_serve [serve options]`: the real `serve`, whose engine
misbehaves on purpose as MOE_TEST_FAULT says (test code only; the runtime has no such switch):

- `release`: releasing a sequence's cache raises (as a device-to-host copy does after a CUDA fault),
  outside the engine step that the worker guards;
- `hang`: every forward pass blocks forever (a stuck kernel);
- `oom_above:N`: a forward pass over more than N sequences runs, then raises an out-of-memory error, as one
  that ran out half way would: the caches hold tokens the step never finished.
"""

from __future__ import annotations

import os
import sys
import threading

import torch

from moe_runtime.serve import command as serve


class FaultyEngine:
    def __init__(self, engine, fault: str) -> None:
        self._engine = engine
        self._fault, _, argument = fault.partition(":")
        self._limit = int(argument) if argument else 0

    def __getattr__(self, name: str):
        return getattr(self._engine, name)

    def forward(self, batch):
        if self._fault == "hang":
            threading.Event().wait()
        logits = self._engine.forward(batch)
        if self._fault == "oom_above" and len(batch) > self._limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory (injected above {self._limit} sequences)")
        return logits

    def release(self, sequence) -> None:
        if self._fault == "release":
            raise RuntimeError("CUDA error: an illegal memory access was encountered (injected)")
        self._engine.release(sequence)


def main() -> int:
    load = serve.load_engine
    serve.load_engine = lambda args: FaultyEngine(load(args), os.environ["MOE_TEST_FAULT"])
    return serve.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
