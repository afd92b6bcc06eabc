"""``/adapter`` as Discord delivers it (the real bot against the loopback emulator, on the fake
runtime): moderators move pointers, the move is checked server-side, recorded once, reloaded,
and refused moves change nothing."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from bot.model.adapters import current_version, read_canary, set_current
from bot.model.rollout import read_history, record_gate
from bot.store.store import Store
from tests.e2e.inprocess import EmulatedBot, emulated_bot
from tests.e2e.two_servers import second_server

V1, V2, V3 = "v20260101-000000", "v20260201-000000", "v20260301-000000"


def fake_version(root: Path, version: str) -> None:
    """A version folder the pointer checks accept (the fake runtime loads no weights)."""
    folder = root / "marisa" / version
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}), encoding="utf-8")
    save_file({"w": torch.zeros(2)}, str(folder / "adapter_model.safetensors"))


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[EmulatedBot]:
    adapters = tmp_path / "adapters"
    for v in (V1, V2, V3):
        fake_version(adapters, v)
    set_current(adapters, "marisa", V1)
    record_gate(adapters, "marisa", V2, {"verdict": "pass"})
    record_gate(adapters, "marisa", V3, {"verdict": "refuse"})
    async with emulated_bot(tmp_path) as harness:
        yield harness


def adapters(h: EmulatedBot) -> Path:
    return Path(h.bot.settings.paths.adapters_dir)


async def test_promote_then_rollback_from_discord(h: EmulatedBot) -> None:
    answer = await h.command("adapter promote", user="moderator", persona="marisa", version=V2)
    assert answer.ephemeral and f"CURRENT {V1} → {V2}" in answer.text and "next replies use it" in answer.text
    assert current_version(adapters(h), "marisa") == V2 and h.runtime.reloaded == ["marisa"]

    answer = await h.command("adapter rollback", user="moderator", persona="marisa")
    assert f"CURRENT {V2} → {V1}" in answer.text
    assert current_version(adapters(h), "marisa") == V1 and h.runtime.reloaded == ["marisa", "marisa"]
    moves = read_history(adapters(h), "marisa")
    moderator = h.user("moderator")
    assert [(m.action, m.by) for m in moves] == [
        ("promote", f"discord:{moderator}"),
        ("rollback", f"discord:{moderator}"),
    ]
    records = await h.store.adapter_actions("marisa")
    assert [(r.action, r.outcome, r.moderator_id, r.to_version) for r in records] == [
        ("rollback", "moved", moderator, V1),
        ("promote", "moved", moderator, V2),
    ]


async def test_members_are_refused_server_side_and_nothing_moves(h: EmulatedBot) -> None:
    for sub, options in [("rollback", {}), ("promote", {"version": V2}), ("canary-stop", {})]:
        answer = await h.command(f"adapter {sub}", user="member", persona="marisa", **options)
        assert "Only moderators" in answer.text and answer.ephemeral
    assert current_version(adapters(h), "marisa") == V1 and h.runtime.reloaded == []
    assert await h.store.adapter_actions() == [] and read_history(adapters(h), "marisa") == []


async def test_refused_moves_are_one_line_recorded_and_change_nothing(h: EmulatedBot) -> None:
    answer = await h.command("adapter rollback", user="moderator", persona="marisa", version="v404")
    assert "Nothing moved" in answer.text and "has no version 'v404'" in answer.text
    answer = await h.command("adapter promote", user="moderator", persona="marisa", version=V3)
    assert "the promotion gate refused it" in answer.text and "force:True" in answer.text
    answer = await h.command("adapter promote", user="moderator", persona="marisa", version=V1)
    assert "Nothing moved" in answer.text and "already is" in answer.text
    answer = await h.command("adapter rollback", user="moderator", persona="ghost")
    assert "Unknown persona" in answer.text
    assert current_version(adapters(h), "marisa") == V1 and h.runtime.reloaded == []
    assert [r.outcome for r in await h.store.adapter_actions()] == ["unchanged", "refused", "refused"]


async def test_force_promotes_a_refused_version_and_says_so(h: EmulatedBot) -> None:
    answer = await h.command("adapter promote", user="moderator", persona="marisa", version=V3, force=True)
    assert f"CURRENT {V1} → {V3} (forced)" in answer.text
    [move] = read_history(adapters(h), "marisa")
    assert move.forced and "forced (gate: refuse)" in move.reason
    [record] = await h.store.adapter_actions()
    assert record.forced and record.outcome == "moved"


async def test_canary_from_discord_and_history(h: EmulatedBot) -> None:
    answer = await h.command(
        "adapter canary-start", user="moderator", persona="marisa", version=V2, share=0.2
    )
    assert "on 20% of requests" in answer.text and read_canary(adapters(h), "marisa").version == V2
    answer = await h.command("adapter canary-stop", user="moderator", persona="marisa")
    assert "stopped" in answer.text and read_canary(adapters(h), "marisa") is None
    answer = await h.command("adapter history", user="moderator", persona="marisa")
    assert f"serves `{V1}`" in answer.text and answer.text.index("stopped") < answer.text.index("on 20%")
    assert h.runtime.reloaded == ["marisa", "marisa"]


async def test_a_failed_reload_is_told_and_recorded(h: EmulatedBot) -> None:
    from bot.serving.generation import AdapterError

    h.runtime.reload_error = AdapterError("adapter_model.safetensors: bad shape")
    answer = await h.command("adapter promote", user="moderator", persona="marisa", version=V2)
    assert "could not load it" in answer.text and "previous adapter keeps serving" in answer.text
    [record] = await h.store.adapter_actions()
    assert record.outcome == "failed"


async def test_help_lists_adapter_for_moderators_only(h: EmulatedBot) -> None:
    assert "`/adapter`" in (await h.command("help", user="moderator")).text
    assert "`/adapter`" not in (await h.command("help", user="member")).text


async def test_an_interaction_is_recorded_once_and_the_record_survives_a_restart(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "db.sqlite3")
    try:
        kwargs = dict(
            guild_id=1,
            channel_id=2,
            moderator_id=3,
            persona_id="marisa",
            action="rollback",
            requested_version=None,
        )
        first, new = await store.claim_adapter_action(42, **kwargs)
        again, new_again = await store.claim_adapter_action(42, **kwargs)
        assert new and not new_again and again.id == first.id
        await store.finish_adapter_action(first.id, "moved", "done", V2, V1)
        await store.finish_adapter_action(first.id, "failed", "later")  # a finished record stays as it is
    finally:
        await store.close()
    store = await Store.open(tmp_path / "db.sqlite3")
    try:
        [record] = await store.adapter_actions("marisa")
        assert (record.outcome, record.message, record.to_version) == ("moved", "done", V1)
    finally:
        await store.close()


@pytest.fixture
async def two(tmp_path: Path) -> AsyncIterator[EmulatedBot]:
    """Two servers; the operator's is A (it holds discord.review_channel), B's moderators are
    moderators of B only."""
    adapters = tmp_path / "adapters"
    for v in (V1, V2):
        fake_version(adapters, v)
    set_current(adapters, "marisa", V1)
    record_gate(adapters, "marisa", V2, {"verdict": "pass"})
    async with emulated_bot(tmp_path, world=second_server) as harness:
        yield harness


async def test_only_the_operators_server_moves_the_versions_every_server_is_served(two: EmulatedBot) -> None:
    h = two
    for command, options in (
        ("adapter promote", {"version": V2}),
        ("adapter rollback", {}),
        ("adapter canary-start", {"version": V2}),
        ("adapter history", {}),
    ):
        answer = await h.command(command, user="mod_b", channel="b-chat", persona="marisa", **options)
        assert answer.ephemeral and "operator's own server" in answer.text, (command, answer.text)
    assert current_version(adapters(h), "marisa") == V1 and read_canary(adapters(h), "marisa") is None
    assert h.runtime.reloaded == [] and read_history(adapters(h), "marisa") == []
    assert await h.store.adapter_actions() == []  # refused before anything was recorded
    # A's moderator may: A is the operator's server.
    answer = await h.command("adapter promote", user="moderator", persona="marisa", version=V2)
    assert f"CURRENT {V1} → {V2}" in answer.text and current_version(adapters(h), "marisa") == V2
