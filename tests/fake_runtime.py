"""A stand-in for the model runtime (``bot.runtime.Runtime``): a chat service that validates and
renders like the real one and answers from scripts, a worker with fixed stats, reload on cue.

Discord-free: the Discord tests drive the real bot through the loopback emulator
(``tests/e2e/inprocess.py``) with this runtime, so no model is needed and a reply can be held,
failed or made long at will.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from bot.config import Settings
from bot.serving.generation import (
    AdapterInfo,
    GenerationResult,
    QueueFullError,
    RequestCancelledError,
    WorkerStats,
)
from personas.card import CardSet, PersonaCard, load_cards
from personas.render import PromptRenderer, Turn, validate_user_message


@dataclass
class Script:
    """What the fake model does for one request."""

    reply: str | BaseException = "おう、元気だぜ！"
    positions: list[int] = field(default_factory=lambda: [0])  # reported queue positions, in order
    gate: asyncio.Event | None = None  # generation waits for it (to hold a request in flight)
    # Streamed, the first this many characters of ``reply`` arrive before the gate is waited for
    # (a reply held half-written, for Stop); the rest after it.
    shown_before_gate: int = 0
    # Or the raw pieces as they are generated, ``piece_gap_s`` apart; the reply is then their
    # concatenation (cleaned by the renderer), ready once the last piece is out.
    pieces: list[str] | None = None
    piece_gap_s: float = 0.0


class FakePending:
    def __init__(self, card: PersonaCard, prompt: str, script: Script) -> None:
        self.card = card
        self.prompt = prompt
        self.script = script
        self.result: GenerationResult | None = None
        self.cancelled = False
        self._positions = collections.deque(script.positions)
        self._cancel_event = asyncio.Event()
        self._renderer = PromptRenderer(card)
        self._streamed = asyncio.Event()

    @property
    def params(self):
        return self.card.generation

    @property
    def position(self) -> int:
        if len(self._positions) > 1:
            return self._positions.popleft()
        return self._positions[0] if self._positions else 0

    async def _held(self) -> None:
        """Wait for the script's gate (if any) or a cancel, whichever comes first."""
        if self.script.gate is not None:
            gate = asyncio.ensure_future(self.script.gate.wait())
            cancel = asyncio.ensure_future(self._cancel_event.wait())
            await asyncio.wait({gate, cancel}, return_when=asyncio.FIRST_COMPLETED)
            gate.cancel()
            cancel.cancel()
        else:
            await asyncio.sleep(0)

    async def pieces(self) -> AsyncIterator[str]:
        """The reply as it is "generated": the script's pieces, ``piece_gap_s`` apart; else its
        first ``shown_before_gate`` characters, then (once the gate opens) the rest; nothing more
        after a cancel."""
        if self.script.pieces is not None:
            try:
                for piece in self.script.pieces:
                    if self.cancelled:
                        break
                    yield piece
                    await asyncio.sleep(self.script.piece_gap_s)
            finally:
                self._streamed.set()
            return
        reply = self.script.reply if isinstance(self.script.reply, str) else ""
        head = reply[: self.script.shown_before_gate]
        if head:
            yield head
        await self._held()
        if not self.cancelled and reply[len(head) :]:
            yield reply[len(head) :]

    def draft(self, raw: str) -> str:
        return self._renderer.draft_reply(raw)

    async def text(self) -> str:
        await self._held()
        if self.script.pieces is not None:  # ready once streamed (or cancelled)
            streamed = asyncio.ensure_future(self._streamed.wait())
            cancel = asyncio.ensure_future(self._cancel_event.wait())
            await asyncio.wait({streamed, cancel}, return_when=asyncio.FIRST_COMPLETED)
            streamed.cancel()
            cancel.cancel()
        if self.cancelled:
            raise RequestCancelledError("The request was cancelled.")
        if isinstance(self.script.reply, BaseException):
            raise self.script.reply
        text = self.script.reply
        if self.script.pieces is not None:
            text = self._renderer.clean_reply("".join(self.script.pieces))
        self.result = GenerationResult(
            text=text,
            new_tokens=12,
            finish_reason="stop",
            adapter=self.card.id,
            adapter_version="v20250101-000000",
            seconds=0.25,
            batch_size=2,
        )
        return text

    def cancel(self) -> None:
        self.cancelled = True
        self._cancel_event.set()


class FakeChat:
    """Validates and renders like the real chat service; answers from a queue of scripts."""

    def __init__(self, cards: CardSet) -> None:
        self.cards = cards
        self.scripts: collections.deque[Script] = collections.deque()
        self.submitted: list[tuple[str, list[Turn]]] = []
        self.conversations: list[str | None] = []  # what each submit named as its conversation
        self.pending: list[FakePending] = []
        self.full = False
        # Personas whose requests fail at once (an adapter the backend cannot serve), with why.
        self.failing: dict[str, BaseException] = {}

    def submit(self, persona_id: str, history: list[Turn], conversation: str | None = None) -> FakePending:
        card = self.cards.get(persona_id)
        if persona_id in self.failing:
            raise self.failing[persona_id]
        if not history:
            validate_user_message("")
        newest = history[-1]
        checked = Turn(newest.speaker, validate_user_message(newest.text), newest.is_persona)
        if self.full:
            raise QueueFullError(64, 64)
        rendered = PromptRenderer(card).render_prompt([*history[:-1], checked])
        self.submitted.append((persona_id, list(history)))
        self.conversations.append(conversation)
        pending = FakePending(card, rendered.text, self.scripts.popleft() if self.scripts else Script())
        self.pending.append(pending)
        return pending


class FakeWorker:
    def stats(self) -> WorkerStats:
        return WorkerStats(
            queue_depth=3,
            queue_capacity=64,
            in_flight=2,
            recent_batch_sizes=[1, 4, 2],
            tokens_per_s=42.5,
            batches_run=17,
            requests_failed=1,
            adapters=[AdapterInfo("marisa", "/adapters/marisa/v2", "v2", 1234)],
            device="cuda:0",
            device_memory_mb=5120.0,
        )


class FakeRuntime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.cards = load_cards()
        self.chat = FakeChat(self.cards)
        self.worker = FakeWorker()
        self.reload_error: Exception | None = None
        self.reloaded: list[str | None] = []
        self.closed = False

    async def reload(self, persona_id: str | None = None) -> list[str]:
        self.reloaded.append(persona_id)
        if self.reload_error is not None:
            raise self.reload_error
        ids = [persona_id] if persona_id else sorted(self.cards.cards)
        return [f"{pid}: adapter v3" for pid in ids]

    async def close(self) -> None:
        self.closed = True
