"""⏹ Stop and 🔁 Regenerate under persona replies: who may press, and what a press does.

The buttons are drawn by ``bot/discord/reply_controls.py``; a press reaches :meth:`on_press`
through the class :func:`bind_reply_buttons` made for this cog, after its own check
(:meth:`refusal`: the member who asked, or a moderator as Discord resolves them here).

* **Stop** ends a reply being written; what was shown stays and is logged as the reply, with
  who stopped it. Of two presses one stops it, the other is told who did. A reply that already
  finished (or died with a restart) says so, and its buttons become Regenerate.
* **Regenerate** writes a new reply to the same turn, with the same history, and the old one
  gives way once the new one is shown. The press is a row with a unique key
  (``Store.record_press``): of two presses at once, in one process or across a restart,
  exactly one regenerates. Only the newest reply of a conversation can be regenerated:
  once someone has answered it, replacing it would change what they answered. The old row
  is labelled ``regenerated_by`` (never a moderator's rejection) and its card says so.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Protocol

import discord
from discord.ext import commands

from bot.chatflow.inflight import RepliesInFlight
from bot.discord.bot_protocol import BotServices
from bot.discord.cast_lookup import CastLookup
from bot.discord.checks import access, channel_allowed, is_moderator, member_allowed
from bot.discord.history import is_conversation, persona_line
from bot.discord.reply_controls import STOP, ReplyButton, bind_reply_buttons, controls_view
from bot.discord.reply_job import Answered, ReplyJob
from bot.discord.review_queue import ReviewQueue
from bot.discord.sender import NO_PINGS
from bot.store.reply_presses import REGENERATE as PRESS_REGENERATE
from bot.store.store import Store

log = logging.getLogger(__name__)
NOT_YOURS = "Only the member who asked for this reply, or a moderator, can stop or regenerate it."
FINISHED = "This reply has already finished, so there is nothing to stop."
MOVED_ON = (
    "Only the newest reply can be regenerated: the conversation has moved on since this one. "
    "Just write again instead."
)
STILL_WRITING = "This reply is still being written: stop it first, or wait for it to finish."
NOT_A_REPLY = "This message is not a persona reply that can be regenerated any more."
ASKED_DELETED = "The message this reply answered was deleted, so there is nothing to answer again."
LATER_READ = 10  # messages after a reply looked at to see whether the conversation moved on


class ReplyWriter(Protocol):
    """What a press needs of the chat cog: the replies being written, and writing one again."""

    replies: RepliesInFlight

    async def regenerate(self, job: ReplyJob) -> Answered | None: ...


class ReplyButtons(commands.Cog):
    """Acts on presses of the reply buttons; ``chat`` writes the new reply (the chat cog)."""

    def __init__(
        self,
        bot: BotServices,
        store: Store | None,
        chat: ReplyWriter,
        casting: CastLookup | None,
        reviews: ReviewQueue | None,
    ) -> None:
        self.bot = bot
        self.store = store
        self.chat = chat
        self.casting = casting
        self.reviews = reviews
        # Registered by the bot with add_dynamic_items: presses on any reply come here.
        self.button_class: type[ReplyButton] = bind_reply_buttons(self)

    # -- who may press -------------------------------------------------------------------------

    def refusal(self, interaction: discord.Interaction[Any], action: str, asker_id: int) -> str | None:
        """Why this member may not press (None: they may): the asker, or a moderator."""
        settings = access(interaction)  # the server's own moderators and roles
        if is_moderator(settings, interaction.user, interaction.permissions):
            return None
        if interaction.user.id != asker_id:
            return NOT_YOURS
        if not channel_allowed(settings, interaction.channel) or not member_allowed(
            settings, interaction.user
        ):
            return "You may not talk to the bot here any more."
        return None

    async def on_press(
        self, interaction: discord.Interaction[Any], action: str, asker_id: int, answered_id: int
    ) -> None:
        # Acknowledge now (the message stays as it is); refusals follow privately.
        try:
            await interaction.response.defer()
        except discord.HTTPException as exc:  # the reply was deleted meanwhile, or Discord is down
            log.warning("a press on message %s could not be acknowledged: %s", interaction.message, exc)
            return
        if action == STOP:
            await self._stop(interaction, asker_id, answered_id)
        else:
            await self._regenerate(interaction, asker_id, answered_id)

    # -- Stop ----------------------------------------------------------------------------------

    async def _stop(self, interaction: discord.Interaction[Any], asker_id: int, answered_id: int) -> None:
        writing = self.chat.replies.get(answered_id)
        if writing is None or writing.asker_id != asker_id:
            await self._tell(interaction, FINISHED)
            # Still showing Stop (the bot restarted while it was written): offer Regenerate instead.
            with contextlib.suppress(discord.HTTPException):
                await interaction.edit_original_response(
                    view=controls_view(asker_id, answered_id, writing=False)
                )
            return
        if not writing.stop(interaction.user.id):
            await self._tell(interaction, f"Already stopped by <@{writing.stopped_by}>.")

    # -- Regenerate ----------------------------------------------------------------------------

    async def _regenerate(
        self, interaction: discord.Interaction[Any], asker_id: int, answered_id: int
    ) -> None:
        store, casting, reply = self.store, self.casting, interaction.message
        if store is None or casting is None or reply is None or self.bot.runtime is None:
            await self._tell(interaction, "The bot is still starting up. Please try again shortly.")
            return
        if self.chat.replies.get(answered_id) is not None:
            await self._tell(interaction, STILL_WRITING)
            return
        channel = reply.channel
        cards = list(casting.cards().values())
        bot_user_id = self.bot.user.id if self.bot.user else None
        webhook_ids = self.bot.sender.known_webhook_ids()
        said = persona_line(reply, cards, bot_user_id=bot_user_id, webhook_ids=webhook_ids)
        if said is None:
            await self._tell(interaction, NOT_A_REPLY)
            return
        card = said[0]
        try:
            cast = await casting.cast_for(channel)
            old_messages, moved_on = await self._reply_and_after(
                channel, reply, card.id, cards, whole_channel=bool(cast.persona_ids)
            )
            if moved_on:
                await self._tell(interaction, MOVED_ON)
                return
            press = await store.record_press(PRESS_REGENERATE, reply.id, interaction.user.id)
        except discord.HTTPException as exc:
            log.warning("regenerate: cannot read channel %s: %s", channel.id, exc)
            await self._tell(interaction, "Discord did not answer; please try again in a moment.")
            return
        except Exception:
            log.exception("regenerate: recording the press failed")
            await self._tell(interaction, "That could not be recorded (database busy). Please try again.")
            return
        if not press.won:
            await self._tell(interaction, f"A new reply was already asked for by <@{press.user_id}>.")
            return
        result = await self._write_again(interaction, channel, asker_id, answered_id, card.id, old_messages)
        if result is None:
            # Nothing replaced the old reply (the member was told why): the button works again.
            with contextlib.suppress(Exception):
                await store.release_press(PRESS_REGENERATE, reply.id)

    async def _write_again(
        self,
        interaction: discord.Interaction[Any],
        channel: Any,
        asker_id: int,
        answered_id: int,
        persona_id: str,
        old_messages: list[discord.Message],
    ) -> Answered | None:
        assert self.store is not None and self.casting is not None
        try:
            answered = await channel.fetch_message(answered_id)
        except discord.NotFound:
            await self._tell(interaction, ASKED_DELETED)
            return None
        except discord.HTTPException as exc:
            log.warning("regenerate: cannot fetch message %s: %s", answered_id, exc)
            await self._tell(interaction, "Discord did not answer; please try again in a moment.")
            return None
        old = await self.store.review_for_messages(m.id for m in old_messages)
        cast = await self.casting.cast_for(channel)
        job = ReplyJob(
            answered,
            persona_id,
            asker_id=asker_id,
            root_id=old.message_id if old is not None and old.message_id else answered_id,
            channel_has_persona=bool(cast.persona_ids),
            turn=old.turn if old is not None else 0,
            cast_channel_id=cast.set_in,
            replaces=old.log_id if old is not None else None,
            replaced=tuple(old_messages),
        )
        result = await self.chat.regenerate(job)
        if result is None or (not result.messages and result.log_id is None):
            return None
        if old is not None:
            await self.store.mark_regenerated(old.log_id, interaction.user.id)
            if self.reviews is not None:
                await self.reviews.refresh(old.log_id)
        return result

    async def _reply_and_after(
        self, channel: Any, reply: discord.Message, persona_id: str, cards: list[Any], *, whole_channel: bool
    ) -> tuple[list[discord.Message], bool]:
        """The messages of the reply that starts with ``reply`` (a long one is split; its buttons
        are on the first), and whether the conversation moved on after it. With a cast
        (``whole_channel``) the channel is the conversation: anyone speaking after it, a member
        or a persona, moves it on. Elsewhere only the reply chain is: a message that replies to
        this reply. The bot's own notices never count."""
        bot_user_id = self.bot.user.id if self.bot.user else None
        webhook_ids = self.bot.sender.known_webhook_ids()
        mine, running, moved = [reply], True, False
        async for later in channel.history(limit=LATER_READ, after=reply, oldest_first=True):
            if not is_conversation(later):
                continue
            said = persona_line(later, cards, bot_user_id=bot_user_id, webhook_ids=webhook_ids)
            if said is not None and said[0].id == persona_id and running:
                mine.append(later)  # the rest of the same reply, posted right after it
                continue
            running = False
            ref = later.reference.message_id if later.reference is not None else None
            if whole_channel and (said is not None or not (later.author.bot or later.webhook_id is not None)):
                moved = True
            elif ref is not None and ref in {m.id for m in mine}:
                moved = True  # someone answered this reply
        return mine, moved

    async def _tell(self, interaction: discord.Interaction[Any], text: str) -> None:
        with contextlib.suppress(discord.HTTPException):
            await interaction.followup.send(text, ephemeral=True, allowed_mentions=NO_PINGS)
