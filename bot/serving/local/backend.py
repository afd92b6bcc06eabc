"""The in-process engine on its worker thread, as a :class:`~bot.serving.backend.ServingBackend`."""

from __future__ import annotations

import logging

from bot.config import Settings
from bot.serving.generation import BASE_ADAPTER, AdapterError, GenerationRequest, WorkerStats
from bot.serving.local.engine import Engine
from bot.serving.local.persona_adapter import describe, load_persona_adapter
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
        """Load the model and every adapter on the worker thread, then serve.

        A persona whose adapter fails to load still serves, prompt-only, and the reason is logged.
        """

        def build() -> Engine:
            engine = Engine.from_settings(settings.model)
            for card in cards.cards.values():
                try:
                    _load_current(engine, settings, card.id, cards)
                except AdapterError as exc:
                    log.error("%s; %s answers prompt-only", exc, card.id)
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
        ids = [persona_id] if persona_id else sorted(self.cards.cards)
        lines = []
        for pid in ids:
            try:
                line = await self.worker.call(
                    lambda engine, pid=pid: _load_current(engine, self.settings, pid, self.cards)
                )
            except AdapterError as exc:
                if persona_id:
                    raise
                line = f"{pid}: kept the previous adapter ({exc})"
            lines.append(line)
        return lines

    async def stop(self, drain_timeout: float = 30.0) -> None:
        await self.worker.stop(drain_timeout)


def _load_current(engine: Engine, settings: Settings, persona_id: str, cards: CardSet) -> str:
    """Load a persona's current adapter into the engine (worker thread only); one status line."""
    info = load_persona_adapter(engine, cards.get(persona_id), settings.paths.adapters_dir)
    return describe(persona_id, info)
