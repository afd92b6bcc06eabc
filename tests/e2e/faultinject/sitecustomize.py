"""Test-only fault injection for the bot subprocess; never on the import path of a real run.

The e2e harness puts this folder first on the bot's PYTHONPATH, so Python imports this file at
start-up (``site`` imports ``sitecustomize``). It wraps ``bot.serving.local.engine.RunningBatch.step`` (every
step of the worker's continuous batching, and of ``Engine.generate``) and ``bot.store.store.Store``'s
reads once those modules are imported, so the production code has no test hooks:

* a prompt containing ``E2E-MODEL-FAULT`` makes the step that holds it raise RuntimeError, as a
  CUDA error or a bad adapter would (every row in that step fails);
* a prompt containing ``E2E-SLOW-MODEL`` makes the first step that holds it take ``E2E_SLOW_S``
  seconds longer (default 3), to edit, delete or restart while a reply is being generated;
* a prompt containing ``E2E-SCRIPTED-REPLY`` is answered from the JSON file named by
  ``E2E_SCRIPT_FILE`` instead of the model: ``{"pieces": [...], "gap_s": 0.05, "fail_after":
  null}`` streams one piece per step with that gap (raising RuntimeError after ``fail_after``
  pieces when set), so streaming tests choose exactly what arrives when: a blocked word split
  across pieces, a reply past 2,000 characters, a failure half-way. The scripted row never
  reaches the model; the other rows of the batch step on the model as usual;
* while the file named by ``E2E_DB_STALL_FILE`` exists, every read of ``bot.store.store.Store`` waits
  (a stalled disk, or a process recovering the WAL): what a read that does not come back does
  to the bot's interactions.
"""

from __future__ import annotations

import asyncio
import importlib.abc
import importlib.machinery
import json
import os
import sys
import time
import weakref
from typing import Any

FAULT_MARKER = "E2E-MODEL-FAULT"
SLOW_MARKER = "E2E-SLOW-MODEL"
SCRIPT_MARKER = "E2E-SCRIPTED-REPLY"
STALL_ENV = "E2E_DB_STALL_FILE"


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
        if any(SCRIPT_MARKER in s.request.prompt for s in seqs):
            return _scripted_step(self, original, *args, **kwargs)
        return original(self, *args, **kwargs)

    def rows(self: Any) -> int:
        return original_rows(self) + len(_side(self))

    def sequences(self: Any) -> list[Any]:
        return original_sequences(self) + list(_side(self))

    def abort(self: Any) -> list[Any]:
        dropped = original_abort(self)  # its sequences() already lists the scripted rows
        _side(self).clear()
        return dropped

    original_rows = batch.rows.fget
    original_sequences = batch.sequences
    original_abort = batch.abort
    batch.step = step
    batch.rows = property(rows)
    batch.sequences = sequences
    batch.abort = abort
    print(
        "e2e fault injection armed on bot.serving.local.engine.RunningBatch.step", file=sys.stderr, flush=True
    )


def _side(batch: Any) -> list[Any]:
    """The batch's scripted rows, kept beside the model's rows so that no forward sees them."""
    if not hasattr(batch, "_e2e_scripted"):
        batch._e2e_scripted = []
    return batch._e2e_scripted


def _scripted_step(batch: Any, original: Any, *args: Any, **kwargs: Any) -> Any:
    """Scripted rows take one piece of the script each; the other rows step on the model."""
    with open(os.environ["E2E_SCRIPT_FILE"], encoding="utf-8") as f:
        script = json.load(f)
    side = _side(batch)
    side += [s for s in batch.waiting if SCRIPT_MARKER in s.request.prompt]
    batch.waiting = [s for s in batch.waiting if SCRIPT_MARKER not in s.request.prompt]
    finished = []
    for seq in list(side):
        done = getattr(seq, "_e2e_pieces", 0)
        if seq.is_cancelled is not None and seq.is_cancelled():
            seq.finish("cancelled")
        elif script.get("fail_after") is not None and done >= script["fail_after"]:
            raise RuntimeError(f"injected model failure ({FAULT_MARKER}) after {done} pieces")
        elif done >= len(script["pieces"]):
            seq.finish("stop")
        else:
            time.sleep(float(script.get("gap_s", 0.05)))
            piece = script["pieces"][done]
            seq._e2e_pieces = done + 1
            now = time.monotonic()
            seq.first_token_at = seq.first_token_at or now
            if seq.on_token is not None:
                seq.on_token(now)
            seq.generated.append(0)
            seq.text += piece
            if seq.on_piece is not None:
                seq.on_piece(piece)
            seq.emitted = len(seq.text)
        if seq.finished:
            side.remove(seq)
            finished.append(seq)
    # The model's step must not see the scripted rows (through rows/sequences) at all.
    batch._e2e_scripted = []
    try:
        return finished + original(batch, *args, **kwargs)
    finally:
        batch._e2e_scripted = side


def _wrap_store(module: Any) -> None:
    stall = os.environ.get(STALL_ENV)
    if not stall:
        return
    store = module.Store
    original = store._fetchall

    async def _fetchall(self: Any, sql: str, params: Any = ()) -> Any:
        while os.path.exists(stall):
            await asyncio.sleep(0.05)
        return await original(self, sql, params)

    store._fetchall = _fetchall
    print("e2e fault injection armed on bot.store.store.Store reads", file=sys.stderr, flush=True)


TARGETS = {"bot.serving.local.engine": _wrap, "bot.store.store": _wrap_store}


class _Loader(importlib.abc.Loader):
    def __init__(self, inner: importlib.abc.Loader, wrap: Any) -> None:
        self.inner = inner
        self.wrap = wrap

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> Any:
        return self.inner.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self.inner.exec_module(module)  # type: ignore[attr-defined]
        self.wrap(module)


class _Finder(importlib.abc.MetaPathFinder):
    """Finds ``bot.serving.local.engine`` and ``bot.store.store`` the normal way, then wraps each right after it has run."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if name not in TARGETS:
            return None
        sys.meta_path.remove(self)  # once: the real finders do the finding
        try:
            spec = importlib.machinery.PathFinder.find_spec(name, path)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _Loader(spec.loader, TARGETS[name])
        return spec


sys.meta_path.insert(0, _Finder())
