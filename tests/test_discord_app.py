"""The bot's wiring: token redaction, the emulator switch, intents, permission checks, /status text."""

from __future__ import annotations

import io
import logging
from types import SimpleNamespace

import discord
import pytest

from bot.config import DiscordSettings
from bot.discord.admin_text import status_lines
from bot.discord.api_base import apply_api_base_from_env, point_discord_at
from bot.discord.app import intents
from bot.discord.checks import channel_allowed, is_moderator, member_allowed
from bot.discord.persona_options import persona_choices
from bot.discord.token_redaction import RedactingFilter, install_token_redaction
from personas.card import load_cards
from tests.fake_runtime import FakeWorker

SECRET = "MTIzNDU2Nzg5.secret-token.abcdef"


def test_the_token_is_redacted_from_messages_arguments_and_tracebacks() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter(SECRET))
    logger = logging.getLogger("test.redaction")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.error("login with %s failed", SECRET)
        logger.error(f"token is {SECRET}")
        try:
            raise RuntimeError(f"bad token {SECRET}")
        except RuntimeError:
            logger.exception("boom")
    finally:
        logger.removeHandler(handler)
    out = stream.getvalue()
    assert SECRET not in out
    assert out.count("[REDACTED]") == 3


def test_install_token_redaction_covers_root_handlers() -> None:
    root = logging.getLogger()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root.addHandler(handler)
    try:
        flt = install_token_redaction(SECRET)
        logging.getLogger("discord.http").warning("Authorization: Bot %s", SECRET)
        assert SECRET not in stream.getvalue() and "[REDACTED]" in stream.getvalue()
    finally:
        root.removeHandler(handler)
        for h in root.handlers:
            h.removeFilter(flt)


def test_point_discord_at_sets_rest_gateway_and_cdn() -> None:
    saved = (
        discord.http.Route.BASE,
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY,
        discord.asset.Asset.BASE,
    )
    try:
        point_discord_at("http://127.0.0.1:9999/api/v10/")
        assert discord.http.Route.BASE == "http://127.0.0.1:9999/api/v10"
        assert str(discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY) == "ws://127.0.0.1:9999/gateway"
        assert discord.asset.Asset.BASE == "http://127.0.0.1:9999/cdn"
        point_discord_at("http://127.0.0.1:8888")
        assert discord.http.Route.BASE == "http://127.0.0.1:8888/api/v10"
        assert apply_api_base_from_env({}) is None
        assert (
            apply_api_base_from_env({"DISCORD_API_BASE": "http://127.0.0.1:7/api"})
            == "http://127.0.0.1:7/api"
        )
        assert discord.http.Route.BASE == "http://127.0.0.1:7/api/v10"
        with pytest.raises(ValueError):
            point_discord_at("discord.com")
    finally:
        (
            discord.http.Route.BASE,
            discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY,
            discord.asset.Asset.BASE,
        ) = saved


def test_intents_are_minimal() -> None:
    wanted = intents()
    assert wanted.message_content and wanted.guild_messages and wanted.guilds
    assert not wanted.members and not wanted.presences  # privileged and not needed
    assert not wanted.dm_messages


def member(uid: int, roles: tuple[int, ...] = ()) -> SimpleNamespace:
    return SimpleNamespace(id=uid, roles=[SimpleNamespace(id=r) for r in roles])


def test_moderator_checks() -> None:
    settings = DiscordSettings(moderator_role=77, owner_ids=(1,))
    none = discord.Permissions.none()
    assert is_moderator(settings, member(1), none)  # owner
    assert is_moderator(settings, member(2, (77,)), none)  # moderator role
    assert is_moderator(settings, member(3), discord.Permissions(manage_messages=True))
    assert is_moderator(settings, member(3), discord.Permissions(administrator=True))
    assert not is_moderator(settings, member(3, (5,)), none)
    assert not is_moderator(DiscordSettings(), member(3), none)
    assert not is_moderator(settings, None, discord.Permissions.all())


def test_channel_and_member_allow_lists() -> None:
    settings = DiscordSettings(allowed_channels=(10,), allowed_roles=(5,), owner_ids=(1,))
    assert channel_allowed(settings, SimpleNamespace(id=10))
    assert channel_allowed(settings, SimpleNamespace(id=99, parent_id=10))  # a thread of an allowed channel
    assert not channel_allowed(settings, SimpleNamespace(id=11))
    assert channel_allowed(DiscordSettings(), SimpleNamespace(id=11))
    assert member_allowed(settings, member(2, (5,)))
    assert member_allowed(settings, member(1))
    assert not member_allowed(settings, member(2, (6,)))


def test_status_lines() -> None:
    lines = status_lines(FakeWorker().stats(), {"undecided": 4, "decided": 9, "blocked": 1, "logged": 13}, 2)
    text = "\n".join(lines)
    assert "3/64 waiting" in text and "avg 2.3, max 4" in text and "42.5 tokens/s" in text
    assert "`marisa`: v2 (1,234 parameters)" in text and "5,120 MiB" in text
    assert "4 awaiting a decision" in text and "2 log entries are waiting" in text


def test_persona_choices() -> None:
    cards = load_cards().cards
    assert [c.value for c in persona_choices(cards, "MARI", with_off=False)] == ["marisa"]
    assert [c.value for c in persona_choices(cards, "魔理沙", with_off=True)] == ["marisa"]
    assert persona_choices(cards, "of", with_off=True)[0].value == "off"
    assert len(persona_choices({f"p{i}": cards["marisa"] for i in range(40)}, "", with_off=True)) == 25


async def test_scheduled_retraining_hooks_reload_and_report(tmp_path) -> None:
    from dataclasses import replace

    from bot.config import ScheduleSettings
    from tests.e2e.inprocess import emulated_bot

    async with emulated_bot(tmp_path) as h:
        h.bot.settings = replace(h.bot.settings, schedule=ScheduleSettings(enabled=True, cron="0 4 * * 1"))
        h.bot.start_retraining()
        assert h.bot.retrainer.next_run_time() is not None
        await h.bot.load_trained_version("marisa", "v20250101-000000")
        assert h.runtime.reloaded == ["marisa"]
        mark = h.emu.mark()
        await h.bot.report_training_failure("marisa", "CUDA out of memory @everyone")
        [note] = h.sent("review")
        assert "marisa" in note.content and "out of memory" in note.content
        [posted] = [c.json for c in h.calls(mark) if c.method == "POST" and c.path.endswith("/messages")]
        assert posted["allowed_mentions"]["parse"] == []
    assert h.bot.retrainer.next_run_time() is None  # shut down with the bot


def test_freeze_startup_objects_excludes_them_from_collections() -> None:
    import gc

    from bot.discord.app import freeze_startup_objects

    try:
        freeze_startup_objects()
        assert gc.get_freeze_count() > 0  # what start-up allocated is no longer scanned by the GC
    finally:
        gc.unfreeze()
