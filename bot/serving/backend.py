"""The one interface the chat service and the front ends use to generate: a serving backend.

Two backends satisfy it: :class:`bot.serving.local.backend.LocalBackend` (the in-process engine on its worker thread)
and :class:`bot.serving.vllm.backend.VllmBackend` (one or more vLLM servers over HTTP).
Callers submit a :class:`~bot.serving.generation.GenerationRequest` and get a :class:`TicketLike`
back: an async stream of text pieces, a final result, and a cancel.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable

from bot.serving.generation import GenerationRequest, GenerationResult, WorkerStats
from personas.render import TokenizerFacts


@runtime_checkable
class TicketLike(Protocol):
    """A submitted request. ``position`` is its 1-based queue place (0 once it runs)."""

    @property
    def position(self) -> int: ...

    @property
    def cancelled(self) -> bool: ...

    def cancel(self) -> None: ...

    async def result(self) -> GenerationResult: ...

    def __aiter__(self) -> AsyncIterator[str]: ...


@runtime_checkable
class ServingBackend(Protocol):
    """Generates replies for rendered prompts; shared by the console, Discord and benchmarks."""

    facts: TokenizerFacts  # what the renderer needs to know about the tokenizer
    base_model: str

    def submit(self, request: GenerationRequest, timeout_s: float | None = None) -> TicketLike:
        """Queue a request; raises QueueFullError (busy) or WorkerStoppedError at once."""
        ...

    def adapter_for(self, persona_id: str) -> str:
        """The adapter name to put in a request for this persona, or BASE_ADAPTER if it has none."""
        ...

    def context_tokens(self, adapter: str) -> int:
        """The tokens (prompt plus the reply's room) a request for ``adapter`` may use: the local
        model's context, or for vLLM the largest among the servers that may serve it (a request
        routed to a smaller one is fitted again through ``GenerationRequest.refit``)."""
        ...

    def stats(self) -> WorkerStats: ...

    async def reload(self, persona_id: str | None = None) -> list[str]:
        """(Re)load adapters from disk: each persona's ``CURRENT`` and ``CANARY``; one line per
        persona. Requests already running finish on the version they were admitted with.
        AdapterError for a single named persona whose adapter or canary cannot be loaded."""
        ...

    async def stop(self, drain_timeout: float = 30.0) -> None: ...
