"""One character line per row, no partner."""

from __future__ import annotations

from pathlib import Path

from trainer.convert import collect_files, convert_files
from trainer.convert.common import ConvertOptions, Dialogue, Report, parse_row_ranges

MARISA = Path(__file__).parent / "fixtures" / "convert" / "lines" / "marisa.txt"


def convert(path: Path, **options) -> tuple[list[Dialogue], Report]:
    report = Report()
    files = collect_files("lines", [path])
    return list(convert_files("lines", files, ConvertOptions(**options), report)), report


def test_each_line_is_one_persona_turn_and_crlf_is_gone():
    dialogues, report = convert(MARISA)
    assert [d.id for d in dialogues] == ["marisa:1", "marisa:3", "marisa:5", "marisa:6"]
    assert all(d.persona == "persona" and len(d.turns) == 1 for d in dialogues)
    assert [d.turns[0].text for d in dialogues][:2] == [
        "よう、霊夢！今日も遊びに来たぜ。",
        "弾幕はパワーだぜ。",
    ]
    assert not any("\r" in d.turns[0].text for d in dialogues)
    assert report.kept == 4


def test_skip_rows_counts_rows_not_blank_lines():
    dialogues, report = convert(MARISA, skip_rows=parse_row_ranges("2-3"))
    assert [d.id for d in dialogues] == ["marisa:1", "marisa:6"]
    assert report.skipped["--skip-rows"] == 2
