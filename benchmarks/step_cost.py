"""What one forward costs, by rows and dtype: a decode step and a 48-token prefill.

    python -m benchmarks.step_cost --dtype float32 bfloat16 --out step.json
    python -m benchmarks.step_cost --shape tiny --rows 1 2 --repeats 2     # a quick look

Through ``Engine.forward`` (the engine's own path: PEFT's mixed-adapter batch, the KV cache that
grows in place), rows spread over the 4 personas' r=8 adapters. Per dtype and row count: the
median time of one decode step after a 48-token prompt (``decode_ms``) and of the prefill of
``rows`` 48-token prompts (``prefill_ms``). The dtypes alternate at every repeat inside one
process, so a drifting machine biases none. This is the curve behind the load benchmark's
figures: when a step of 8 rows costs little more than a step of 1, a fuller batch is nearly free
and bursts are absorbed; when it costs 2-3 times as much, they are not (docs/serving.md).

Figures, not assertions.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.hotswap import PERSONAS, SHAPES, build_bench_model, sync, write_figures
from benchmarks.load import DTYPES, cpu_model
from bot.config import ModelSettings
from bot.model.adapters import AdapterSource
from bot.serving.local.engine import Engine
from bot.serving.local.kv_cache import new_cache

PROMPT_TOKENS = 48


def build(model_dir: Path, adapters: dict[str, Path], dtype: str, device: str) -> tuple[Engine, list[str]]:
    engine = Engine.from_settings(ModelSettings(base_model=str(model_dir), device=device, dtype=dtype))
    for persona, path in adapters.items():
        engine.load_adapter(persona, AdapterSource(str(path), "bench", True))
    keys = [engine.pool.acquire(p).key for p in PERSONAS]  # pinned for the run: never released
    return engine, keys


@torch.inference_mode()
def time_forwards(engine: Engine, keys: list[str], rows: int, seed: int) -> tuple[float, float]:
    """Seconds of one prefill of ``rows`` 48-token prompts, then of one decode step after it."""
    torch.manual_seed(seed)
    vocab = engine.pool.model.config.vocab_size
    ids = torch.randint(5, vocab, (rows, PROMPT_TOKENS + 1), device=engine.device)
    mask = torch.ones_like(ids)
    positions = torch.arange(PROMPT_TOKENS + 1, device=engine.device).expand_as(ids)
    adapters = [keys[i % len(keys)] for i in range(rows)]
    cache = new_cache()
    sync(engine.device)
    start = time.perf_counter()
    engine.forward(ids[:, :-1], mask[:, :-1], positions[:, :-1], cache, adapters)
    sync(engine.device)
    mid = time.perf_counter()
    engine.forward(ids[:, -1:], mask, positions[:, -1:], cache, adapters)
    sync(engine.device)
    return mid - start, time.perf_counter() - mid


def run(args: argparse.Namespace, workdir: Path) -> dict:
    model_dir, adapters = build_bench_model(args.shape, workdir)
    engines = {dtype: build(model_dir, adapters, dtype, args.device) for dtype in args.dtype}
    figures: dict[str, list[dict]] = {dtype: [] for dtype in engines}
    for rows in args.rows:
        times: dict[str, list[tuple[float, float]]] = {dtype: [] for dtype in engines}
        for repeat in range(args.repeats + 1):  # the first is a warm-up
            order = list(engines) if repeat % 2 == 0 else list(engines)[::-1]
            for dtype in order:
                engine, keys = engines[dtype]
                pair = time_forwards(engine, keys, rows, seed=repeat)
                if repeat:
                    times[dtype].append(pair)
        for dtype, pairs in times.items():
            prefill = statistics.median(p for p, _ in pairs) * 1e3
            decode = statistics.median(d for _, d in pairs) * 1e3
            figures[dtype].append({"rows": rows, "prefill_ms": prefill, "decode_ms": decode})
            print(
                f"{dtype:9s} rows {rows:3d}  prefill {prefill:8.1f} ms  decode step {decode:6.1f} ms",
                flush=True,
            )
    device = next(iter(engines.values()))[0].device
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({cpu_model()})",
        "shape": args.shape,
        "prompt_tokens": PROMPT_TOKENS,
        "repeats": args.repeats,
        "torch_threads": torch.get_num_threads(),
        "dtypes": figures,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.step_cost",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--shape", choices=sorted(SHAPES), default="neox-12x768")
    parser.add_argument("--dtype", choices=DTYPES, nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 4, 8, 16, 32])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    if min(args.rows) < 1 or args.repeats < 1:
        parser.error("--rows and --repeats must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="oshaberi-step-") as tmp:
        result = run(args, Path(tmp))
    print(f"device {result['device']}, shape {args.shape}")
    write_figures(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
