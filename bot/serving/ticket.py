"""The handle of one submitted generation request, for both backends: await its result,
iterate its text pieces as they are decoded, or cancel it.

The event loop owns the handle. The local worker thread reports into it only through
``loop.call_soon_threadsafe`` (``_deliver``, ``_piece``) and plain attribute writes
(``_token``), so no asyncio object is touched from another thread; the vLLM backend reports
from the loop itself through the same methods. What differs per backend is the owner's
:class:`TicketOwner` hooks: where the ticket waits, and how work on it is abandoned.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections.abc import AsyncIterator
from typing import Protocol

from bot.serving.generation import (
    FINISHED_REASONS,
    UNFINISHED_REPLY,
    GenerationError,
    GenerationRequest,
    GenerationResult,
    RequestCancelledError,
    RequestTimeoutError,
)


class TicketOwner(Protocol):
    """What a ticket asks of the backend that took it."""

    def position_of(self, ticket: Ticket) -> int:
        """1-based place in the backend's own queue; 0 once running (or when it has no queue)."""
        ...

    def abandon(self, ticket: Ticket) -> None:
        """Stop spending work on the ticket: cancelled, timed out, or its caller went away."""
        ...


class Ticket:
    """A submitted request: await :meth:`result`, iterate pieces, or :meth:`cancel` it."""

    _ids = itertools.count(1)

    def __init__(
        self,
        request: GenerationRequest,
        loop: asyncio.AbstractEventLoop,
        timeout_s: float,
        owner: TicketOwner,
    ) -> None:
        self.id = next(self._ids)
        self.request = request
        self.submitted_at = time.monotonic()
        self.deadline = self.submitted_at + timeout_s
        self.state = "queued"  # queued | running | done
        self._loop = loop
        self._owner = owner
        self._future: asyncio.Future[GenerationResult] = loop.create_future()
        # Pieces are buffered here by the worker thread; the loop is only woken for them once
        # somebody iterates, so a caller that just awaits the result costs no per-token wake-ups.
        self._buffer: list[str] = []
        self._buffer_lock = threading.Lock()
        self._streaming = False
        self._wake = asyncio.Event()
        self._cancelled = threading.Event()
        # Token events, written by the worker thread: when the first token was chosen
        # (time.monotonic()) and how many so far. A token may decode to no text yet.
        self.first_token_at: float | None = None
        self.tokens = 0
        # When the local worker took it from its queue into the running batch (time.monotonic());
        # None while queued, and for the vLLM backend, which queues nothing itself.
        self.admitted_at: float | None = None

    @property
    def position(self) -> int:
        """1-based place in the queue; 0 once generation has started."""
        return self._owner.position_of(self)

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Cancel: a queued request is never computed; a running one stops at its next token."""
        self.abandon(RequestCancelledError("The request was cancelled."))

    def abandon(self, error: BaseException) -> None:
        """End the ticket with ``error`` and tell the owner to stop working on it."""
        self._cancelled.set()
        self._owner.abandon(self)
        self._finish(exc=error)

    async def result(self) -> GenerationResult:
        remaining = self.deadline - time.monotonic()
        try:
            return await asyncio.wait_for(asyncio.shield(self._future), max(remaining, 0.001))
        except TimeoutError:
            self.abandon(RequestTimeoutError("The reply took too long and was given up. Please try again."))
            return await self._future
        except asyncio.CancelledError:
            self.cancel()  # the awaiting task went away: nobody wants this reply
            raise

    def __aiter__(self) -> AsyncIterator[str]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[str]:
        with self._buffer_lock:
            self._streaming = True
        while True:
            self._wake.clear()
            finished = self._future.done()  # read before draining: every piece precedes the finish
            with self._buffer_lock:
                pieces, self._buffer = self._buffer, []
            for piece in pieces:
                yield piece
            if finished:
                return
            await self._wake.wait()

    # Called from the worker thread through the loop.
    def _finish(self, result: GenerationResult | None = None, exc: BaseException | None = None) -> None:
        if self._future.done():
            return
        self.state = "done"
        if exc is None and (result is None or result.finish_reason not in FINISHED_REASONS):
            # Only a finished reply is a result; half a sentence is never shown as complete.
            reason = None if result is None else result.finish_reason
            exc = GenerationError(UNFINISHED_REPLY)
            exc.add_note(f"finish reason {reason!r}")
        if exc is not None:
            self._future.set_exception(exc)
            self._future.exception()  # mark retrieved: a cancelled caller may never await it
        else:
            self._future.set_result(result)
        self._wake.set()

    def _deliver(self, result: GenerationResult | None = None, exc: BaseException | None = None) -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
            self._loop.call_soon_threadsafe(self._finish, result, exc)

    def _token(self, at: float, count: int = 1) -> None:
        if self.first_token_at is None:
            self.first_token_at = at
        self.tokens += count

    def _piece(self, text: str) -> None:
        if not text:
            return
        with self._buffer_lock:
            self._buffer.append(text)
            streaming = self._streaming
        if streaming:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._wake.set)
