"""/cast add, /cast remove, /cast list: several personas in one channel.

``/persona`` still sets one persona; ``/cast`` manages the rest of the cast (the first added
leads: it answers messages that name nobody). Checked as ``/persona`` is (``talks_here``),
and the persona against the loaded cards. ``channel`` sets another channel's cast: the only
way to set a forum's (nobody can type in a forum itself, only in its posts), whose posts then
take it; the member must be able to talk there, as Discord resolves their permissions for it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.chatflow.cast import EffectiveCast
from bot.chatflow.inflight import RepliesInFlight
from bot.discord.bot_protocol import BotServices
from bot.discord.cast_lookup import CastLookup
from bot.discord.checks import Refusal, access, channel_allowed, server_of, talks_here
from bot.discord.persona_options import LoadedPersona
from bot.discord.sender import NO_PINGS
from bot.model.adapters import current_version
from bot.store.casts import CastChange, CastFullError
from bot.store.store import Store, StoreBusyError, within
from bot.text.mentions import defuse_mentions
from personas.card import PersonaCard

if TYPE_CHECKING:
    from bot.runtime import Runtime

log = logging.getLogger(__name__)
# Where personas can talk: text and announcement channels, forums (through their posts), threads.
TALKING_TYPES = {
    discord.ChannelType.text,
    discord.ChannelType.news,
    discord.ChannelType.forum,
    discord.ChannelType.media,
    discord.ChannelType.public_thread,
    discord.ChannelType.private_thread,
    discord.ChannelType.news_thread,
}
Target = app_commands.AppCommandChannel | app_commands.AppCommandThread
SAVE_FAILED = "That could not be saved (database busy). Please try again."


class Cast(commands.GroupCog, group_name="cast", group_description="Several personas in one channel"):
    """``casting`` finds a channel's cast; ``replies`` are the replies being written (so removing
    a persona can say it finishes the one it is writing)."""

    def __init__(
        self,
        bot: BotServices,
        store: Store | None,
        runtime: Runtime | None,
        casting: CastLookup | None,
        replies: RepliesInFlight | None,
    ) -> None:
        super().__init__()
        self.bot = bot
        self.store = store
        self.runtime = runtime
        self.casting = casting
        self.replies = replies

    # -- commands ------------------------------------------------------------------------------

    @app_commands.command(
        name="add", description="Add a persona to this channel's cast (the first one leads)"
    )
    @app_commands.describe(
        persona="A persona id from /personas",
        channel="Set this channel, forum or thread instead of the one here",
    )
    @app_commands.guild_only()
    @talks_here()
    async def add(
        self,
        interaction: discord.Interaction[Any],
        persona: app_commands.Transform[PersonaCard, LoadedPersona],
        channel: Target | None = None,
    ) -> None:
        store, casting = self.store, self.casting
        assert store is not None and casting is not None  # talks_here checked the store
        target, parent = await self._target(interaction, channel)
        await interaction.response.defer(thinking=True)
        try:
            inherited = await casting.cast_for_ids(target, parent)
            change = await store.add_to_cast(target, persona.id, inherited.persona_ids)
        except CastFullError as exc:
            await self._say(interaction, str(exc))
            return
        except Exception:
            log.exception("/cast add could not be saved")
            await self._say(interaction, SAVE_FAILED)
            return
        where = _where(interaction, target)
        if not change.changed:
            text = f"**{persona.display_name}** is already in the cast {where}: {self._roll(change.after)}."
        elif len(change.after) == 1:
            text = f"**{persona.display_name}** now answers every message {where}."
        else:
            text = (
                f"**{persona.display_name}** joined the cast {where}: {self._roll(change.after)}. "
                "Start a message with a persona's name to talk to that one; the lead answers the rest."
            )
        await self._say(interaction, text + self._adapter_note(persona))

    @app_commands.command(name="remove", description="Take a persona out of this channel's cast")
    @app_commands.describe(
        persona="A persona id in the cast",
        channel="Set this channel, forum or thread instead of the one here",
    )
    @app_commands.guild_only()
    @talks_here()
    async def remove(
        self, interaction: discord.Interaction[Any], persona: str, channel: Target | None = None
    ) -> None:
        # Any id in the cast may go, loaded or not: a card taken off disk must not stay stuck in
        # a cast. An id not in the cast changes nothing, so the value needs no other check.
        store, casting = self.store, self.casting
        assert store is not None and casting is not None
        target, parent = await self._target(interaction, channel)
        await interaction.response.defer(thinking=True)
        pid = persona.strip().lower()[:64]
        name = self._name(pid)
        try:
            inherited = await casting.cast_for_ids(target, parent)
            change = await store.remove_from_cast(target, pid, inherited.persona_ids)
        except Exception:
            log.exception("/cast remove could not be saved")
            await self._say(interaction, SAVE_FAILED)
            return
        where = _where(interaction, target)
        if not change.changed:
            await self._say(interaction, f"{name} is not in the cast {where}: {self._roll(change.after)}.")
            return
        text = self._after_removal(name, change, where)
        if self.replies is not None and self.replies.writing_for(target, pid):
            # Nothing is lost: the member asked before the removal, so that reply is still posted.
            text += f" {name} finishes the reply it is writing now; it answers nothing {where} after that."
        await self._say(interaction, text)

    @remove.autocomplete("persona")
    async def _cast_members(
        self, interaction: discord.Interaction[Any], current: str
    ) -> list[app_commands.Choice[str]]:
        """The cast here (or in the channel already chosen), filtered by what was typed."""
        if self.casting is None or interaction.channel_id is None:
            return []
        chosen = getattr(interaction.namespace, "channel", None)
        if chosen is not None:
            target, parent = chosen.id, getattr(chosen, "parent_id", None)
        else:
            target, parent = interaction.channel_id, await self.casting.parent_id(interaction.channel)
        try:
            cast = await within(self.casting.cast_for_ids(target, parent))
        except StoreBusyError:
            return []
        needle = current.strip().casefold()
        cards = self._cards()
        choices = []
        for pid in cast.persona_ids:
            label = f"{cards[pid].display_name} ({pid})" if pid in cards else f"{pid} (not loaded)"
            if not needle or needle in label.casefold():
                choices.append(app_commands.Choice(name=label[:100], value=pid))
        return choices[:25]

    @app_commands.command(name="list", description="Who answers in this channel")
    @app_commands.describe(channel="Show this channel, forum or thread instead of the one here")
    @app_commands.guild_only()
    async def list_cast(self, interaction: discord.Interaction[Any], channel: Target | None = None) -> None:
        casting = self.casting
        if casting is None or interaction.channel_id is None:
            await interaction.response.send_message("The bot is still starting up.", ephemeral=True)
            return
        if channel is not None:
            target, parent = channel.id, getattr(channel, "parent_id", None)
        else:
            target, parent = interaction.channel_id, await casting.parent_id(interaction.channel)
        try:
            cast = await within(casting.cast_for_ids(target, parent))
        except StoreBusyError:
            await interaction.response.send_message(
                "The database is busy right now; please try again in a moment.", ephemeral=True
            )
            return
        server = server_of(interaction)
        default = server.default_persona if server is not None else self.bot.settings.chat.default_persona
        await interaction.response.send_message(self._describe(cast, target, default), ephemeral=True)

    # -- helpers -------------------------------------------------------------------------------

    async def _target(
        self, interaction: discord.Interaction[Any], channel: Target | None
    ) -> tuple[int, int | None]:
        """The channel whose cast changes and its parent (for a thread). A channel named in the
        command is checked here as ``talks_here`` checked this one; raises Refusal."""
        assert self.casting is not None and interaction.channel_id is not None
        if channel is None:
            return interaction.channel_id, await self.casting.parent_id(interaction.channel)
        if channel.type not in TALKING_TYPES:
            raise Refusal("Personas talk in text channels, forums and threads only.")
        if not channel_allowed(access(interaction), channel):
            raise Refusal("The bot does not talk in that channel.")
        perms = channel.permissions  # this member's, in that channel, as Discord resolved them
        if not perms.view_channel or not (perms.send_messages or perms.send_messages_in_threads):
            raise Refusal("You cannot talk in that channel, so you cannot choose who answers there.")
        return channel.id, getattr(channel, "parent_id", None)

    def _cards(self) -> dict[str, PersonaCard]:
        return dict(self.runtime.cards.cards) if self.runtime is not None else {}

    def _roll(self, persona_ids: tuple[str, ...]) -> str:
        """``霧雨魔理沙 (lead), ずんだもん``; ids that are not loaded are shown as ids."""
        if not persona_ids:
            return "nobody"
        cards = self._cards()
        names = [
            (cards[p].display_name if p in cards else f"`{p}` (not loaded)") + (" (lead)" if i == 0 else "")
            for i, p in enumerate(persona_ids)
        ]
        return ", ".join(names)

    def _name(self, persona_id: str) -> str:
        """``**霧雨魔理沙**`` for a loaded persona, else the id as code (it may be any text)."""
        card = self._cards().get(persona_id)
        if card is not None:
            return f"**{card.display_name}**"
        return "`" + persona_id.replace("`", "'") + "`"

    def _after_removal(self, name: str, change: CastChange, where: str) -> str:
        if not change.after:
            return f"{name} left; nobody answers every message {where} now (mention the bot to talk, or `/cast add`)."
        return f"{name} left the cast {where}, which is now: {self._roll(change.after)}."

    def _adapter_note(self, card: PersonaCard) -> str:
        """A warning when ``card`` has a published adapter that did not load (it then answers
        prompt-only, in its card's voice but without its training)."""
        if self.runtime is None:
            return ""
        published = current_version(self.bot.settings.paths.adapters_dir, card.id)
        loaded = {info.name for info in self.runtime.worker.stats().adapters}
        if published is None or card.id in loaded:
            return ""
        return (
            f"\n⚠️ Its adapter `{published}` did not load, so {card.display_name} answers prompt-only "
            f"(without its training) until a moderator's `/reload {card.id}` succeeds."
        )

    def _describe(self, cast: EffectiveCast, channel_id: int, default: str) -> str:
        followups = self.bot.settings.chat.cast_followups
        if not cast.persona_ids:
            return (
                "No cast here: nobody answers every message. Mention the bot (or reply to a persona) "
                f"and `{default}` answers; `/cast add` or `/persona` sets one."
            )
        lines = [f"Cast here: {self._roll(cast.persona_ids)}."]
        if cast.inherited(channel_id):
            lines.append(
                f"Taken from <#{cast.set_in}>; `/cast add` or `/persona` here gives this thread its own."
            )
        lines.append("Start a message with a persona's name (or reply to its message) to talk to it.")
        if followups and len(cast.persona_ids) > 1:
            lines.append(f"The cast answer each other up to {followups} times after each message.")
        return "\n".join(lines)

    async def _say(self, interaction: discord.Interaction[Any], text: str) -> None:
        try:
            await interaction.followup.send(defuse_mentions(text), allowed_mentions=NO_PINGS)
        except discord.HTTPException as exc:
            log.warning("could not answer /cast: %s", exc)


def _where(interaction: discord.Interaction[Any], target: int) -> str:
    return "here" if target == interaction.channel_id else f"in <#{target}>"
