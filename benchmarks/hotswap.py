"""Multi-adapter throughput: is one mixed-persona batch worth more than serial swaps?

    python -m benchmarks.hotswap --out results.json                 # CPU: GPT-NeoX 12x768, vocab 32000
    python -m benchmarks.hotswap --shape rinna-3.6b --quant 4bit    # CUDA: the default base model's shape
    python -m benchmarks.hotswap --backend vllm --vllm-url http://127.0.0.1:8000 --workdir bench-neox
                                    # the same requests on a vLLM server running on bench-neox/model

A model of real shape with random weights, 4 personas each with an r=8 adapter,
8 concurrent requests (2 per persona), 48-token prompts, 32 forced new tokens, greedy:

* A  serial: one request at a time, ``set_adapter`` then ``generate`` (how the seeds did it)
* B  mixed: the same requests through the worker, mixed-adapter batches
* C  single: the same 8 requests in one batch on one adapter with ``generate`` (the ceiling)
* D  switching between resident adapters, and loading one adapter from disk

A, B and C are interleaved over the repeats (in a rotating order), so a machine that is
busy for a while slows all of them alike; each figure is the median of its repeats, shown
with its spread (min-max), and B/A is also given per repeat (paired runs), since one noisy
machine gave B/A anywhere from 0.7 to 22 across separate runs.

With ``--backend vllm`` the model and adapters are written to ``--workdir`` (the server must run
on that folder: the first run prints the command) and A-C go through the vLLM backend: A one
request at a time, B the 8 mixed requests at once, C the 8 on one adapter at once; D is the
time to register an adapter through the runtime LoRA endpoint (vLLM has no "switch").

Figures, not assertions: speed targets live here, never in timed tests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from bot.config import ModelSettings, WorkerSettings
from bot.model.adapters import AdapterSource
from bot.model.loading import encode_prompt
from bot.serving.generation import GenerationRequest
from bot.serving.local.engine import Engine
from bot.serving.local.worker import GenerationWorker
from personas.card import GenerationParams
from trainer.tiny import TinyShape, build_random_adapter, build_tiny_model

SHAPES = {
    "tiny": TinyShape(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128, vocab_size=32000),
    "neox-12x768": TinyShape(
        hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072, vocab_size=32000
    ),
    # rinna/japanese-gpt-neox-3.6b: 36 layers, hidden 2816, 22 heads, vocab 32000.
    "rinna-3.6b": TinyShape(
        hidden_size=2816, num_layers=36, num_heads=22, intermediate_size=11264, vocab_size=32000
    ),
}
PERSONAS = ("marisa", "zundamon", "ojousama", "nucc")
PROMPT_TOKENS = 48
NEW_TOKENS = 32
TEXT_POOL = (
    "今日はとてもいい天気なので、魔法の森まで散歩に行こうと思っているんだけど、"
    "一緒に来てくれるかな。お弁当はずんだ餅にして、紅茶も持っていきますわ。"
    "帰りには駅前のカフェで新しいケーキを食べて、映画の話をしようよ。"
) * 4


@dataclass
class Figures:
    serial_tok_s: float
    mixed_tok_s: float
    single_adapter_tok_s: float
    engine_single_adapter_tok_s: float
    switch_ms: float
    load_ms: float
    adapters_memory_pct: float
    peak_rss_mb: float
    peak_gpu_mb: float | None
    device: str
    spread_tok_s: dict[str, list[float]]  # per figure: [min, max] over the repeats
    mixed_over_serial_runs: list[float]  # B/A of each repeat (A and B ran back to back)


def prompt_of(tokenizer, start: int, length: int = PROMPT_TOKENS) -> str:
    """A prompt of exactly ``length`` tokens, different for each ``start``."""
    text = TEXT_POOL[start % 40 :]
    lo, hi = 1, len(text)
    while lo < hi:  # the longest prefix of at most `length` tokens
        mid = (lo + hi + 1) // 2
        if len(encode_prompt(tokenizer, text[:mid])) <= length:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo]


def write_figures(out: Path | None, figures: dict) -> None:
    """Write a benchmark's figures to ``out`` as indented JSON (nothing when it is None)."""
    if out is not None:
        out.write_text(json.dumps(figures, indent=2) + "\n")
        print(f"wrote {out}")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def stage_count(repeats: int) -> int:
    """Progress units of one run: the build, warm-up + ``repeats`` runs of A, B, C and the engine
    loop, then D's switching and loading."""
    return 1 + 4 * (repeats + 1) + 2


async def run(
    shape_name: str, quant: str, device: str, repeats: int, workdir: Path, progress: tqdm | None = None
) -> Figures:
    """Every torch call runs on the worker thread, as in the bot (see GenerationWorker.launch):
    A, C and D through ``worker.call``, B through ``worker.submit``. ``progress`` (a tqdm bar of
    ``stage_count(repeats)`` units) is advanced between timed runs, never inside one."""
    adapter_dirs: dict[str, Path] = {}
    bar = progress if progress is not None else tqdm(disable=True)
    bar.set_description("building the model and 4 adapters")

    def build() -> Engine:
        model_dir = build_tiny_model(workdir / "model", "gpt-neox", seed=0, shape=SHAPES[shape_name])
        for i, persona in enumerate(PERSONAS, 1):
            adapter_dirs[persona] = build_random_adapter(model_dir, workdir / persona, seed=i, r=8)
        engine = Engine.from_settings(
            ModelSettings(base_model=str(model_dir), quantization=quant, device=device)
        )
        for persona, path in adapter_dirs.items():
            engine.load_adapter(persona, AdapterSource(str(path), "bench", True))
        return engine

    worker = await GenerationWorker.launch(build, WorkerSettings(max_batch_size=8, batch_window_ms=10))
    bar.update(1)
    try:
        return await _measure(worker, adapter_dirs, repeats, bar)
    finally:
        await worker.stop()


async def _measure(
    worker: GenerationWorker, adapter_dirs: dict[str, Path], repeats: int, bar: tqdm
) -> Figures:
    engine = worker.engine
    base_bytes = sum(
        p.numel() * p.element_size() for n, p in engine._peft.named_parameters() if "lora_" not in n
    )
    adapter_bytes = sum(
        p.numel() * p.element_size() for n, p in engine._peft.named_parameters() if "lora_" in n
    )
    tok = engine.tokenizer
    params = GenerationParams(
        temperature=0, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, repetition_penalty=1.0
    )
    requests = [
        GenerationRequest(p, prompt_of(tok, 7 * i), params, adapter=p) for i, p in enumerate(PERSONAS * 2)
    ]
    total_tokens = len(requests) * NEW_TOKENS
    peft = engine._peft
    internal = {name: engine._internal_name(name) for name in PERSONAS}

    def ids_of(batch):
        rows = [encode_prompt(tok, r.prompt) for r in batch]
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), tok.pad_token_id)
        mask = torch.zeros_like(ids)
        for i, row in enumerate(rows):
            ids[i, width - len(row) :] = torch.tensor(row)
            mask[i, width - len(row) :] = 1
        return ids.to(engine.device), mask.to(engine.device)

    def hf_generate(batch, adapter):
        ids, mask = ids_of(batch)
        peft.set_adapter(internal[adapter])
        with torch.inference_mode():
            out = peft.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=NEW_TOKENS,
                min_new_tokens=NEW_TOKENS,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
            )
        sync(engine.device)
        assert out.shape[1] - ids.shape[1] == NEW_TOKENS

    def serial(_engine):
        for r in requests:
            hf_generate([r], r.adapter)

    def single(_engine):
        hf_generate(requests, "marisa")

    def engine_single(_engine):
        one = [GenerationRequest("marisa", r.prompt, params, adapter="marisa") for r in requests]
        results = engine.generate(one)
        assert all(x.new_tokens == NEW_TOKENS for x in results)

    async def mixed() -> None:
        tickets = [worker.submit(r) for r in requests]
        results = [await t.result() for t in tickets]
        assert all(x.new_tokens == NEW_TOKENS for x in results), [x.new_tokens for x in results]
        assert max(x.batch_size for x in results) > 1

    async def once(step) -> float:
        start = time.perf_counter()
        if step is mixed:
            await mixed()
        else:
            await worker.call(step)
        bar.update(1)
        return time.perf_counter() - start

    if engine.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    steps = {"serial": serial, "mixed": mixed, "single": single, "engine_single": engine_single}
    bar.set_description("warm-up")
    for step in steps.values():
        await once(step)
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    for r in range(repeats):
        bar.set_description(f"A/B/C interleaved, repeat {r + 1}/{repeats}")
        # Rotate the order so that no figure always runs first (or right after the slowest).
        for name in names[r % len(names) :] + names[: r % len(names)]:
            seconds[name].append(await once(steps[name]))
    tok_s = {name: [total_tokens / t for t in times] for name, times in seconds.items()}
    median = {name: statistics.median(values) for name, values in tok_s.items()}
    spread = {name: [min(values), max(values)] for name, values in tok_s.items()}
    ratios = [b / a for a, b in zip(tok_s["serial"], tok_s["mixed"], strict=True)]

    def switching(_engine) -> float:
        switches = 200
        start = time.perf_counter()
        for i in range(switches):
            peft.set_adapter(internal[PERSONAS[i % len(PERSONAS)]])
        return (time.perf_counter() - start) / switches * 1000

    def loading(_engine) -> float:
        loads = []
        for _ in range(3):
            start = time.perf_counter()
            engine.load_adapter("marisa", AdapterSource(str(adapter_dirs["marisa"]), "reload", True))
            loads.append(time.perf_counter() - start)
        return statistics.median(loads) * 1000

    bar.set_description("D adapter switching and loading")
    switch_ms = await worker.call(switching)
    bar.update(1)
    load_ms = await worker.call(loading)
    bar.update(1)
    return Figures(
        serial_tok_s=median["serial"],
        mixed_tok_s=median["mixed"],
        single_adapter_tok_s=median["single"],
        engine_single_adapter_tok_s=median["engine_single"],
        switch_ms=switch_ms,
        load_ms=load_ms,
        adapters_memory_pct=100 * adapter_bytes / base_bytes,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        peak_gpu_mb=torch.cuda.max_memory_allocated() / 2**20 if engine.device.type == "cuda" else None,
        device=torch.cuda.get_device_name(engine.device) if engine.device.type == "cuda" else "cpu",
        spread_tok_s=spread,
        mixed_over_serial_runs=ratios,
    )


def build_bench_model(shape_name: str, workdir: Path) -> tuple[Path, dict[str, Path]]:
    """The benchmark's model and 4 adapters in ``workdir``, built once and reused after."""
    model_dir = workdir / "model"
    if not (model_dir / "config.json").is_file():
        build_tiny_model(model_dir, "gpt-neox", seed=0, shape=SHAPES[shape_name])
    adapter_dirs = {}
    for i, persona in enumerate(PERSONAS, 1):
        folder = workdir / persona
        if not (folder / "adapter_config.json").is_file():
            build_random_adapter(model_dir, folder, seed=i, r=8)
        adapter_dirs[persona] = folder
    return model_dir, adapter_dirs


async def run_vllm(url: str, shape_name: str, repeats: int, workdir: Path) -> dict:
    """A-D through the vLLM backend; the same requests as the local run."""
    from benchmarks.vllm_common import connect_vllm, time_adapter_load
    from bot.model.loading import load_tokenizer

    model_dir, adapter_dirs = build_bench_model(shape_name, workdir)
    tok = load_tokenizer(str(model_dir))
    backend = await connect_vllm(url, model_dir, adapter_dirs)
    try:
        params = GenerationParams(
            temperature=0, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, repetition_penalty=1.0
        )
        mixed_requests = [
            GenerationRequest(p, prompt_of(tok, 7 * i), params, adapter=p) for i, p in enumerate(PERSONAS * 2)
        ]
        single_requests = [
            GenerationRequest("marisa", r.prompt, params, adapter="marisa") for r in mixed_requests
        ]
        total_tokens = len(mixed_requests) * NEW_TOKENS

        async def at_once(requests) -> None:
            results = [await t.result() for t in [backend.submit(r) for r in requests]]
            assert all(x.new_tokens == NEW_TOKENS for x in results), [x.new_tokens for x in results]

        async def one_by_one(requests) -> None:
            for r in requests:
                await at_once([r])

        async def timed(step, requests) -> float:
            await step(requests)
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                await step(requests)
                times.append(time.perf_counter() - start)
            return statistics.median(times)

        serial_s = await timed(one_by_one, mixed_requests)
        mixed_s = await timed(at_once, mixed_requests)
        single_s = await timed(at_once, single_requests)
        load_ms = await time_adapter_load(backend, "marisa", adapter_dirs["marisa"])
    finally:
        await backend.stop(drain_timeout=5)
    return {
        "backend": "vllm",
        "vllm_url": url,
        "serial_tok_s": total_tokens / serial_s,
        "mixed_tok_s": total_tokens / mixed_s,
        "single_adapter_tok_s": total_tokens / single_s,
        "load_ms": load_ms,
        "bot_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main_vllm(args: argparse.Namespace) -> int:
    from benchmarks.vllm_common import BenchmarkSetupError, server_command

    if not args.vllm_url or not args.workdir:
        print("error: --backend vllm needs --vllm-url URL and --workdir DIR", file=sys.stderr)
        return 2
    model_dir, _ = build_bench_model(args.shape, args.workdir)
    try:
        result = asyncio.run(run_vllm(args.vllm_url, args.shape, args.repeats, args.workdir))
    except BenchmarkSetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result.update(
        shape=args.shape, requests=len(PERSONAS) * 2, prompt_tokens=PROMPT_TOKENS, new_tokens=NEW_TOKENS
    )
    print(f"backend vllm at {args.vllm_url}, shape {args.shape} (model {model_dir})")
    print(f"A serial (one request at a time):                 {result['serial_tok_s']:8.1f} tok/s")
    print(f"B mixed-adapter requests at once:                 {result['mixed_tok_s']:8.1f} tok/s")
    print(f"C one adapter, the same requests at once:         {result['single_adapter_tok_s']:8.1f} tok/s")
    print(f"D register one adapter on the server {result['load_ms']:.1f} ms")
    print(f"bot process peak RSS {result['bot_peak_rss_mb']:.0f} MB (tokenizer only)")
    write_figures(args.out, result)
    port = urllib.parse.urlsplit(args.vllm_url).port or 8000
    print(f"(server command for this model: {server_command(model_dir, port)})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.hotswap",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--shape", choices=sorted(SHAPES), default="neox-12x768")
    parser.add_argument("--quant", choices=("auto", "none", "4bit", "8bit"), default="auto")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.add_argument("--backend", choices=("local", "vllm"), default="local")
    parser.add_argument("--vllm-url", help="base URL of a vLLM server running on --workdir's model")
    parser.add_argument("--workdir", type=Path, help="keep the model and adapters here (needed with vllm)")
    args = parser.parse_args(argv)
    if args.backend == "vllm":
        return main_vllm(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    # The bar goes to stderr, so the figures on stdout stay clean for a pipe.
    with (
        tempfile.TemporaryDirectory(prefix="oshaberi-bench-") as tmp,
        tqdm(total=stage_count(args.repeats), unit="run", file=sys.stderr, disable=args.no_progress) as bar,
    ):
        fig = asyncio.run(run(args.shape, args.quant, args.device, args.repeats, Path(tmp), bar))
    result = {
        **fig.__dict__,
        "mixed_over_serial": fig.mixed_tok_s / fig.serial_tok_s,
        "mixed_over_single": fig.mixed_tok_s / fig.single_adapter_tok_s,
        "shape": args.shape,
        "quant": args.quant,
        "torch_threads": torch.get_num_threads(),
        "requests": len(PERSONAS) * 2,
        "prompt_tokens": PROMPT_TOKENS,
        "new_tokens": NEW_TOKENS,
    }
    print(
        f"device {result['device']}, shape {args.shape}, quant {args.quant}, threads {result['torch_threads']}"
    )
    lo_hi = fig.spread_tok_s

    def line(label: str, key: str, value: float) -> None:
        print(f"{label} {value:8.1f} tok/s  (median; min {lo_hi[key][0]:.1f}, max {lo_hi[key][1]:.1f})")

    print(f"medians of {args.repeats} interleaved repeats")
    line("A serial (set_adapter + generate, one at a time):", "serial", fig.serial_tok_s)
    line("B mixed-adapter batches through the worker:      ", "mixed", fig.mixed_tok_s)
    line("C one batch, one adapter, generate (ceiling):    ", "single", fig.single_adapter_tok_s)
    line(
        "  one batch, one adapter, engine decode loop:    ", "engine_single", fig.engine_single_adapter_tok_s
    )
    runs = fig.mixed_over_serial_runs
    print(
        f"B/A {result['mixed_over_serial']:.2f} (per repeat: median {statistics.median(runs):.2f}, "
        f"min {min(runs):.2f}, max {max(runs):.2f})   B/C {result['mixed_over_single']:.2f}"
    )
    print(
        f"D switch between resident adapters {fig.switch_ms:.3f} ms, load one from disk {fig.load_ms:.1f} ms"
    )
    print(f"4 resident adapters add {fig.adapters_memory_pct:.2f}% of the base model's parameter memory")
    gpu = f", peak GPU {fig.peak_gpu_mb:.0f} MB" if fig.peak_gpu_mb is not None else ""
    print(f"peak RSS {fig.peak_rss_mb:.0f} MB{gpu}")
    write_figures(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
