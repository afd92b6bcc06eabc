"""NUCC transcripts: the cleaning rules, on fixtures written for this project."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from trainer.convert import collect_files, convert_files
from trainer.convert.common import ConvertOptions, Dialogue, Report
from trainer.convert.nucc import clean_speech

FIXTURES = Path(__file__).parent / "fixtures" / "convert" / "nucc"


def convert(path: Path, **options) -> tuple[list[Dialogue], Report]:
    report = Report()
    dialogues = list(convert_files("nucc", collect_files("nucc", [path]), ConvertOptions(**options), report))
    return dialogues, report


def pairs(dialogue: Dialogue) -> list[tuple[str, str]]:
    return [(t.speaker, t.text) for t in dialogue.turns]


def test_the_utf8_transcript_becomes_one_clean_dialogue():
    [dialogue], report = convert(FIXTURES / "data101.txt")
    assert dialogue.source == "nucc"
    assert dialogue.id == "data101:7"  # the line of the first turn
    assert dialogue.persona is None
    assert pairs(dialogue) == [
        ("F101", "今日さ、駅前で＊＊＊に会った。"),
        ("M102", "え、ほんと？まじで？"),
        ("F101", "うん、それで一緒にお茶した。楽しかったよ。あ、もう閉店か。"),
        ("M102", "そうなんだ"),
        ("F101", "だよね"),
        ("M102", "またね。"),
    ]
    assert report.kept == 1 and report.total_skipped == 0


def test_back_channels_between_real_words_keep_the_words():
    # The seed's greedy （.*） would have eaten 一緒に along with both back-channels.
    assert clean_speech("うん、それで（へー）一緒に（うん）お茶した。") == "うん、それで一緒にお茶した。"


def test_non_verbal_marks_inside_a_sentence_keep_the_words():
    # Greedy ＜.*＞ would have left only 今日さ、.
    assert clean_speech("今日さ、＜笑い＞駅前で＊＊＊に会った。＜笑い＞") == "今日さ、駅前で＊＊＊に会った。"


def test_overlap_brackets_go_but_their_words_stay():
    assert clean_speech("【【そうなんだ】】（笑）") == "そうなんだ"


def test_nested_back_channels_are_removed_whole():
    assert clean_speech("それで（（うん）そう）さ") == "それでさ"


def test_a_turn_of_only_marks_disappears_and_its_neighbours_merge():
    [dialogue], _ = convert(FIXTURES / "data101.txt")
    # M102：＜笑い＞ was emptied, so the F101 turns on either side are one turn.
    speakers = [t.speaker for t in dialogue.turns]
    assert all(a != b for a, b in itertools.pairwise(speakers))
    assert "楽しかったよ。" in dialogue.turns[2].text


def test_x_turns_are_dropped_by_default_and_kept_on_request():
    [dropped], _ = convert(FIXTURES / "data101.txt")
    assert all(t.speaker != "X" for t in dropped.turns)
    [kept], _ = convert(FIXTURES / "data101.txt", keep_x=True)
    assert ("X", "本日は閉店まで営業しております。") in pairs(kept)
    # With X kept, F101's turns before and after it are no longer merged.
    assert ("F101", "あ、もう閉店か。") in pairs(kept)


def test_nothing_after_the_end_marker_is_read():
    [dialogue], _ = convert(FIXTURES / "data101.txt")
    assert not any("読まない" in t.text for t in dialogue.turns)


def test_a_cp932_file_with_crlf_is_detected_and_read():
    raw = (FIXTURES / "data102.txt").read_bytes()
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")  # the fixture really is CP932
    [dialogue], report = convert(FIXTURES / "data102.txt")
    assert pairs(dialogue) == [
        ("F201", "髙橋さんって覚えてる？～"),
        ("M202", "うん、覚えてるよ。"),
        ("F201", "①番の席の人だよね。"),
    ]
    assert report.bad_rows == []


def test_a_folder_gives_every_transcript_in_order_and_nothing_else():
    dialogues, _ = convert(FIXTURES)
    assert [d.id.split(":")[0] for d in dialogues] == ["data101", "data102"]  # README.txt is no transcript


def test_persona_speaker_is_written_and_a_missing_one_skips_the_conversation():
    [dialogue], _ = convert(FIXTURES / "data101.txt", persona_speaker="M102")
    assert dialogue.persona == "M102"
    dialogues, report = convert(FIXTURES / "data101.txt", persona_speaker="F999")
    assert dialogues == []
    assert report.skipped["no persona text"] == 1


def test_max_turns_cuts_windows_named_by_their_first_line():
    dialogues, report = convert(FIXTURES / "data101.txt", max_turns=4)
    assert [len(d.turns) for d in dialogues] == [4, 2]
    assert [d.id for d in dialogues] == ["data101:7", "data101:16"]
    assert report.kept == 2


def test_speech_before_any_turn_is_reported_with_its_line(tmp_path):
    path = tmp_path / "data900.txt"
    path.write_text("＠データ９００\n＜間＞\n迷子の行です。\nF1：こんにちは。\n", encoding="utf-8")
    [dialogue], report = convert(path)
    assert pairs(dialogue) == [("F1", "こんにちは。")]
    assert report.bad_rows == [f"{path}:3: speech before the first 'ID：' turn"]


def test_a_transcript_without_speech_is_skipped_not_written(tmp_path):
    path = tmp_path / "data901.txt"
    path.write_text("＠データ９０１\nF1：＜笑い＞\nM2：（うん）\n＠ＥＮＤ\n", encoding="utf-8")
    dialogues, report = convert(path)
    assert dialogues == []
    assert report.skipped["empty"] == 1
