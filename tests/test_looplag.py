"""bot/ops/looplag.py: the event-loop lag monitor's statistics, its bounded memory, and that it
really sees a blocked loop."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from bot.discord.admin_text import status_lines
from bot.ops.looplag import LagSummary, LoopLagMonitor, percentile
from bot.serving.generation import WorkerStats


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) == 0.0


def test_summary_of_recorded_samples() -> None:
    monitor = LoopLagMonitor(interval_s=0.1)
    for v in [*[1.0] * 98, 50.0, 200.0]:
        monitor.record(v)
    monitor.record(-0.5)  # a coarse clock can wake "early": counted as no lag
    summary = monitor.summary()
    assert summary.samples == 101
    assert summary.p50_ms == 1.0
    assert summary.p99_ms == 50.0
    assert summary.max_ms == 200.0
    assert summary.line() == "loop lag p50=1.0 p99=50.0 max=200.0 ms (101 samples every 100 ms)"


def test_reservoir_stays_bounded_and_representative() -> None:
    monitor = LoopLagMonitor(reservoir_size=500, rng=random.Random(1))
    # 10,000 samples: the first half 1 ms, the second half 9 ms. A "keep the newest" buffer
    # would report 9 ms; a uniform reservoir keeps both halves.
    for i in range(10_000):
        monitor.record(1.0 if i < 5_000 else 9.0)
    monitor.record(123.0)
    assert len(monitor._reservoir) == 500
    held = monitor._reservoir
    share_of_ones = held.count(1.0) / len(held)
    assert 0.4 < share_of_ones < 0.6
    summary = monitor.summary()
    assert summary.samples == 10_001
    assert summary.max_ms == 123.0  # the maximum is exact, reservoir or not


def test_rejects_bad_settings() -> None:
    with pytest.raises(ValueError):
        LoopLagMonitor(interval_s=0)
    with pytest.raises(ValueError):
        LoopLagMonitor(reservoir_size=0)


async def test_measures_a_blocked_loop() -> None:
    monitor = LoopLagMonitor(interval_s=0.01)
    monitor.start()
    monitor.start()  # idempotent
    assert monitor.running
    await asyncio.sleep(0.05)
    time.sleep(0.12)  # block the loop, as a synchronous call in a handler would
    await asyncio.sleep(0.05)
    summary = await monitor.stop()
    assert not monitor.running
    assert summary.samples >= 3
    assert summary.max_ms >= 90.0  # the sleeper woke ~120 ms late
    assert summary.p50_ms < summary.max_ms
    again = await monitor.stop()  # stopping twice is harmless
    assert again.samples == summary.samples


def test_status_shows_the_loop_lag() -> None:
    stats = WorkerStats(queue_depth=0, queue_capacity=8, in_flight=0)
    lag = LagSummary(samples=1200, p50_ms=0.4, p99_ms=3.2, max_ms=17.0, interval_ms=100)
    text = "\n".join(status_lines(stats, None, 0, lag))
    assert "**Event loop**: lag p50 0.4 ms, p99 3.2 ms, max 17.0 ms (1,200 samples)" in text
    assert "Event loop" not in "\n".join(status_lines(stats, None, 0))
    empty = LagSummary(samples=0, p50_ms=0, p99_ms=0, max_ms=0, interval_ms=100)
    assert "Event loop" not in "\n".join(status_lines(stats, None, 0, empty))
