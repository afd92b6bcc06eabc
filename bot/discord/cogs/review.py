"""Moderators' decisions on review cards: the buttons' and the Edit modal's handler.

The card itself (embed, buttons, modal) is drawn by ``bot/discord/review_views.py``; posting
and deleting cards is the review queue's job (``bot/discord/review_queue.py``). Here:

* A click reaches :meth:`Review.on_button` through the button class bound to this cog
  (``bind_review_buttons``), after the button's own moderator check.
* The Edit modal is handled by its custom id in an interaction listener, so a modal opened
  before a restart and submitted after it still counts.
* A decision is taken only on a row of the moderator's own server (a trainer candidate: of the
  operator's review server), whatever card or forged id the click came from; anything else is
  refused privately and nothing is recorded.
* The decision itself is the store's atomic update; the card then shows whoever won.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

import discord
from discord.ext import commands

from bot.discord.bot_protocol import BotServices
from bot.discord.checks import access, is_moderator
from bot.discord.review_queue import ReviewQueue
from bot.discord.review_views import (
    ACTIONS,
    MODAL_RE,
    NOT_MODERATOR,
    EditModal,
    ReviewButton,
    bind_review_buttons,
    review_embed,
    review_view,
    submitted_text,
)
from bot.discord.sender import NO_PINGS
from bot.store.store import (
    MAX_EDITED_CHARS,
    DecisionOutcome,
    ReviewItem,
    ReviewNotFoundError,
    Store,
    StoreBusyError,
    within,
)
from personas.render import clean_text

log = logging.getLogger(__name__)
BUSY = "The database is busy right now, so the edit form cannot be opened. Please try again in a moment."
ELSEWHERE = (
    "This review item belongs to another server's review queue, so it cannot be decided here. "
    "Nothing was recorded."
)


class Review(commands.Cog):
    """Decides on review items. ``queue`` (None without a database) posts the cards and is
    polled while this cog is loaded; ``persona_name`` gives a card's display name."""

    def __init__(
        self,
        bot: BotServices,
        store: Store | None,
        queue: ReviewQueue | None,
        persona_name: Callable[[str], str | None],
    ) -> None:
        self.bot = bot
        self.store = store
        self.queue = queue
        self.persona_name = persona_name
        # Registered by the bot with add_dynamic_items: clicks on any card come here.
        self.button_class: type[ReviewButton] = bind_review_buttons(self)

    async def cog_load(self) -> None:
        if self.queue is not None and not self.bot.sync_only:
            self.queue.start_polling()

    async def cog_unload(self) -> None:
        if self.queue is not None:
            self.queue.stop_polling()

    # -- decisions -----------------------------------------------------------------------------

    def is_moderator(self, interaction: discord.Interaction[Any]) -> bool:
        """A moderator of the server the click came from (its moderator role, Manage Messages)."""
        return is_moderator(access(interaction), interaction.user, interaction.permissions)

    def belongs_here(self, item: ReviewItem, interaction: discord.Interaction[Any]) -> bool:
        """Whether ``item`` may be decided from this interaction's server: a row of that server
        (which the bot serves), or a trainer candidate in the operator's review server."""
        guild_id = interaction.guild_id
        if guild_id is None:
            return False
        if item.guild_id is None:
            return self.queue is not None and guild_id == self.queue.home_guild_id()
        return item.guild_id == guild_id and self.bot.servers.get(guild_id).served

    async def on_button(self, interaction: discord.Interaction[Any], action: str, log_id: int) -> None:
        """A moderator's click (the button's interaction_check let it through)."""
        store = self.store
        if store is None:
            await interaction.response.send_message("The database is not available.", ephemeral=True)
            return
        if action == "edit":
            # A modal must be the first response, so this path cannot defer: its one read is
            # bounded, and a database too busy to answer it gets "try again", not a timeout.
            try:
                item = await within(store.get_review(log_id))
            except StoreBusyError:
                await interaction.response.send_message(BUSY, ephemeral=True)
                return
            if item is None:
                await interaction.response.send_message(_gone_text(log_id), ephemeral=True)
            elif not self.belongs_here(item, interaction):
                await interaction.response.send_message(ELSEWHERE, ephemeral=True)
            elif item.decision is not None:
                await interaction.response.send_message(
                    _already(item.decision, item.decided_by), ephemeral=True
                )
            else:
                modal = EditModal(log_id, clean_text(item.reply))
                # Stopped before sending: discord.py then does not keep it, and the submit is handled
                # by its custom id in on_interaction below, the same before and after a restart.
                modal.stop()
                await interaction.response.send_modal(modal)
            return
        # Acknowledge within Discord's 3 seconds even if the database is busy and retrying.
        await interaction.response.defer()
        await self._decide(interaction, log_id, ACTIONS[action][2], None)

    @commands.Cog.listener()
    async def on_interaction(self, interaction: discord.Interaction[Any]) -> None:
        if interaction.type != discord.InteractionType.modal_submit:
            return
        data = interaction.data or {}
        match = MODAL_RE.fullmatch(str(data.get("custom_id", "")))
        if match is None:
            return
        await self.on_edit_submit(interaction, int(match["log_id"]), submitted_text(data) or "")

    async def on_edit_submit(self, interaction: discord.Interaction[Any], log_id: int, text: str) -> None:
        if not self.is_moderator(interaction):  # checked again: the modal could be forged or stale
            await interaction.response.send_message(NOT_MODERATOR, ephemeral=True)
            return
        if self.store is None:
            await interaction.response.send_message("The database is not available.", ephemeral=True)
            return
        if not text.strip():
            await interaction.response.send_message(
                "The edited reply is empty; nothing was recorded.", ephemeral=True
            )
            return
        # From a card: the card itself is updated. A form with no card behind it (forged, or its
        # card deleted) cannot update a message, so it is answered privately instead.
        no_card = interaction.message is None
        await interaction.response.defer(ephemeral=no_card, thinking=no_card)
        await self._decide(interaction, log_id, "edited", text[:MAX_EDITED_CHARS])

    async def _decide(
        self, interaction: discord.Interaction[Any], log_id: int, decision: str, edited: str | None
    ) -> None:
        """Record the decision (the interaction is already acknowledged) and show the outcome."""
        store = self.store
        assert store is not None
        try:
            item = await store.get_review(log_id)
            if item is not None and not self.belongs_here(item, interaction):
                await self._tell(interaction, ELSEWHERE)
                return
            outcome = await store.decide(log_id, interaction.user.id, decision, edited)
            item = await store.get_review(log_id)
        except ReviewNotFoundError:
            item = None
        except Exception:
            log.exception("recording the decision on #%s failed", log_id)
            await self._tell(
                interaction, "The decision could not be recorded (database busy). Please try again."
            )
            return
        if item is None:
            await self._gone(interaction, log_id)
            return
        await self._show(interaction, item, outcome)

    async def _show(
        self, interaction: discord.Interaction[Any], item: ReviewItem, outcome: DecisionOutcome
    ) -> None:
        """Update the card to the standing decision; tell a late clicker who decided first."""
        embed = review_embed(item, self.persona_name(item.persona_id))
        view = review_view(item.log_id, decided=True)
        try:
            if interaction.message is not None:
                await interaction.edit_original_response(embed=embed, view=view, allowed_mentions=NO_PINGS)
            else:
                await self._edit_card(item, embed, view)
        except discord.HTTPException as exc:
            log.warning("review card #%s not updated: %s", item.log_id, exc)
        if outcome.already_decided:
            await self._tell(interaction, _already(outcome.decision, outcome.moderator_id))
        elif interaction.message is None:
            await self._tell(interaction, f"Recorded: **{item.decision}** on review item #{item.log_id}.")

    async def _tell(self, interaction: discord.Interaction[Any], text: str) -> None:
        """An ephemeral note to whoever clicked, whether or not the interaction was answered yet."""
        with contextlib.suppress(discord.HTTPException):
            if interaction.response.is_done():
                await interaction.followup.send(text, ephemeral=True, allowed_mentions=NO_PINGS)
            else:
                await interaction.response.send_message(text, ephemeral=True, allowed_mentions=NO_PINGS)

    async def _edit_card(self, item: ReviewItem, embed: discord.Embed, view: discord.ui.View) -> None:
        if item.review_channel_id and item.review_message_id:
            channel = self.bot.get_channel(item.review_channel_id)
            if channel is not None and hasattr(channel, "get_partial_message"):
                await channel.get_partial_message(item.review_message_id).edit(embed=embed, view=view)

    async def _gone(self, interaction: discord.Interaction[Any], log_id: int) -> None:
        """The row was deleted (its user asked to be forgotten): retire the card."""
        if interaction.message is not None and interaction.response.is_done():
            with contextlib.suppress(discord.HTTPException):
                await interaction.edit_original_response(content=_gone_text(log_id), embed=None, view=None)
                return
        await self._tell(interaction, _gone_text(log_id))


def _gone_text(log_id: int) -> str:
    return f"Review item #{log_id} no longer exists (its user asked to be forgotten)."


def _already(decision: str, moderator_id: int | None) -> str:
    return f"Already decided: **{decision}** by <@{moderator_id}>."
