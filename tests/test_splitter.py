"""Splitting long replies for Discord's 2,000-character limit."""

from __future__ import annotations

import random

import pytest

from bot.text.splitter import DISCORD_LIMIT, split_message


def squash(text: str) -> str:
    return "".join(text.split())


def test_short_text_is_one_chunk_and_empty_is_none() -> None:
    assert split_message("こんにちはだぜ！") == ["こんにちはだぜ！"]
    assert split_message("  \n ") == []
    assert split_message("x" * DISCORD_LIMIT) == ["x" * DISCORD_LIMIT]


def test_cuts_at_sentence_ends_within_the_limit() -> None:
    sentence = "魔法の研究は毎日の積み重ねなんだぜ。"  # 18 characters
    text = sentence * 300
    chunks = split_message(text)
    assert len(chunks) > 1
    assert all(len(c) <= DISCORD_LIMIT for c in chunks)
    assert all(c.endswith("。") for c in chunks)
    assert "".join(chunks) == text


def test_closing_quotes_stay_with_their_sentence() -> None:
    text = ("「本当か？」" + "あ" * 40) * 10
    chunks = split_message(text, limit=100)
    assert all(len(c) <= 100 for c in chunks)
    assert "".join(chunks) == text
    assert not any(c.startswith("」") for c in chunks)


def test_prefers_line_breaks_over_sentences() -> None:
    text = "あ" * 40 + "。" + "い" * 5 + "\n" + "う" * 20 + "。" + "え" * 30
    chunks = split_message(text, limit=70)
    assert chunks[0] == "あ" * 40 + "。" + "い" * 5


def test_text_without_any_boundary_is_cut_hard() -> None:
    text = "あ" * 4500
    chunks = split_message(text)
    assert [len(c) for c in chunks] == [2000, 2000, 500]


def test_code_fences_are_closed_and_reopened() -> None:
    code = "\n".join(f"print({i})" for i in range(400))
    text = f"コードだぜ。\n```python\n{code}\n```\nおしまい。"
    chunks = split_message(text)
    assert len(chunks) > 1
    assert all(len(c) <= DISCORD_LIMIT for c in chunks)
    for chunk in chunks:
        assert chunk.count("```") % 2 == 0, chunk[:80]
    assert chunks[1].startswith("```python\n")


def test_fenced_text_without_newlines_terminates() -> None:
    text = "```" + "x" * 5000 + "```"
    chunks = split_message(text, limit=100)
    assert all(len(c) <= 100 for c in chunks)
    assert all(c.count("```") % 2 == 0 for c in chunks)


def test_random_texts_keep_their_content_and_limit() -> None:
    rng = random.Random(7)
    alphabet = "あいうえお。、！？\n 」abc`"
    for _ in range(200):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 700)))
        limit = rng.randint(64, 200)
        chunks = split_message(text, limit=limit)
        assert all(0 < len(c) <= limit for c in chunks)
        if "```" not in text:
            assert squash("".join(chunks)) == squash(text)


def test_too_small_limit_is_refused() -> None:
    with pytest.raises(ValueError):
        split_message("abc", limit=10)
