"""One persona reply to write, and what came of it: the unit the chat cog answers, whether a member
asked, a persona answers another (``chat.cast_followups``) or a member pressed Regenerate."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import discord

from personas.card import PersonaCard


@dataclass(frozen=True)
class ReplyJob:
    """A reply ``persona_id`` writes to ``message``.

    ``message`` is what is answered: the member's message, or for personas answering each
    other the last message of the other persona's line. ``asker_id`` is the member the reply
    is for (their rate limit, their Stop and Regenerate buttons, their log row); ``root_id``
    is their message, which the log row answers (deleting it withdraws the whole chain).
    ``turn`` counts persona turns since that message (0: the first answer). ``replaces`` is the
    log id of a reply being regenerated; ``replaced`` its messages, deleted once the new
    reply is shown.
    """

    message: discord.Message
    persona_id: str
    asker_id: int
    root_id: int
    channel_has_persona: bool
    turn: int = 0
    cast_channel_id: int | None = None  # where the cast answering here was set (a thread's parent)
    replaces: int | None = None
    replaced: tuple[Any, ...] = ()

    @property
    def is_followup(self) -> bool:
        """A persona answering another on its own (not a member's Regenerate)."""
        return self.turn > 0 and not self.replaced

    @classmethod
    def for_member(
        cls,
        message: discord.Message,
        persona_id: str,
        *,
        channel_has_persona: bool,
        cast_channel_id: int | None,
    ) -> ReplyJob:
        """The first answer to a member's ``message``."""
        return cls(
            message,
            persona_id,
            asker_id=message.author.id,
            root_id=message.id,
            channel_has_persona=channel_has_persona,
            cast_channel_id=cast_channel_id,
        )


@dataclass(frozen=True)
class Answered:
    """A reply that was written: the card that spoke, its text as posted (empty when held back),
    the messages showing it (empty when held back or Discord refused), its log id if logged,
    and whether a member stopped it part-way."""

    job: ReplyJob
    card: PersonaCard
    text: str
    messages: tuple[Any, ...]
    log_id: int | None
    stopped: bool = False
