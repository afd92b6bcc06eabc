"""Reply latency under load: Poisson arrivals through ``GenerationWorker.submit``.

    python -m benchmarks.load --out load.json                      # continuous batching (default)
    python -m benchmarks.load --scheduler static --out static.json # the old static batches
    python -m benchmarks.load --scheduler both --out both.json     # the two, interleaved per rate
    python -m benchmarks.load --shape tiny --requests 6            # a quick look
    python -m benchmarks.load --backend vllm --vllm-url http://127.0.0.1:8000 --workdir bench-model
                                      # the same arrivals through a vLLM server (docs/vllm.md)

The CPU shape (docs/serving.md): GPT-NeoX 12 layers x 768 with random weights, 4 personas each with
an r=8 adapter, 48-token prompts, 32 forced new tokens, greedy, ``max_batch_size`` 8
(``--max-batch-size``), the model in the engine's ``auto`` dtype (float32 on a CPU; ``--dtype
bfloat16`` for a CPU with AMX, see docs/serving.md).

First it measures one request alone (``single_latency_s``) and the capacity (requests per
second when a full batch is submitted at once), then it offers Poisson arrivals at 25 %,
50 % and 80 % of that capacity (``arrival_times``: Poisson arrivals over exactly
``requests / rate`` seconds, so each rate offers the nominal load). Time to first token is
taken from token events (``Ticket.first_token_at``), not from text: the random-weight model
decodes many tokens to empty text. p99 of a few dozen requests is close to their maximum: read
it as "the worst".

``tok_s`` is generated tokens from the first arrival to the last reply, so it includes the drain
after the last arrival (about one reply latency): with 40 requests even a server that keeps up
shows 80-90 % of the offered rate there. ``sustained_tok_s`` divides by the span from the first
reply to the last instead, and ``offered_tok_s`` by the span of the arrivals: a server that keeps
up has the two about equal; one that falls behind spreads its replies over a longer span than the
arrivals.

With ``--scheduler both`` one model serves both schedulers, alternating at each rate with
the same arrival times, so a machine whose load drifts (other processes) biases neither;
each row of ``rates`` then names its ``scheduler``. With ``--backend vllm`` the model and
adapters are written to ``--workdir`` and the server must run on that folder (the first run
prints the command); time to first token comes from the first streamed token ids.

The prefix cache is off (``--cache-mb 0``) unless asked for: this benchmark's 16 prompts repeat,
so with the cache on most of each prompt would be reused and the figures would no longer measure
the scheduling they are kept for (``benchmarks.chat`` measures reuse on chat-shaped prompts).

Figures, not assertions: targets are judged by reading them, never in timed tests.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import math
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.hotswap import NEW_TOKENS, PERSONAS, SHAPES, prompt_of, write_figures
from bot.config import ModelSettings, WorkerSettings
from bot.model.adapters import AdapterSource
from bot.serving.generation import GenerationRequest
from bot.serving.local.engine import Engine
from bot.serving.local.worker import GenerationWorker
from personas.card import GenerationParams
from trainer.tiny import build_random_adapter, build_tiny_model

LOADS = (0.25, 0.5, 0.8)
MAX_BATCH_SIZE = 8
DTYPES = ("auto", "float32", "bfloat16", "float16")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def arrival_times(count: int, rate: float, seed: int) -> list[float]:
    """``count`` Poisson arrivals at ``rate`` per second, conditioned on spanning ``count / rate``
    seconds: sorted offsets (seconds from the start) drawn uniformly in ``[0, count / rate)``.

    Given how many arrivals a Poisson process has in a window, their times are independent and
    uniform in it (Ross, *Introduction to Probability Models*, theorem 5.2), so bursts and gaps
    are as random as in free-running draws, but the offered load is the nominal one. Free-running
    exponential gaps made 40 arrivals offer anywhere from about 0.8 to 1.3 times the nominal
    rate, depending on the seed, so "80 %" could be a lighter load than "50 %".
    """
    rng = random.Random(seed)
    return sorted(rng.uniform(0, count / rate) for _ in range(count))


def sustained(arrivals: list[float], replies: list[float], new_tokens: int) -> dict[str, float]:
    """Offered and sustained tokens/s of one run, both free of warm-up and drain.

    ``arrivals`` and ``replies`` are the submit and finish times (seconds, any clock, one per
    request). Offered: ``(n - 1) x new_tokens`` over the span of the arrivals; sustained: the
    same over the span of the replies. Equal spans (a constant delay) give equal figures; a
    backlog that grows over the run stretches the replies' span. Empty figures (0.0) for
    fewer than two requests.
    """
    n = len(arrivals)
    if n < 2:
        return {"offered_tok_s": 0.0, "sustained_tok_s": 0.0, "sustained_share": 0.0}
    work = (n - 1) * new_tokens
    offered = work / max(max(arrivals) - min(arrivals), 1e-9)
    kept = work / max(max(replies) - min(replies), 1e-9)
    return {"offered_tok_s": offered, "sustained_tok_s": kept, "sustained_share": kept / offered}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


class Bench:
    """The same requests through either backend: ``submit`` is ``GenerationWorker.submit`` or
    ``VllmBackend.submit``; tickets must carry ``submitted_at`` and ``first_token_at``."""

    def __init__(
        self, submit: Callable[[GenerationRequest], Any], tok: Any, new_tokens: int, max_batch_size: int
    ) -> None:
        self.submit = submit
        self.max_batch_size = max_batch_size
        params = GenerationParams(
            temperature=0, max_new_tokens=new_tokens, min_new_tokens=new_tokens, repetition_penalty=1.0
        )
        self.requests = [
            GenerationRequest(p, prompt_of(tok, 7 * i), params, adapter=p) for i, p in enumerate(PERSONAS * 4)
        ]
        self.new_tokens = new_tokens

    def request(self, i: int) -> GenerationRequest:
        return self.requests[i % len(self.requests)]

    async def single_latency(self, repeats: int = 3) -> float:
        times = []
        for i in range(repeats):
            start = time.perf_counter()
            await self.submit(self.request(i)).result()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    async def capacity(self) -> float:
        """Requests per second with a full batch submitted at once (two rounds)."""
        n = 2 * self.max_batch_size
        start = time.perf_counter()
        tickets = [self.submit(self.request(i)) for i in range(n)]
        for t in tickets:
            await t.result()
        return n / (time.perf_counter() - start)

    async def poisson(self, rate: float, count: int, seed: int) -> dict[str, float]:
        tickets: list[tuple[float, Any]] = []
        done: dict[int, float] = {}

        async def finish(ticket: Any) -> None:
            result = await ticket.result()
            assert result.new_tokens == self.new_tokens, result.new_tokens
            done[id(ticket)] = time.monotonic()

        waits = []
        start = time.monotonic()
        for i, offset in enumerate(arrival_times(count, rate, seed)):
            await asyncio.sleep(max(0.0, start + offset - time.monotonic()))
            ticket = self.submit(self.request(i))
            tickets.append((ticket.submitted_at, ticket))
            waits.append(asyncio.ensure_future(finish(ticket)))
        await asyncio.gather(*waits)
        end = max(done.values())
        latencies = [done[id(t)] - submitted for submitted, t in tickets]
        ttfts = [t.first_token_at - submitted for submitted, t in tickets]
        arrivals = [submitted for submitted, _ in tickets]
        row = {
            "rate_per_s": rate,
            "tok_s": count * self.new_tokens / (end - start),
            **sustained(arrivals, list(done.values()), self.new_tokens),
            "ttft_p50_s": statistics.median(ttfts),
            "ttft_p99_s": percentile(ttfts, 99),
            "latency_p50_s": statistics.median(latencies),
            "latency_p99_s": percentile(latencies, 99),
        }
        # Where time to first token goes (local engine): waiting in the queue for a free row, then
        # from admission to the first token (the prefill, behind the step under way).
        admitted = [(submitted, t) for submitted, t in tickets if getattr(t, "admitted_at", None) is not None]
        if len(admitted) == len(tickets):
            queued = [t.admitted_at - submitted for submitted, t in admitted]
            firsts = [t.first_token_at - t.admitted_at for _, t in admitted]
            row.update(
                queue_wait_p99_s=percentile(queued, 99),
                admitted_to_first_token_p99_s=percentile(firsts, 99),
            )
        return row


async def run(args: argparse.Namespace, workdir: Path) -> dict:
    def build() -> Engine:
        model_dir = build_tiny_model(workdir / "model", "gpt-neox", seed=0, shape=SHAPES[args.shape])
        engine = Engine.from_settings(
            ModelSettings(base_model=str(model_dir), device=args.device, dtype=args.dtype)
        )
        for i, persona in enumerate(PERSONAS, 1):
            path = build_random_adapter(model_dir, workdir / persona, seed=i, r=8)
            engine.load_adapter(persona, AdapterSource(str(path), "bench", True))
        return engine

    settings = WorkerSettings(
        max_batch_size=args.max_batch_size,
        batch_window_ms=10,
        queue_size=1024,
        scheduler="continuous" if args.scheduler == "both" else args.scheduler,
        request_timeout_s=3600,  # a slow machine must give figures, not timeouts
        prefix_cache_mb=args.cache_mb,
    )
    worker = await GenerationWorker.launch(build, settings)
    try:
        bench = Bench(worker.submit, worker.engine.tokenizer, args.new_tokens, args.max_batch_size)
        schedulers = ["continuous", "static"] if args.scheduler == "both" else [args.scheduler]

        def use(scheduler: str) -> None:
            worker.settings = dataclasses.replace(worker.settings, scheduler=scheduler)

        single, capacity, rows = await measure(bench, args, schedulers, use)
        device = worker.engine.device
        dtype = str(worker.engine.pool.model.dtype).removeprefix("torch.")
    finally:
        await worker.stop()
    return {
        "rates": rows,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({cpu_model()})",
        "shape": args.shape,
        "scheduler": args.scheduler,
        "capacity_req_s": capacity,
        "single_latency_s": single,
        "requests_per_rate": args.requests,
        "new_tokens": args.new_tokens,
        "max_batch_size": args.max_batch_size,
        "dtype": dtype,
        "torch_threads": torch.get_num_threads(),
        "cache_mb": args.cache_mb,
    }


async def run_vllm(args: argparse.Namespace) -> dict:
    """The same arrivals through a vLLM server already running on ``--workdir``'s model."""
    from benchmarks.hotswap import build_bench_model
    from benchmarks.vllm_common import connect_vllm

    model_dir, adapters = build_bench_model(args.shape, args.workdir)
    backend = await connect_vllm(args.vllm_url, model_dir, adapters, queue_size=1024)
    try:
        bench = Bench(backend.submit, backend.tokenizer, args.new_tokens, args.max_batch_size)
        single, capacity, rows = await measure(bench, args, ["vllm"], lambda _name: None)
    finally:
        await backend.stop(drain_timeout=5)
    return {
        "rates": rows,
        "device": f"vllm at {args.vllm_url} (bot on cpu: {cpu_model()})",
        "shape": args.shape,
        "scheduler": "vllm",
        "backend": "vllm",
        "capacity_req_s": capacity,
        "single_latency_s": single,
        "requests_per_rate": args.requests,
        "new_tokens": args.new_tokens,
        "max_batch_size": args.max_batch_size,
    }


async def measure(
    bench: Bench, args: argparse.Namespace, schedulers: list[str], use: Callable[[str], None]
) -> tuple[float, float, list[dict]]:
    """One request alone (seconds), the capacity (requests/s), then Poisson arrivals at each rate
    for each scheduler, alternating their order per rate so a drifting machine load biases
    neither. ``use(name)`` switches the backend to that scheduler."""
    await bench.single_latency(1)  # warm-up
    single = await bench.single_latency()
    capacity = await bench.capacity()
    rates = args.rates or [round(load * capacity, 3) for load in LOADS]
    rows = []
    for k, rate in enumerate(rates):
        order = schedulers if k % 2 == 0 else schedulers[::-1]
        for scheduler in order:
            use(scheduler)
            row = await bench.poisson(rate, args.requests, args.seed + k)
            row["single_latency_s"] = single
            row["p99_over_single"] = row["latency_p99_s"] / single
            if len(schedulers) > 1:
                row["scheduler"] = scheduler
            rows.append(row)
            print(
                f"{scheduler:10s} rate {rate:5.2f}/s  tok/s {row['tok_s']:6.1f}  TTFT p50 {row['ttft_p50_s']:.2f}s "
                f"p99 {row['ttft_p99_s']:.2f}s  latency p50 {row['latency_p50_s']:.2f}s "
                f"p99 {row['latency_p99_s']:.2f}s  p99/single {row['p99_over_single']:.1f}  "
                f"sustained {row['sustained_tok_s']:.1f} of {row['offered_tok_s']:.1f} offered tok/s"
                + (
                    f"  queue wait p99 {row['queue_wait_p99_s']:.2f}s, admitted→first token p99 "
                    f"{row['admitted_to_first_token_p99_s']:.2f}s"
                    if "queue_wait_p99_s" in row
                    else ""
                ),
                flush=True,
            )
    return single, capacity, rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.load",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--shape", choices=sorted(SHAPES), default="neox-12x768")
    parser.add_argument("--scheduler", choices=("continuous", "static", "both"), default="continuous")
    parser.add_argument("--requests", type=int, default=40, help="requests per arrival rate")
    parser.add_argument("--new-tokens", type=int, default=NEW_TOKENS)
    parser.add_argument(
        "--rates", type=float, nargs="+", help="arrival rates per second (default: 25/50/80 %% of capacity)"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", choices=DTYPES, default="auto", help="the model's dtype (model.dtype)")
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=MAX_BATCH_SIZE,
        help="rows generated together (worker.max_batch_size); the capacity is measured with two full batches",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    parser.add_argument(
        "--cache-mb", type=int, default=0, help="the local engine's prefix cache in MiB (0: off, the default)"
    )
    parser.add_argument("--backend", choices=("local", "vllm"), default="local")
    parser.add_argument("--vllm-url", help="base URL of a vLLM server running on --workdir's model")
    parser.add_argument("--workdir", type=Path, help="keep the model and adapters here (needed with vllm)")
    args = parser.parse_args(argv)
    if args.max_batch_size < 1 or args.requests < 1:
        parser.error("--max-batch-size and --requests must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.backend == "vllm":
        from benchmarks.vllm_common import BenchmarkSetupError

        if not args.vllm_url or not args.workdir:
            print("error: --backend vllm needs --vllm-url URL and --workdir DIR", file=sys.stderr)
            return 2
        try:
            result = asyncio.run(run_vllm(args))
        except BenchmarkSetupError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    else:
        with tempfile.TemporaryDirectory(prefix="oshaberi-load-") as tmp:
            result = asyncio.run(run(args, Path(tmp)))
    print(
        f"device {result['device']}, shape {args.shape}, dtype {result.get('dtype', 'server')}, "
        f"scheduler {args.scheduler}, "
        f"one request alone {result['single_latency_s']:.2f}s, capacity {result['capacity_req_s']:.2f} req/s"
    )
    write_figures(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
