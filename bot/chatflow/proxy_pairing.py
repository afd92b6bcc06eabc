"""Pairing a proxy bot's repost with the member message it replaces (PluralKit, Tupperbox).

A proxy bot reads a member's message, reposts its words through its own webhook under the
member's chosen name (proxy tags such as ``[…]`` or ``k:`` removed) and then deletes the
original, about a second later (PluralKit's documented order). Discord names only the webhook as
the repost's author, and PluralKit's API, which would name the member, is not reachable offline.
So the member is found here: the repost is paired with the newest message seen in the same
channel within a short window whose text contains the repost's text. The member who wrote that
original is the repost's author for every rule that follows a member (rate limits, opt-out,
/forget, the log row).

Discord-free and synchronous on purpose: the Discord side calls :meth:`ProxyPairing.pair` before
its handler's first ``await``, so a pairing is in place before the original's deletion, which the
gateway delivers after the repost, is handled.
"""

from __future__ import annotations

import asyncio
import collections
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

WINDOW_S = 15.0  # PluralKit reposts within about a second; a slow moment is allowed for
PER_CHANNEL = 50  # recent member messages kept per channel as candidates
KEEP_S = 900.0  # pairs are kept this long: longer than any reply takes to be written and logged

_SPACE = re.compile(r"\s+")


def _normal(text: str) -> str:
    return _SPACE.sub(" ", text).strip()


@dataclass(frozen=True)
class Original:
    """A member's message as it was seen, before any proxy bot acted on it."""

    message_id: int
    channel_id: int
    author_id: int
    text: str
    seen_at: float
    message: Any = None  # the front end's own message object (to reply to), if it keeps one


@dataclass(frozen=True)
class Pair:
    """A repost and the original it replaces."""

    repost_id: int
    original: Original
    repost: Any = None

    @property
    def author_id(self) -> int:
        return self.original.author_id


class ProxyPairing:
    """Recent member messages per channel, and the reposts paired with them."""

    def __init__(self, window_s: float = WINDOW_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self.clock = clock
        self._recent: dict[int, collections.deque[Original]] = {}
        self._by_original: dict[int, Pair] = {}
        self._waiters: dict[int, asyncio.Event] = {}

    def remember(
        self, message_id: int, channel_id: int, author_id: int, text: str, message: Any = None
    ) -> None:
        """A member's message: a proxy bot may repost it shortly."""
        recent = self._recent.setdefault(channel_id, collections.deque(maxlen=PER_CHANNEL))
        recent.append(Original(message_id, channel_id, author_id, text, self.clock(), message))

    def pair(self, repost_id: int, channel_id: int, text: str, repost: Any = None) -> Pair | None:
        """The original ``repost_id`` replaces: the newest one in ``channel_id`` seen within the
        window whose text contains the repost's (proxy tags are removed, never added), not paired
        yet. None when there is none (the bot never saw it: its author is unknown)."""
        self.forget_old()
        now = self.clock()
        wanted = _normal(text)
        for original in reversed(self._recent.get(channel_id, ())):
            if now - original.seen_at > self.window_s:
                break
            if original.message_id in self._by_original:
                continue
            have = _normal(original.text)
            if (wanted and wanted in have) or (not wanted and not have):
                found = Pair(repost_id, original, repost)
                self._by_original[original.message_id] = found
                waiter = self._waiters.pop(original.message_id, None)
                if waiter is not None:
                    waiter.set()
                return found
        return None

    def repost_of(self, original_id: int) -> Pair | None:
        """The pair whose original is ``original_id``, if it was reposted."""
        return self._by_original.get(original_id)

    def reposted(self) -> set[int]:
        """Originals already paired with a repost."""
        return set(self._by_original)

    def is_recent(self, message_id: int) -> bool:
        """Whether ``message_id`` is a member message seen within the window (a proxy may still act)."""
        now = self.clock()
        return any(
            o.message_id == message_id and now - o.seen_at <= self.window_s
            for recent in self._recent.values()
            for o in recent
        )

    async def wait_for_repost(self, original_id: int, timeout_s: float) -> Pair | None:
        """The pair for ``original_id``, waiting up to ``timeout_s`` for its repost to arrive (a
        deletion seen before the repost)."""
        found = self._by_original.get(original_id)
        if found is not None or timeout_s <= 0:
            return found
        waiter = self._waiters.setdefault(original_id, asyncio.Event())
        try:
            await asyncio.wait_for(waiter.wait(), timeout_s)
        except TimeoutError:
            pass
        finally:
            self._waiters.pop(original_id, None)
        return self._by_original.get(original_id)

    def forget_old(self) -> None:
        """Drop candidates and pairs seen more than ``KEEP_S`` ago (a reply being written for
        that long still needs its pair when it is logged)."""
        cutoff = self.clock() - KEEP_S
        for channel, recent in list(self._recent.items()):
            while recent and recent[0].seen_at < cutoff:
                recent.popleft()
            if not recent:
                del self._recent[channel]
        for original_id, found in list(self._by_original.items()):
            if found.original.seen_at < cutoff:
                del self._by_original[original_id]
