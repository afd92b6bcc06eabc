"""/persona, /personas and /reset: which character talks in a channel, and starting afresh.

Autocomplete only suggests; a client can send any string, so the chosen value is checked here
against the loaded cards before anything is stored.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.adapter_labels import persona_adapter_labels
from bot.discord.checks import channel_allowed, member_allowed
from bot.discord.sender import NO_PINGS
from bot.store import StoreBusyError, within

if TYPE_CHECKING:
    from bot.discord.app import OshaberiBot

log = logging.getLogger(__name__)
OFF = "off"


def persona_choices(cards: dict[str, Any], current: str, *, with_off: bool) -> list[app_commands.Choice[str]]:
    """Autocomplete entries matching what was typed, by id or display name (at most 25: Discord's cap)."""
    needle = current.strip().casefold()
    out = []
    if with_off and (not needle or OFF.startswith(needle)):
        out.append(app_commands.Choice(name="off — stop answering every message here", value=OFF))
    for pid, card in sorted(cards.items()):
        if needle and needle not in pid.casefold() and needle not in card.display_name.casefold():
            continue
        out.append(app_commands.Choice(name=f"{card.display_name} ({pid})"[:100], value=pid))
    return out[:25]


class Persona(commands.Cog):
    def __init__(self, bot: OshaberiBot) -> None:
        self.bot = bot

    def _cards(self) -> dict[str, Any]:
        cards = getattr(self.bot.runtime, "cards", None)
        return dict(cards.cards) if cards is not None else {}

    async def _refuse_here(self, interaction: discord.Interaction[Any]) -> bool:
        """True (after telling the user) when this channel or member may not use the bot."""
        settings = self.bot.settings.discord
        if interaction.guild is None:
            await interaction.response.send_message("Personas talk in server channels only.", ephemeral=True)
            return True
        if not channel_allowed(settings, interaction.channel):
            await interaction.response.send_message("The bot does not talk in this channel.", ephemeral=True)
            return True
        if not member_allowed(settings, interaction.user):
            await interaction.response.send_message(
                "You do not have a role that may use the bot.", ephemeral=True
            )
            return True
        if self.bot.store is None:
            await interaction.response.send_message("The bot is still starting up.", ephemeral=True)
            return True
        return False

    @app_commands.command(name="persona", description="Choose who answers every message in this channel")
    @app_commands.describe(persona="A persona id from /personas, or 'off'")
    @app_commands.guild_only()
    async def persona(self, interaction: discord.Interaction[Any], persona: str) -> None:
        if await self._refuse_here(interaction):
            return
        assert self.bot.store is not None and interaction.channel_id is not None
        choice = persona.strip().lower()
        cards = self._cards()
        card = cards.get(choice)
        if choice != OFF and card is None:
            known = ", ".join(sorted(cards)) or "none loaded"
            await interaction.response.send_message(
                f"There is no persona `{discord.utils.escape_markdown(persona[:40])}`. Known: {known}.",
                ephemeral=True,
                allowed_mentions=NO_PINGS,
            )
            return
        # Answer Discord now: a busy database may take longer than the 3 s an interaction allows.
        await interaction.response.defer(thinking=True)
        try:
            if card is None:
                await self.bot.store.set_channel_persona(interaction.channel_id, None)
                text = "No persona answers every message here any more (mention the bot to talk)."
            else:
                # A new character starts a new conversation: the old persona's lines are not this one's.
                await self.bot.store.set_channel_persona(interaction.channel_id, card.id)
                await self.bot.store.reset_channel(interaction.channel_id, interaction.id)
                text = f"**{card.display_name}** now answers every message in this channel. `/persona off` to stop."
        except Exception:
            log.exception("/persona could not be saved")
            text = "That could not be saved (database busy). Please try again."
        await interaction.followup.send(text, allowed_mentions=NO_PINGS)

    @persona.autocomplete("persona")
    async def _persona_autocomplete(
        self, interaction: discord.Interaction[Any], current: str
    ) -> list[app_commands.Choice[str]]:
        return persona_choices(self._cards(), current, with_off=True)

    @app_commands.command(name="personas", description="List the personas and show which one is active here")
    async def personas(self, interaction: discord.Interaction[Any]) -> None:
        cards = self._cards()
        active, busy = None, False
        if self.bot.store is not None and interaction.channel_id is not None:
            # Read before the first response, so bounded: the list is worth showing without it.
            try:
                active = await within(self.bot.store.channel_persona(interaction.channel_id))
            except StoreBusyError:
                busy = True
        default = self.bot.settings.chat.default_persona
        worker = getattr(self.bot.runtime, "worker", None)
        labels = persona_adapter_labels(cards, worker.stats().adapters if worker is not None else [])
        embed = discord.Embed(title="Personas", colour=discord.Colour.blurple())
        for pid, card in sorted(cards.items())[:25]:
            marks = []
            if pid == active:
                marks.append("▶ active here")
            if pid == default:
                marks.append("default")
            note = f" ({', '.join(marks)})" if marks else ""
            embed.add_field(
                name=f"{card.display_name} — `{pid}`{note}"[:256],
                value=f"{card.description[:900]}\nAdapter: {labels[pid]}",
                inline=False,
            )
        if busy:
            embed.set_footer(text="The database is busy, so the persona active here is not shown; try again.")
        elif active is None:
            embed.set_footer(
                text=f"No persona is active here; mentions are answered by {default}. Use /persona."
            )
        elif active not in cards:
            embed.set_footer(
                text=f"The persona set here ({active}) is not loaded; choose another with /persona."
            )
        await interaction.response.send_message(embed=embed, ephemeral=True)

    @app_commands.command(name="reset", description="Forget this channel's conversation so far")
    @app_commands.guild_only()
    async def reset(self, interaction: discord.Interaction[Any]) -> None:
        if await self._refuse_here(interaction):
            return
        assert self.bot.store is not None and interaction.channel_id is not None
        await interaction.response.defer(thinking=True)
        try:
            # The interaction id is a snowflake of this moment: history starts after it.
            await self.bot.store.reset_channel(interaction.channel_id, interaction.id)
            text = "🧹 The conversation so far is forgotten; the next message starts afresh."
        except Exception:
            log.exception("/reset could not be saved")
            text = "That could not be saved (database busy). Please try again."
        await interaction.followup.send(text, allowed_mentions=NO_PINGS)


async def setup(bot: OshaberiBot) -> None:
    await bot.add_cog(Persona(bot))
