"""The pieces every converter shares: encodings, merging, row ranges, atomic JSONL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer.convert import collect_files, common, convert_files
from trainer.convert.common import (
    ConvertOptions,
    Dialogue,
    JsonlWriter,
    Report,
    Utterance,
    detect_encoding,
    join_speech,
    merge_turns,
    parse_row_ranges,
    read_text,
)
from trainer.dataset import read_dialogues

SENTENCE = "こんにちは、今日はいい天気ですね。\n"


@pytest.mark.parametrize(
    ("encoding", "detected"),
    [("utf-8", "utf-8-sig"), ("utf-8-sig", "utf-8-sig"), ("cp932", "cp932"), ("utf-16", "utf_16")],
)
def test_encodings_are_detected_and_a_bom_is_not_text(tmp_path, encoding, detected):
    path = tmp_path / "x.txt"
    path.write_bytes((SENTENCE * 3).encode(encoding))
    assert detect_encoding(path) == detected
    assert read_text(path) == SENTENCE * 3


def test_a_sample_cut_inside_a_character_still_reads_as_utf8(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "ENCODING_SAMPLE_BYTES", 4)  # あ is 3 bytes: the cut lands inside い
    path = tmp_path / "x.txt"
    path.write_text("あいう", encoding="utf-8")
    assert detect_encoding(path) == "utf-8-sig"


def test_bad_bytes_after_the_sample_make_a_bad_row_not_a_crash(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "ENCODING_SAMPLE_BYTES", 16)
    path = tmp_path / "data1.txt"
    path.write_bytes("F1：一行目です。\n".encode() + b"M2:\xff\xfe\n" + "F1：三行目です。\n".encode())
    report = Report()
    [dialogue] = convert_files("nucc", [path], ConvertOptions(), report)
    assert [t.text for t in dialogue.turns] == ["一行目です。三行目です。"]
    assert report.bad_rows == [f"{path}:2: undecodable bytes (is the file's encoding mixed?)"]


def test_empty_turns_go_before_merging():
    turns = [
        Utterance("A", " はい。 ", 1),
        Utterance("B", "   ", 2),
        Utterance("A", "そうです", 3),
        Utterance("A", "ね", 4),
        Utterance("B", "ok", 5),
    ]
    assert merge_turns(turns) == [Utterance("A", "はい。そうです ね"), Utterance("B", "ok")]
    assert merge_turns(turns)[0].line == 1  # a merged turn keeps where it started


@pytest.mark.parametrize(
    ("first", "second", "joined"),
    [
        ("はい。", "そう", "はい。そう"),
        ("ねー", "うん", "ねーうん"),
        ("hello", "world", "hello world"),
        ("", "x", "x"),
    ],
)
def test_join_speech_adds_a_space_only_between_words(first, second, joined):
    assert join_speech(first, second) == joined


def test_row_ranges_parse_and_reject_nonsense():
    assert parse_row_ranges("79-88, 100") == ((79, 88), (100, 100))
    for bad in ("", "a-b", "0-3", "9-3", "1-"):
        with pytest.raises(ValueError):
            parse_row_ranges(bad)


def test_an_uncommitted_writer_leaves_the_old_file_and_no_temp(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text("old\n", encoding="utf-8")
    with JsonlWriter(out) as writer:
        writer.write(Dialogue("s", "x:1", [Utterance("A", "a")]))
    assert out.read_text(encoding="utf-8") == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]


def test_a_crash_while_writing_leaves_no_temp(tmp_path):
    out = tmp_path / "sub" / "out.jsonl"
    with pytest.raises(RuntimeError), JsonlWriter(out) as writer:
        writer.write(Dialogue("s", "x:1", [Utterance("A", "a")]))
        raise RuntimeError("boom")
    assert list(out.parent.iterdir()) == []


def test_a_committed_file_round_trips(tmp_path):
    out = tmp_path / "out.jsonl"
    dialogues = [
        Dialogue(
            "pairs", "f:1", [Utterance("ユーザー", "やあ"), Utterance("persona", "ごきげんよう")], "persona"
        ),
        Dialogue("nucc", "g:7", [Utterance("F1", "改行\nあり")]),
    ]
    with JsonlWriter(out) as writer:
        for d in dialogues:
            writer.write(d)
        writer.commit()
    lines = out.read_text(encoding="utf-8").splitlines()
    assert json.loads(lines[0]) == {
        "source": "pairs",
        "id": "f:1",
        "turns": [{"speaker": "ユーザー", "text": "やあ"}, {"speaker": "persona", "text": "ごきげんよう"}],
        "persona": "persona",
    }
    assert "persona" not in json.loads(lines[1])
    assert "ユーザー" in lines[0]  # written as UTF-8, not \\u escapes
    # The trainer reads what prepare writes: one reader, the trainer's own.
    read_back = [(d.source, d.id, list(d.turns), d.persona) for d in read_dialogues(out)]
    assert read_back == [
        (d.source, d.id, [(t.speaker, t.text) for t in d.turns], d.persona) for d in dialogues
    ]


def test_reading_a_malformed_prepared_file_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"turns": []}\n{"turns": [{"speaker": 1}]}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: 'turns' must be a non-empty list"):
        read_dialogues(path)


def test_only_the_first_bad_rows_are_printed(tmp_path, capsys):
    report = Report(max_printed=2)
    for line in range(1, 6):
        report.bad(tmp_path / "f.txt", line, "broken")
    err = capsys.readouterr().err
    assert err.count("bad row:") == 2 and f"{tmp_path / 'f.txt'}:2: broken" in err
    assert report.summary() == "kept 0 dialogues, skipped 5 (bad row: 5); 3 more bad rows not listed"


def test_two_files_with_one_stem_are_refused(tmp_path):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "lines.txt").write_text("x\n", encoding="utf-8")
    with pytest.raises(ValueError, match="share the stem 'lines'"):
        collect_files("lines", [tmp_path])


def test_a_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        collect_files("lines", [Path(tmp_path / "nope")])


def test_folder_scans_skip_hidden_files_and_macos_forks(tmp_path):
    (tmp_path / "__MACOSX").mkdir()
    (tmp_path / "__MACOSX" / "b.txt").write_bytes(b"\x00\x05\x16\x07")
    (tmp_path / "._a.txt").write_bytes(b"\x00\x05\x16\x07")
    (tmp_path / "a.txt").write_text("x\n", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.txt").write_text("y\n", encoding="utf-8")
    assert collect_files("lines", [tmp_path]) == [tmp_path / "a.txt", tmp_path / "sub" / "c.txt"]


def test_one_file_named_twice_is_read_once(tmp_path):
    (tmp_path / "a.txt").write_text("x\n", encoding="utf-8")
    assert collect_files("lines", [tmp_path, tmp_path / "a.txt", tmp_path / "." / "a.txt"]) == [
        tmp_path / "a.txt"
    ]
