"""``python -m trainer prepare`` end to end, through ``trainer.__main__.main``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from trainer.__main__ import main
from trainer.dataset import read_dialogues

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures" / "convert"


def prepare(*args: object) -> int:
    return main(["prepare", *map(str, args)])


def test_nucc_folder_to_jsonl(tmp_path, capsys):
    out = tmp_path / "nucc.jsonl"
    assert prepare("--format", "nucc", FIXTURES / "nucc", "-o", out, "--persona-speaker", "F101") == 0
    dialogues = list(read_dialogues(out))
    assert [d.id for d in dialogues] == ["data101:7"]  # data102 has no F101
    assert dialogues[0].persona == "F101"
    stdout = capsys.readouterr().out
    assert "kept 1 dialogues, skipped 1 (no persona text: 1)" in stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nucc.jsonl"]  # no temp file left


def test_bad_rows_are_printed_with_file_and_line(tmp_path, capsys):
    out = tmp_path / "pairs.jsonl"
    assert (
        prepare("--format", "pairs", FIXTURES / "pairs" / "legacy.jsonl", "-o", out, "--source", "ojousama")
        == 0
    )
    captured = capsys.readouterr()
    assert f"bad row: {FIXTURES / 'pairs' / 'legacy.jsonl'}:3: not valid JSON" in captured.err
    assert "kept 3 dialogues, skipped 2 (bad row: 1, no persona text: 1)" in captured.out
    assert {d.source for d in read_dialogues(out)} == {"ojousama"}


def test_several_sources_and_row_filters(tmp_path):
    out = tmp_path / "zunda.jsonl"
    args = ["--format", "pairs", FIXTURES / "pairs" / "instructions.csv", FIXTURES / "pairs" / "chat.jsonl"]
    assert prepare(*args, "-o", out, "--skip-rows", "1", "--exclude-regex", "ほむら") == 0
    ids = [d.id for d in read_dialogues(out)]
    assert ids == ["instructions:3", "instructions:7", "chat:3"]


def test_open2ch_filters_with_the_shipped_list_unless_told_otherwise(tmp_path):
    out = tmp_path / "o.jsonl"
    corpus = FIXTURES / "open2ch" / "corpus.tsv"
    assert prepare("--format", "open2ch", corpus, "-o", out) == 0
    assert len(list(read_dialogues(out))) == 2
    assert prepare("--format", "open2ch", corpus, "-o", out, "--no-ng-words") == 0
    assert len(list(read_dialogues(out))) == 3
    assert (
        prepare(
            "--format", "open2ch", corpus, "-o", out, "--ng-words", FIXTURES / "open2ch" / "ng_custom.txt"
        )
        == 0
    )
    assert [d.id for d in read_dialogues(out)] == ["corpus:2", "corpus:5"]


def test_nothing_kept_is_an_error_and_the_old_output_stays(tmp_path, capsys):
    out = tmp_path / "lines.jsonl"
    out.write_text("previous run\n", encoding="utf-8")
    assert prepare("--format", "lines", FIXTURES / "lines", "-o", out, "--exclude-regex", ".") == 1
    assert out.read_text(encoding="utf-8") == "previous run\n"
    assert "no dialogue kept" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lines.jsonl"]


def test_a_missing_source_is_one_line_and_exit_2(tmp_path, capsys):
    assert prepare("--format", "script", tmp_path / "missing.txt", "-o", tmp_path / "o.jsonl") == 2
    assert "missing.txt: no such file or folder" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()


def test_a_folder_without_matching_files_is_exit_2(tmp_path, capsys):
    assert prepare("--format", "nucc", FIXTURES / "pairs", "-o", tmp_path / "o.jsonl") == 2
    assert "no nucc files (data*.txt) in " in capsys.readouterr().err


def test_without_persona_speaker_prepare_names_the_speakers_to_choose_from(tmp_path, capsys):
    assert prepare("--format", "nucc", FIXTURES / "nucc", "-o", tmp_path / "n.jsonl") == 0
    note = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note:")]
    assert len(note) == 1 and "--persona-speaker" in note[0]
    assert "F101 (3 turns)" in note[0] and "M102 (3 turns)" in note[0]
    # With it, or for a format that always knows its persona, there is nothing to say.
    assert (
        prepare(
            "--format", "nucc", FIXTURES / "nucc", "-o", tmp_path / "m.jsonl", "--persona-speaker", "F101"
        )
        == 0
    )
    assert "note:" not in capsys.readouterr().out


def test_the_output_is_never_read_back_as_input(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"prompt": "やあ", "completion": "ごきげんよう"}\n', encoding="utf-8")
    out = tmp_path / "prepared.jsonl"
    for _ in range(2):  # the second run scans a folder that now holds the first run's output
        assert prepare("--format", "pairs", tmp_path, "-o", out) == 0
    assert [d.id for d in read_dialogues(out)] == ["a:1"]


def test_an_option_the_format_ignores_is_mentioned(tmp_path, capsys):
    assert prepare("--format", "lines", FIXTURES / "lines", "-o", tmp_path / "o.jsonl", "--keep-x") == 0
    assert "note: --keep-x has no effect with --format lines" in capsys.readouterr().err


@pytest.mark.parametrize("bad", [["--skip-rows", "3-1"], ["--exclude-regex", "("], ["--format", "xml"]])
def test_bad_arguments_are_rejected_by_the_parser(tmp_path, bad):
    args = ["--format", "lines", str(FIXTURES / "lines"), "-o", str(tmp_path / "o.jsonl"), *bad]
    with pytest.raises(SystemExit) as exc:
        main(["prepare", *args])
    assert exc.value.code == 2


def test_converters_import_no_heavy_or_discord_modules():
    code = (
        "import sys, trainer.convert, trainer.commands.prepare, trainer.commands.fetch, trainer.fetch\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'discord', 'peft'}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_a_missing_ng_list_is_exit_2(tmp_path, capsys):
    args = ["--format", "open2ch", FIXTURES / "open2ch", "-o", tmp_path / "o.jsonl"]
    assert prepare(*args, "--ng-words", tmp_path / "none.txt") == 2
    assert "none.txt" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()
