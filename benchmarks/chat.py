"""Serving the way chat arrives: persona channels whose prompts grow with every message.

    python -m benchmarks.chat --out chat.json                       # local engine, prefix cache on (1024 MiB)
    python -m benchmarks.chat --cache-mb 1024 0 --repeats 3 --out chat.json   # on and off, interleaved
    python -m benchmarks.chat --shape tiny --channels 3 --turns 2   # a quick look
    python -m benchmarks.chat --backend vllm --vllm-url http://127.0.0.1:8000 --workdir bench-model
                                      # the same channels through a vLLM server (docs/vllm.md)

The workload (issue 20): ``--channels`` channels, one per persona in turn, each a conversation
rendered by the real renderer from the real cards in ``personas/``. A channel opens with
``--history-turns`` earlier exchanges already in it (the persona's own questions and example
replies, as Discord would read them back), and its member then sends ``--turns`` messages, each
after the previous reply arrived plus a think time (exponential, mean ``--think-s``). Channels
open at Poisson times (``--channel-rate`` per second). Every reply is ``--new-tokens`` tokens,
greedy, and goes back into the channel's history as the renderer would show it, so the history
grows to the card's budget and is trimmed in steps. The same model shape and adapters as the
other benchmarks (GPT-NeoX 12x768 with random weights on CPU; ``--shape rinna-3.6b`` on a GPU).

First a *solo* channel runs alone (``--solo-turns`` messages one after another, no think time):
its follow-ups give the time to first token of one ~800-token prompt in an active channel
(``solo_ttft_followup_s``). Then all channels run together. Per run (one per ``--cache-mb`` value
and repeat, the values alternating in order per repeat so a drifting machine biases none):
``ttft_first_*`` (a channel's first message), ``ttft_followup_*`` (a message in an active
channel), ``latency_*``, ``tok_s`` (generated tokens over the wall time), ``prompt_tokens_computed``
and ``prompt_tokens_reused`` (prefilled vs. taken from the prefix cache), ``cache_mb``.

With ``--backend vllm`` the server's own prefix caching applies (``--cache-mb`` does not); the
reused tokens are the server's ``vllm:prefix_cache_hits`` over the run. Figures, not assertions:
targets are judged by reading them, never in timed tests.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import torch

from benchmarks.hotswap import PERSONAS, SHAPES, build_bench_model, write_figures
from benchmarks.load import DTYPES, cpu_model, percentile
from bot.config import ModelSettings, WorkerSettings
from bot.model.adapters import AdapterSource
from bot.model.loading import encode_prompt
from bot.serving.generation import GenerationRequest
from bot.serving.local.engine import Engine
from bot.serving.local.worker import GenerationWorker
from personas.card import CardSet, PersonaCard, load_cards
from personas.render import PromptRenderer, TokenizerFacts, Turn

MAX_BATCH_SIZE = 8
RUN_KEYS = (
    "ttft_first_p50_s",
    "ttft_first_p99_s",
    "ttft_followup_p50_s",
    "ttft_followup_p99_s",
    "latency_p50_s",
    "latency_p99_s",
    "tok_s",
    "solo_ttft_followup_s",
)


def bench_cards(new_tokens: int) -> CardSet:
    """The shipped cards, greedy, with replies of exactly ``new_tokens`` tokens."""
    cards = load_cards()
    out = {}
    for pid, card in cards.cards.items():
        params = dataclasses.replace(
            card.generation,
            temperature=0.0,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
        )
        out[pid] = dataclasses.replace(card, generation=params)
    return CardSet(out, [])


def questions(card: PersonaCard) -> list[str]:
    """The persona's everyday openers (``personas/<id>/questions.txt``)."""
    path = Path(__file__).resolve().parents[1] / "personas" / card.id / "questions.txt"
    return [
        line for line in path.read_text(encoding="utf-8").splitlines() if line and not line.startswith("#")
    ]


@dataclasses.dataclass
class Channel:
    """One persona channel: its history, where its member's lines come from, its figures."""

    number: int
    card: PersonaCard
    renderer: PromptRenderer
    lines: list[str]
    history: list[Turn] = dataclasses.field(default_factory=list)
    said: int = 0

    @classmethod
    def open(cls, number: int, card: PersonaCard, renderer: PromptRenderer, history_turns: int) -> Channel:
        lines = questions(card)
        channel = cls(number, card, renderer, lines[number % 7 :] + lines[: number % 7])
        replies = [ex.reply for ex in card.examples] or ["そうだね。"]
        for k in range(history_turns):
            channel.history.append(Turn(card.user_label, channel.next_line()))
            channel.history.append(Turn(card.speaker, replies[(number + k) % len(replies)], True))
        return channel

    def next_line(self) -> str:
        line = self.lines[self.said % len(self.lines)]
        self.said += 1
        return line

    def request(self) -> GenerationRequest:
        self.history.append(Turn(self.card.user_label, self.next_line()))
        rendered = self.renderer.render_prompt(self.history)
        return GenerationRequest.for_card(
            self.card, rendered, adapter=self.card.id, conversation=f"channel:{self.number}"
        )

    def answered(self, text: str) -> None:
        # A random-weight model writes stop strings anywhere; a real one ends its turn. The reply
        # goes back as the renderer shows a finished turn, so it keeps its length.
        self.history.append(Turn(self.card.speaker, self.renderer.sanitize(text) or "…", True))


class ChatBench:
    """The workload over either backend: ``submit`` returns tickets with ``submitted_at``,
    ``first_token_at`` and ``result()``; ``counters()`` gives (reused, computed) prompt tokens."""

    def __init__(self, submit: Callable[[GenerationRequest], Any], tokenizer: Any, args: argparse.Namespace):
        self.submit = submit
        self.tokenizer = tokenizer
        self.args = args
        self.cards = bench_cards(args.new_tokens)
        self.facts = TokenizerFacts.from_tokenizer(tokenizer)

    def channels(self, count: int, first_number: int, history_turns: int) -> list[Channel]:
        renderers = {pid: PromptRenderer(card, self.facts) for pid, card in self.cards.cards.items()}
        out = []
        for n in range(first_number, first_number + count):
            card = self.cards.get(PERSONAS[n % len(PERSONAS)])
            out.append(Channel.open(n, card, renderers[card.id], history_turns))
        return out

    async def ask(self, channel: Channel) -> dict[str, float]:
        request = channel.request()
        ticket = self.submit(request)
        result = await ticket.result()
        done = time.monotonic()
        channel.answered(result.text)
        return {
            "ttft": ticket.first_token_at - ticket.submitted_at,
            "latency": done - ticket.submitted_at,
            "tokens": result.new_tokens,
            "prompt_tokens": len(encode_prompt(self.tokenizer, request.prompt)),
            "end": done,
            "start": ticket.submitted_at,
        }

    async def solo(self, number: int) -> dict[str, float]:
        """One channel alone, its messages back to back: the follow-ups' time to first token."""
        [channel] = self.channels(1, number, self.args.history_turns)
        asked = [await self.ask(channel) for _ in range(self.args.solo_turns)]
        follow = asked[1:] or asked
        return {
            "solo_ttft_first_s": asked[0]["ttft"],
            "solo_ttft_followup_s": statistics.median(m["ttft"] for m in follow),
            "solo_prompt_tokens": statistics.mean(m["prompt_tokens"] for m in follow),
        }

    async def together(self, number: int, seed: int) -> dict[str, float]:
        """Every channel: Poisson openings, members who wait for the reply, then think."""
        args = self.args
        rng = random.Random(seed)
        opens = list(itertools.accumulate(rng.expovariate(args.channel_rate) for _ in range(args.channels)))
        thinks = [
            [rng.expovariate(1 / args.think_s) if args.think_s > 0 else 0.0 for _ in range(args.turns)]
            for _ in range(args.channels)
        ]
        firsts: list[dict] = []
        follows: list[dict] = []

        async def member(channel: Channel, opens_at: float, pauses: list[float]) -> None:
            await asyncio.sleep(opens_at)
            for k in range(args.turns):
                (firsts if k == 0 else follows).append(await self.ask(channel))
                await asyncio.sleep(pauses[k])

        channels = self.channels(args.channels, number, args.history_turns)
        await asyncio.gather(*(member(c, o, p) for c, o, p in zip(channels, opens, thinks, strict=True)))
        every = firsts + follows
        wall = max(m["end"] for m in every) - min(m["start"] for m in every)
        return {
            "messages": len(every),
            "ttft_first_p50_s": statistics.median(m["ttft"] for m in firsts),
            "ttft_first_p99_s": percentile([m["ttft"] for m in firsts], 99),
            "ttft_followup_p50_s": statistics.median(m["ttft"] for m in follows) if follows else float("nan"),
            "ttft_followup_p99_s": percentile([m["ttft"] for m in follows], 99) if follows else float("nan"),
            "latency_p50_s": statistics.median(m["latency"] for m in every),
            "latency_p99_s": percentile([m["latency"] for m in every], 99),
            "tok_s": sum(m["tokens"] for m in every) / wall,
            "prompt_tokens_mean": statistics.mean(m["prompt_tokens"] for m in every),
            "prompt_tokens_max": max(m["prompt_tokens"] for m in every),
        }


async def measure(
    bench: ChatBench,
    settings: list[int | None],
    use: Callable[[int | None], Any],
    counters: Callable[[], Any],
) -> list[dict]:
    """Each setting per repeat (alternating order): a solo channel, then all channels; ``use(mb)``
    switches the cache (emptying it), ``counters()`` gives the (reused, computed) prompt tokens."""
    args = bench.args
    await bench.solo(10_000)  # warm-up, its channels never come back
    runs = []
    for repeat in range(args.repeats):
        order = settings if repeat % 2 == 0 else settings[::-1]
        # The same channels for every setting of a repeat (the local cache is emptied between
        # runs), new ones for the next repeat (a vLLM server's cache cannot be emptied).
        number = repeat * (args.channels + 1)
        for cache_mb in order:
            await use(cache_mb)
            reused0, computed0 = await counters()
            row: dict[str, Any] = {"cache_mb": cache_mb, "repeat": repeat}
            row.update(await bench.solo(number))
            row.update(await bench.together(number + 1, args.seed + repeat))
            reused1, computed1 = await counters()
            row["prompt_tokens_reused"] = int(reused1 - reused0)
            row["prompt_tokens_computed"] = int(computed1 - computed0)
            row["rss_mb"] = psutil.Process().memory_info().rss / 2**20
            runs.append(row)
            print(
                f"cache {cache_mb if cache_mb is not None else 'server':>6} MiB  tok/s {row['tok_s']:6.1f}  "
                f"TTFT first p50 {row['ttft_first_p50_s']:.2f}s p99 {row['ttft_first_p99_s']:.2f}s  "
                f"follow-up p50 {row['ttft_followup_p50_s']:.2f}s p99 {row['ttft_followup_p99_s']:.2f}s  "
                f"latency p50 {row['latency_p50_s']:.2f}s p99 {row['latency_p99_s']:.2f}s  "
                f"solo follow-up TTFT {row['solo_ttft_followup_s']:.2f}s at {row['solo_prompt_tokens']:.0f} tokens  "
                f"prompt tokens reused {row['prompt_tokens_reused']:,} computed {row['prompt_tokens_computed']:,}",
                flush=True,
            )
    return runs


def summary(runs: list[dict]) -> dict[str, dict[str, float]]:
    """Per cache setting, the median of each figure over the repeats."""
    out: dict[str, dict[str, float]] = {}
    for cache_mb in dict.fromkeys(r["cache_mb"] for r in runs):
        mine = [r for r in runs if r["cache_mb"] == cache_mb]
        out[str(cache_mb)] = {
            k: statistics.median(r[k] for r in mine)
            for k in (*RUN_KEYS, "prompt_tokens_reused", "prompt_tokens_computed")
        }
    return out


async def run_local(args: argparse.Namespace, workdir: Path) -> dict:
    def build() -> Engine:
        model_dir, adapters = build_bench_model(args.shape, workdir)
        engine = Engine.from_settings(
            ModelSettings(base_model=str(model_dir), device=args.device, dtype=args.dtype)
        )
        for persona, path in adapters.items():
            engine.load_adapter(persona, AdapterSource(str(path), "bench", True))
        return engine

    settings = WorkerSettings(
        max_batch_size=MAX_BATCH_SIZE, batch_window_ms=10, queue_size=1024, request_timeout_s=3600
    )
    worker = await GenerationWorker.launch(build, settings)
    try:
        bench = ChatBench(worker.submit, worker.engine.tokenizer, args)

        async def use(cache_mb: int | None) -> None:
            def switch(engine: Engine) -> None:
                engine.prefix_cache.set_budget(0)  # empty: every run starts cold
                engine.prefix_cache.set_budget((cache_mb or 0) * 2**20)

            await worker.call(switch)

        async def counters() -> tuple[int, int]:
            stats = worker.engine.prefix_cache.stats()
            return stats.tokens_reused, stats.tokens_computed

        runs = await measure(bench, list(args.cache_mb), use, counters)
        device = worker.engine.device
    finally:
        await worker.stop()
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({cpu_model()})",
        "backend": "local",
        "torch_threads": torch.get_num_threads(),
        "runs": runs,
    }


async def run_vllm(args: argparse.Namespace) -> dict:
    """The same channels through a vLLM server already running on ``--workdir``'s model."""
    from benchmarks.vllm_common import connect_vllm

    model_dir, adapters = build_bench_model(args.shape, args.workdir)
    backend = await connect_vllm(args.vllm_url, model_dir, adapters, queue_size=1024)
    try:
        bench = ChatBench(backend.submit, backend.tokenizer, args)

        async def use(_cache_mb: int | None) -> None:
            return None

        async def counters() -> tuple[float, float]:
            await backend.pool.check_all()  # reads the servers' prefix-cache counters
            stats = backend.stats()
            return stats.prompt_tokens_reused, stats.prompt_tokens_computed

        runs = await measure(bench, [None], use, counters)
    finally:
        await backend.stop(drain_timeout=5)
    return {"device": f"vllm at {args.vllm_url} (bot on cpu: {cpu_model()})", "backend": "vllm", "runs": runs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.chat",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--backend", choices=("local", "vllm"), default="local")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="neox-12x768")
    parser.add_argument(
        "--cache-mb",
        type=int,
        nargs="+",
        default=[1024],
        help="prefix cache budget(s) in MiB; 0 turns reuse off",
    )
    parser.add_argument("--channels", type=int, default=8, help="channels, opened at Poisson times")
    parser.add_argument("--channel-rate", type=float, default=0.25, help="channels opened per second")
    parser.add_argument(
        "--history-turns", type=int, default=10, help="earlier exchanges a channel opens with"
    )
    parser.add_argument("--turns", type=int, default=5, help="messages per channel member")
    parser.add_argument("--think-s", type=float, default=2.0, help="mean pause after a reply (exponential)")
    parser.add_argument("--solo-turns", type=int, default=5, help="messages of the solo channel")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", choices=DTYPES, default="auto", help="the model's dtype (model.dtype)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    parser.add_argument("--vllm-url", help="base URL of a vLLM server running on --workdir's model")
    parser.add_argument("--workdir", type=Path, help="keep the model and adapters here (needed with vllm)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if min(args.cache_mb) < 0 or args.channels < 1 or args.turns < 1 or args.solo_turns < 1:
        print("error: --cache-mb must be >= 0; --channels, --turns and --solo-turns >= 1", file=sys.stderr)
        return 2
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
    elif args.workdir:
        result = asyncio.run(run_local(args, args.workdir))
    else:
        with tempfile.TemporaryDirectory(prefix="oshaberi-chat-") as tmp:
            result = asyncio.run(run_local(args, Path(tmp)))
    result = {
        "device": result["device"],
        "shape": args.shape,
        "backend": result["backend"],
        "workload": {
            k: getattr(args, k)
            for k in (
                "channels",
                "channel_rate",
                "history_turns",
                "turns",
                "think_s",
                "solo_turns",
                "new_tokens",
                "repeats",
                "seed",
                "dtype",
            )
        }
        | {"max_batch_size": MAX_BATCH_SIZE},
        **{k: v for k, v in result.items() if k not in ("device", "backend", "runs")},
        "summary": summary(result["runs"]),
        "runs": result["runs"],
    }
    print(f"device {result['device']}, shape {args.shape}, backend {result['backend']}")
    write_figures(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
