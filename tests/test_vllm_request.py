"""The request mapping and the stream decoder of the vLLM backend, without a server: the persona's
settings in vLLM's names, and streamed token ids turned into the engine's text and pieces."""

from __future__ import annotations

import pytest

from bot.model.loading import encode_prompt, load_tokenizer
from bot.serving.generation import GenerationRequest
from bot.serving.vllm.request import StreamDecoder, completion_payload, prompt_ids
from personas.card import GenerationParams


@pytest.fixture(scope="module")
def tokenizer(tiny_neox):
    return load_tokenizer(str(tiny_neox))


def request(**params) -> GenerationRequest:
    return GenerationRequest(
        "marisa",
        "ユーザー: こんにちは<NL>魔理沙: ",
        GenerationParams(**params),
        stop=("<NL>", "ユーザー:", "A", "B", "C"),
        banned_words=("死",),
        adapter="marisa",
        seed=7,
    )


def test_the_personas_settings_are_sent_in_vllms_names():
    payload = completion_payload(
        "marisa@v1+abc",
        [5, 6],
        request(
            temperature=0.8, top_p=0.9, top_k=0, repetition_penalty=1.2, max_new_tokens=40, min_new_tokens=3
        ),
    )
    assert payload["model"] == "marisa@v1+abc" and payload["prompt"] == [5, 6]
    assert (payload["temperature"], payload["top_p"], payload["top_k"]) == (0.8, 0.9, -1)  # 0: no top-k
    assert (payload["max_tokens"], payload["min_tokens"], payload["repetition_penalty"]) == (40, 3, 1.2)
    assert payload["stop"] == ["<NL>", "ユーザー:", "A", "B"]  # vLLM takes 4; the decoder applies all 5
    assert payload["bad_words"] == ["死"] and payload["seed"] == 7
    assert payload["return_token_ids"] is True  # the text is decoded here, from the ids


def test_an_over_long_prompt_keeps_its_end_like_the_engine(tokenizer):
    req = GenerationRequest(
        "marisa", "こんにちは、今日はいい天気だぜ。" * 40, GenerationParams(max_new_tokens=16)
    )
    full = encode_prompt(tokenizer, req.prompt)
    ids = prompt_ids(tokenizer, req, max_positions=64)
    assert len(full) > 64 and ids == full[-48:]


def test_the_decoder_cuts_at_any_stop_and_never_streams_part_of_one(tokenizer):
    req = request(max_new_tokens=50)
    tokens = tokenizer("元気だぜ", add_special_tokens=False)["input_ids"]
    stop_tokens = tokenizer("<NL>ユーザー", add_special_tokens=False)["input_ids"]
    decoder = StreamDecoder(tokenizer, req)
    pieces = [decoder.feed([t]) for t in tokens + stop_tokens]
    assert decoder.finish_reason == "stop" and decoder.text == "元気だぜ"
    assert "".join(pieces) + decoder.finish("stop") == "元気だぜ"
    assert "<" not in "".join(pieces)
    result = decoder.result("marisa", "v1", 0.5)
    # "<NL>" is one token (a user-defined symbol); nothing after the stop is consumed
    assert result.new_tokens == len(tokens) + 1 and result.finish_reason == "stop"


def test_the_decoder_ends_on_eos_or_length(tokenizer):
    tokens = tokenizer("元気だぜ", add_special_tokens=False)["input_ids"]
    decoder = StreamDecoder(tokenizer, request())
    streamed = decoder.feed([*tokens, tokenizer.eos_token_id])
    assert decoder.finish_reason == "eos" and streamed == "元気だぜ" and len(decoder.generated) == len(tokens)
    decoder = StreamDecoder(tokenizer, request())
    streamed = decoder.feed(tokens) + decoder.finish("length")
    assert decoder.finish_reason == "length" and streamed == "元気だぜ"


def test_stops_before_min_new_tokens_do_not_end_the_reply(tokenizer):
    stop_tokens = tokenizer("<NL>", add_special_tokens=False)["input_ids"]
    more = tokenizer("元気", add_special_tokens=False)["input_ids"]
    decoder = StreamDecoder(tokenizer, request(min_new_tokens=len(stop_tokens) + len(more) + 1))
    decoder.feed(stop_tokens + more)
    assert decoder.finish_reason is None and "<NL>" in decoder.text
