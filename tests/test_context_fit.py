"""History fitted to the context a request actually has: a card's budget beyond the model's
context (the local model's max positions, a vLLM server's max_model_len), a reply room that must
shrink, a newest message longer than the context, a card whose own text leaves no room, and a busy
persona channel on a 512-token model through the real bot. Members never read an operator's
instruction; the operator gets one warning line."""

from __future__ import annotations

import dataclasses
import logging
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.chatflow.service import ChatService
from bot.config import ModelSettings, Settings
from bot.model.loading import encode_prompt, load_tokenizer
from bot.runtime import Runtime
from personas.card import load_cards
from personas.context_fit import MIN_NEWEST_TOKENS, ContextTooSmallError, fit_prompt
from personas.render import PromptRenderer, TokenizerFacts, Turn
from tests.e2e.inprocess import EmulatedBot, emulated_bot
from tests.fake_vllm import FakeVllm
from tests.test_vllm_protocol import start_backend

ROOT = Path(__file__).resolve().parents[1]
CARDS = load_cards()
MARISA = CARDS.get("marisa")
LINE = "今日は魔法の森でキノコを探してたんだけど、ぜんぜん見つからなくて困ったぜ。"


@pytest.fixture(scope="module")
def short_replies(tmp_path_factory) -> Path:
    """The shipped marisa card with 12-token replies, so the real model answers quickly."""
    root = tmp_path_factory.mktemp("cards")
    shutil.copytree(ROOT / "personas" / "marisa", root / "marisa")
    card = root / "marisa" / "persona.toml"
    card.write_text(
        card.read_text(encoding="utf-8").replace("max_new_tokens = 96", "max_new_tokens = 12"), "utf-8"
    )
    return root


def real_settings(model: Path, cards: Path, tmp_path: Path, base: Settings | None = None) -> Settings:
    base = base or Settings()
    paths = dataclasses.replace(base.paths, adapters_dir=str(tmp_path / "adapters"), personas_dir=str(cards))
    return dataclasses.replace(base, model=ModelSettings(base_model=str(model)), paths=paths)


@pytest.fixture(scope="module")
def tokenizer(tiny_neox_512: Path):
    return load_tokenizer(str(tiny_neox_512), ModelSettings(base_model=str(tiny_neox_512)))


@pytest.fixture(scope="module")
def renderer(tokenizer) -> PromptRenderer:
    return PromptRenderer(MARISA, TokenizerFacts.from_tokenizer(tokenizer))


def busy(turns: int) -> list[Turn]:
    """A channel's history: members and the persona taking turns, the newest a member's."""
    out = [
        Turn(MARISA.speaker if i % 2 else MARISA.user_label, f"{i}: {LINE}", bool(i % 2))
        for i in range(turns)
    ]
    return [*out, Turn(MARISA.user_label, "で、どう思う？")]


def used(tokenizer, fitted) -> int:
    """Tokens the engine will see: the prompt as encoded, plus the reply's room."""
    return len(encode_prompt(tokenizer, fitted.rendered.text)) + fitted.max_new_tokens


def test_a_card_that_fits_renders_exactly_as_before(renderer) -> None:
    history = busy(4)
    fitted = fit_prompt(renderer, history, 100_000)
    assert fitted.rendered == renderer.render_prompt(history)
    assert not fitted.cut and fitted.max_new_tokens == MARISA.generation.max_new_tokens


@pytest.mark.parametrize("context", [512, 400])
def test_history_is_cut_to_the_context_and_the_newest_message_stays(renderer, tokenizer, context) -> None:
    history = busy(40)
    fitted = fit_prompt(renderer, history, context)
    assert used(tokenizer, fitted) <= context
    assert fitted.cut and fitted.history_budget < MARISA.history_budget_tokens
    assert fitted.rendered.text.endswith(f"ユーザー: で、どう思う？{renderer.nl}魔理沙: ")
    assert fitted.rendered.dropped_turns > 0 and fitted.max_new_tokens == MARISA.generation.max_new_tokens
    line = fitted.operator_line("marisa", 768, 96)
    assert f"context of {context} tokens" in line and "history_budget_tokens" in line and "\n" not in line


def test_a_context_with_no_room_for_the_full_reply_shortens_the_reply(renderer, tokenizer) -> None:
    fixed = renderer.fixed_tokens() + renderer.facts.prompt_special_tokens
    context = fixed + MIN_NEWEST_TOKENS + 40  # less than the card's 96-token reply
    fitted = fit_prompt(renderer, busy(10), context)
    assert used(tokenizer, fitted) <= context and fitted.max_new_tokens < MARISA.generation.max_new_tokens
    assert "replies to" in fitted.operator_line("marisa", 768, 96)


def test_a_newest_message_longer_than_the_context_keeps_its_end(renderer, tokenizer) -> None:
    long = "".join(f"{i}番目の話だぜ。" for i in range(400))
    fitted = fit_prompt(renderer, [Turn(MARISA.user_label, long)], 400)
    assert used(tokenizer, fitted) <= 400 and "399番目の話だぜ。" in fitted.rendered.text
    assert "ユーザー: 0番目の話" not in fitted.rendered.text and "100番目の話" not in fitted.rendered.text


def test_a_card_whose_own_text_fills_the_context_is_one_line_for_the_operator(renderer) -> None:
    fixed = renderer.fixed_tokens()
    with pytest.raises(ContextTooSmallError) as info:
        fit_prompt(renderer, busy(2), fixed + 10)
    assert "history_budget_tokens" not in str(info.value) and "system_prompt" not in str(info.value)
    assert "system_prompt" in info.value.operator_line and f"{fixed + 10} tokens" in info.value.operator_line


async def test_a_busy_conversation_on_a_512_token_model_is_answered_with_one_warning(
    tiny_neox_512, short_replies, tmp_path, caplog
) -> None:
    settings = real_settings(tiny_neox_512, short_replies, tmp_path)
    runtime = await Runtime.start(settings)
    try:
        assert runtime.backend.context_tokens("__base__") == 512
        tokenizer = runtime.backend.engine.tokenizer
        for turns in (30, 40):
            pending = runtime.chat.submit("marisa", busy(turns))
            assert await pending.text() is not None  # no "too long for the model"
            assert len(encode_prompt(tokenizer, pending.prompt)) + pending.params.max_new_tokens <= 512
        warnings = [
            r.getMessage()
            for r in caplog.records
            if r.levelno == logging.WARNING and "context" in r.getMessage()
        ]
        assert len(warnings) == 1 and "persona marisa" in warnings[0] and "512 tokens" in warnings[0]
    finally:
        await runtime.close(drain_timeout=1)


# -- vLLM: the chosen server's context ------------------------------------------------------------


@pytest.fixture
async def small_and_large(tokenizer) -> AsyncIterator[list[FakeVllm]]:
    servers = [
        await FakeVllm(tokenizer, max_model_len=1024).start(),
        await FakeVllm(tokenizer, max_model_len=300).start(),
    ]
    yield servers
    for server in servers:
        await server.stop()


async def test_a_request_routed_to_a_server_with_a_smaller_context_is_fitted_again(
    small_and_large, tiny_neox_512, tmp_path
) -> None:
    large, small = small_and_large
    backend = await start_backend(
        tiny_neox_512, tmp_path, [large.url, small.url], vllm_health_interval_s=600.0
    )
    try:
        assert backend.context_tokens("__base__") == 512  # the model's own limit caps the larger server
        chat = ChatService(backend.cards, backend, backend.facts)
        backend.pool.servers[0].last_pick = 10**6  # the small server first
        pending = chat.submit("marisa", busy(40))
        assert await pending.text()
        [sent] = small.completions()
        assert len(sent.body["prompt"]) + sent.body["max_tokens"] <= 300
        assert pending.prompt.endswith("魔理沙: ") and len(
            encode_prompt(backend.tokenizer, pending.prompt)
        ) == len(sent.body["prompt"])
        # The next goes to the larger server and keeps more history.
        backend.pool.servers[1].last_pick = 10**7
        more = chat.submit("marisa", busy(40))
        assert await more.text() and len(more.prompt) > len(pending.prompt)
        assert len(large.completions()) == 1 and backend.stats().requests_failed == 0
    finally:
        await backend.stop(drain_timeout=1)


async def test_a_server_restarted_with_a_smaller_context_is_read_again_and_answered(
    small_and_large, tiny_neox_512, tmp_path
) -> None:
    large, _ = small_and_large
    backend = await start_backend(tiny_neox_512, tmp_path, [large.url], vllm_health_interval_s=600.0)
    try:
        large.max_model_len = 256  # restarted with --max-model-len 256 since the last health check
        chat = ChatService(backend.cards, backend, backend.facts)
        pending = chat.submit("marisa", busy(40))
        assert await pending.text()
        assert backend.pool.servers[0].max_model_len == 256 and backend.pool.servers[0].healthy
        first, second = large.completions()
        assert len(second.body["prompt"]) + second.body["max_tokens"] <= 256 < len(first.body["prompt"]) + 96
    finally:
        await backend.stop(drain_timeout=1)


# -- Discord: a busy persona channel on a 512-token model ------------------------------------------


@pytest.fixture
async def real_bot(tiny_neox_512, short_replies, tmp_path) -> AsyncIterator[EmulatedBot]:
    async def start(settings: Settings) -> Runtime:
        return await Runtime.start(real_settings(tiny_neox_512, short_replies, tmp_path, settings))

    async with emulated_bot(tmp_path, runtime_factory=start) as harness:
        harness.bot.get_cog("Chat").position_poll_s = 0.05
        yield harness


async def test_a_busy_persona_channel_on_a_small_model_keeps_answering(real_bot: EmulatedBot, caplog) -> None:
    h = real_bot
    for i in range(12):  # a busy channel, before the persona was set: its history, unanswered
        await h.say(f"{i}: {LINE}{LINE}", user="member" if i % 2 else "member2")
    assert h.sent() == []
    await h.store.set_channel_persona(h.chat, "marisa")
    for question in ("みんなどう思う？", "もう一回聞くけど、どう？"):
        await h.say(question)
        sent = h.sent()
        assert sent and all(m.content.startswith("**霧雨魔理沙**: ") for m in sent), [m.content for m in sent]
        shown = " ".join(m.content for m in h.present("chat"))
        assert "too long" not in shown and "history_budget_tokens" not in shown and "/reset" not in shown
    items = [await h.store.get_review(n) for n in (1, 2)]
    assert all(item is not None and ": 0: " not in item.prompt and ": 11: " in item.prompt for item in items)
    warnings = [r.getMessage() for r in caplog.records if "history is cut" in r.getMessage()]
    assert len(warnings) == 1  # one line for the operator, not one per message
