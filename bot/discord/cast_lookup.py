"""The Discord side of a channel's cast: a thread's or forum post's parent, the cast that answers
in a channel, and which persona a message is addressed to (the rules: bot/chatflow/cast.py).

Threads and forum posts are channels of their own on Discord, with their own ids; their cast
(unless one is set in the thread itself) and their permission to talk come from the parent.
"""

from __future__ import annotations

import logging
from typing import Any

import discord

from bot.chatflow.cast import Addressee, EffectiveCast, effective_cast, who_answers
from bot.discord.bot_protocol import BotServices
from bot.discord.history import persona_line
from bot.store.store import Store
from personas.card import PersonaCard

log = logging.getLogger(__name__)
PARENT_CACHE = 4096  # thread → parent ids remembered for threads discord.py has not cached


class CastLookup:
    """Answers "who talks here" for the chat cog, /cast and the reply buttons."""

    def __init__(self, bot: BotServices, store: Store) -> None:
        self.bot = bot
        self.store = store
        self._parents: dict[int, int | None] = {}

    def cards(self) -> dict[str, PersonaCard]:
        """The loaded persona cards (none while the model is not loaded)."""
        runtime = self.bot.runtime
        return dict(runtime.cards.cards) if runtime is not None else {}

    async def parent_id(self, channel: Any) -> int | None:
        """The channel a thread or forum post belongs to; None for anything else.

        A thread discord.py has not cached (it arrives as a ``PartialMessageable``) is looked
        up once over REST; a failed lookup counts as no parent, and is tried again next time.
        """
        if isinstance(channel, discord.Thread):
            return channel.parent_id
        if not isinstance(channel, discord.PartialMessageable):
            return None
        if channel.id in self._parents:
            return self._parents[channel.id]
        try:
            fetched = await self.bot.fetch_channel(channel.id)
        except discord.HTTPException as exc:
            log.warning("could not look up channel %s: %s", channel.id, exc)
            return None
        parent = fetched.parent_id if isinstance(fetched, discord.Thread) else None
        if len(self._parents) >= PARENT_CACHE:
            self._parents.clear()
        self._parents[channel.id] = parent
        return parent

    async def cast_for(self, channel: Any) -> EffectiveCast:
        """The cast answering in ``channel``: its own, else (a thread) its parent's."""
        return await self.cast_for_ids(channel.id, await self.parent_id(channel))

    async def cast_for_ids(self, channel_id: int, parent_id: int | None) -> EffectiveCast:
        """:meth:`cast_for` for a channel known by its id and its parent's."""
        return await effective_cast(self.store, channel_id, parent_id)

    def replied_persona(self, message: discord.Message) -> PersonaCard | None:
        """The persona whose message ``message`` replies to (webhook or prefixed), if any."""
        ref = message.reference
        if ref is None:
            return None
        target: Any = ref.resolved if isinstance(ref.resolved, discord.Message) else ref.cached_message
        if target is None:
            return None
        said = persona_line(
            target,
            list(self.cards().values()),
            bot_user_id=self.bot.user.id if self.bot.user else None,
            webhook_ids=self.bot.sender.known_webhook_ids(),
        )
        return said[0] if said else None

    def addressee(
        self, message: discord.Message, cast: EffectiveCast, default_persona: str
    ) -> Addressee | None:
        """Who answers ``message``: a cast member it names or replies to, else the lead.

        Without a cast (the bot was mentioned or replied to), the persona replied to answers,
        else the default persona. None when none of them is loaded (the caller says so).
        """
        cards = self.cards()
        replied = self.replied_persona(message)
        members = [cards[p] for p in cast.persona_ids if p in cards]
        if not cast.persona_ids:
            members = [c for c in (cards.get(default_persona), replied) if c is not None]
        if not members:
            return None
        return who_answers(message.content, members, replied.id if replied else None)
