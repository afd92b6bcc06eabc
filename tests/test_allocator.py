"""bot/ops/allocator.py: ``python -m bot`` fixes glibc's mmap threshold, so memory freed after a burst
goes back to the system instead of staying in the heap (docs/memory.md).

Each case runs in a fresh interpreter: malloc settings are per process, and the experiment
must not depend on what this test process allocated before."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bot.ops.allocator import fix_mmap_threshold, operator_choice

REPO = Path(__file__).resolve().parents[1]
glibc_only = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc malloc only"
)

# What a burst does to the heap, at the C level: one large tensor freed (glibc then raises its
# mmap threshold to that size), then 128 blocks of 1 MiB, every other one freed while its
# neighbours stay alive. Prints the memory the process keeps beyond the 64 MiB still in use.
EXPERIMENT = textwrap.dedent(
    """
    import ctypes, json
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
    MIB = 1 << 20

    def rss():
        with open("/proc/self/status") as fh:
            return next(int(l.split()[1]) * 1024 for l in fh if l.startswith("VmRSS:"))

    big = libc.malloc(8 * MIB)
    libc.memset(big, 1, 8 * MIB)
    libc.free(big)
    before = rss()
    blocks = [libc.malloc(MIB) for _ in range(128)]
    for b in blocks:
        libc.memset(b, 1, MIB)
    for b in blocks[::2]:
        libc.free(b)
    print(json.dumps({"kept_mib": (rss() - before) / MIB - 64}))
    """
)


def run_child(prelude: str, env: dict[str, str] | None = None) -> dict:
    code = prelude + "\n" + EXPERIMENT
    base = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


@glibc_only
def test_glibc_keeps_freed_burst_memory_by_default() -> None:
    # The premise: without the setting, the freed half stays in the process.
    assert run_child("")["kept_mib"] > 48


@glibc_only
def test_fixed_threshold_gives_freed_burst_memory_back() -> None:
    prelude = "from bot.ops.allocator import fix_mmap_threshold\nprint(fix_mmap_threshold())"
    assert run_child(prelude)["kept_mib"] < 8


@glibc_only
def test_the_launcher_fixes_the_threshold_before_main_runs() -> None:
    # `python -m bot --help`, then the experiment in the same process.
    prelude = textwrap.dedent(
        """
        import runpy, sys, contextlib, io
        sys.argv = ["bot", "--help"]
        with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):
            runpy.run_module("bot", run_name="__main__", alter_sys=True)
        """
    )
    assert run_child(prelude)["kept_mib"] < 8


@glibc_only
def test_an_operators_own_malloc_setting_wins() -> None:
    prelude = "from bot.ops.allocator import fix_mmap_threshold\nprint(fix_mmap_threshold())"
    # The operator asked for glibc's adaptive behaviour explicitly: it stays.
    assert run_child(prelude, {"GLIBC_TUNABLES": "glibc.malloc.arena_max=4"})["kept_mib"] > 48


@pytest.mark.parametrize(
    ("environ", "chosen"),
    [
        ({}, None),
        ({"MALLOC_MMAP_THRESHOLD_": "65536"}, "MALLOC_MMAP_THRESHOLD_"),
        ({"MALLOC_ARENA_MAX": "2"}, "MALLOC_ARENA_MAX"),
        ({"MALLOC_TRIM_THRESHOLD_": "0"}, "MALLOC_TRIM_THRESHOLD_"),
        ({"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=262144"}, "GLIBC_TUNABLES"),
        ({"GLIBC_TUNABLES": "glibc.rtld.optional_static_tls=512"}, None),  # not about malloc
        ({"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"}, "LD_PRELOAD"),
        ({"LD_PRELOAD": "/opt/other.so"}, None),
    ],
)
def test_operator_choice(environ, chosen) -> None:
    assert operator_choice(environ) == chosen
    if chosen is not None:
        assert fix_mmap_threshold(environ=environ) == f"malloc left as {chosen} sets it"
