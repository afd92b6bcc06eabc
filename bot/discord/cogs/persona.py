"""/persona, /personas and /reset: which character talks in a channel, and starting afresh.

Autocomplete only suggests; a client can send any string, so the chosen value is checked against
the loaded cards (``bot/discord/persona_options.py``) before anything is stored.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.chatflow.cast import effective_cast
from bot.discord.bot_protocol import BotServices
from bot.discord.checks import server_of, talks_here
from bot.discord.persona_options import PersonaOrOff
from bot.discord.sender import NO_PINGS
from bot.serving.adapter_labels import persona_adapter_labels
from bot.store.store import Store, StoreBusyError, within
from personas.card import PersonaCard

if TYPE_CHECKING:
    from bot.runtime import Runtime

log = logging.getLogger(__name__)


class Persona(commands.Cog):
    def __init__(self, bot: BotServices, store: Store | None, runtime: Runtime | None) -> None:
        self.bot = bot
        self.store = store
        self.runtime = runtime

    def _cards(self) -> dict[str, PersonaCard]:
        return dict(self.runtime.cards.cards) if self.runtime is not None else {}

    @app_commands.command(name="persona", description="Choose who answers every message in this channel")
    @app_commands.describe(persona="A persona id from /personas, or 'off'")
    @app_commands.guild_only()
    @talks_here()
    async def persona(
        self,
        interaction: discord.Interaction[Any],
        persona: app_commands.Transform[PersonaCard | None, PersonaOrOff],
    ) -> None:
        store, card = self.store, persona
        assert store is not None and interaction.channel_id is not None  # talks_here checked
        # Answer Discord now: a busy database may take longer than the 3 s an interaction allows.
        await interaction.response.defer(thinking=True)
        try:
            if card is None:
                await store.set_channel_persona(interaction.channel_id, None)
                text = "No persona answers every message here any more (mention the bot to talk)."
            else:
                # A new character starts a new conversation: the old persona's lines are not this one's.
                await store.set_channel_persona(interaction.channel_id, card.id)
                await store.reset_channel(interaction.channel_id, interaction.id)
                text = f"**{card.display_name}** now answers every message in this channel. `/persona off` to stop."
        except Exception:
            log.exception("/persona could not be saved")
            text = "That could not be saved (database busy). Please try again."
        await interaction.followup.send(text, allowed_mentions=NO_PINGS)

    @app_commands.command(name="personas", description="List the personas and show which one is active here")
    async def personas(self, interaction: discord.Interaction[Any]) -> None:
        cards = self._cards()
        active, cast, busy = None, (), False
        if self.store is not None and interaction.channel_id is not None:
            # Read before the first response, so bounded: the list is worth showing without it.
            # A thread without a cast of its own shows its parent channel's.
            parent = getattr(interaction.channel, "parent_id", None)
            try:
                cast = (await within(effective_cast(self.store, interaction.channel_id, parent))).persona_ids
                active = cast[0] if cast else None
            except StoreBusyError:
                busy = True
        server = server_of(interaction)
        default = server.default_persona if server is not None else self.bot.settings.chat.default_persona
        stats = self.runtime.worker.stats() if self.runtime is not None else None
        labels = persona_adapter_labels(
            cards, stats.adapters if stats else [], stats.canaries if stats else []
        )
        embed = discord.Embed(title="Personas", colour=discord.Colour.blurple())
        for pid, card in sorted(cards.items())[:25]:
            marks = []
            if pid == active:
                marks.append("▶ active here" if len(cast) == 1 else "▶ leads the cast here")
            elif pid in cast:
                marks.append("in the cast here")
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
    @talks_here()
    async def reset(self, interaction: discord.Interaction[Any]) -> None:
        assert self.store is not None and interaction.channel_id is not None  # talks_here checked
        await interaction.response.defer(thinking=True)
        try:
            # The interaction id is a snowflake of this moment: history starts after it.
            await self.store.reset_channel(interaction.channel_id, interaction.id)
            text = "🧹 The conversation so far is forgotten; the next message starts afresh."
        except Exception:
            log.exception("/reset could not be saved")
            text = "That could not be saved (database busy). Please try again."
        await interaction.followup.send(text, allowed_mentions=NO_PINGS)
