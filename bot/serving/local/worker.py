"""The generation worker: one thread owns the engine; async callers submit and await.

Requests wait in a bounded queue. The thread runs a loop of steps over one running batch
(:class:`bot.serving.local.engine.RunningBatch`): between two steps it admits queued requests, any
persona, up to ``max_batch_size`` rows (continuous batching); each step reads a chunk of
the newcomers' prompts and decodes one token for every running row; rows that finish,
are cancelled or time out leave at the next step. With ``scheduler = "static"`` requests
are admitted only into an empty batch (the old behaviour, kept for comparison).

A full queue is refused at once rather than letting waits grow without bound; a
cancelled or expired request that has not started is never computed; a failing step
fails only its own rows and the worker goes on.

The request handle (:class:`bot.serving.ticket.Ticket`) has a final result, an async iterator of text
pieces (whole characters only; their concatenation is the final text) and token events
(:attr:`Ticket.first_token_at`) for time-to-first-token figures.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import torch

from bot.config import WorkerSettings
from bot.serving.generation import (
    AdapterError,
    GenerationError,
    GenerationRequest,
    QueueFullError,
    RequestCancelledError,
    RequestTimeoutError,
    WorkerStats,
    WorkerStoppedError,
)
from bot.serving.local.batch import SequenceState
from bot.serving.local.engine import Engine, RunningBatch
from bot.serving.ticket import Ticket

log = logging.getLogger(__name__)
T = TypeVar("T")
RECENT_BATCHES = 32


class GenerationWorker:
    def __init__(self, engine: Engine | None, settings: WorkerSettings | None = None) -> None:
        self.engine = engine
        self.settings = settings or WorkerSettings()
        self._queue: collections.deque[Ticket] = collections.deque()
        self._controls: collections.deque[
            tuple[Callable[[Engine], Any], asyncio.Future, asyncio.AbstractEventLoop]
        ] = collections.deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._accepting = False
        self._stopping = False
        self._running: dict[SequenceState, Ticket] = {}
        self._batch: RunningBatch | None = None
        # Rows allowed together; halved after an out-of-memory step, restored when the batch empties.
        self._row_limit = self.settings.max_batch_size
        self._batch_sizes: collections.deque[int] = collections.deque(maxlen=RECENT_BATCHES)
        self._batch_tokens: collections.deque[tuple[int, float]] = collections.deque(maxlen=RECENT_BATCHES)
        self._batches_run = 0
        self._failed = 0

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        """Serve an engine built elsewhere (tests, benchmarks). The bot uses :meth:`launch`."""
        if self._thread is not None:
            return
        self._accepting = True
        self._thread = threading.Thread(target=self._run, name="generation-worker", daemon=True)
        self._thread.start()

    @classmethod
    async def launch(
        cls, build: Callable[[], Engine], settings: WorkerSettings | None = None
    ) -> GenerationWorker:
        """Build the engine on the worker thread itself, then serve from that thread.

        Why: torch's CPU kernels run on an OpenMP thread team per calling thread. If the model
        is loaded on one thread and run on another, two teams exist, libgomp sees more threads
        than cores and stops spin-waiting between kernels, which cost 25-30% of CPU decoding
        speed here (measured on 2 cores). One thread doing all torch work keeps a single team.
        """
        worker = cls(None, settings)
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()

        def settle(exc: BaseException | None) -> None:
            if not ready.done():
                ready.set_exception(exc) if exc is not None else ready.set_result(None)

        def run() -> None:
            try:
                worker.engine = build()
            except BaseException as exc:
                loop.call_soon_threadsafe(settle, exc)
                return
            loop.call_soon_threadsafe(settle, None)
            worker._run()

        worker._accepting = True
        worker._thread = threading.Thread(target=run, name="generation-worker", daemon=True)
        worker._thread.start()
        try:
            await ready
        except BaseException:
            worker._accepting = False
            worker._thread = None
            raise
        return worker

    async def stop(self, drain_timeout: float = 30.0) -> None:
        """Stop taking requests, let queued ones finish for up to ``drain_timeout``, fail the rest."""
        self._accepting = False
        deadline = time.monotonic() + drain_timeout
        while time.monotonic() < deadline:
            with self._cond:
                if not self._queue and not self._running:
                    break
            await asyncio.sleep(0.05)
        with self._cond:
            self._stopping = True
            leftovers = list(self._queue) + list(self._running.values())
            self._queue.clear()
            self._cond.notify_all()
        for ticket in leftovers:
            ticket._cancelled.set()
            ticket._finish(exc=WorkerStoppedError("The bot is shutting down; this message was not answered."))
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 30)
            self._thread = None

    # -- the async side --------------------------------------------------------

    def submit(self, request: GenerationRequest, timeout_s: float | None = None) -> Ticket:
        """Queue a request; raises QueueFullError at once when the queue is full. Call from the event loop."""
        loop = asyncio.get_running_loop()
        ticket = Ticket(request, loop, timeout_s or self.settings.request_timeout_s, self)
        with self._cond:
            if not self._accepting:
                raise WorkerStoppedError("The bot is shutting down and takes no new messages.")
            if len(self._queue) >= self.settings.queue_size:
                raise QueueFullError(len(self._queue), self.settings.queue_size)
            self._queue.append(ticket)
            self._cond.notify_all()
        return ticket

    async def call(self, fn: Callable[[Engine], T]) -> T:
        """Run ``fn(engine)`` on the worker thread between two steps (adapter loads, memory figures)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._cond:
            if self._thread is None or self._stopping:
                raise WorkerStoppedError("The generation worker is not running.")
            self._controls.append((fn, future, loop))
            self._cond.notify_all()
        return await future

    def position_of(self, ticket: Ticket) -> int:
        with self._cond:
            try:
                return self._queue.index(ticket) + 1
            except ValueError:
                return 0

    def abandon(self, ticket: Ticket) -> None:
        with self._cond, contextlib.suppress(ValueError):
            self._queue.remove(ticket)

    def stats(self) -> WorkerStats:
        """Queue and batch figures; ``recent_batch_sizes`` are rows per recent step."""
        with self._cond:
            depth, running = len(self._queue), len(self._running)
            sizes = list(self._batch_sizes)
            tokens = sum(t for t, _ in self._batch_tokens)
            seconds = sum(s for _, s in self._batch_tokens)
        memory = None
        if self.engine.device.type == "cuda":
            memory = torch.cuda.memory_allocated(self.engine.device) / 2**20
        prefixes = self.engine.prefix_cache.stats()
        return WorkerStats(
            queue_depth=depth,
            queue_capacity=self.settings.queue_size,
            in_flight=running,
            recent_batch_sizes=sizes,
            tokens_per_s=tokens / seconds if seconds else 0.0,
            batches_run=self._batches_run,
            requests_failed=self._failed,
            adapters=self.engine.adapters(),
            canaries=self.engine.canaries(),
            device=str(self.engine.device),
            device_memory_mb=memory,
            prompt_tokens_reused=prefixes.tokens_reused,
            prompt_tokens_computed=prefixes.tokens_computed,
            prefix_cache_hit_rate=prefixes.reuse_rate if prefixes.budget_bytes else None,
            prefix_cache_used_mb=prefixes.used_bytes / 2**20,
            prefix_cache_budget_mb=prefixes.budget_bytes / 2**20,
        )

    # -- the worker thread -----------------------------------------------------

    def _run(self) -> None:
        self.engine.prefix_cache.set_budget(self.settings.prefix_cache_mb * 2**20)
        batch = RunningBatch(self.engine, self.settings.prefill_chunk_tokens)
        self._batch = batch
        while self._wait_for_work(batch):
            while True:
                with self._cond:
                    control = self._controls.popleft() if self._controls else None
                if control is None:
                    break
                self._run_control(*control)
            self._admit(batch)
            if batch.rows:
                self._step(batch)
            elif self._row_limit != self.settings.max_batch_size:
                self._row_limit = self.settings.max_batch_size
        for seq in batch.abort():  # stopping: stop() has already told their callers
            self._running.pop(seq, None)

    def _wait_for_work(self, batch: RunningBatch) -> bool:
        """Block while there is nothing to do; False means stop.

        When the batch is empty and a request arrives, wait ``batch_window_ms`` for more, so a
        burst starts as one batch instead of a first row that the others then join.
        """
        with self._cond:
            while not batch.rows and not self._queue and not self._controls and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return False
            if not batch.rows and not self._controls:
                gather_until = time.monotonic() + self.settings.batch_window_ms / 1000
                while len(self._queue) < self._row_limit and not self._stopping:
                    left = gather_until - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            return not self._stopping

    def _admit(self, batch: RunningBatch) -> None:
        """Move queued requests into the batch while rows are free (static: only into an empty batch)."""
        if self.settings.scheduler == "static" and batch.rows:
            return
        admitted: list[SequenceState] = []
        refused: list[tuple[Ticket, GenerationError]] = []
        with self._cond:
            now = time.monotonic()
            while self._queue and batch.rows + len(admitted) < self._row_limit:
                ticket = self._queue.popleft()
                if ticket.cancelled:
                    continue
                if now > ticket.deadline:
                    refused.append((ticket, RequestTimeoutError("The reply took too long and was given up.")))
                    continue
                try:
                    seq = self.engine.sequence(
                        ticket.request,
                        on_piece=ticket._piece,
                        on_token=ticket._token,
                        is_cancelled=lambda t=ticket: t.cancelled or time.monotonic() > t.deadline,
                    )
                except AdapterError:
                    refused.append(
                        (ticket, GenerationError(f"The adapter {ticket.request.adapter!r} is not loaded."))
                    )
                    continue
                except GenerationError as exc:  # a prompt longer than the context
                    refused.append((ticket, exc))
                    continue
                ticket.state = "running"
                ticket.admitted_at = now
                self._running[seq] = ticket
                admitted.append(seq)
        for ticket, error in refused:
            ticket._deliver(exc=error)
        if admitted:
            batch.add(admitted)

    def _step(self, batch: RunningBatch) -> None:
        rows = batch.rows
        tokens_before = sum(len(s.generated) for s in batch.sequences())
        start = time.perf_counter()
        try:
            finished = batch.step()
        except torch.OutOfMemoryError:
            self._out_of_memory(batch)
            return
        except Exception as exc:
            # The details go to the operator's log; users get a message that exposes no internals.
            log.exception("generation step failed for %d rows", rows)
            error = GenerationError("The model failed while writing this reply. Please try again.")
            error.__cause__ = exc
            self._fail(batch.abort(), error)
            return
        seconds = time.perf_counter() - start
        tokens = sum(len(s.generated) for s in batch.sequences()) + sum(len(s.generated) for s in finished)
        with self._cond:
            self._batches_run += 1
            self._batch_sizes.append(rows)
            self._batch_tokens.append((max(0, tokens - tokens_before), seconds))
        for seq in finished:
            self._deliver(seq)

    def _deliver(self, seq: SequenceState) -> None:
        with self._cond:
            ticket = self._running.pop(seq, None)
        if ticket is None:
            return
        if seq.finish_reason == "cancelled":
            if not ticket.cancelled and time.monotonic() > ticket.deadline:
                ticket._deliver(exc=RequestTimeoutError("The reply took too long and was given up."))
            else:
                ticket._deliver(exc=RequestCancelledError("The request was cancelled."))
        else:
            ticket._deliver(result=self.engine.result(seq))

    def _out_of_memory(self, batch: RunningBatch) -> None:
        """Drop the batch; rows that have shown nothing yet go back to the queue's front and the
        row limit halves (fewer rows need less memory); rows already streamed, or alone, fail."""
        seqs = batch.abort()
        # Cached prefixes are the first memory to give back: they only save work.
        self.engine.prefix_cache.clear()
        _empty_cache()
        self._row_limit = max(1, len(seqs) // 2)
        log.warning("out of memory on a step of %d rows; now at most %d rows", len(seqs), self._row_limit)
        retry, failed = [], []
        for seq in seqs:
            (retry if len(seqs) > 1 and not seq.generated else failed).append(seq)
        with self._cond:
            for seq in reversed(retry):
                ticket = self._running.pop(seq)
                ticket.state = "queued"
                self._queue.appendleft(ticket)
        self._fail(failed, GenerationError("The model ran out of memory on this message. Try a shorter one."))

    def _fail(self, seqs: list[SequenceState], error: GenerationError) -> None:
        tickets = []
        with self._cond:
            for seq in seqs:
                ticket = self._running.pop(seq, None)
                if ticket is not None:
                    tickets.append(ticket)
            self._failed += len(tickets)
        for ticket in tickets:
            ticket._deliver(exc=error)

    def _run_control(self, fn, future: asyncio.Future, loop: asyncio.AbstractEventLoop) -> None:
        def settle(value=None, exc=None):
            if not future.done():
                future.set_exception(exc) if exc is not None else future.set_result(value)

        try:
            value = fn(self.engine)
        except Exception as exc:
            loop.call_soon_threadsafe(settle, None, exc)
        else:
            loop.call_soon_threadsafe(settle, value, None)


def _empty_cache() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
