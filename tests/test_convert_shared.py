"""Integration: convert the real public files in ../shared/data (skipped without them).

The converters' behaviour is covered by the project's own fixtures; these check that the
real files, with their real quirks, come out as expected.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from trainer.convert import collect_files, convert_files
from trainer.convert.common import ConvertOptions, Dialogue, Report, parse_row_ranges
from trainer.convert.open2ch import load_ng_words

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
pytestmark = [
    pytest.mark.shared,
    pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared datasets not found at {SHARED}"),
]


def convert(fmt: str, path: Path, **options) -> tuple[list[Dialogue], Report]:
    report = Report()
    return list(convert_files(fmt, collect_files(fmt, [path]), ConvertOptions(**options), report)), report


def as_pairs(dialogues: list[Dialogue]) -> list[tuple[str, ...]]:
    # casefold: upstream's JSONL lower-cased its ASCII (AI -> ai, iPhone -> iphone).
    return [tuple(t.text.casefold() for t in d.turns) for d in dialogues]


def test_ojousama_csv_jsonl_and_chat_jsonl_give_the_same_pairs():
    csv_dialogues, report = convert("pairs", SHARED / "ojousama" / "ojousamatalkscript200.csv")
    jsonl_dialogues, _ = convert("pairs", SHARED / "ojousama" / "ojousamatalkscript200.jsonl")
    chat_dialogues, _ = convert("pairs", SHARED / "ojousama" / "ojousamatalkscript200_gpt-3.5-1106ver.jsonl")
    assert len(csv_dialogues) == 202 and report.total_skipped == 0
    assert as_pairs(csv_dialogues)[0] == ("おはよう", "おはようございます。素敵な朝ですね")
    # The legacy JSONL's " ->" and " …\n" artefacts are gone, so it matches the CSV.
    assert as_pairs(jsonl_dialogues) == as_pairs(csv_dialogues)
    assert as_pairs(chat_dialogues) == as_pairs(csv_dialogues)
    assert not any(t.text.endswith("->") for d in jsonl_dialogues for t in d.turns)


def test_zundamon_without_the_homura_rows():
    path = SHARED / "zundamon" / "zundamon_prof_homu_20230615.csv"
    everything, _ = convert("pairs", path)
    assert len(everything) == 211
    filtered, report = convert("pairs", path, exclude=re.compile("暁美ほむら"))
    assert not any("暁美ほむら" in t.text for d in filtered for t in d.turns)
    assert report.skipped["--exclude-regex"] == len(everything) - len(filtered) > 10
    rows, report = convert("pairs", path, skip_rows=parse_row_ranges("79-88"))
    assert len(rows) == 201 and report.skipped["--skip-rows"] == 10


def test_open2ch_ranking_keeps_the_label_1_rows():
    dialogues, report = convert("open2ch", SHARED / "open2ch" / "ranking", ng_words=load_ng_words())
    assert report.skipped["ranking label 0"] == 18000
    assert len(dialogues) + report.skipped["ng word"] + report.skipped["bad row"] == 2000
    assert len(dialogues) > 1800
    assert not any("__BR__" in t.text for d in dialogues for t in d.turns)
    _, upstream_report = convert(
        "open2ch", SHARED / "open2ch" / "ranking", ng_words=load_ng_words(SHARED / "open2ch" / "ng_words.txt")
    )
    assert upstream_report.skipped["ng word"] > report.skipped["ng word"]  # the upstream list is longer


def test_the_nucc_format_sample():
    [dialogue], report = convert("nucc", SHARED / "nucc-format" / "sample_nucc.txt")
    texts = [(t.speaker, t.text) for t in dialogue.turns]
    assert ("F901", "ねー。なんか＊＊＊のイベントあるらしいよ。") in texts
    assert ("M902", "あ、そうなんですか。知らなかったです。") in texts
    assert not any(t.speaker == "X" for t in dialogue.turns)
    assert report.bad_rows == []
