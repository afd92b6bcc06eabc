"""The review card as Discord shows it: the embed, its persistent buttons and the Edit modal.

Why it is built this way:

* Buttons are :class:`discord.ui.DynamicItem` whose custom id carries the log id
  (``oshaberi:review:approve:42``): any click, also on a card posted before a restart, is routed
  to the registered button class without the bot remembering views (discord.py's
  ``examples/views/dynamic_counter.py`` pattern).
* The registered class is bound to the moderator desk that decides (:func:`bind_review_buttons`),
  so a click reaches its handler through the constructor wiring, never a lookup by name.
* The button checks who clicked in its own ``interaction_check``, from Discord's resolved
  permissions, not by hiding UI.
* The Edit modal is handled by its custom id (see ``bot/discord/cogs/review.py``), so a modal
  opened before a restart and submitted after it still counts.
"""

from __future__ import annotations

import contextlib
import logging
import re
from datetime import datetime
from typing import Any, ClassVar, Protocol

import discord

from bot.store.store import MAX_EDITED_CHARS, ReviewItem
from bot.text.mentions import defuse_mentions
from personas.render import clean_text

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
NOT_AVAILABLE = "Review is not available right now."


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
    for name, value in member_signals(item):
        embed.add_field(name=name, value=value, inline=False)
    embed.add_field(name="Adapter", value=item.adapter_version or "prompt-only")
    if item.latency_ms is not None:
        embed.add_field(name="Latency", value=f"{item.latency_ms / 1000:.1f} s")
    params = item.params
    summary = ", ".join(
        f"{k}={params[k]}" for k in ("temperature", "top_p", "max_new_tokens", "new_tokens") if k in params
    )
    if summary:
        embed.add_field(name="Generation", value=_clip(summary, 1000))
    if params.get("shown") == "none":
        embed.add_field(name="⚠ Not shown", value="Discord refused this reply: members never saw it.", inline=False)
    elif params.get("shown") == "partial":
        value = f"Members see only this draft (Discord refused the rest):\n{shown(str(params.get('shown_text', '')))}"
        embed.add_field(name="⚠ Shown in part", value=_clip(value, 1000), inline=False)
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


def member_signals(item: ReviewItem) -> list[tuple[str, str]]:
    """What members did with the reply (card fields): answered another persona, stopped while
    written, regenerated away, or a regeneration of an earlier reply. Weak signals for the
    moderator, never decisions."""
    signals = []
    if item.turn:
        signals.append(("Persona turn", f"answers another persona ({item.turn} after the member's message)"))
    if item.stopped_by is not None:
        signals.append(
            ("⏹ Stopped", f"by <@{item.stopped_by}> while it was written (the reply is what was shown)")
        )
    if item.replaces is not None:
        signals.append(("🔁 Regeneration", f"of #{item.replaces}"))
    if item.regenerated_by is not None:
        when = ""
        with contextlib.suppress(TypeError, ValueError):
            when = f" <t:{int(datetime.fromisoformat(item.regenerated_at or '').timestamp())}:R>"
        signals.append(
            ("🔁 Regenerated away", f"by <@{item.regenerated_by}>{when}: a member asked for another reply")
        )
    return signals


def review_view(log_id: int, *, decided: bool = False) -> discord.ui.View:
    """A card's three buttons (disabled once ``decided``), to send or edit a message with.

    The view is stopped before it is sent: discord.py then does not keep it, so a click is
    routed by its custom id to the registered (bound) button class, the one path for cards of
    this run and of earlier ones alike, and no view object is kept per card forever.
    """
    view = discord.ui.View(timeout=None)
    for action in ACTIONS:
        view.add_item(ReviewButton(action, log_id, disabled=decided))
    view.stop()
    return view


class ButtonHandler(Protocol):
    """What a click needs from the desk that decides (``bot.discord.cogs.review.Review``)."""

    def is_moderator(self, interaction: discord.Interaction[Any]) -> bool: ...

    async def on_button(self, interaction: discord.Interaction[Any], action: str, log_id: int) -> None: ...


class ReviewButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=BUTTON_TEMPLATE):
    """One of a card's buttons; the log id lives in the custom id, so it survives restarts.

    This class draws buttons; clicks are routed to the subclass :func:`bind_review_buttons`
    makes, which knows its handler.
    """

    handler: ClassVar[ButtonHandler | None] = None

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

    async def interaction_check(self, interaction: discord.Interaction[Any], /) -> bool:
        """Only moderators decide; anyone else is told so privately and nothing happens."""
        if self.handler is None:
            await interaction.response.send_message(NOT_AVAILABLE, ephemeral=True)
            return False
        if not self.handler.is_moderator(interaction):
            await interaction.response.send_message(NOT_MODERATOR, ephemeral=True)
            return False
        return True

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        assert self.handler is not None  # interaction_check let the click through
        await self.handler.on_button(interaction, self.action, self.log_id)


def bind_review_buttons(handler: ButtonHandler) -> type[ReviewButton]:
    """The button class to register with ``Client.add_dynamic_items``: clicks go to ``handler``.

    A subclass per handler (not a module-level setting), so several bots in one process, as in
    the tests, each route their clicks to their own desk.
    """

    class BoundReviewButton(ReviewButton, template=BUTTON_TEMPLATE):
        pass

    BoundReviewButton.handler = handler
    return BoundReviewButton


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
