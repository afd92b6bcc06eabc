"""What flows between callers, the worker and the engine: plain data, no model, no Discord."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal

from personas.card import GenerationParams, PersonaCard
from personas.render import RenderedPrompt

BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" in a mixed-adapter batch

# Why a reply ended. "stop": a stop string (cut off, never shown); "eos": the model's end of
# text; "length": max_new_tokens; "cancelled": the caller cancelled or timed out (callers see
# RequestCancelledError / RequestTimeoutError instead of a result with this reason).
FinishReason = Literal["stop", "eos", "length", "cancelled"]
# The reasons that mean the reply is finished, the only ones a result may carry. A server's
# "abort" (restarted, drained, put to sleep), "error", "repetition", an unknown reason or none at
# all is a failure, handled like a server lost mid-stream: never posted, logged or reviewed as a
# reply (``Ticket._finish`` enforces it for both backends).
FINISHED_REASONS = frozenset({"stop", "eos", "length"})
UNFINISHED_REPLY = "The model stopped before this reply was finished. Please try again."


@dataclass(frozen=True)
class GenerationRequest:
    """One row of a batch: a rendered prompt and how to continue it."""

    persona_id: str
    prompt: str
    params: GenerationParams
    stop: tuple[str, ...] = ()
    banned_words: tuple[str, ...] = ()
    # The resident adapter to use; BASE_ADAPTER for prompt-only personas.
    adapter: str = BASE_ADAPTER
    seed: int | None = None
    # The same request rendered again for a context of N tokens (history cut, the reply's room
    # kept within it): a backend that picks a server with a smaller context than the one the
    # prompt was rendered for calls it. None: the prompt cannot be rendered again.
    refit: Callable[[int], GenerationRequest] | None = field(default=None, compare=False, repr=False)

    def fits(self, prompt_tokens: int, context: int) -> bool:
        """Whether ``prompt_tokens`` plus the reply's room fit a context of ``context`` tokens."""
        return prompt_tokens + self.params.max_new_tokens <= context

    def with_reply_room(self, max_new_tokens: int) -> GenerationRequest:
        """The same request with at most ``max_new_tokens`` for the reply (min_new_tokens kept below it)."""
        if max_new_tokens >= self.params.max_new_tokens:
            return self
        params = replace(
            self.params,
            max_new_tokens=max_new_tokens,
            min_new_tokens=min(self.params.min_new_tokens, max_new_tokens),
        )
        return replace(self, params=params)
    # The conversation (a channel) this request continues: with several vLLM servers, requests of
    # one conversation go to the same server, whose prefix cache holds its earlier prompts.
    conversation: str | None = None

    @classmethod
    def for_card(
        cls,
        card: PersonaCard,
        rendered: RenderedPrompt,
        adapter: str = BASE_ADAPTER,
        seed: int | None = None,
        conversation: str | None = None,
    ) -> GenerationRequest:
        """The one way a persona's rendered prompt becomes a request: the card's sampling
        settings and banned words, the renderer's stop strings (bot and trainer alike)."""
        return cls(
            persona_id=card.id,
            prompt=rendered.text,
            params=card.generation,
            stop=rendered.stop,
            banned_words=card.banned_words,
            adapter=adapter,
            seed=seed,
            conversation=conversation,
        )


@dataclass(frozen=True)
class GenerationResult:
    text: str  # generated text, cut before the first stop string; only whole characters
    new_tokens: int
    finish_reason: FinishReason
    adapter: str
    adapter_version: str | None
    seconds: float = 0.0  # from admission into the batch to the last token
    batch_size: int = 1  # the most rows that shared a decode step with this request
    first_token_s: float | None = None  # from admission to the first token (None: no token)
    token_ids: tuple[int, ...] = ()  # the generated ids (EOS excluded), when the backend knows them


@dataclass(frozen=True)
class AdapterInfo:
    """A resident adapter: ``name`` is the persona id; ``share`` is set on a canary only (the
    fraction of that persona's requests it serves, 0 < share < 1)."""

    name: str
    path: str
    version: str | None
    parameters: int
    share: float | None = None


@dataclass(frozen=True)
class ServerStatus:
    """One serving server's health and load, for /status (vLLM backend)."""

    url: str
    healthy: bool
    outstanding: int
    served: int
    failed: int
    adapters: int
    problem: str | None = None
    adapter_problems: tuple[str, ...] = ()
    # Share of prompt tokens the server took from its prefix cache (vLLM's counters); None: unknown.
    prefix_cache_hit_rate: float | None = None


@dataclass
class WorkerStats:
    queue_depth: int
    queue_capacity: int
    in_flight: int
    recent_batch_sizes: list[int] = field(default_factory=list)
    tokens_per_s: float = 0.0
    batches_run: int = 0
    requests_failed: int = 0
    adapters: list[AdapterInfo] = field(default_factory=list)  # each persona's CURRENT
    canaries: list[AdapterInfo] = field(default_factory=list)  # each persona's canary, if any
    device: str = "cpu"
    device_memory_mb: float | None = None
    servers: list[ServerStatus] = field(default_factory=list)  # empty for the local engine
    # Prefix reuse: prompt tokens taken from a prefix cache and prompt tokens prefilled, and the
    # first's share (None: reuse is off or unknown); the local engine's cache memory in MiB.
    prompt_tokens_reused: int = 0
    prompt_tokens_computed: int = 0
    prefix_cache_hit_rate: float | None = None
    prefix_cache_used_mb: float | None = None
    prefix_cache_budget_mb: float | None = None


class GenerationError(RuntimeError):
    """Generation failed for this request; the message is safe to show a user."""


class QueueFullError(GenerationError):
    def __init__(self, depth: int, capacity: int) -> None:
        super().__init__(
            f"The bot is busy ({depth} requests waiting, the queue holds {capacity}). Please retry shortly."
        )
        self.depth = depth
        self.capacity = capacity


class RequestTimeoutError(GenerationError):
    pass


class RequestCancelledError(GenerationError):
    pass


class WorkerStoppedError(GenerationError):
    pass


class PromptTooLongError(GenerationError):
    """The prompt and the reply's room do not fit the model's context."""

    def __init__(self, prompt_tokens: int, max_new_tokens: int, context: int) -> None:
        super().__init__(
            f"This conversation is too long for the model: {prompt_tokens} prompt tokens plus "
            f"{max_new_tokens} for the reply exceed its context of {context}. "
            "Lower the persona's history_budget_tokens or max_new_tokens."
        )
        self.prompt_tokens = prompt_tokens
        self.context = context


class AdapterError(RuntimeError):
    """An adapter could not be loaded; the persona keeps whatever it had before."""
