"""``/adapter promote | rollback | canary-start | canary-stop | history`` for moderators: the
trainer's pointer moves (``bot/model/rollout.py``), from Discord.

Each command is checked server-side (``moderator_only``: default permissions only hide it; and
``operators_server``: the personas serve every server, so only the operator's own server, or a
configured owner, moves their versions),
recorded once in the store by its interaction id (a command delivered twice moves nothing
twice; the record outlives restarts), carried out under the persona's move lock, and followed by
a reload, so the next reply is served, logged and carded with the version moved to.

Promotion from Discord takes a version the promotion gate passed (``python -m trainer promote``
or a training run judged it); ``force`` promotes one it refused or never judged, and says so.
A rollback needs no gate: it returns to a version that already served.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.discord.bot_protocol import BotServices
from bot.discord.checks import model_loaded, moderator_only, operators_server
from bot.discord.persona_options import LoadedPersona
from bot.model.adapters import current_version, list_versions
from bot.model.rollout import (
    Move,
    NothingToMove,
    RolloutError,
    gate_record,
    promote,
    read_history,
    rollback,
    start_canary,
    stop_canary,
)
from bot.store.store import Store
from personas.card import PersonaCard

if TYPE_CHECKING:
    from bot.runtime import Runtime

log = logging.getLogger(__name__)
PersonaArg = app_commands.Transform[PersonaCard, LoadedPersona]


@app_commands.default_permissions(manage_messages=True)
class AdapterCommands(
    commands.GroupCog, group_name="adapter", group_description="Adapter versions (moderators)"
):
    def __init__(self, bot: BotServices, store: Store | None, runtime: Runtime | None) -> None:
        self.bot = bot
        self.store = store
        self.runtime = runtime
        super().__init__()

    @property
    def adapters_dir(self) -> str:
        return self.bot.settings.paths.adapters_dir

    # -- the commands ------------------------------------------------------------------------

    @app_commands.command(name="rollback", description="Serve an earlier adapter version again (moderators)")
    @app_commands.describe(persona="The persona", version="The version to serve (default: the one before)")
    @moderator_only()
    @operators_server()
    @model_loaded()
    async def rollback_cmd(
        self, interaction: discord.Interaction[Any], persona: PersonaArg, version: str | None = None
    ) -> None:
        await self._move(
            interaction, persona, "rollback", version,
            lambda by: rollback(self.adapters_dir, persona.id, version, by=by, reason="from Discord"),
        )  # fmt: skip

    @app_commands.command(name="promote", description="Make a judged candidate current (moderators)")
    @app_commands.describe(
        persona="The persona",
        version="The candidate version",
        force="Promote even if the promotion gate refused it or never judged it",
    )
    @moderator_only()
    @operators_server()
    @model_loaded()
    async def promote_cmd(
        self, interaction: discord.Interaction[Any], persona: PersonaArg, version: str, force: bool = False
    ) -> None:
        def move(by: str) -> Move:
            if current_version(self.adapters_dir, persona.id) == version:
                raise NothingToMove(f"{version} already is {persona.id}'s current version")
            verdict = (gate_record(self.adapters_dir, persona.id, version) or {}).get("verdict")
            if verdict != "pass" and not force:
                why = "refused it" if verdict == "refuse" else "has not judged it"
                raise RolloutError(
                    f"the promotion gate {why}; judge it with `python -m trainer promote --persona "
                    f"{persona.id} --version {version}`, or run this again with force:True"
                )
            reason = "from Discord" + (
                "" if verdict == "pass" else f", forced (gate: {verdict or 'not judged'})"
            )
            return promote(
                self.adapters_dir, persona.id, version, by=by, reason=reason, forced=verdict != "pass"
            )

        await self._move(interaction, persona, "promote", version, move, forced=force)

    @app_commands.command(
        name="canary-start", description="Serve a candidate to a share of requests (moderators)"
    )
    @app_commands.describe(
        persona="The persona", version="The candidate version", share="Share of requests, 0-1"
    )
    @moderator_only()
    @operators_server()
    @model_loaded()
    async def canary_start_cmd(
        self,
        interaction: discord.Interaction[Any],
        persona: PersonaArg,
        version: str,
        share: app_commands.Range[float, 0.01, 0.99] = 0.1,
    ) -> None:
        await self._move(
            interaction, persona, "canary-start", version,
            lambda by: start_canary(self.adapters_dir, persona.id, version, share, by=by, reason="from Discord"),
        )  # fmt: skip

    @app_commands.command(name="canary-stop", description="Stop a persona's canary (moderators)")
    @app_commands.describe(persona="The persona")
    @moderator_only()
    @operators_server()
    @model_loaded()
    async def canary_stop_cmd(self, interaction: discord.Interaction[Any], persona: PersonaArg) -> None:
        await self._move(
            interaction, persona, "canary-stop", None,
            lambda by: stop_canary(self.adapters_dir, persona.id, by=by, reason="from Discord"),
        )  # fmt: skip

    @app_commands.command(name="history", description="A persona's adapter moves, newest first (moderators)")
    @app_commands.describe(persona="The persona")
    @moderator_only()
    @operators_server()
    @model_loaded()
    async def history_cmd(self, interaction: discord.Interaction[Any], persona: PersonaArg) -> None:
        moves = await asyncio.to_thread(read_history, self.adapters_dir, persona.id)
        current = current_version(self.adapters_dir, persona.id) or "none"
        lines = [f"**{persona.display_name}** serves `{current}`."]
        lines += [f"`{m.at}` {m.by}: {m.describe()}" for m in reversed(moves[-10:])]
        await interaction.response.send_message("\n".join(lines)[:2000], ephemeral=True)

    @rollback_cmd.autocomplete("version")
    @promote_cmd.autocomplete("version")
    @canary_start_cmd.autocomplete("version")
    async def version_autocomplete(
        self, interaction: discord.Interaction[Any], current: str
    ) -> list[app_commands.Choice[str]]:
        persona = str(getattr(interaction.namespace, "persona", "") or "").strip().lower()
        versions = list_versions(self.adapters_dir, persona) if persona else []
        return [app_commands.Choice(name=v, value=v) for v in reversed(versions) if current in v][:25]

    # -- one path for every move ---------------------------------------------------------------

    async def _move(
        self,
        interaction: discord.Interaction[Any],
        persona: PersonaCard,
        action: str,
        version: str | None,
        move: Callable[[str], Move],
        *,
        forced: bool = False,
    ) -> None:
        """Record the command once, move the pointers (off the event loop: the lock may wait),
        reload the persona, and tell the moderator what now serves."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        store = self.store
        if store is None:
            await interaction.followup.send("The database is not available; nothing moved.", ephemeral=True)
            return
        try:
            record, first = await store.claim_adapter_action(
                interaction.id,
                guild_id=interaction.guild_id,
                channel_id=interaction.channel_id,
                moderator_id=interaction.user.id,
                persona_id=persona.id,
                action=action,
                requested_version=version,
                forced=forced,
            )
        except Exception:
            log.exception("an adapter command could not be recorded")
            await interaction.followup.send("The database is busy; nothing moved. Try again.", ephemeral=True)
            return
        if not first:  # the same interaction again: report, never move twice
            await interaction.followup.send(
                record.message or "That command is still being carried out.", ephemeral=True
            )
            return
        by = f"discord:{interaction.user.id}"
        try:
            done = await asyncio.to_thread(move, by)
        except NothingToMove as exc:
            await self._finish(interaction, record.id, "unchanged", f"Nothing moved: {exc}.")
            return
        except RolloutError as exc:
            await self._finish(interaction, record.id, "refused", f"Nothing moved: {exc}.")
            return
        text = f"✅ {done.describe()}."
        outcome = "moved"
        try:
            assert self.runtime is not None  # model_loaded ran first
            await self.runtime.reload(persona.id)
            text += " The next replies use it."
        except Exception as exc:  # AdapterError, or anything the backend raised
            log.exception("reloading %s after an adapter move failed", persona.id)
            outcome = "failed"
            text += (
                f" ⚠️ But the bot could not load it ({str(exc)[:300]}); the previous adapter keeps serving."
            )
        await self._finish(interaction, record.id, outcome, text, done.from_version, done.to_version)

    async def _finish(
        self,
        interaction: discord.Interaction[Any],
        action_id: int,
        outcome: str,
        text: str,
        from_version: str | None = None,
        to_version: str | None = None,
    ) -> None:
        assert self.store is not None
        try:
            await self.store.finish_adapter_action(action_id, outcome, text, from_version, to_version)
        except Exception:  # the move is done; the record's outcome can wait
            log.exception("the outcome of adapter command %s could not be recorded", action_id)
        await interaction.followup.send(text[:2000], ephemeral=True)
