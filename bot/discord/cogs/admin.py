"""/status and /reload for moderators; /forget, /optout and /optin for everyone.

Moderator commands are hidden from others by default permissions, but that is only a hint a
server can change: the callbacks check again.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import discord
from discord import app_commands
from discord.ext import commands

from bot.discord.admin_text import status_lines
from bot.discord.checks import is_moderator
from bot.discord.cogs.persona import persona_choices
from bot.generation import AdapterError
from bot.store import StoreBusyError, within
from personas.card import UnknownPersonaError

if TYPE_CHECKING:
    from bot.discord.app import OshaberiBot
    from bot.store import Store

log = logging.getLogger(__name__)
NOT_MODERATOR = "Only moderators can use this command."
T = TypeVar("T")


class Admin(commands.Cog):
    def __init__(self, bot: OshaberiBot) -> None:
        self.bot = bot

    def _moderator(self, interaction: discord.Interaction[Any]) -> bool:
        return is_moderator(self.bot.settings.discord, interaction.user, interaction.permissions)

    async def _moderator_runtime(self, interaction: discord.Interaction[Any]) -> Any:
        """The runtime for a moderator command, or None after telling the user why not."""
        if not self._moderator(interaction):
            await interaction.response.send_message(NOT_MODERATOR, ephemeral=True)
            return None
        if self.bot.runtime is None:
            await interaction.response.send_message("The model is not loaded yet.", ephemeral=True)
        return self.bot.runtime

    @app_commands.command(
        name="status", description="Queue, batches, speed, adapters and memory (moderators)"
    )
    @app_commands.default_permissions(manage_messages=True)
    async def status(self, interaction: discord.Interaction[Any]) -> None:
        runtime = await self._moderator_runtime(interaction)
        if runtime is None:
            return
        stats = runtime.worker.stats()
        store_stats, busy = None, False
        if self.bot.store is not None:
            try:  # read before the first response, so bounded; the rest of the status still helps
                store_stats = await within(self.bot.store.stats())
            except StoreBusyError:
                busy = True
        spooled = len(self.bot.flow.spool) if self.bot.flow is not None else 0
        lines = status_lines(
            stats, store_stats, spooled, self.bot.loop_lag.summary(), persona_ids=runtime.cards.cards
        )
        if busy:
            lines.append("⚠️ **Reviews**: the database is busy, so no counts now; try again shortly.")
        await interaction.response.send_message("\n".join(lines)[:2000], ephemeral=True)

    @app_commands.command(name="reload", description="Reload persona adapters from disk (moderators)")
    @app_commands.describe(persona="Only this persona (default: all)")
    @app_commands.default_permissions(manage_messages=True)
    async def reload(self, interaction: discord.Interaction[Any], persona: str | None = None) -> None:
        runtime = await self._moderator_runtime(interaction)
        if runtime is None:
            return
        persona_id = persona.strip().lower() if persona else None
        if persona_id is not None and persona_id not in runtime.cards.cards:
            known = ", ".join(sorted(runtime.cards.cards))
            await interaction.response.send_message(f"Unknown persona. Known: {known}.", ephemeral=True)
            return
        # Loading weights takes longer than the 3 s Discord allows for a first response.
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            lines = await runtime.reload(persona_id)
        except AdapterError as exc:
            await interaction.followup.send(
                f"⚠️ The new adapter did not load, so `{persona_id}` keeps serving with the previous one.\n"
                f"Reason: {str(exc)[:1500]}",
                ephemeral=True,
            )
            return
        except UnknownPersonaError as exc:
            await interaction.followup.send(str(exc), ephemeral=True)
            return
        except Exception as exc:
            log.exception("reload failed")
            await interaction.followup.send(f"Reload failed: {str(exc)[:1500]}", ephemeral=True)
            return
        await interaction.followup.send("Reloaded:\n" + "\n".join(lines)[:1900], ephemeral=True)

    @reload.autocomplete("persona")
    async def _reload_autocomplete(
        self, interaction: discord.Interaction[Any], current: str
    ) -> list[app_commands.Choice[str]]:
        cards = getattr(self.bot.runtime, "cards", None)
        return persona_choices(dict(cards.cards) if cards else {}, current, with_off=False)

    @app_commands.command(name="forget", description="Delete everything the bot logged from you")
    async def forget(self, interaction: discord.Interaction[Any]) -> None:
        done, result = await self._user_write(
            interaction, lambda store: store.forget_user_detailed(interaction.user.id)
        )
        if not done:
            return
        review = self.bot.get_cog("Review")
        if review is not None and result.review_cards:
            await review.delete_cards(result.review_cards)  # type: ignore[attr-defined]
        await interaction.followup.send(
            f"🗑️ Deleted {result.deleted} logged conversations you took part in. None of it will be used "
            "for training. Use /optout to stop new messages being logged.",
            ephemeral=True,
        )

    @app_commands.command(name="optout", description="Stop logging your messages (you are still answered)")
    async def optout(self, interaction: discord.Interaction[Any]) -> None:
        await self._set_opt_out(interaction, True)

    @app_commands.command(name="optin", description="Allow your messages to be logged and reviewed again")
    async def optin(self, interaction: discord.Interaction[Any]) -> None:
        await self._set_opt_out(interaction, False)

    async def _set_opt_out(self, interaction: discord.Interaction[Any], opted_out: bool) -> None:
        done, _ = await self._user_write(
            interaction, lambda store: store.set_opt_out(interaction.user.id, opted_out)
        )
        if not done:
            return
        if opted_out:
            text = (
                "You are opted out: the bot still answers you, but conversations with your messages are not "
                "logged or used for training. Use /forget to delete what was logged before."
            )
        else:
            text = "You are opted in: replies to your messages are logged and may be reviewed for training."
        await interaction.followup.send(text, ephemeral=True)

    async def _user_write(
        self, interaction: discord.Interaction[Any], write: Callable[[Store], Awaitable[T]]
    ) -> tuple[bool, T | None]:
        """Run a user's privacy request against the store: acknowledged at once (a busy database
        must not miss Discord's 3-second window), every failure told to the user privately."""
        store = self.bot.store
        if store is None:
            await interaction.response.send_message(
                "The database is not available; try again later.", ephemeral=True
            )
            return False, None
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            return True, await write(store)
        except Exception:
            log.exception("a privacy request of user %s could not be saved", interaction.user.id)
            await interaction.followup.send(
                "That could not be saved (database busy); please try again.", ephemeral=True
            )
            return False, None


async def setup(bot: OshaberiBot) -> None:
    await bot.add_cog(Admin(bot))
