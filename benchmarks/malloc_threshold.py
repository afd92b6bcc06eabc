"""What fixing glibc's mmap threshold (bot/ops/allocator.py) costs and saves, on the CPU engine.

    python -m benchmarks.malloc_threshold [--rounds 3] [--batches 40] [--out FILE]

Each variant runs in a fresh process (malloc settings are per process): the tiny GPT-NeoX model
generates ``--batches`` batches of up to 8 requests with prompts of mixed lengths (a burst of
long prompts every tenth batch), as the worker does under load. Variants alternate, ``--rounds``
times each, so a busy machine slows both alike. Printed per variant: the median CPU time of the
process (user + system: less sensitive than wall time to other processes on the machine), wall
time, minor page faults, and RSS after the run against RSS after the first batch.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {
    "glibc default (adaptive threshold)": "adaptive",
    "fixed at 128 KiB": "fixed:131072",
    "fixed at 4 MiB": "fixed:4194304",
}


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:")) / 1024


def child(model: str, variant: str, batches: int) -> dict[str, float]:
    """One measured run in this process; ``variant`` is 'adaptive' or 'fixed:BYTES'."""
    if variant.startswith("fixed:"):
        from bot.ops.allocator import fix_mmap_threshold

        fix_mmap_threshold(int(variant.split(":")[1]))
    from bot.config import ModelSettings
    from bot.serving.generation import GenerationRequest
    from bot.serving.local.engine import Engine
    from personas.card import GenerationParams

    engine = Engine.from_settings(ModelSettings(base_model=model, device="cpu"))
    params = GenerationParams(temperature=0.0, max_new_tokens=32, min_new_tokens=32)
    words = ["こんにちは", "今日は何してた", "おすすめのキノコを教えて", "魔法ってどうやって覚えるの"]

    def batch(i: int) -> list[GenerationRequest]:
        size = 8 if i % 10 == 9 else 1 + i % 5  # a burst: a full batch of long prompts
        length = 60 if i % 10 == 9 else 5 + (i * 7) % 20
        return [
            GenerationRequest("bench", " ".join(words[(i + k + j) % 4] for j in range(length)), params)
            for k in range(size)
        ]

    engine.generate(batch(0))
    after_first = _rss_mb()
    usage0, faults0, wall0 = resource.getrusage(resource.RUSAGE_SELF), None, time.perf_counter()
    faults0 = usage0.ru_minflt
    for i in range(1, batches):
        engine.generate(batch(i))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "cpu_s": usage.ru_utime + usage.ru_stime - usage0.ru_utime - usage0.ru_stime,
        "wall_s": time.perf_counter() - wall0,
        "minor_faults": usage.ru_minflt - faults0,
        "rss_first_mb": after_first,
        "rss_end_mb": _rss_mb(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.malloc_threshold", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batches", type=int, default=40)
    p.add_argument("--out", type=Path)
    p.add_argument("--child", nargs=2, metavar=("MODEL", "VARIANT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.batches)))
        return 0

    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    env["PYTHONPATH"] = str(REPO)
    env["OMP_NUM_THREADS"] = env.get("OMP_NUM_THREADS", "1")  # both variants alike, less noise
    results: dict[str, list[dict[str, float]]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="malloc-bench-") as tmp:
        from trainer.tiny import build_tiny_model

        model = str(build_tiny_model(Path(tmp) / "tiny-gpt-neox", "gpt-neox"))
        for _ in range(args.rounds):
            for name, variant in VARIANTS.items():
                out = subprocess.run(
                    [sys.executable, "-m", "benchmarks.malloc_threshold", "--batches", str(args.batches),
                     "--child", model, variant],
                    env=env, cwd=REPO, capture_output=True, text=True, check=True,
                ).stdout  # fmt: skip
                results[name].append(json.loads(out.strip().splitlines()[-1]))
    summary = {}
    for name, runs in results.items():
        med = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        summary[name] = {**med, "runs": runs}
        print(
            f"{name:<38} CPU {med['cpu_s']:6.2f} s  wall {med['wall_s']:6.2f} s  "
            f"minor faults {med['minor_faults']:>9,.0f}  RSS {med['rss_first_mb']:.0f} → {med['rss_end_mb']:.0f} MB"
        )
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
