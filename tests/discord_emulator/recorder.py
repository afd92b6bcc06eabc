"""Append-only logs that tests can inspect and await.

Tests assert on what the bot *did* (the REST calls it made, the gateway
messages it sent), so every call lands here, and ``wait_for`` lets a test block
until the bot gets round to it instead of sleeping for a guessed duration.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")


@dataclass
class Call:
    """One REST request as the emulator saw it (``path`` is relative to ``/api/v10``)."""

    method: str
    path: str
    query: dict[str, str]
    json: Any
    status: int = 0
    response: Any = None
    files: list[dict[str, Any]] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    injected: bool = False  # True when a fail_next() fault produced the response
    at: float = field(default_factory=time.monotonic)

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "json": self.json,
            "status": self.status,
            "response": self.response,
            "files": self.files,
            "headers": self.headers,
            "injected": self.injected,
        }


@dataclass
class GatewayRecord:
    """A gateway happening: ``kind`` is e.g. "connect", "identify", "resume", "send", "recv", "close"."""

    kind: str
    session_id: str | None
    op: int | None = None
    event: str | None = None
    data: Any = None
    at: float = field(default_factory=time.monotonic)


class Recorder(Generic[T]):
    """A list with ``wait_for``: resolve as soon as an item matching a predicate is appended."""

    def __init__(self) -> None:
        self.items: list[T] = []
        self._waiters: list[tuple[int, Callable[[T], bool], asyncio.Future[T]]] = []

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[T]:
        return iter(list(self.items))

    def __getitem__(self, index: int) -> T:
        return self.items[index]

    def append(self, item: T) -> None:
        self.items.append(item)
        index = len(self.items) - 1
        for waiter in list(self._waiters):
            since, predicate, fut = waiter
            if fut.done():
                self._waiters.remove(waiter)
                continue
            if index < since:
                continue
            try:
                matched = predicate(item)
            except Exception as exc:  # a broken predicate should fail the test, not hang it
                fut.set_exception(exc)
                self._waiters.remove(waiter)
                continue
            if matched:
                fut.set_result(item)
                self._waiters.remove(waiter)

    def find(self, predicate: Callable[[T], bool], since: int = 0) -> list[T]:
        return [item for item in self.items[since:] if predicate(item)]

    async def wait_for(self, predicate: Callable[[T], bool], *, timeout: float, since: int) -> T:
        """Return the first item at index >= ``since`` matching ``predicate`` (past or future)."""
        for item in self.items[since:]:
            if predicate(item):
                return item
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        entry = (since, predicate, fut)
        self._waiters.append(entry)
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise TimeoutError(f"nothing matching the predicate was recorded within {timeout}s") from None
        finally:
            if entry in self._waiters:
                self._waiters.remove(entry)
