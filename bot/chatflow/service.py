"""The chat service: from a persona id and a conversation to a cleaned reply.

This is the one path both front ends (console and Discord) take: validate the user's
text, render the persona's prompt, queue it on the serving backend, clean what comes back.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from bot.serving.backend import ServingBackend, TicketLike
from bot.serving.generation import GenerationRequest, GenerationResult
from personas.card import CardSet, PersonaCard
from personas.render import InputError, PromptRenderer, TokenizerFacts, Turn, validate_user_message


@dataclass
class PendingReply:
    """A reply on its way: its queue position now, its cleaned text when awaited."""

    card: PersonaCard
    prompt: str
    ticket: TicketLike
    renderer: PromptRenderer
    result: GenerationResult | None = field(default=None, init=False)

    @property
    def params(self):
        return self.ticket.request.params

    @property
    def position(self) -> int:
        return self.ticket.position

    async def text(self) -> str:
        """The cleaned reply; raises GenerationError subclasses with user-safe messages."""
        self.result = await self.ticket.result()
        return self.renderer.clean_reply(self.result.text)

    async def pieces(self) -> AsyncIterator[str]:
        """The raw text pieces as they are generated (their concatenation is the raw reply).

        Ends when generation ends, for any reason: then :meth:`text` gives the final reply or
        raises. The request's deadline is kept while iterating. Leaving the loop early cancels
        the request (nobody is left to read it).
        """
        finished = asyncio.ensure_future(self.ticket.result())  # keeps the deadline
        # Its outcome is read by text(); this only marks it seen, so asyncio does not warn.
        finished.add_done_callback(lambda task: task.cancelled() or task.exception())
        try:
            async for piece in self.ticket:
                yield piece
        finally:
            if not finished.done():
                finished.cancel()  # Ticket.result cancels the request when its waiter goes

    def draft(self, raw: str) -> str:
        """The cleaned text of a reply still being written (see PromptRenderer.draft_reply)."""
        return self.renderer.draft_reply(raw)

    def cancel(self) -> None:
        self.ticket.cancel()


class ChatService:
    def __init__(self, cards: CardSet, backend: ServingBackend, facts: TokenizerFacts) -> None:
        self.cards = cards
        self.backend = backend
        self._renderers = {pid: PromptRenderer(card, facts) for pid, card in cards.cards.items()}

    def renderer(self, persona_id: str) -> PromptRenderer:
        self.cards.get(persona_id)  # raises UnknownPersonaError with the known ids
        return self._renderers[persona_id]

    def submit(
        self, persona_id: str, history: Sequence[Turn], conversation: str | None = None
    ) -> PendingReply:
        """Queue a reply to the last turn of ``history``.

        ``conversation`` names where the history comes from (a channel): the vLLM backend sends
        one conversation's requests to the same server, whose prefix cache holds its earlier
        prompts. Raises InputError (message safe to show), UnknownPersonaError or QueueFullError.
        """
        renderer = self.renderer(persona_id)
        card = renderer.card
        if not history:
            raise InputError("There is no message to answer.")
        newest = history[-1]
        checked = Turn(newest.speaker, validate_user_message(newest.text), newest.is_persona)
        if not renderer.sanitize(checked.text):
            # Only template markers (</s>, <NL>, ### 応答:): the prompt would hold an empty turn.
            raise InputError("That message holds nothing but formatting markers: there is nothing to answer.")
        rendered = renderer.render_prompt([*history[:-1], checked])
        adapter = self.backend.adapter_for(persona_id)
        request = GenerationRequest.for_card(card, rendered, adapter, conversation=conversation)
        return PendingReply(card, rendered.text, self.backend.submit(request), renderer)

    async def reply(self, persona_id: str, history: Sequence[Turn], conversation: str | None = None) -> str:
        return await self.submit(persona_id, history, conversation).text()

    def user_turn(self, persona_id: str, text: str) -> Turn:
        card = self.cards.get(persona_id)
        return Turn(card.user_label, text)

    def persona_turn(self, persona_id: str, text: str) -> Turn:
        card = self.cards.get(persona_id)
        return Turn(card.speaker, text, is_persona=True)
