"""Rollouts through the local backend as the bot runs them: ``CURRENT`` and ``CANARY`` files on
disk, ``backend.reload(persona)``, the chat service, the log row and the review card.

* a reload while a reply is being written: the reply ends with the same greedy tokens as
  without the reload and names the version it was admitted with (GPT-NeoX and Llama);
* a canary: over 300 requests its share is within a binomial bound of the configured one, each
  reply is what its version writes, and each log row and review card names that version.
"""

from __future__ import annotations

import asyncio
import shutil
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bot.chatflow.conversation import ChatMessage, build_conversation
from bot.chatflow.replyflow import Filtered, Incoming, ReplyFlow
from bot.chatflow.service import ChatService
from bot.discord.review_views import review_embed
from bot.model.adapters import clear_canary, set_current, write_canary
from bot.serving.canary import CanarySplit
from bot.serving.local.backend import LocalBackend
from bot.store.store import Store
from tests.test_vllm_backend import binomial_bounds, greedy_cards
from tests.test_worker import hold
from tests.vllm_server import backend_settings, install_adapter

pytestmark = pytest.mark.asyncio(loop_scope="function")

QUESTION = "魔法の研究は順調？"


def add_version(adapters: Path, persona: str, version: str, files: Path) -> None:
    """Publish a version without making it current (as a candidate)."""
    shutil.copytree(files, adapters / persona / version)


@pytest.mark.parametrize("arch", ["gpt-neox", "llama"])
async def test_a_reload_mid_reply_keeps_its_version_through_the_backend(
    arch, tiny_models, random_adapters, tmp_path
):
    adapters = tmp_path / "adapters"
    install_adapter(adapters, "marisa", "v1", random_adapters[arch]["marisa"])
    add_version(adapters, "marisa", "v2", random_adapters[arch]["ojousama"])
    cards = greedy_cards(max_new_tokens=30, min_new_tokens=30)
    backend = await LocalBackend.start(backend_settings(tiny_models[arch], adapters), cards)
    try:
        chat = ChatService(cards, backend, backend.facts)

        def ask():
            return chat.submit("marisa", [chat.user_turn("marisa", QUESTION)]).ticket

        no_reload = await ask().result()
        running = ask()
        while running.tokens < 3:
            await asyncio.sleep(0.002)
        release, parked = await hold(backend.worker)  # the worker waits between two steps
        assert 3 <= running.tokens < 30  # so the reload below lands mid-reply
        set_current(adapters, "marisa", "v2")
        reload = asyncio.ensure_future(backend.reload("marisa"))
        release.set()
        await parked
        assert await reload == ["marisa: adapter v2"]
        finished = await running.result()
        assert finished.token_ids == no_reload.token_ids and finished.adapter_version == "v1"
        later = await ask().result()
        assert later.adapter_version == "v2" and later.token_ids != no_reload.token_ids
        assert [a.version for a in backend.stats().adapters] == ["v2"]
    finally:
        await backend.stop(drain_timeout=1)


async def test_a_canary_gets_its_share_and_every_card_names_its_version(tiny_neox, random_adapters, tmp_path):
    adapters = tmp_path / "adapters"
    files = random_adapters["gpt-neox"]
    install_adapter(adapters, "marisa", "v1", files["marisa"])
    add_version(adapters, "marisa", "v2", files["ojousama"])
    cards = greedy_cards(max_new_tokens=3, min_new_tokens=3)
    settings = backend_settings(tiny_neox, adapters)
    backend = await LocalBackend.start(settings, cards)
    store = await Store.open(tmp_path / "db.sqlite3")
    try:
        chat = ChatService(cards, backend, backend.facts)
        history = [chat.user_turn("marisa", QUESTION)]
        # What each version writes for the question, alone (CURRENT = v1, then v2).
        expected = {"v1": await chat.submit("marisa", history).text()}
        set_current(adapters, "marisa", "v2")
        await backend.reload("marisa")
        expected["v2"] = await chat.submit("marisa", history).text()
        assert expected["v1"] != expected["v2"]

        set_current(adapters, "marisa", "v1")
        write_canary(adapters, "marisa", "v2", 0.25)
        assert await backend.reload("marisa") == ["marisa: adapter v1, canary v2 for 25% of requests"]
        (canary,) = backend.stats().canaries
        assert (canary.name, canary.version, canary.share) == ("marisa", "v2", 0.25)
        await backend.worker.call(lambda engine: setattr(engine.pool, "split", CanarySplit(seed=16)))

        n, served, flow_rows = 300, Counter(), []
        for wave in range(n // 30):
            pending = [chat.submit("marisa", history) for _ in range(30)]
            texts = await asyncio.gather(*(p.text() for p in pending))
            for i, (p, text) in enumerate(zip(pending, texts, strict=True)):
                version = p.result.adapter_version
                served[version] += 1
                assert text == expected[version]  # the version named is the version that wrote it
                message = wave * 30 + i + 1
                conv = build_conversation(cards.get("marisa"), [ChatMessage(message, 7, QUESTION)], 10)
                incoming = Incoming(1, 2, message, 7, datetime.now(UTC))
                entry = ReplyFlow.entry(incoming, conv, p, Filtered(text, ()), 10, None)
                flow_rows.append((await store.log_reply(entry), version))

        low, high = binomial_bounds(n, 0.25)
        assert set(served) == {"v1", "v2"} and low <= served["v2"] <= high, served
        for log_id, version in flow_rows:
            item = await store.get_review(log_id)
            assert item.adapter_version == version
            fields = {f.name: f.value for f in review_embed(item).fields}
            assert fields["Adapter"] == version

        # The canary ends: every request gets CURRENT again, and the canary's weights are freed.
        clear_canary(adapters, "marisa")
        assert await backend.reload("marisa") == ["marisa: adapter v1"]
        assert backend.stats().canaries == []
        results = [await chat.submit("marisa", history).text() for _ in range(5)]
        assert results == [expected["v1"]] * 5
        keys = await backend.worker.call(lambda engine: engine.pool.resident_keys())
        assert len(keys) == 1
    finally:
        await store.close()
        await backend.stop(drain_timeout=1)


async def test_a_canary_that_cannot_be_loaded_is_one_line_and_current_serves(
    tiny_neox, random_adapters, tmp_path
):
    adapters = tmp_path / "adapters"
    files = random_adapters["gpt-neox"]
    install_adapter(adapters, "marisa", "v1", files["marisa"])
    add_version(adapters, "marisa", "v2", files["ojousama"])
    write_canary(adapters, "marisa", "v2", 0.5)
    (adapters / "marisa" / "v2" / "adapter_model.safetensors").write_bytes(b"not safetensors")
    cards = greedy_cards(max_new_tokens=3, min_new_tokens=3)
    backend = await LocalBackend.start(backend_settings(tiny_neox, adapters), cards)
    try:
        assert backend.stats().canaries == [] and [a.version for a in backend.stats().adapters] == ["v1"]
        lines = await backend.reload()
        marisa = next(line for line in lines if line.startswith("marisa:"))
        assert marisa.startswith("marisa: adapter v1; the canary on disk was not loaded (")
        assert "v2" in marisa and "\n" not in marisa
        with pytest.raises(Exception, match="the canary on disk was not loaded") as info:
            await backend.reload("marisa")
        assert type(info.value).__name__ == "AdapterError"
        chat = ChatService(cards, backend, backend.facts)
        result = await chat.submit("marisa", [chat.user_turn("marisa", QUESTION)]).ticket.result()
        assert result.adapter_version == "v1"
    finally:
        await backend.stop(drain_timeout=1)
