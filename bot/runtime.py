"""Everything the front ends share, built once: cards, the serving backend, the chat service."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from bot.chatflow.service import ChatService
from bot.config import Settings
from bot.learning.pointer_watch import PointerWatch
from bot.serving.backend import ServingBackend
from personas.card import CardSet, load_cards

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    cards: CardSet
    backend: ServingBackend
    chat: ChatService
    # Follows CURRENT/CANARY moves made by other processes (trainer promote/rollback/canary).
    pointer_watch: PointerWatch | None = None

    @property
    def worker(self) -> ServingBackend:
        """The backend under its older name (callers that read ``runtime.worker.stats()``)."""
        return self.backend

    @classmethod
    async def start(cls, settings: Settings) -> Runtime:
        """Load cards, start the configured backend (``engine.backend``) with every adapter.

        Raises RuntimeError when no card loads; ModelLoadError when the model (local) or the
        tokenizer (vllm) cannot be loaded; BackendError (vllm) when no server can be used.
        """
        cards = load_cards(Path(settings.paths.personas_dir) if settings.paths.personas_dir else None)
        for error in cards.errors:
            log.error("persona card skipped: %s", error)
        if not cards.cards:
            raise RuntimeError("no persona card could be loaded; see the errors above")
        backend: ServingBackend
        if settings.engine.backend == "vllm":
            from bot.serving.vllm.backend import VllmBackend

            backend = await VllmBackend.start(settings, cards)
        else:
            from bot.serving.local.backend import LocalBackend

            backend = await LocalBackend.start(settings, cards)
        runtime = cls(settings, cards, backend, ChatService(cards, backend, backend.facts))
        runtime.watch_pointers()
        return runtime

    def watch_pointers(self) -> None:
        """Reload a persona within ``engine.adapter_poll_s`` seconds of a pointer move made
        elsewhere (0: never); on the running event loop, stopped by :meth:`close`."""
        interval = self.settings.engine.adapter_poll_s
        if interval > 0 and self.pointer_watch is None:
            self.pointer_watch = PointerWatch(
                self.settings.paths.adapters_dir, self.cards.cards, self.backend.reload, interval
            )
            self.pointer_watch.start()

    async def reload(self, persona_id: str | None = None) -> list[str]:
        """Reload adapters from disk; returns one line per persona.

        Raises AdapterError (the old adapter keeps serving) when a single named persona fails.
        """
        for pid in [persona_id] if persona_id else []:
            self.cards.get(pid)
        if self.pointer_watch is not None:
            self.pointer_watch.mark(persona_id)  # this reload serves the pointers as they are now
        return await self.backend.reload(persona_id)

    def backend_problem(self) -> str | None:
        """Why nothing can be generated right now (every vLLM server down), or None."""
        servers = self.backend.stats().servers
        if servers and not any(s.healthy for s in servers):
            return "no vLLM server can be used: " + "; ".join(s.problem or s.url for s in servers)
        return None

    async def close(self, drain_timeout: float = 30.0) -> None:
        if self.pointer_watch is not None:
            await self.pointer_watch.stop()
        await self.backend.stop(drain_timeout)
