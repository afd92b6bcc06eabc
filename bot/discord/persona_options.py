"""Persona arguments of slash commands: autocomplete entries and the transformers that check
what a client sent against the loaded cards.

Autocomplete only suggests; a client can send any string, so the transformer is what decides.
An unknown persona raises a :class:`~bot.discord.checks.Refusal`, which the command tree's one
error handler shows to the user privately.
"""

from __future__ import annotations

from typing import Any

import discord
from discord import app_commands

from bot.discord.bot_protocol import services
from bot.discord.checks import Refusal
from personas.card import PersonaCard

OFF = "off"
MAX_CHOICES = 25  # Discord's cap on autocomplete entries


def persona_choices(
    cards: dict[str, PersonaCard], current: str, *, with_off: bool
) -> list[app_commands.Choice[str]]:
    """Autocomplete entries matching what was typed, by id or display name (at most 25: Discord's cap)."""
    needle = current.strip().casefold()
    out = []
    if with_off and (not needle or OFF.startswith(needle)):
        out.append(app_commands.Choice(name="off — stop answering every message here", value=OFF))
    for pid, card in sorted(cards.items()):
        if needle and needle not in pid.casefold() and needle not in card.display_name.casefold():
            continue
        out.append(app_commands.Choice(name=f"{card.display_name} ({pid})"[:100], value=pid))
    return out[:MAX_CHOICES]


def loaded_cards(interaction: discord.Interaction[Any]) -> dict[str, PersonaCard]:
    """The cards the running bot serves; empty while the model is not loaded."""
    runtime = services(interaction).runtime
    return dict(runtime.cards.cards) if runtime is not None else {}


class PersonaOrOff(app_commands.Transformer):
    """``/persona``'s argument: a loaded persona's card, or None for ``off``."""

    async def transform(self, interaction: discord.Interaction[Any], value: str) -> PersonaCard | None:
        choice = value.strip().lower()
        cards = loaded_cards(interaction)
        if choice == OFF:
            return None
        if choice not in cards:
            known = ", ".join(sorted(cards)) or "none loaded"
            raise Refusal(
                f"There is no persona `{discord.utils.escape_markdown(value[:40])}`. Known: {known}."
            )
        return cards[choice]

    async def autocomplete(
        self, interaction: discord.Interaction[Any], value: str
    ) -> list[app_commands.Choice[str]]:
        return persona_choices(loaded_cards(interaction), value, with_off=True)


class LoadedPersona(app_commands.Transformer):
    """A loaded persona's card (``/reload``'s argument)."""

    async def transform(self, interaction: discord.Interaction[Any], value: str) -> PersonaCard:
        cards = loaded_cards(interaction)
        card = cards.get(value.strip().lower())
        if card is None:
            raise Refusal(f"Unknown persona. Known: {', '.join(sorted(cards))}.")
        return card

    async def autocomplete(
        self, interaction: discord.Interaction[Any], value: str
    ) -> list[app_commands.Choice[str]]:
        return persona_choices(loaded_cards(interaction), value, with_off=False)
