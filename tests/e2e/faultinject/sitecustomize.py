"""Test-only fault injection for the bot subprocess; never on the import path of a real run.

The e2e harness puts this folder first on the bot's PYTHONPATH, so Python imports this file at
start-up (``site`` imports ``sitecustomize``). It wraps ``bot.engine.RunningBatch.step`` (every
step of the worker's continuous batching, and of ``Engine.generate``) once that module is
imported, so the production code has no test hooks:

* a prompt containing ``E2E-MODEL-FAULT`` makes the step that holds it raise RuntimeError, as a
  CUDA error or a bad adapter would (every row in that step fails);
* a prompt containing ``E2E-SLOW-MODEL`` makes the first step that holds it take ``E2E_SLOW_S``
  seconds longer (default 3), to edit, delete or restart while a reply is being generated.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
import time
import weakref
from typing import Any

FAULT_MARKER = "E2E-MODEL-FAULT"
SLOW_MARKER = "E2E-SLOW-MODEL"
TARGET = "bot.engine"


def _wrap(module: Any) -> None:
    batch = module.RunningBatch
    original = batch.step
    slow_s = float(os.environ.get("E2E_SLOW_S", "3"))
    slowed: weakref.WeakSet = weakref.WeakSet()  # sequences already slowed down once

    def step(self: Any, *args: Any, **kwargs: Any) -> Any:
        seqs = self.sequences()
        if any(FAULT_MARKER in s.request.prompt for s in seqs):
            raise RuntimeError(f"injected model failure ({FAULT_MARKER})")
        slow = [s for s in seqs if SLOW_MARKER in s.request.prompt and s not in slowed]
        if slow:
            for s in slow:
                slowed.add(s)
            time.sleep(slow_s)
        return original(self, *args, **kwargs)

    batch.step = step
    print(f"e2e fault injection armed on {TARGET}.RunningBatch.step", file=sys.stderr, flush=True)


class _Loader(importlib.abc.Loader):
    def __init__(self, inner: importlib.abc.Loader) -> None:
        self.inner = inner

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> Any:
        return self.inner.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self.inner.exec_module(module)  # type: ignore[attr-defined]
        _wrap(module)


class _Finder(importlib.abc.MetaPathFinder):
    """Finds ``bot.engine`` the normal way, then wraps it right after it has run."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if name != TARGET:
            return None
        sys.meta_path.remove(self)  # once: the real finders do the finding
        try:
            spec = importlib.machinery.PathFinder.find_spec(name, path)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _Loader(spec.loader)
        return spec


sys.meta_path.insert(0, _Finder())
