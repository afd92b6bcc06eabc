"""glibc malloc settings for the long-running bot process.

Why: glibc serves a large allocation (a tensor's storage, 128 KiB or more) with its own
``mmap`` and returns it to the system on free, *but* after such a free it raises its mmap
threshold to that size (up to 32 MiB), so later tensors of that size come from the heap
instead. Freed heap chunks between live ones stay mapped: the process keeps the memory of its
largest batches for good, and RSS grows in steps under load although the memory in use does
not (docs/memory.md has the measurements). Fixing the threshold with ``mallopt`` turns the
adaptation off, so large tensors are mapped and unmapped again, as at start-up.

This is what ``MALLOC_MMAP_THRESHOLD_=131072`` in the environment does, but done in-process
by ``python -m bot`` itself, so every way an operator starts the bot (``make run``, a systemd
unit, the Docker image) gets it without a wrapper or a re-exec. An operator's own malloc
environment (``MALLOC_*_``, ``GLIBC_TUNABLES`` with ``glibc.malloc``, an ``LD_PRELOAD``ed
jemalloc or tcmalloc) is left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform
from collections.abc import Mapping

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # from glibc's <malloc.h>
DEFAULT_MMAP_THRESHOLD = 128 * 1024  # glibc's own starting value, now kept fixed
OPERATOR_SETTINGS = (
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "MALLOC_ARENA_MAX",
)


def operator_choice(environ: Mapping[str, str]) -> str | None:
    """The variable through which the operator already chose malloc's behaviour, if any."""
    for name in OPERATOR_SETTINGS:
        if name in environ:
            return name
    if "glibc.malloc." in environ.get("GLIBC_TUNABLES", ""):
        return "GLIBC_TUNABLES"
    preload = environ.get("LD_PRELOAD", "")
    if "jemalloc" in preload or "tcmalloc" in preload or "mimalloc" in preload:
        return "LD_PRELOAD"
    return None


def fix_mmap_threshold(
    threshold: int = DEFAULT_MMAP_THRESHOLD, environ: Mapping[str, str] | None = None
) -> str:
    """Fix glibc's mmap threshold at ``threshold`` bytes for the rest of this process.

    Call it early (before torch allocates), once, in the process's entry point only: it changes
    malloc for the whole process. Returns what was done, as a short phrase for the log; never
    raises (on a system without glibc, or when the operator set malloc up, it does nothing).
    """
    environ = os.environ if environ is None else environ
    if (chosen := operator_choice(environ)) is not None:
        return f"malloc left as {chosen} sets it"
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "malloc left as is (not glibc)"
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(M_MMAP_THRESHOLD, ctypes.c_int(threshold)) == 1
    except (OSError, AttributeError) as exc:
        return f"malloc left as is ({exc})"
    if not ok:
        return f"malloc left as is (mallopt refused an mmap threshold of {threshold})"
    return f"malloc mmap threshold fixed at {threshold // 1024} KiB"
