"""Test-only fault injection for the bot subprocess; never on the import path of a real run.

The e2e harness puts this folder first on the bot's PYTHONPATH, so Python imports this file at
start-up (``site`` imports ``sitecustomize``). It wraps ``bot.engine.Engine.generate`` once that
module is imported, so the production code has no test hooks:

* a prompt containing ``E2E-MODEL-FAULT`` makes the whole batch raise RuntimeError, as a CUDA
  error or a bad adapter would;
* a prompt containing ``E2E-SLOW-MODEL`` makes the batch take ``E2E_SLOW_S`` seconds longer
  (default 3), to edit, delete or restart while a reply is being generated;
* a prompt containing ``E2E-SCRIPTED-REPLY`` is answered from the JSON file named by
  ``E2E_SCRIPT_FILE`` instead of the model: ``{"pieces": [...], "gap_s": 0.05, "fail_after":
  null}`` streams those pieces with that gap (raising RuntimeError after ``fail_after`` pieces
  when set), so streaming tests choose exactly what arrives when: a blocked word split across
  pieces, a reply past 2,000 characters, a failure half-way.
* while the file named by ``E2E_DB_STALL_FILE`` exists, every read of ``bot.store.Store`` waits
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
from typing import Any

FAULT_MARKER = "E2E-MODEL-FAULT"
SLOW_MARKER = "E2E-SLOW-MODEL"
SCRIPT_MARKER = "E2E-SCRIPTED-REPLY"
STALL_ENV = "E2E_DB_STALL_FILE"


def _wrap(module: Any) -> None:
    engine = module.Engine
    original = engine.generate
    slow_s = float(os.environ.get("E2E_SLOW_S", "3"))

    def generate(self: Any, requests: Any, *args: Any, **kwargs: Any) -> Any:
        prompts = [getattr(r, "prompt", "") for r in requests]
        if any(FAULT_MARKER in p for p in prompts):
            raise RuntimeError(f"injected model failure ({FAULT_MARKER})")
        if any(SLOW_MARKER in p for p in prompts):
            time.sleep(slow_s)
        if any(SCRIPT_MARKER in p for p in prompts):
            return _scripted(self, original, requests, *args, **kwargs)
        return original(self, requests, *args, **kwargs)

    engine.generate = generate
    print("e2e fault injection armed on bot.engine.Engine.generate", file=sys.stderr, flush=True)


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
    print("e2e fault injection armed on bot.store.Store reads", file=sys.stderr, flush=True)


TARGETS = {"bot.engine": _wrap, "bot.store": _wrap_store}


def _scripted(engine: Any, original: Any, requests: Any, *args: Any, **kwargs: Any) -> Any:
    """Scripted rows stream the script; the other rows of the batch run on the model."""
    from bot.generation import GenerationResult

    on_piece = kwargs.get("on_piece") or (lambda i, text: None)
    is_cancelled = kwargs.get("is_cancelled") or (lambda i: False)
    with open(os.environ["E2E_SCRIPT_FILE"], encoding="utf-8") as f:
        script = json.load(f)
    results: list[Any] = [None] * len(requests)
    others = [i for i, r in enumerate(requests) if SCRIPT_MARKER not in r.prompt]
    if others:
        done = original(
            engine,
            [requests[i] for i in others],
            *args,
            on_piece=lambda j, text: on_piece(others[j], text),
            is_cancelled=lambda j: is_cancelled(others[j]),
        )
        for i, result in zip(others, done, strict=True):
            results[i] = result
    for i, request in enumerate(requests):
        if i in others:
            continue
        started, text, reason = time.monotonic(), "", "stop"
        for n, piece in enumerate(script["pieces"]):
            if script.get("fail_after") is not None and n >= script["fail_after"]:
                raise RuntimeError(f"injected model failure ({FAULT_MARKER}) after {n} pieces")
            if is_cancelled(i):
                reason = "cancelled"
                break
            time.sleep(float(script.get("gap_s", 0.05)))
            text += piece
            on_piece(i, piece)
        results[i] = GenerationResult(
            text=text,
            new_tokens=len(text),
            finish_reason=reason,
            adapter=request.adapter,
            adapter_version=None,
            seconds=time.monotonic() - started,
            batch_size=len(requests),
        )
    return results


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
    """Finds ``bot.engine`` and ``bot.store`` the normal way, then wraps each right after it has run."""

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
