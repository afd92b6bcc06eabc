"""The in-process engine on its worker thread, as a :class:`~bot.serving.backend.ServingBackend`."""

from __future__ import annotations

import logging

from bot.config import Settings
from bot.serving.generation import BASE_ADAPTER, AdapterError, GenerationRequest, WorkerStats
from bot.serving.local.engine import Engine
from bot.serving.local.persona_adapter import load_persona
from bot.serving.local.worker import GenerationWorker, Ticket
from personas.card import CardSet

log = logging.getLogger(__name__)


class LocalBackend:
    """The in-process engine behind its worker thread, as a :class:`ServingBackend`."""

    def __init__(self, worker: GenerationWorker, settings: Settings, cards: CardSet) -> None:
        self.worker = worker
        self.settings = settings
        self.cards = cards
        self.engine: Engine = worker.engine
        self.facts = self.engine.facts
        self.base_model = self.engine.loaded.base_model

    @classmethod
    async def start(cls, settings: Settings, cards: CardSet) -> LocalBackend:
        """Load the model and every adapter (and canary) on the worker thread, then serve.

        A persona whose adapter fails to load still serves, prompt-only, and the reason is
        logged; one whose canary fails serves its current adapter to every request.
        """

        def build() -> Engine:
            engine = Engine.from_settings(settings.model)
            for card in cards.cards.values():
                try:
                    line, canary_error = _load_persona(engine, settings, card.id, cards)
                except AdapterError as exc:
                    log.error("%s; %s answers prompt-only", exc, card.id)
                else:
                    if canary_error is not None:
                        log.error("%s", line)
            return engine

        # The model is loaded on the worker thread that will run it (see GenerationWorker.launch).
        worker = await GenerationWorker.launch(build, settings.worker)
        return cls(worker, settings, cards)

    def submit(self, request: GenerationRequest, timeout_s: float | None = None) -> Ticket:
        return self.worker.submit(request, timeout_s)

    def adapter_for(self, persona_id: str) -> str:
        return persona_id if self.engine.has_adapter(persona_id) else BASE_ADAPTER

    def context_tokens(self, adapter: str) -> int:
        """The model's context (``max_position_embeddings``): prompt plus reply, in tokens."""
        return self.engine.max_positions

    def stats(self) -> WorkerStats:
        return self.worker.stats()

    async def reload(self, persona_id: str | None = None) -> list[str]:
        """Re-read ``CURRENT`` and ``CANARY`` (one persona, or all) and serve what they name.

        Rows already running finish on the version they started with. For a named persona,
        raises AdapterError when its adapter or its canary cannot be loaded (whatever loaded
        before serves on, and the message says what); for all personas, that is its line.
        """
        ids = [persona_id] if persona_id else sorted(self.cards.cards)
        lines = []
        for pid in ids:
            try:
                line, canary_error = await self.worker.call(
                    lambda engine, pid=pid: _load_persona(engine, self.settings, pid, self.cards)
                )
            except AdapterError as exc:
                if persona_id:
                    raise
                line = f"{pid}: kept the previous adapter ({exc})"
            else:
                if canary_error is not None and persona_id:
                    raise AdapterError(line)
            lines.append(line)
        return lines

    async def stop(self, drain_timeout: float = 30.0) -> None:
        await self.worker.stop(drain_timeout)


def _load_persona(
    engine: Engine, settings: Settings, persona_id: str, cards: CardSet
) -> tuple[str, AdapterError | None]:
    """Load a persona's current adapter and canary into the engine (worker thread only): the
    status line, and the canary's error if only that failed. Raises AdapterError for the adapter."""
    return load_persona(engine, cards.get(persona_id), settings.paths.adapters_dir)
