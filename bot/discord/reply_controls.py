"""The buttons under a persona's reply: ⏹ Stop while it is written, 🔁 Regenerate once it is done.

Built like the review card's buttons (``bot/discord/review_views.py``), after discord.py's
``examples/views/dynamic_counter.py``:

* Each button is a :class:`discord.ui.DynamicItem` whose custom id carries what a press needs
  (``oshaberi:reply:regen:<asker id>:<answered message id>``), so a press on a reply posted
  before a restart is routed to the registered class without the bot remembering views.
* The registered class is bound to the handler that acts (:func:`bind_reply_buttons`); its own
  ``interaction_check`` asks the handler whether this member may press (the asker or a
  moderator, from what Discord resolved), and refuses anyone else privately.
* Views are stopped before they are sent: a press always takes the one path through the bound
  class, for replies of this run and of earlier ones alike.
"""

from __future__ import annotations

import logging
import re
from typing import Any, ClassVar, Protocol

import discord

log = logging.getLogger(__name__)
ID_PREFIX = "oshaberi:reply"
BUTTON_TEMPLATE = rf"{ID_PREFIX}:(?P<action>stop|regen):(?P<asker>[0-9]{{1,20}}):(?P<answered>[0-9]{{1,20}})"
STOP, REGENERATE = "stop", "regen"
BUTTONS = {
    STOP: ("Stop", "⏹", discord.ButtonStyle.secondary),
    REGENERATE: ("Regenerate", "🔁", discord.ButtonStyle.secondary),
}
NOT_AVAILABLE = "These buttons are not available right now."


def custom_id(action: str, asker_id: int, answered_id: int) -> str:
    return f"{ID_PREFIX}:{action}:{asker_id}:{answered_id}"


def controls_view(asker_id: int, answered_id: int, *, writing: bool) -> discord.ui.View:
    """Stop while the reply is written (``writing``), else Regenerate; stopped before sending (see
    the module doc)."""
    view = discord.ui.View(timeout=None)
    view.add_item(ReplyButton(STOP if writing else REGENERATE, asker_id, answered_id))
    view.stop()
    return view


async def delete_replaced(messages: tuple[Any, ...]) -> None:
    """Delete a regenerated-away reply's messages (its new reply is shown); one already gone is fine."""
    for old in messages:
        try:
            await old.delete()
        except discord.HTTPException as exc:
            if not isinstance(exc, discord.NotFound):
                log.warning("could not delete a regenerated-away reply's message: %s", exc)


class PressHandler(Protocol):
    """What a press needs from the cog that acts (``bot.discord.cogs.reply_buttons.ReplyButtons``)."""

    def refusal(self, interaction: discord.Interaction[Any], action: str, asker_id: int) -> str | None: ...

    async def on_press(
        self, interaction: discord.Interaction[Any], action: str, asker_id: int, answered_id: int
    ) -> None: ...


class ReplyButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=BUTTON_TEMPLATE):
    """Stop or Regenerate under one reply; draws the button, and the bound subclass acts."""

    handler: ClassVar[PressHandler | None] = None

    def __init__(self, action: str, asker_id: int, answered_id: int) -> None:
        label, emoji, style = BUTTONS[action]
        super().__init__(
            discord.ui.Button(
                label=label, emoji=emoji, style=style, custom_id=custom_id(action, asker_id, answered_id)
            )
        )
        self.action = action
        self.asker_id = asker_id
        self.answered_id = answered_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> ReplyButton:
        return cls(match["action"], int(match["asker"]), int(match["answered"]))

    async def interaction_check(self, interaction: discord.Interaction[Any], /) -> bool:
        """Only the member who asked, or a moderator; anyone else is told so privately."""
        if self.handler is None:
            await interaction.response.send_message(NOT_AVAILABLE, ephemeral=True)
            return False
        refusal = self.handler.refusal(interaction, self.action, self.asker_id)
        if refusal is not None:
            await interaction.response.send_message(refusal, ephemeral=True)
            return False
        return True

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        assert self.handler is not None  # interaction_check let the press through
        await self.handler.on_press(interaction, self.action, self.asker_id, self.answered_id)


def bind_reply_buttons(handler: PressHandler) -> type[ReplyButton]:
    """The class to register with ``Client.add_dynamic_items``: presses go to ``handler`` (a
    subclass per handler, so several bots in one process each reach their own)."""

    class BoundReplyButton(ReplyButton, template=BUTTON_TEMPLATE):
        pass

    BoundReplyButton.handler = handler
    return BoundReplyButton
