"""Prompt/reply pairs: CSV, legacy prompt/completion JSONL, chat messages, and row filters."""

from __future__ import annotations

import re
from pathlib import Path

from trainer.convert import collect_files, convert_files
from trainer.convert.common import ConvertOptions, Dialogue, Report, parse_row_ranges

FIXTURES = Path(__file__).parent / "fixtures" / "convert" / "pairs"


def convert(path: Path, **options) -> tuple[list[Dialogue], Report]:
    report = Report()
    files = collect_files("pairs", [path])
    return list(convert_files("pairs", files, ConvertOptions(**options), report)), report


def texts(dialogue: Dialogue) -> list[tuple[str, str]]:
    return [(t.speaker, t.text) for t in dialogue.turns]


def test_legacy_jsonl_artefacts_are_stripped():
    dialogues, report = convert(FIXTURES / "legacy.jsonl")
    assert texts(dialogues[0]) == [
        ("ユーザー", "おはよう"),
        ("persona", "おはようございます。素敵な朝ですわね"),
    ]
    assert dialogues[0].persona == "persona"
    assert texts(dialogues[1])[1] == ("persona", "一行目ですわ\n二行目ですの")  # CRLF normalized
    assert [d.id for d in dialogues] == ["legacy:1", "legacy:2", "legacy:6"]
    assert report.skipped["no persona text"] == 1  # the blank completion
    assert len(report.bad_rows) == 1
    assert report.bad_rows[0].startswith(f"{FIXTURES / 'legacy.jsonl'}:3: not valid JSON")


def test_chat_messages_drop_the_system_prompt_and_keep_every_turn():
    dialogues, report = convert(FIXTURES / "chat.jsonl")
    assert texts(dialogues[0]) == [
        ("ユーザー", "こんにちは"),
        ("persona", "ごきげんよう"),
        ("ユーザー", "元気？"),
        ("persona", "ええ、とても"),
    ]
    assert texts(dialogues[1]) == [("ユーザー", "紅茶とコーヒーどっち？"), ("persona", "紅茶ですわ")]
    assert report.bad_rows == [f"{FIXTURES / 'chat.jsonl'}:2: unknown role 'narrator'"]


def test_csv_rows_with_quoted_newlines_ids_by_starting_line_and_bad_rows_reported():
    dialogues, report = convert(FIXTURES / "instructions.csv")
    assert [d.id for d in dialogues] == [
        "instructions:2",
        "instructions:3",
        "instructions:5",
        "instructions:7",
        "instructions:8",
    ]
    assert texts(dialogues[1]) == [
        ("ユーザー", "ずんだ餅とは？"),
        ("persona", "枝豆をすりつぶした餡の\nお餅なのだ。"),
    ]
    assert report.bad_rows == [f"{FIXTURES / 'instructions.csv'}:6: 3 fields where the header has 2"]


def test_skip_rows_counts_data_rows_from_one():
    # Data rows: 1 おはよう, 2 ずんだ餅, 3 ほむら特技, 4 bad, 5 好きな色, 6 ほむら性格.
    dialogues, report = convert(FIXTURES / "instructions.csv", skip_rows=parse_row_ranges("3-4,6"))
    assert [texts(d)[0][1] for d in dialogues] == ["おはよう", "ずんだ餅とは？", "好きな色は？"]
    assert report.skipped["--skip-rows"] == 3
    assert report.bad_rows == []  # the bad row was skipped before it was parsed


def test_exclude_regex_drops_matching_dialogues():
    dialogues, report = convert(FIXTURES / "instructions.csv", exclude=re.compile("暁美ほむら"))
    assert not any("ほむら" in t.text for d in dialogues for t in d.turns)
    assert report.skipped["--exclude-regex"] == 2


def test_instruction_with_input_puts_the_input_first(tmp_path):
    path = tmp_path / "with_input.jsonl"
    path.write_text('{"instruction": "答えて", "input": "1+1は？", "output": "2なのだ"}\n', encoding="utf-8")
    [dialogue], _ = convert(path)
    assert texts(dialogue)[0] == ("ユーザー", "1+1は？\n答えて")


def test_a_csv_without_known_columns_reports_each_row(tmp_path):
    path = tmp_path / "odd.csv"
    path.write_text("q,a\nこんにちは,どうも\n", encoding="utf-8")
    dialogues, report = convert(path)
    assert dialogues == []
    assert report.bad_rows == [
        f"{path}:2: no prompt/completion, instruction/output or question/answer fields"
    ]


def test_a_cp932_csv_is_read(tmp_path):
    path = tmp_path / "sjis.csv"
    path.write_bytes("prompt,completion\n髙いね,そうですわね～\n".encode("cp932"))
    [dialogue], _ = convert(path)
    assert texts(dialogue) == [("ユーザー", "髙いね"), ("persona", "そうですわね～")]
