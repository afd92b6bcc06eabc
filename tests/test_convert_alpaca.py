"""alpaca / dolly instruction data, as a JSON list or JSONL."""

from __future__ import annotations

from pathlib import Path

from trainer.convert import collect_files, convert_files
from trainer.convert.common import ConvertOptions, Dialogue, Report, parse_row_ranges

FIXTURES = Path(__file__).parent / "fixtures" / "convert" / "alpaca"


def convert(path: Path, **options) -> tuple[list[Dialogue], Report]:
    report = Report()
    files = collect_files("alpaca", [path])
    return list(convert_files("alpaca", files, ConvertOptions(**options), report)), report


def test_a_json_list_puts_input_before_instruction_and_reports_the_bad_item():
    dialogues, report = convert(FIXTURES / "alpaca.json")
    assert [d.id for d in dialogues] == ["alpaca:1", "alpaca:2", "alpaca:4"]  # items, numbered from 1
    assert [(t.speaker, t.text) for t in dialogues[0].turns] == [
        ("ユーザー", "これ食べていい？\n次の文を丁寧にしてください。"),
        ("persona", "こちらをいただいてもよろしいですの？"),
    ]
    assert dialogues[1].turns[0].text == "自己紹介をしてください。"  # an empty input adds nothing
    assert dialogues[2].turns[0].text == "入力だけ"  # a blank instruction leaves the input alone
    assert all(d.persona == "persona" for d in dialogues)
    assert report.bad_rows == [
        f"{FIXTURES / 'alpaca.json'}:3: needs instruction and output (or dolly's response)"
    ]


def test_dolly_jsonl_uses_context_and_response():
    dialogues, _ = convert(FIXTURES / "dolly.jsonl")
    assert [(t.speaker, t.text) for t in dialogues[0].turns] == [
        ("ユーザー", "昔々ある所に\nおじいさんがいました。\nこの文章を要約して"),
        ("persona", "おじいさんの話ですわ。"),
    ]
    assert dialogues[1].turns[0].text == "空の色は？"


def test_a_folder_reads_json_and_jsonl_and_skip_rows_applies_per_file():
    dialogues, report = convert(FIXTURES, skip_rows=parse_row_ranges("1"))
    assert [d.id for d in dialogues] == ["alpaca:2", "alpaca:4", "dolly:2"]
    assert report.skipped["--skip-rows"] == 2


def test_a_broken_json_list_is_one_bad_row_not_a_crash(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[\n  {"instruction": "a", "output": "b"},\n  {oops}\n]\n', encoding="utf-8")
    dialogues, report = convert(path)
    assert dialogues == []
    assert len(report.bad_rows) == 1 and report.bad_rows[0].startswith(f"{path}:3: not valid JSON")


def test_a_row_with_a_non_text_field_is_reported(tmp_path):
    path = tmp_path / "odd.jsonl"
    path.write_text(
        '{"instruction": ["a"], "output": "b"}\n{"instruction": "数字", "output": 42}\n', encoding="utf-8"
    )
    dialogues, report = convert(path)
    assert report.bad_rows == [f'{path}:1: "instruction" is not text']
    assert [t.text for t in dialogues[0].turns] == ["数字", "42"]
