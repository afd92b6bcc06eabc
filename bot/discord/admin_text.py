"""The /status text, built from plain data so it is tested without Discord."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from bot.ops.looplag import LagSummary
from bot.serving.adapter_labels import persona_adapter_labels


def status_lines(
    stats: Any,
    store_stats: dict[str, int] | None,
    spooled: int,
    loop_lag: LagSummary | None = None,
    persona_ids: Iterable[str] = (),
) -> list[str]:
    """The /status text, from the worker's stats (Discord-free so it is easy to test).

    With ``persona_ids``, one line per persona says which adapter it serves or ``prompt-only``.
    """
    sizes = list(getattr(stats, "recent_batch_sizes", []) or [])
    avg = sum(sizes) / len(sizes) if sizes else 0.0
    lines = [
        f"**Queue**: {stats.queue_depth}/{stats.queue_capacity} waiting, {stats.in_flight} generating",
        f"**Batches**: {stats.batches_run} run; recent sizes avg {avg:.1f}, max {max(sizes, default=0)}"
        f" (last: {', '.join(map(str, sizes[-8:])) or '—'})",
        f"**Speed**: {stats.tokens_per_s:.1f} tokens/s; {stats.requests_failed} requests failed",
    ]
    memory = stats.device_memory_mb
    lines.append(
        f"**Device**: {stats.device}" + (f", {memory:,.0f} MiB in use" if memory is not None else "")
    )
    lines += prefix_cache_lines(stats)
    lines += server_lines(getattr(stats, "servers", []) or [])
    adapters = getattr(stats, "adapters", []) or []
    canaries = getattr(stats, "canaries", []) or []
    labels = persona_adapter_labels(persona_ids, adapters, canaries)
    if labels:
        lines.append("**Personas**: " + ", ".join(f"`{pid}` {label}" for pid, label in labels.items()))
    if adapters:
        lines.append("**Adapters**:")
        lines += [
            f"• `{a.name}`: {a.version or 'unversioned'} ({a.parameters:,} parameters)" for a in adapters
        ]
        lines += [
            f"• `{c.name}` canary: {c.version or 'unversioned'} for {c.share:.0%} of requests"
            for c in canaries
        ]
    else:
        lines.append("**Adapters**: none loaded (prompt-only personas)")
    if store_stats is not None:
        lines.append(
            f"**Reviews**: {store_stats['undecided']} awaiting a decision, {store_stats['decided']} decided, "
            f"{store_stats['blocked']} blocked by the word filter"
        )
    if loop_lag is not None and loop_lag.samples:
        # A slow event loop delays heartbeats and the 3 s interaction acknowledgements.
        lines.append(
            f"**Event loop**: lag p50 {loop_lag.p50_ms:.1f} ms, p99 {loop_lag.p99_ms:.1f} ms, "
            f"max {loop_lag.max_ms:.1f} ms ({loop_lag.samples:,} samples)"
        )
    if spooled:
        lines.append(f"⚠️ {spooled} log entries are waiting for the database")
    return lines


def prefix_cache_lines(stats: Any) -> list[str]:
    """How much of the prompts was read from a prefix cache (issue 20): the local engine's own
    cache with its memory, or the vLLM servers' (their counters, since each server started)."""
    rate = getattr(stats, "prefix_cache_hit_rate", None)
    budget = getattr(stats, "prefix_cache_budget_mb", None)
    if budget is not None and not budget:
        return ["**Prefix cache**: off (worker.prefix_cache_mb = 0)"]
    if rate is None:
        return []
    line = f"**Prefix cache**: {rate:.0%} of prompt tokens reused"
    reused = getattr(stats, "prompt_tokens_reused", 0) or 0
    computed = getattr(stats, "prompt_tokens_computed", 0) or 0
    if reused or computed:
        line += f" ({reused:,} reused, {computed:,} computed)"
    if budget:
        line += f"; {stats.prefix_cache_used_mb:,.0f} of {budget:,.0f} MiB in use"
    return [line]


def server_lines(servers: list[Any]) -> list[str]:
    """One line per serving server (vLLM backend): health, load, and each problem named."""
    if not servers:
        return []
    lines = ["**Servers**:"]
    for s in servers:
        if s.healthy:
            rate = getattr(s, "prefix_cache_hit_rate", None)
            lines.append(
                f"• `{s.url}`: ✅ healthy, {s.outstanding} in flight, {s.served} served, {s.failed} failed, "
                f"{s.adapters} adapters" + (f", prefix cache hit rate {rate:.0%}" if rate is not None else "")
            )
        else:
            lines.append(f"• `{s.url}`: ❌ {s.problem or 'down'}")
        lines += [f"  ⚠️ {problem}" for problem in s.adapter_problems]
    return lines
