"""Review cards: every logged reply (and every trainer candidate) becomes a card with
Approve / Reject / Edit buttons in the review channel.

Why it is built this way:

* Buttons are :class:`discord.ui.DynamicItem` whose custom id carries the log id
  (``oshaberi:review:approve:42``): any click, also on a card posted before a restart, is routed
  to :class:`ReviewButton` without the bot remembering views.
* The Edit modal is handled the same way, by its custom id in an interaction listener, so a modal
  opened before a restart and submitted after it still counts.
* Permission is checked in the callback from Discord's resolved permissions, not by hiding UI.
* The decision itself is the store's atomic update; the card then shows whoever won.
* Posting claims the item in the database first: a live reply and the poller cannot both post it,
  and a restart reconciles cards found in the channel before posting again.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any

import discord
from discord.ext import commands, tasks

from bot.discord.checks import is_moderator
from bot.discord.sender import NO_PINGS
from bot.mentions import defuse_mentions
from bot.store import (
    MAX_EDITED_CHARS,
    DecisionOutcome,
    ReviewItem,
    ReviewNotFoundError,
    StoreBusyError,
    within,
)
from personas.render import clean_text

if TYPE_CHECKING:
    from bot.discord.app import OshaberiBot

log = logging.getLogger(__name__)

ID_PREFIX = "oshaberi:review"
BUTTON_TEMPLATE = rf"{ID_PREFIX}:(?P<action>approve|reject|edit):(?P<log_id>[0-9]{{1,19}})"
MODAL_RE = re.compile(rf"{ID_PREFIX}:edit-submit:(?P<log_id>[0-9]{{1,19}})")
TEXT_INPUT_ID = f"{ID_PREFIX}:edited-text"
ACTIONS = {
    "approve": ("Approve", discord.ButtonStyle.success, "approved"),
    "reject": ("Reject", discord.ButtonStyle.danger, "rejected"),
    "edit": ("Edit", discord.ButtonStyle.secondary, "edited"),
}
COLOURS = {
    None: discord.Colour.light_grey(),
    "approved": discord.Colour.green(),
    "rejected": discord.Colour.red(),
    "edited": discord.Colour.blue(),
}
NOT_MODERATOR = "Only moderators can decide on review items."
BUSY = "The database is busy right now, so the edit form cannot be opened. Please try again in a moment."
RECONCILE_SCAN = 200  # recent review-channel messages searched for cards posted before a restart


def custom_id(action: str, log_id: int) -> str:
    return f"{ID_PREFIX}:{action}:{log_id}"


def _clip(text: str, limit: int) -> str:
    text = text or "—"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def shown(text: str) -> str:
    """Logged text as a moderator sees it: no invisible or direction-changing characters (a
    U+202E would show the words reordered), and no live mentions. The row keeps the raw text."""
    return defuse_mentions(clean_text(text or ""))


def review_embed(item: ReviewItem, persona_name: str | None = None) -> discord.Embed:
    """The card: what was asked, what the persona said, how it was made, and any decision.

    Embed limits (4096 description, 1024 per field, 6000 in all) bound every text; the full
    texts stay in the database.
    """
    blocked = item.status == "blocked"
    title = f"{'⛔ ' if blocked else ''}{persona_name or item.persona_id} · #{item.log_id}"
    embed = discord.Embed(
        title=_clip(title, 256),
        description=_clip(shown(item.reply), 2000),
        colour=discord.Colour.orange() if blocked and item.decision is None else COLOURS.get(item.decision),
    )
    embed.add_field(name="Message", value=_clip(shown(item.user_text), 1000), inline=False)
    context = clean_text(item.prompt)[-700:].replace("```", "'''")
    embed.add_field(name="Context (end of the prompt)", value=f"```\n{context}\n```", inline=False)
    if item.origin == "live":
        where = f"<@{item.user_id}>" if item.user_id else "unknown user"
        if item.guild_id and item.channel_id and item.message_id:
            where += f" in https://discord.com/channels/{item.guild_id}/{item.channel_id}/{item.message_id}"
        embed.add_field(name="From", value=where, inline=False)
    else:
        embed.add_field(name="From", value="trainer candidate (augment)", inline=False)
    if blocked:
        embed.add_field(name="Blocked words", value=_clip(", ".join(item.blocked_words), 1000), inline=False)
    embed.add_field(name="Adapter", value=item.adapter_version or "prompt-only")
    if item.latency_ms is not None:
        embed.add_field(name="Latency", value=f"{item.latency_ms / 1000:.1f} s")
    params = item.params
    summary = ", ".join(
        f"{k}={params[k]}" for k in ("temperature", "top_p", "max_new_tokens", "new_tokens") if k in params
    )
    if summary:
        embed.add_field(name="Generation", value=_clip(summary, 1000))
    if item.decision is not None:
        when = ""
        with contextlib.suppress(TypeError, ValueError):
            when = f" <t:{int(datetime.fromisoformat(item.decided_at or '').timestamp())}:R>"
        embed.add_field(
            name="Decision", value=f"**{item.decision}** by <@{item.decided_by}>{when}", inline=False
        )
        if item.edited_text:
            embed.add_field(
                name="Approved text (edited)",
                value=_clip(shown(item.edited_text), 1000),
                inline=False,
            )
    embed.set_footer(text=f"oshaberi review #{item.log_id} · {item.origin}")
    return embed


def review_view(log_id: int, *, decided: bool = False) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    for action in ACTIONS:
        view.add_item(ReviewButton(action, log_id, disabled=decided))
    return view


class ReviewButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=BUTTON_TEMPLATE):
    """One of a card's buttons; the log id lives in the custom id, so it survives restarts."""

    def __init__(self, action: str, log_id: int, *, disabled: bool = False) -> None:
        label, style, _ = ACTIONS[action]
        super().__init__(
            discord.ui.Button(
                label=label, style=style, custom_id=custom_id(action, log_id), disabled=disabled
            )
        )
        self.action = action
        self.log_id = log_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> ReviewButton:
        return cls(match["action"], int(match["log_id"]))

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        cog = interaction.client.get_cog("Review")
        if cog is None:
            await interaction.response.send_message("Review is not available right now.", ephemeral=True)
            return
        await cog.on_button(interaction, self.action, self.log_id)


class EditModal(discord.ui.Modal):
    """The edit form, pre-filled with the reply. Its submit is routed by custom id (see module doc)."""

    def __init__(self, log_id: int, reply: str) -> None:
        super().__init__(
            title=f"Edit reply #{log_id}"[:45], custom_id=f"{ID_PREFIX}:edit-submit:{log_id}", timeout=None
        )
        self.text: discord.ui.TextInput[Any] = discord.ui.TextInput(
            label="Approved reply",
            style=discord.TextStyle.paragraph,
            default=reply[:MAX_EDITED_CHARS],
            max_length=MAX_EDITED_CHARS,
            min_length=1,
            required=True,
            custom_id=TEXT_INPUT_ID,
        )
        self.add_item(self.text)


def submitted_text(data: Any, custom_id_: str = TEXT_INPUT_ID) -> str | None:
    """The value of one text input in a modal submit payload, however deeply it is nested."""
    if isinstance(data, dict):
        if data.get("custom_id") == custom_id_ and "value" in data:
            return str(data["value"])
        for value in data.values():
            found = submitted_text(value, custom_id_)
            if found is not None:
                return found
    elif isinstance(data, list):
        for value in data:
            found = submitted_text(value, custom_id_)
            if found is not None:
                return found
    return None


def card_ids_in(message: discord.Message) -> set[int]:
    """Log ids of the review buttons on a message (to recognise cards after a restart)."""
    pattern = re.compile(BUTTON_TEMPLATE)
    ids = set()
    for row in message.components:
        for child in getattr(row, "children", [row]):
            match = pattern.fullmatch(getattr(child, "custom_id", "") or "")
            if match:
                ids.add(int(match["log_id"]))
    return ids


class Review(commands.Cog):
    def __init__(self, bot: OshaberiBot) -> None:
        self.bot = bot
        self._unmarked: dict[int, tuple[int, int]] = {}  # posted, but the database did not take it yet
        self._reconciled = False
        self.poller.change_interval(seconds=max(1.0, bot.settings.discord.review_poll_s))

    async def cog_load(self) -> None:
        if not self.bot.sync_only:
            self.poller.start()

    async def cog_unload(self) -> None:
        self.stop_polling()

    def stop_polling(self) -> None:
        self.poller.cancel()

    # -- posting -------------------------------------------------------------------------------

    def persona_name(self, persona_id: str) -> str | None:
        cards = getattr(self.bot.runtime, "cards", None)
        card = cards.cards.get(persona_id) if cards is not None else None
        return card.display_name if card is not None else None

    async def review_channel(self) -> Any:
        channel_id = self.bot.settings.discord.review_channel
        if not channel_id:
            return None
        channel = self.bot.get_channel(channel_id)
        if channel is None:
            try:
                channel = await self.bot.fetch_channel(channel_id)
            except discord.HTTPException as exc:
                log.error("review channel %s is not reachable: %s", channel_id, exc)
                return None
        return channel

    async def post_new(self, log_id: int) -> None:
        """Post the card for a reply just logged; the poller retries whatever fails here."""
        store = self.bot.store
        if store is None:
            return
        try:
            item = await store.get_review(log_id)
            if item is not None:
                await self.post(item)
        except Exception:
            log.exception("review card for #%s not posted now; the poller will retry", log_id)

    async def post(self, item: ReviewItem) -> bool:
        store = self.bot.store
        channel = await self.review_channel()
        if store is None or channel is None:
            return False
        if not await store.claim_review(item.log_id):
            return False  # posted already, or another poster is on it
        try:
            message = await channel.send(
                embed=review_embed(item, self.persona_name(item.persona_id)),
                view=review_view(item.log_id),
                allowed_mentions=NO_PINGS,
            )
        except discord.HTTPException as exc:
            log.warning("could not post review card #%s: %s", item.log_id, exc)
            await store.release_review(item.log_id)
            return False
        try:
            await store.mark_posted(item.log_id, channel.id, message.id)
        except Exception:
            # Claimed and posted: remember it so it is marked later instead of posted twice.
            log.exception("review card #%s posted but not yet recorded", item.log_id)
            self._unmarked[item.log_id] = (channel.id, message.id)
        return True

    @tasks.loop(seconds=10)
    async def poller(self) -> None:
        """Write spooled logs, then post cards for anything still without one (trainer candidates,
        replies whose card failed)."""
        store, flow = self.bot.store, self.bot.flow
        if store is None:
            return
        try:
            if flow is not None and len(flow.spool):
                await flow.spool.flush()
                await self.delete_cards(flow.spool.take_cards())  # rows deleted late
            for log_id, (channel_id, message_id) in list(self._unmarked.items()):
                await store.mark_posted(log_id, channel_id, message_id)
                del self._unmarked[log_id]
            if not self._reconciled:
                await self.reconcile()
            if await self.review_channel() is None:
                return
            for item in await store.unposted_reviews(limit=20):
                await self.post(item)
        except Exception:
            log.exception("review poll failed; trying again next round")

    @poller.before_loop
    async def _before_poll(self) -> None:
        await self.bot.wait_until_ready()

    async def reconcile(self) -> None:
        """After a restart: cards the last run posted but could not record are marked, not reposted;
        then every claim of the last run is released."""
        store = self.bot.store
        channel = await self.review_channel()
        if store is None:
            return
        if channel is not None and hasattr(channel, "history"):
            me = self.bot.user.id if self.bot.user else None
            try:
                async for message in channel.history(limit=RECONCILE_SCAN):
                    if message.author.id != me:
                        continue
                    for log_id in card_ids_in(message):
                        item = await store.get_review(log_id)
                        if item is not None and item.review_message_id is None:
                            await store.mark_posted(log_id, channel.id, message.id)
            except Exception as exc:  # best effort: never let it stop cards from being posted
                log.warning("could not read the review channel to reconcile cards: %s", exc)
        await store.release_all_claims()
        self._reconciled = True

    async def delete_cards(self, cards: Iterable[tuple[int, int]]) -> int:
        """Remove review cards from Discord (after /forget); returns how many went."""
        deleted = 0
        for channel_id, message_id in cards:
            channel = self.bot.get_channel(channel_id)
            if channel is None or not hasattr(channel, "get_partial_message"):
                continue
            try:
                await channel.get_partial_message(message_id).delete()
                deleted += 1
            except discord.HTTPException as exc:
                log.warning("could not delete review card %s: %s", message_id, exc)
        return deleted

    # -- decisions -----------------------------------------------------------------------------

    def _allowed(self, interaction: discord.Interaction[Any]) -> bool:
        return is_moderator(self.bot.settings.discord, interaction.user, interaction.permissions)

    async def on_button(self, interaction: discord.Interaction[Any], action: str, log_id: int) -> None:
        store = self.bot.store
        if not self._allowed(interaction):
            await interaction.response.send_message(NOT_MODERATOR, ephemeral=True)
            return
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
        if not self._allowed(interaction):  # checked again: the modal could be forged or stale
            await interaction.response.send_message(NOT_MODERATOR, ephemeral=True)
            return
        if self.bot.store is None:
            await interaction.response.send_message("The database is not available.", ephemeral=True)
            return
        if not text.strip():
            await interaction.response.send_message(
                "The edited reply is empty; nothing was recorded.", ephemeral=True
            )
            return
        await interaction.response.defer()
        await self._decide(interaction, log_id, "edited", text[:MAX_EDITED_CHARS])

    async def _decide(
        self, interaction: discord.Interaction[Any], log_id: int, decision: str, edited: str | None
    ) -> None:
        """Record the decision (the interaction is already acknowledged) and show the outcome."""
        store = self.bot.store
        assert store is not None
        try:
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


async def setup(bot: OshaberiBot) -> None:
    await bot.add_cog(Review(bot))
