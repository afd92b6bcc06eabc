"""The slash commands' checks, the persona transformers, the tree's one error handler and the
review buttons' own moderator check, each on its own (the emulator tests drive them end to end)."""

from __future__ import annotations

import logging
import re
from types import SimpleNamespace
from typing import Any

import discord
import pytest
from discord import app_commands

from bot.config import DiscordSettings, Settings
from bot.discord.checks import (
    NOT_MANAGER,
    NOT_MODERATOR,
    Refusal,
    manages_server,
    model_loaded,
    moderator_only,
    talks_here,
)
from bot.discord.command_tree import FAILED, NOT_SERVED, OshaberiTree
from bot.discord.persona_options import OFF, LoadedPersona, PersonaOrOff
from bot.discord.review_views import (
    BUTTON_TEMPLATE,
    NOT_AVAILABLE,
    ReviewButton,
    bind_review_buttons,
)
from bot.discord.review_views import NOT_MODERATOR as NOT_REVIEWER
from bot.store.server_book import ServerSettingsBook
from bot.store.server_settings import ServerSettingsRow
from personas.card import load_cards

CARDS = load_cards()
USER = discord.Permissions(send_messages=True)
MOD = discord.Permissions(manage_messages=True)


class Response:
    """Records what a command answered, the way discord.py's InteractionResponse is used."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.done = False

    def is_done(self) -> bool:
        return self.done

    async def send_message(self, text: str, **kwargs: Any) -> None:
        assert not self.done, "an interaction is answered once"
        self.done = True
        self.sent.append((text, kwargs))


def interaction(
    *,
    settings: Settings | None = None,
    runtime: Any = "loaded",
    store: Any = "open",
    rows: tuple[ServerSettingsRow, ...] = (),
    **kw: Any,
):
    """A fake interaction in server 1 (``guild=None``: a DM); ``rows`` are servers' own settings."""
    settings = settings or Settings(discord=DiscordSettings())
    servers = ServerSettingsBook(lambda: settings, None)
    for row in rows:
        servers.remember(row)
    bot = SimpleNamespace(
        settings=settings,
        servers=servers,
        runtime=SimpleNamespace(cards=CARDS) if runtime == "loaded" else runtime,
        store=object() if store == "open" else store,
    )
    followups: list[tuple[str, dict[str, Any]]] = []

    async def followup_send(text: str, **kwargs: Any) -> None:
        followups.append((text, kwargs))

    values = {
        "client": bot,
        "user": SimpleNamespace(id=7, roles=[]),
        "permissions": USER,
        "guild": SimpleNamespace(id=1),
        "channel": SimpleNamespace(id=10, parent_id=None),
        "response": Response(),
        "followup": SimpleNamespace(send=followup_send, sent=followups),
        "command": None,
    }
    values.update(kw)
    values["guild_id"] = values["guild"].id if values["guild"] is not None else None
    return SimpleNamespace(**values)


def predicate(check_decorator):
    async def command(interaction) -> None: ...

    [pred] = check_decorator(command).__discord_app_commands_checks__
    return pred


def refusal(pred, inter) -> str | None:
    try:
        assert pred(inter) is True
    except Refusal as exc:
        return exc.message
    return None


def test_moderator_only_refuses_others_with_the_commands_line() -> None:
    pred = predicate(moderator_only())
    assert refusal(pred, interaction()) == NOT_MODERATOR == "Only moderators can use this command."
    assert refusal(pred, interaction(permissions=MOD)) is None
    owner = Settings(discord=DiscordSettings(owner_ids=(7,)))
    assert refusal(pred, interaction(settings=owner)) is None


def test_moderators_are_each_servers_own() -> None:
    """Server 1's moderator role makes a moderator there, and only there; a DM has only owners."""
    pred = predicate(moderator_only())
    member = SimpleNamespace(id=7, roles=[SimpleNamespace(id=55)])
    own_role = (ServerSettingsRow(1, moderator_role=55),)
    assert refusal(pred, interaction(user=member, rows=own_role)) is None
    elsewhere = interaction(user=member, rows=own_role, guild=SimpleNamespace(id=2))
    assert refusal(pred, elsewhere) == NOT_MODERATOR
    # The operator's default role counts where a server set none, never over a server's own.
    default = Settings(discord=DiscordSettings(moderator_role=55))
    assert refusal(pred, interaction(user=member, settings=default)) is None
    overridden = (ServerSettingsRow(1, moderator_role=66),)
    assert refusal(pred, interaction(user=member, settings=default, rows=overridden)) == NOT_MODERATOR
    assert refusal(pred, interaction(user=member, rows=own_role, guild=None)) == NOT_MODERATOR


def test_manages_server_wants_manage_server_in_a_server() -> None:
    pred = predicate(manages_server())
    assert refusal(pred, interaction()) == NOT_MANAGER
    assert refusal(pred, interaction(permissions=MOD)) == NOT_MANAGER  # Manage Messages is not enough
    assert refusal(pred, interaction(permissions=discord.Permissions(manage_guild=True))) is None
    assert refusal(pred, interaction(permissions=discord.Permissions(administrator=True))) is None
    in_dm = interaction(guild=None, permissions=discord.Permissions(manage_guild=True))
    assert refusal(pred, in_dm) == "Server settings are changed in the server, not in a direct message."


def test_model_loaded_refuses_until_the_runtime_is_there() -> None:
    pred = predicate(model_loaded())
    assert refusal(pred, interaction(runtime=None)) == "The model is not loaded yet."
    assert refusal(pred, interaction()) is None


def test_talks_here_says_which_rule_refused() -> None:
    pred = predicate(talks_here())
    elsewhere = Settings(discord=DiscordSettings(allowed_channels=(99,)))
    roles = Settings(discord=DiscordSettings(allowed_roles=(5,)))
    assert refusal(pred, interaction(guild=None)) == "Personas talk in server channels only."
    assert refusal(pred, interaction(settings=elsewhere)) == "The bot does not talk in this channel."
    assert refusal(pred, interaction(settings=roles)) == "You do not have a role that may use the bot."
    assert refusal(pred, interaction(store=None)) == "The bot is still starting up."
    assert refusal(pred, interaction()) is None
    # A server's own lists replace the operator's: here channel 10 is allowed, role 5 is not needed.
    own = (ServerSettingsRow(1, allowed_channels=(10,), allowed_roles=()),)
    assert refusal(pred, interaction(settings=elsewhere, rows=own)) is None
    assert refusal(pred, interaction(settings=roles, rows=own)) is None
    narrower = (ServerSettingsRow(1, allowed_channels=(11,)),)
    assert refusal(pred, interaction(rows=narrower)) == "The bot does not talk in this channel."


async def test_persona_transformers_check_what_the_client_sent() -> None:
    choose, reload = PersonaOrOff(), LoadedPersona()
    assert (await choose.transform(interaction(), " Marisa ")).id == "marisa"
    assert await choose.transform(interaction(), OFF) is None
    with pytest.raises(Refusal) as unknown:
        await choose.transform(interaction(), "**nobody**")
    assert unknown.value.message == (
        f"There is no persona `\\*\\*nobody\\*\\*`. Known: {', '.join(sorted(CARDS.cards))}."
    )
    with pytest.raises(Refusal) as none_loaded:
        await choose.transform(interaction(runtime=None), "marisa")
    assert none_loaded.value.message.endswith("Known: none loaded.")
    assert (await reload.transform(interaction(), "zundamon")).id == "zundamon"
    with pytest.raises(Refusal) as not_reloadable:
        await reload.transform(interaction(), OFF)
    assert not_reloadable.value.message.startswith("Unknown persona. Known: ")
    assert [c.value for c in await choose.autocomplete(interaction(), "of")] == [OFF]
    assert OFF not in [c.value for c in await reload.autocomplete(interaction(), "")]


async def test_the_tree_shows_a_refusal_privately_and_apologises_for_a_bug(caplog) -> None:
    tree = OshaberiTree(discord.Client(intents=discord.Intents.none()))
    fresh = interaction()
    await tree.on_error(fresh, Refusal("Only moderators can use this command."))
    [(text, kwargs)] = fresh.response.sent
    assert text == "Only moderators can use this command." and kwargs["ephemeral"]
    assert kwargs["allowed_mentions"].to_dict()["parse"] == []

    deferred = interaction(command=SimpleNamespace(name="reload", qualified_name="reload"))
    deferred.response.done = True  # the command had answered Discord already: a followup
    with caplog.at_level(logging.ERROR, logger="bot.discord.command_tree"):
        await tree.on_error(deferred, app_commands.CommandInvokeError(deferred.command, RuntimeError("boom")))
    assert deferred.followup.sent[0][0] == FAILED and deferred.followup.sent[0][1]["ephemeral"]
    assert "/reload failed" in caplog.text


class Desk:
    def __init__(self, moderators: set[int]) -> None:
        self.moderators = moderators
        self.clicks: list[tuple[str, int]] = []

    def is_moderator(self, interaction: Any) -> bool:
        return interaction.user.id in self.moderators

    async def on_button(self, interaction: Any, action: str, log_id: int) -> None:
        self.clicks.append((action, log_id))


async def test_each_bound_button_class_routes_to_its_own_desk_after_its_own_check() -> None:
    first, second = Desk({7}), Desk(set())
    first_cls, second_cls = bind_review_buttons(first), bind_review_buttons(second)
    match = re.fullmatch(BUTTON_TEMPLATE, "oshaberi:review:approve:42")
    assert match is not None
    mine = await first_cls.from_custom_id(None, None, match)
    theirs = await second_cls.from_custom_id(None, None, match)

    moderator = interaction()
    assert await mine.interaction_check(moderator) is True and moderator.response.sent == []
    await mine.callback(moderator)
    assert first.clicks == [("approve", 42)] and second.clicks == []

    refused = interaction()
    assert await theirs.interaction_check(refused) is False
    assert refused.response.sent[0][0] == NOT_REVIEWER and refused.response.sent[0][1]["ephemeral"]

    unbound = ReviewButton("reject", 5)  # draws buttons; nobody decides through it
    lost = interaction()
    assert await unbound.interaction_check(lost) is False and lost.response.sent[0][0] == NOT_AVAILABLE


async def test_the_tree_lets_only_privacy_commands_run_in_a_server_not_served() -> None:
    tree = OshaberiTree(discord.Client(intents=discord.Intents.none()))
    only_two = Settings(discord=DiscordSettings(allowed_servers=(2,)))

    def at(name: str, **kw: Any) -> Any:
        kw.setdefault("type", discord.InteractionType.application_command)
        return interaction(settings=only_two, command=SimpleNamespace(qualified_name=name), **kw)

    refused = at("settings show")
    assert await tree.interaction_check(refused) is False
    [(text, kwargs)] = refused.response.sent
    assert text == NOT_SERVED and kwargs["ephemeral"]
    for name in ("forget", "optout", "optin"):
        allowed = at(name)
        assert await tree.interaction_check(allowed) is True and allowed.response.sent == []
    assert await tree.interaction_check(at("personas", guild=SimpleNamespace(id=2))) is True
    assert await tree.interaction_check(at("personas", guild=None)) is True  # a DM: no server to serve

    choices: list[list[Any]] = []

    async def autocomplete(options: list[Any]) -> None:
        choices.append(options)

    typing = at("persona", type=discord.InteractionType.autocomplete)
    typing.response.autocomplete = autocomplete
    assert await tree.interaction_check(typing) is False and choices == [[]]
