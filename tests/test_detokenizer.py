"""No cut ever emits a partial character (issue 10, item 5): length, stop string, cancel,
EOS and every streamed piece, at every token of multi-byte characters, for the byte-fallback
tokenizer (tiny llama) and the byte-level BPE one (tiny GPT-NeoX)."""

import pytest

from bot.model.loading import load_tokenizer
from bot.serving.detokenizer import REPLACEMENT, IncrementalDetokenizer
from bot.serving.generation import GenerationRequest
from bot.serving.local.batch import SequenceState
from bot.serving.local.sampling import RowSampling
from personas.card import GenerationParams

# 😀 and 𠮷 are four UTF-8 bytes, € and ｱ three, é two; 。 and です are single tokens.
TEXTS = ["なのだ😀", "é€𠮷ｱ。です", "😀😀x", "ですわ🎉！"]


@pytest.fixture(scope="module", params=["llama", "gpt-neox"])
def tok(request, tiny_models):
    return load_tokenizer(str(tiny_models[request.param]))


def ids_of(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def new_sequence(tok, max_new: int = 100, stop: tuple[str, ...] = ()) -> tuple[SequenceState, list[str]]:
    params = GenerationParams(temperature=0, max_new_tokens=max_new, repetition_penalty=1.0)
    request = GenerationRequest("p", "x", params, stop=stop)
    pieces: list[str] = []
    seq = SequenceState(
        request,
        [1],
        RowSampling.start(params, [1], [], None),
        IncrementalDetokenizer(tok),
        on_piece=pieces.append,
    )
    return seq, pieces


def feed(seq: SequenceState, tokens: list[int], eos: int) -> None:
    for token in tokens:
        seq.advance(token, eos)
        if seq.finished:
            return


def whole_characters(tok, tokens: list[int]) -> str:
    """What a cut after ``tokens`` shows: every character its tokens completed, nothing partial.

    That is the decoding of the longest prefix that decodes cleanly (decoding the cut itself
    is not it: the tokenizer turns a whole run of bytes into U+FFFD when its end is partial).
    """
    for j in range(len(tokens), -1, -1):
        text = tok.decode(tokens[:j], skip_special_tokens=True)
        if REPLACEMENT not in text:
            return text
    return ""


def test_the_byte_fallback_tokenizer_really_splits_characters(tiny_llama):
    tok = load_tokenizer(str(tiny_llama))
    ids = ids_of(tok, "なのだ😀")
    assert tok.convert_ids_to_tokens(ids)[-4:] == ["<0xF0>", "<0x9F>", "<0x98>", "<0x80>"]
    assert tok.decode(ids[:-2]).endswith(REPLACEMENT)  # the bug's raw material


@pytest.mark.parametrize("text", TEXTS)
def test_length_cut_at_every_token(tok, text):
    ids = ids_of(tok, text)
    for k in range(1, len(ids) + 1):
        seq, pieces = new_sequence(tok, max_new=k)
        feed(seq, ids, tok.eos_token_id)
        assert seq.finish_reason == "length"
        assert REPLACEMENT not in seq.text and not any(REPLACEMENT in p for p in pieces)
        assert seq.text == whole_characters(tok, ids[:k]) and whole_characters(tok, ids).startswith(seq.text)
        assert "".join(pieces) == seq.text


@pytest.mark.parametrize("text", TEXTS)
def test_eos_and_cancel_cut_at_every_token(tok, text):
    ids = ids_of(tok, text)
    for k in range(1, len(ids) + 1):
        seq, pieces = new_sequence(tok)
        feed(seq, [*ids[:k], tok.eos_token_id], tok.eos_token_id)
        assert seq.finish_reason == "eos"
        assert seq.text == whole_characters(tok, ids[:k]) and "".join(pieces) == seq.text

        seq, pieces = new_sequence(tok)
        feed(seq, ids[:k], tok.eos_token_id)
        seq.finish("cancelled")
        assert REPLACEMENT not in seq.text and not any(REPLACEMENT in p for p in pieces)
        assert seq.text == whole_characters(tok, ids[:k])


@pytest.mark.parametrize("text", TEXTS)
def test_stop_string_on_every_character_is_never_streamed_and_never_split(tok, text):
    ids = ids_of(tok, text)
    full = whole_characters(tok, ids)
    for at, char in enumerate(full):
        if not char.strip():
            continue
        for stop in (char, full[at : at + 2]):
            seq, pieces = new_sequence(tok, stop=(stop,))
            feed(seq, [*ids, tok.eos_token_id], tok.eos_token_id)
            assert seq.finish_reason == "stop", (stop, seq.text)
            assert seq.text == full[: full.find(stop)]
            assert "".join(pieces) == seq.text
            assert not any(REPLACEMENT in p for p in pieces)


def test_streamed_pieces_wait_for_the_whole_character(tiny_llama):
    tok = load_tokenizer(str(tiny_llama))
    seq, pieces = new_sequence(tok)
    ids = ids_of(tok, "なのだ😀")
    feed(seq, ids[:-1], tok.eos_token_id)  # three of the emoji's four bytes
    assert "".join(pieces) == "なのだ"
    seq.advance(ids[-1], tok.eos_token_id)
    assert "".join(pieces) == "なのだ😀"


def test_invalid_byte_sequences_are_dropped_not_shown(tiny_llama):
    tok = load_tokenizer(str(tiny_llama))
    lone = ids_of(tok, "😀")[-3:]  # continuation bytes with no lead byte: never a character
    seq, pieces = new_sequence(tok)
    feed(seq, lone + ids_of(tok, "です") + [tok.eos_token_id], tok.eos_token_id)
    assert seq.text.strip() == "です" and "".join(pieces) == seq.text


def test_a_stop_string_before_min_new_tokens_is_kept_and_the_stream_matches_the_text(tok):
    ids = ids_of(tok, "です。ですわ。")
    first = len(ids_of(tok, "です。"))
    params = GenerationParams(
        temperature=0, max_new_tokens=50, min_new_tokens=first + 1, repetition_penalty=1.0
    )
    pieces: list[str] = []
    seq = SequenceState(
        GenerationRequest("p", "x", params, stop=("。",)),
        [1],
        RowSampling.start(params, [1], [], None),
        IncrementalDetokenizer(tok),
        on_piece=pieces.append,
    )
    feed(seq, [*ids, tok.eos_token_id], tok.eos_token_id)
    assert seq.finish_reason == "stop"
    assert seq.text == whole_characters(tok, ids).rsplit("。", 1)[0] and "".join(pieces) == seq.text


@pytest.mark.parametrize("text", TEXTS)
def test_the_vllm_stream_decoder_never_shows_part_of_a_character(tok, text):
    """The vLLM backend decodes the server's streamed token ids itself: the same rule at every
    cut (the server's length limit, EOS) and in every streamed piece."""
    from bot.serving.vllm.request import StreamDecoder

    ids = ids_of(tok, text)
    params = GenerationParams(temperature=0, max_new_tokens=100, repetition_penalty=1.0)
    for k in range(1, len(ids) + 1):
        for end in ("length", "eos"):
            decoder = StreamDecoder(tok, GenerationRequest("p", "x", params))
            pieces = [decoder.feed([t]) for t in ids[:k]]
            pieces.append(decoder.feed([tok.eos_token_id]) if end == "eos" else decoder.finish("length"))
            assert decoder.finish_reason == end
            assert not any(REPLACEMENT in p for p in pieces)
            assert decoder.text == whole_characters(tok, ids[:k]) == "".join(pieces)
