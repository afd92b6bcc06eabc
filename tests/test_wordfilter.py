"""The output word filter."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.text.wordfilter import SHIPPED_LIST, WordFilter


@pytest.fixture
def words() -> WordFilter:
    return WordFilter.from_lines(["# comment", "", "ばか", "死ね", "ass", "kill yourself", "!ばかり"])


def test_clean_text_passes(words: WordFilter) -> None:
    assert words.check("今日はいい天気だぜ。") == []
    assert words.check("This class is great") == []  # ASCII entries match whole words only


@pytest.mark.parametrize(
    "text",
    [
        "お前は死ねだぜ",
        "死 ね",
        "死・ね",
        "死\u200bね",
        "バカだな",
        "ﾊﾞｶ",
        "ＢＡＫＡ ばか",
        "you ASS",
        "Kill  Yourself",
    ],
)
def test_variants_are_caught(words: WordFilter, text: str) -> None:
    assert words.check(text), text


def test_allowed_phrases_do_not_trigger(words: WordFilter) -> None:
    assert words.check("そればかり食べてる") == []
    assert words.check("ばかりか、ばかだ") == ["ばか"]


def test_reports_the_entries_as_written(words: WordFilter) -> None:
    assert words.check("バカ、死ね") == ["ばか", "死ね"]


def test_shipped_list_loads_and_works() -> None:
    shipped = WordFilter.from_file()
    assert len(shipped) > 20
    assert shipped.check("ぶっ殺すぞ") != []
    assert shipped.check("fuck this") == ["fuck"]
    assert shipped.check("おはようだぜ！今日も魔法の研究をするんだぜ。") == []
    assert SHIPPED_LIST.is_file()


def test_custom_file(tmp_path: Path) -> None:
    path = tmp_path / "words.txt"
    path.write_text("禁句\n", encoding="utf-8")
    custom = WordFilter.from_file(path)
    assert custom.check("それは禁句だ") == ["禁句"]
    assert custom.check("死ね") == []
    with pytest.raises(FileNotFoundError):
        WordFilter.from_file(tmp_path / "missing.txt")
