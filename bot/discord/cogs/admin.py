"""/status and /reload for moderators; /forget, /optout and /optin for everyone.

Moderator commands are hidden from others by default permissions, but that is only a hint a
server can change: the ``moderator_only`` check asks again on every use. /status shows the
server's own settings and review counts, never another server's. A member's privacy request
covers every server the bot is in (as privacy law expects of one controller of the data).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import discord
from discord import app_commands
from discord.ext import commands

from bot.chatflow.replyflow import ReplyFlow
from bot.discord.admin_text import status_lines
from bot.discord.bot_protocol import BotServices
from bot.discord.checks import model_loaded, moderator_only, server_of
from bot.discord.persona_options import LoadedPersona
from bot.discord.review_queue import ReviewQueue
from bot.discord.sender import NO_PINGS
from bot.discord.settings_text import settings_lines
from bot.serving.generation import AdapterError
from bot.store.store import Store, StoreBusyError, within
from personas.card import PersonaCard, UnknownPersonaError

if TYPE_CHECKING:
    from bot.runtime import Runtime

log = logging.getLogger(__name__)
T = TypeVar("T")


class Admin(commands.Cog):
    def __init__(
        self,
        bot: BotServices,
        store: Store | None,
        flow: ReplyFlow | None,
        runtime: Runtime | None,
        reviews: ReviewQueue | None,
    ) -> None:
        self.bot = bot
        self.store = store
        self.flow = flow
        self.runtime = runtime
        self.reviews = reviews

    def _runtime(self) -> Runtime:
        assert self.runtime is not None  # the model_loaded check ran first
        return self.runtime

    @app_commands.command(
        name="status", description="Queue, batches, speed, adapters and memory (moderators)"
    )
    @app_commands.default_permissions(manage_messages=True)
    @moderator_only()
    @model_loaded()
    async def status(self, interaction: discord.Interaction[Any]) -> None:
        runtime = self._runtime()
        stats = runtime.worker.stats()
        server = server_of(interaction)
        store_stats, busy = None, False
        if self.store is not None:
            try:  # read before the first response, so bounded; the rest of the status still helps
                store_stats = await within(self.store.stats(self._review_scope(server)))
            except StoreBusyError:
                busy = True
        spooled = len(self.flow.spool) if self.flow is not None else 0
        lines = status_lines(
            stats, store_stats, spooled, self.bot.loop_lag.summary(), persona_ids=runtime.cards.cards
        )
        if busy:
            lines.append("⚠️ **Reviews**: the database is busy, so no counts now; try again shortly.")
        if server is not None and interaction.guild is not None:
            lines += ["**This server's settings** (`/settings`):"]
            lines += settings_lines(server, interaction.guild, set(runtime.cards.cards))
        await interaction.response.send_message(
            "\n".join(lines)[:2000], ephemeral=True, allowed_mentions=NO_PINGS
        )

    def _review_scope(self, server: Any) -> set[int | None] | None:
        """Whose review counts /status shows: this server's (and, in the operator's review server,
        the trainer's candidates); in a DM (an owner) every row."""
        if server is None:
            return None
        scope: set[int | None] = {server.guild_id}
        if self.reviews is not None and self.reviews.home_guild_id() == server.guild_id:
            scope.add(None)
        return scope

    @app_commands.command(name="reload", description="Reload persona adapters from disk (moderators)")
    @app_commands.describe(persona="Only this persona (default: all)")
    @app_commands.default_permissions(manage_messages=True)
    @moderator_only()
    @model_loaded()
    async def reload(
        self,
        interaction: discord.Interaction[Any],
        persona: app_commands.Transform[PersonaCard, LoadedPersona] | None = None,
    ) -> None:
        runtime = self._runtime()
        persona_id = persona.id if persona is not None else None
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

    @app_commands.command(name="forget", description="Delete everything the bot logged from you")
    async def forget(self, interaction: discord.Interaction[Any]) -> None:
        done, result = await self._user_write(
            interaction, lambda store: store.forget_user_detailed(interaction.user.id)
        )
        if not done:
            return
        if self.reviews is not None and result.review_cards:
            await self.reviews.delete_cards(result.review_cards)
        await interaction.followup.send(
            f"🗑️ Deleted {result.deleted} logged conversations you took part in, in every server this bot "
            "is in. None of it will be used for training. Use /optout to stop new messages being logged.",
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
                "You are opted out, in every server this bot is in: it still answers you, but conversations "
                "with your messages are not logged or used for training. Use /forget to delete what was "
                "logged before."
            )
        else:
            text = (
                "You are opted in, in every server this bot is in: replies to your messages are logged and "
                "may be reviewed for training where the server allows it."
            )
        await interaction.followup.send(text, ephemeral=True)

    async def _user_write(
        self, interaction: discord.Interaction[Any], write: Callable[[Store], Awaitable[T]]
    ) -> tuple[bool, T | None]:
        """Run a user's privacy request against the store: acknowledged at once (a busy database
        must not miss Discord's 3-second window), every failure told to the user privately."""
        store = self.store
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
