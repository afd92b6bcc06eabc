"""open2ch corpus and ranking TSVs: speakers, __BR__, ranking labels and NG words."""

from __future__ import annotations

from pathlib import Path

from trainer.convert import collect_files, convert_files
from trainer.convert.common import ConvertOptions, Dialogue, Report
from trainer.convert.open2ch import default_ng_words_path, load_ng_words

FIXTURES = Path(__file__).parent / "fixtures" / "convert" / "open2ch"
SHARED_NG = Path(__file__).resolve().parents[2] / "shared" / "data" / "open2ch" / "ng_words.txt"


def convert(path: Path, **options) -> tuple[list[Dialogue], Report]:
    report = Report()
    files = collect_files("open2ch", [path])
    return list(convert_files("open2ch", files, ConvertOptions(**options), report)), report


def test_corpus_rows_alternate_a_and_b_with_line_breaks_restored():
    dialogues, report = convert(FIXTURES / "corpus.tsv")
    first = dialogues[0]
    assert first.id == "corpus:1"
    assert [(t.speaker, t.text) for t in first.turns] == [
        ("A", "今日の晩飯なににする？"),
        ("B", "カレーでええやろ\n楽やし"),
        ("A", "ええな、それでいこ"),
    ]
    assert [t.speaker for t in dialogues[-1].turns] == ["A", "B", "A", "B"]
    assert first.persona is None
    assert report.skipped["fewer than two posts"] == 1


def test_the_shipped_ng_list_filters_after_width_folding():
    words = load_ng_words()
    assert "キチガイ" in words
    dialogues, report = convert(FIXTURES / "corpus.tsv", ng_words=words)
    # Row 2 says ｷﾁｶﾞｲ in half-width katakana; NFKC folding still catches it.
    assert [d.id for d in dialogues] == ["corpus:1", "corpus:5"]
    assert report.skipped["ng word"] == 1


def test_a_custom_ng_list_replaces_the_default():
    words = load_ng_words(FIXTURES / "ng_custom.txt")
    assert words == ("カレー",)  # the comment and the blank line are not words
    dialogues, report = convert(FIXTURES / "corpus.tsv", ng_words=words)
    assert [d.id for d in dialogues] == ["corpus:2", "corpus:5"]
    assert report.skipped["ng word"] == 1


def test_without_an_ng_list_nothing_is_filtered():
    dialogues, _ = convert(FIXTURES / "corpus.tsv")
    assert len(dialogues) == 3


def test_the_shipped_list_is_our_own_not_the_corpus_list():
    ours = set(load_ng_words())
    assert 30 <= len(ours) <= 100
    assert default_ng_words_path().is_file()
    if SHARED_NG.is_file():  # a few words are bound to overlap; a copy would match wholesale
        theirs = set(load_ng_words(SHARED_NG))
        assert len(ours & theirs) < len(ours) / 2


def test_ranking_rows_keep_only_the_real_reply_and_report_a_bad_label():
    dialogues, report = convert(FIXTURES / "ranking.tsv")
    assert [d.id for d in dialogues] == ["ranking:1", "ranking:4"]
    assert [t.text for t in dialogues[0].turns] == ["雨やばくない？", "ほんまにな\n傘忘れたわ"]
    assert [t.speaker for t in dialogues[1].turns] == ["A", "B", "A"]
    assert report.skipped["ranking label 0"] == 2
    assert report.bad_rows == [
        f"{FIXTURES / 'ranking.tsv'}:5: ranking row without a 0/1 label (first column 'x')"
    ]


def test_forcing_ranking_on_a_corpus_file_reports_every_row():
    dialogues, report = convert(FIXTURES / "corpus.tsv", ranking=True)
    assert dialogues == []
    assert len(report.bad_rows) == 4  # four non-blank rows, none with a label


def test_a_folder_converts_both_files():
    dialogues, _ = convert(FIXTURES)
    assert {d.id.split(":")[0] for d in dialogues} == {"corpus", "ranking"}


def test_persona_speaker_marks_b_and_drops_dialogues_without_b(tmp_path):
    path = tmp_path / "two.tsv"
    path.write_text("質問があるんやけど\tなんや言うてみ\n\t\tひとりごとやで\n", encoding="utf-8")
    dialogues, report = convert(path, persona_speaker="B")
    assert [d.persona for d in dialogues] == ["B"]
    assert report.skipped["fewer than two posts"] == 1
