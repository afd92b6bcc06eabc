"""A probe for the bot's memory under load (docs/memory.md); not product code.

Put this folder on the bot's path and name an output prefix:

    E2E_BOT_PYTHONPATH=tests/e2e/malloc_probe E2E_PROBE_OUT=/tmp/run \
        PYTHONPATH=$PWD .venv/bin/python -m tests.e2e.load ...

Python imports ``sitecustomize`` at start-up, so in ``python -m bot`` a daemon thread writes one
JSON line a second to ``$E2E_PROBE_OUT.<pid>.jsonl``: seconds since start, VmRSS (kB) and glibc's
``mallinfo2()`` fields (bytes: ``uordblks`` in use, ``fordblks`` free but kept, ``arena`` heap,
``hblkhd`` separately mmapped). Options, in seconds since start:

* ``E2E_PROBE_TRIM_AT``: call ``malloc_trim(0)`` once then; the line gets ``trim`` (RSS before
  and after, kB, and how long it took).
* ``E2E_PROBE_TRACEMALLOC_AT``: start ``tracemalloc`` then (from start-up it makes the bot too
  slow), and every ``E2E_PROBE_SNAPSHOT_EVERY`` seconds (default 20) dump a snapshot to
  ``$E2E_PROBE_OUT.<pid>.snapNNNN`` (``tracemalloc.Snapshot.load`` reads it).
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
import threading
import time

FIELDS = (
    "arena",
    "ordblks",
    "smblks",
    "hblks",
    "hblkhd",
    "usmblks",
    "fsmblks",
    "uordblks",
    "fordblks",
    "keepcost",
)


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in FIELDS]


def _rss_kb() -> int:
    with open("/proc/self/status") as fh:
        return next((int(line.split()[1]) for line in fh if line.startswith("VmRSS:")), 0)


def _seconds(name: str, default: float = 0.0) -> float:
    return float(os.environ.get(name) or default)


def _sample(out: str) -> None:
    import tracemalloc

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    trim_at = _seconds("E2E_PROBE_TRIM_AT")
    trace_at = _seconds("E2E_PROBE_TRACEMALLOC_AT")
    snapshot_every = _seconds("E2E_PROBE_SNAPSHOT_EVERY", 20.0)
    started, last_snapshot, trimmed = time.monotonic(), 0.0, False
    with open(f"{out}.{os.getpid()}.jsonl", "w") as fh:
        while True:
            now = time.monotonic() - started
            info = libc.mallinfo2()
            row: dict[str, object] = {"t": round(now, 1), "rss_kb": _rss_kb()}
            row.update({name: getattr(info, name) for name in FIELDS})
            if trace_at and not tracemalloc.is_tracing() and now >= trace_at:
                tracemalloc.start()
                last_snapshot = now - snapshot_every + 2  # a first snapshot right away
            if tracemalloc.is_tracing():
                row["traced"] = tracemalloc.get_traced_memory()[0]
                if now - last_snapshot >= snapshot_every:
                    last_snapshot = now
                    snapshot = tracemalloc.take_snapshot()
                    snapshot.filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)]).dump(
                        f"{out}.{os.getpid()}.snap{int(now):04d}"
                    )
            if trim_at and not trimmed and now >= trim_at:
                before, t0 = _rss_kb(), time.perf_counter()
                libc.malloc_trim(0)
                row["trim"] = {
                    "before_kb": before,
                    "after_kb": _rss_kb(),
                    "ms": round((time.perf_counter() - t0) * 1e3, 1),
                }
                trimmed = True
            fh.write(json.dumps(row) + "\n")
            fh.flush()
            time.sleep(1.0)


_OUT = os.environ.get("E2E_PROBE_OUT")
_ARGV = " ".join(getattr(sys, "orig_argv", []))
if _OUT and "-m bot" in _ARGV and "sync-commands" not in _ARGV:
    threading.Thread(target=_sample, args=(_OUT,), daemon=True, name="malloc-probe").start()
