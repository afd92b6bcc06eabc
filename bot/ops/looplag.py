"""Event-loop lag: how late the event loop wakes a task that asked to sleep.

Why: the bot promises that discord.py's event loop never waits on the model (generation runs
on the worker thread). If something blocks the loop anyway (a synchronous call, a long
regex, a burst of JSON), heartbeats and interaction acknowledgements (3 s) are late, and the
only symptom would be sporadic "Unknown interaction" errors. A background task that sleeps a
fixed interval and records how much later than asked it woke up measures exactly that, at a
cost of a few wake-ups per second.

Samples go into a fixed-size reservoir (Vitter's algorithm R), so memory stays bounded however
long the bot runs while the percentiles still describe the whole run, not only its last minutes.
Discord-free: the bot shows the summary in ``/status`` and logs it once at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_INTERVAL_S = 0.1
DEFAULT_RESERVOIR = 4096


@dataclass(frozen=True)
class LagSummary:
    """Percentiles of the sampled lag, in milliseconds."""

    samples: int  # samples taken in all (the reservoir holds at most its size of them)
    p50_ms: float
    p99_ms: float
    max_ms: float  # exact: tracked over every sample, not only the reservoir
    interval_ms: float

    def line(self) -> str:
        """One log line; the e2e harness parses it from the bot's log."""
        return (
            f"loop lag p50={self.p50_ms:.1f} p99={self.p99_ms:.1f} max={self.max_ms:.1f} ms "
            f"({self.samples} samples every {self.interval_ms:.0f} ms)"
        )


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of an ascending list; 0.0 for an empty one."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


class LoopLagMonitor:
    """Samples the running loop's lag every ``interval_s`` into a bounded reservoir.

    ``start()`` on the running loop, ``await stop()`` at shutdown; ``record()`` is public so the
    statistics are tested without sleeping.
    """

    def __init__(
        self,
        interval_s: float = DEFAULT_INTERVAL_S,
        reservoir_size: int = DEFAULT_RESERVOIR,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if interval_s <= 0 or reservoir_size < 1:
            raise ValueError("interval_s must be > 0 and reservoir_size >= 1")
        self.interval_s = interval_s
        self.reservoir_size = reservoir_size
        self._clock = clock
        self._rng = rng or random.Random(0)
        self._reservoir: list[float] = []
        self._count = 0
        self._max = 0.0
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def record(self, lag_ms: float) -> None:
        """Add one sample (negative values, from a coarse clock, count as 0)."""
        lag_ms = max(0.0, lag_ms)
        self._count += 1
        self._max = max(self._max, lag_ms)
        if len(self._reservoir) < self.reservoir_size:
            self._reservoir.append(lag_ms)
            return
        slot = self._rng.randrange(self._count)  # algorithm R: keep each sample with p = size/count
        if slot < self.reservoir_size:
            self._reservoir[slot] = lag_ms

    def summary(self) -> LagSummary:
        values = sorted(self._reservoir)
        return LagSummary(
            samples=self._count,
            p50_ms=percentile(values, 50),
            p99_ms=percentile(values, 99),
            max_ms=self._max,
            interval_ms=self.interval_s * 1000,
        )

    def start(self) -> None:
        """Begin sampling on the running loop (a second call is a no-op)."""
        if not self.running:
            self._task = asyncio.get_running_loop().create_task(self._sample(), name="loop-lag-monitor")

    async def stop(self) -> LagSummary:
        """Stop sampling and return the summary of the whole run."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        return self.summary()

    async def _sample(self) -> None:
        while True:
            asked = self._clock()
            await asyncio.sleep(self.interval_s)
            self.record((self._clock() - asked - self.interval_s) * 1000)
