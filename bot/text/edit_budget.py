"""How many posts, edits and deletes the streamed replies sharing one webhook may make, and in
what order.

Every persona reply in a channel goes through that channel's one webhook, and Discord's
per-webhook limit is low (about 5 requests per 2 s; discord/discord-api-docs#1454, #367). Each
reply paces itself (``chat.stream_edit_interval_s``), but several replies streaming at once in
one channel add up: their drafts used to meet 429 after 429 and a reply's final edit could run
out of retries while drafts of other replies went through. An :class:`EditBudget` is shared by
all replies of one webhook: at most ``capacity`` rounds per ``period_s``, a 429 pauses them all
until its Retry-After has passed, and a final round (the text that is logged) always goes before
any waiting draft, which is only ever an intermediate state and can wait.

Discord-free: the key is whatever the front end shares a limit on (the webhook's channel).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Callable

from cachetools import LRUCache

# Discord does not document webhook limits; its headers and reports give about 5 per 2 s. One
# slot is left for the webhook's other users (a non-streamed reply, a review card elsewhere).
DEFAULT_CAPACITY = 4
DEFAULT_PERIOD_S = 2.0


class EditBudget:
    """A sliding window of ``capacity`` rounds per ``period_s`` seconds, finals first."""

    def __init__(
        self,
        capacity: int = DEFAULT_CAPACITY,
        period_s: float = DEFAULT_PERIOD_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if capacity < 1 or period_s <= 0:
            raise ValueError("capacity must be >= 1 and period_s > 0")
        self.capacity = capacity
        self.period_s = period_s
        self.clock = clock
        self._granted: collections.deque[float] = collections.deque()
        self._paused_until = float("-inf")
        self._finals_waiting = 0
        self._changed = asyncio.Condition()

    def _wait_s(self) -> float:
        """Seconds until one more round may start (0: now)."""
        now = self.clock()
        while self._granted and now - self._granted[0] >= self.period_s:
            self._granted.popleft()
        wait = max(0.0, self._paused_until - now)
        if len(self._granted) >= self.capacity:
            wait = max(wait, self._granted[0] + self.period_s - now)
        return wait

    async def acquire(self, *, final: bool) -> None:
        """Wait for a round. A final round waits for the window only; a draft also waits while
        any final round is waiting."""
        if final:
            self._finals_waiting += 1
        try:
            async with self._changed:
                while True:
                    wait = self._wait_s()
                    if wait <= 0 and (final or self._finals_waiting == 0):
                        self._granted.append(self.clock())
                        return
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._changed.wait(), wait if wait > 0 else None)
        finally:
            if final:
                self._finals_waiting -= 1
                await self._notify()

    async def rate_limited(self, retry_after_s: float) -> None:
        """The platform answered 429: no round for anyone sharing this budget until it passes."""
        self._paused_until = max(self._paused_until, self.clock() + max(retry_after_s, 0.0))
        await self._notify()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    @property
    def finals_waiting(self) -> int:
        return self._finals_waiting


class EditBudgets:
    """One :class:`EditBudget` per key (a webhook's channel), made on first use; the
    ``max_keys`` most recently used are kept (a channel quiet for that long starts afresh)."""

    def __init__(
        self, capacity: int = DEFAULT_CAPACITY, period_s: float = DEFAULT_PERIOD_S, max_keys: int = 4096
    ) -> None:
        self.capacity = capacity
        self.period_s = period_s
        self._budgets: LRUCache[object, EditBudget] = LRUCache(maxsize=max_keys)

    def for_key(self, key: object) -> EditBudget:
        budget = self._budgets.get(key)  # a hit counts as a use (LRUCache.get reads through [])
        if budget is None:
            budget = self._budgets[key] = EditBudget(self.capacity, self.period_s)
        return budget

    def __len__(self) -> int:
        return len(self._budgets)
