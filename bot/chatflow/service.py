"""The chat service: from a persona id and a conversation to a cleaned reply.

This is the one path both front ends (console and Discord) take: validate the user's
text, render the persona's prompt, queue it on the serving backend, clean what comes back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from bot.serving.backend import ServingBackend
from bot.serving.generation import GenerationError, GenerationRequest, GenerationResult, PromptTooLongError
from personas.card import CardSet, PersonaCard
from personas.context_fit import ContextTooSmallError, fit_prompt
from personas.render import InputError, PromptRenderer, TokenizerFacts, Turn, validate_user_message

log = logging.getLogger(__name__)
# What a member reads when the prompt still does not fit (the operator's log line says why).
DOES_NOT_FIT = "This conversation could not be fitted to the model this time. Please try again."


@dataclass
class PendingReply:
    """A reply on its way: its queue position now, its cleaned text when awaited."""

    card: PersonaCard
    ticket: Any  # a TicketLike that also carries its ``request`` (both backends' Ticket)
    renderer: PromptRenderer
    result: GenerationResult | None = field(default=None, init=False)

    @property
    def prompt(self) -> str:
        """The prompt the model was given (a vLLM server with a smaller context gets it refitted)."""
        return self.ticket.request.prompt

    @property
    def params(self):
        return self.ticket.request.params

    @property
    def position(self) -> int:
        return self.ticket.position

    async def text(self) -> str:
        """The cleaned reply; raises GenerationError subclasses with user-safe messages."""
        try:
            self.result = await self.ticket.result()
        except PromptTooLongError as exc:
            # Its message tells the operator what to change; members get a plain "try again".
            log.warning("persona %s: %s", self.card.id, exc)
            raise GenerationError(DOES_NOT_FIT) from exc
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
        self._warned: set[tuple[str, int]] = set()  # (persona, context) the operator was told about

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
        turns = [*history[:-1], checked]
        adapter = self.backend.adapter_for(persona_id)
        request = self._fitted_request(
            renderer, turns, adapter, self.backend.context_tokens(adapter), conversation
        )
        return PendingReply(card, self.backend.submit(request), renderer)

    def _fitted_request(
        self,
        renderer: PromptRenderer,
        turns: list[Turn],
        adapter: str,
        context: int,
        conversation: str | None = None,
    ) -> GenerationRequest:
        """The request for ``turns`` with its history fitted to ``context`` tokens; it can be fitted
        again for a smaller context (``refit``: a vLLM server with a shorter --max-model-len).

        Raises ContextTooSmallError (an InputError, safe to show) when the card's own text leaves
        no room; the operator gets that line in the log.
        """
        card = renderer.card
        try:
            fitted = fit_prompt(renderer, turns, context)
        except ContextTooSmallError as exc:
            self._warn_once(card.id, context, exc.operator_line)
            raise
        if fitted.cut:
            line = fitted.operator_line(card.id, card.history_budget_tokens, card.generation.max_new_tokens)
            self._warn_once(card.id, context, line)
        request = GenerationRequest.for_card(
            card, fitted.rendered, adapter, conversation=conversation
        ).with_reply_room(
            fitted.max_new_tokens
        )

        def refit(smaller: int) -> GenerationRequest:
            try:
                return self._fitted_request(renderer, turns, adapter, smaller, conversation)
            except InputError as exc:  # raised inside a backend: a GenerationError reaches the member
                raise GenerationError(str(exc)) from exc

        return replace(request, refit=refit)

    def _warn_once(self, persona_id: str, context: int, line: str) -> None:
        """One warning line per persona and context size, not one per message."""
        if (persona_id, context) not in self._warned:
            self._warned.add((persona_id, context))
            log.warning("%s", line)

    async def reply(self, persona_id: str, history: Sequence[Turn], conversation: str | None = None) -> str:
        return await self.submit(persona_id, history, conversation).text()

    def user_turn(self, persona_id: str, text: str) -> Turn:
        card = self.cards.get(persona_id)
        return Turn(card.user_label, text)

    def persona_turn(self, persona_id: str, text: str) -> Turn:
        card = self.cards.get(persona_id)
        return Turn(card.speaker, text, is_persona=True)
