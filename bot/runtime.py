"""Everything the front ends share, built once: cards, model, adapters, worker, chat service."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from bot.chat import ChatService
from bot.config import Settings
from bot.engine import Engine
from bot.generation import AdapterError
from bot.persona_adapter import describe, load_persona_adapter
from bot.worker import GenerationWorker
from personas.card import CardSet, load_cards

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    cards: CardSet
    engine: Engine
    worker: GenerationWorker
    chat: ChatService

    @classmethod
    async def start(cls, settings: Settings) -> Runtime:
        """Load cards and the model (off the event loop), load every adapter, start the worker.

        A persona whose adapter fails to load still serves, prompt-only, and the reason is logged.
        """
        cards = load_cards(Path(settings.paths.personas_dir) if settings.paths.personas_dir else None)
        for error in cards.errors:
            log.error("persona card skipped: %s", error)
        if not cards.cards:
            raise RuntimeError("no persona card could be loaded; see the errors above")

        def build() -> Engine:
            engine = Engine.from_settings(settings.model)
            for card in cards.cards.values():
                try:
                    _load_persona_adapter(engine, settings, card.id, cards)
                except AdapterError as exc:
                    log.error("%s; %s answers prompt-only", exc, card.id)
            return engine

        # The model is loaded on the worker thread that will run it (see GenerationWorker.launch).
        worker = await GenerationWorker.launch(build, settings.worker)
        engine = worker.engine
        return cls(settings, cards, engine, worker, ChatService(cards, worker, engine.facts))

    async def reload(self, persona_id: str | None = None) -> list[str]:
        """Reload adapters from disk on the worker thread; returns one line per persona.

        Raises AdapterError (the old adapter keeps serving) when a single named persona fails.
        """
        ids = [persona_id] if persona_id else sorted(self.cards.cards)
        for pid in ids:
            self.cards.get(pid)
        lines = []
        for pid in ids:
            try:
                line = await self.worker.call(
                    lambda engine, pid=pid: _load_persona_adapter(engine, self.settings, pid, self.cards)
                )
            except AdapterError as exc:
                if persona_id:
                    raise
                line = f"{pid}: kept the previous adapter ({exc})"
            lines.append(line)
        return lines

    async def close(self, drain_timeout: float = 30.0) -> None:
        await self.worker.stop(drain_timeout)


def _load_persona_adapter(engine: Engine, settings: Settings, persona_id: str, cards: CardSet) -> str:
    info = load_persona_adapter(engine, cards.get(persona_id), settings.paths.adapters_dir)
    return describe(persona_id, info)
