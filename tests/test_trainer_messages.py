"""Trainer messages that say what is wrong and what to do, before any model is loaded: a file an
option names, a persona without an adapter, raw data given to train, a speaker that is not in
the files, --config after the command, and hints that name the venv's interpreter."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from trainer.__main__ import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """A working directory with an oshaberi.toml whose model does not exist: any command that
    got as far as loading it would fail on the model, not on what the test is about."""
    for var in (
        "OSHABERI_MODEL",
        "OSHABERI_DEVICE",
        "OSHABERI_ADAPTERS_DIR",
        "OSHABERI_CONFIG",
        "OSHABERI_DB",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "oshaberi.toml").write_text('[model]\nbase_model = "models/none"\n', encoding="utf-8")
    return tmp_path


def one_error(capsys, prefix: str) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith(prefix)]
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["augment", "--persona", "marisa", "--questions", "nope.txt"], "--questions"),
        (["eval", "--persona", "marisa", "--version", "base", "--probes", "nope.txt"], "--probes"),
        (["eval", "--persona", "marisa", "--version", "base", "--ranking", "nope.tsv"], "--ranking"),
        (
            ["eval", "--persona", "marisa", "--version", "base", "--train-config", "nope.toml"],
            "--train-config",
        ),
        (["train", "--persona", "marisa", "--train-config", "nope.toml"], "--train-config"),
        (["schedule", "--once", "--train-config", "nope.toml"], "--train-config"),
    ],
    ids=lambda v: v if isinstance(v, str) else v[0],
)
def test_a_missing_file_names_the_option_and_the_full_path(workdir, capsys, argv, option):
    assert main(argv) == 1
    command = argv[0]
    name = argv[argv.index(option) + 1]
    line = one_error(capsys, f"{command}: ")
    assert line == f"{command}: {option} {name}: {workdir / name} does not exist", line
    assert "Errno" not in line


def test_eval_of_a_persona_without_an_adapter_says_so_instead_of_scoring_the_base(workdir, capsys):
    assert main(["eval", "--persona", "marisa"]) == 1
    line = one_error(capsys, "eval: ")
    assert (
        f"marisa has no trained adapter ({workdir / 'adapters' / 'marisa' / 'CURRENT'} does not exist)"
        in line
    )
    assert "--version base" in line and "-m trainer train --persona marisa" in line


def test_eval_with_an_adapter_version_that_is_not_there_names_the_folder(workdir, capsys):
    assert main(["eval", "--persona", "marisa", "--version", "v9"]) == 1
    line = one_error(capsys, "eval: ")
    assert f"no adapter version 'v9' for marisa in {workdir / 'adapters' / 'marisa'}" in line


def test_the_ranking_note_only_when_the_ranking_was_wanted():
    import argparse

    from trainer.commands.eval import _ranking_note

    assert _ranking_note(argparse.Namespace(no_ranking=True), None) is None
    assert _ranking_note(argparse.Namespace(no_ranking=False), Path("t.tsv")) is None
    assert "ranking skipped: no ranking TSV" in _ranking_note(argparse.Namespace(no_ranking=False), None)


def test_train_on_a_raw_csv_says_run_prepare_before_loading_the_model(workdir, capsys):
    raw = workdir / "ojousama.csv"
    raw.write_text("prompt,completion\nごきげんよう,ごきげんよう、皆様\n", encoding="utf-8")
    assert main(["train", "--persona", "ojousama", "--data", str(raw)]) == 1
    line = one_error(capsys, "train: ")
    # The model (models/none) was never reached: the data error comes first.
    assert line.startswith(f"train: {raw}:1: not valid JSON") and "models/none" not in line
    assert "-m trainer prepare` first" in line


def test_train_on_a_missing_data_file_hints_at_the_venv_interpreter(workdir, capsys):
    assert main(["train", "--persona", "marisa"]) == 1
    line = one_error(capsys, "train: ")
    assert f"data file {workdir / 'data' / 'marisa.jsonl'} does not exist" in line
    assert " python -m trainer" not in line and "-m trainer prepare" in line


def test_eval_with_a_data_file_that_is_not_there_stops_before_loading_the_model(workdir, capsys):
    """Named on the command line, a missing --data file is a mistake (as for train), not a note
    at the end of a whole evaluation; the model in this config does not exist, so reaching it
    would be a different error."""
    assert main(["eval", "--persona", "marisa", "--version", "base", "--data", "missing.jsonl"]) == 1
    line = one_error(capsys, "eval: ")
    assert "data file missing.jsonl does not exist" in line and "models/none" not in line


def test_a_persona_speaker_that_is_not_in_the_files_lists_the_speakers(tmp_path, capsys):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "d.txt").write_text(
        "ユーザー: おはよう\n魔理沙: おう\n\nユーザー: 何？\n魔理沙: 研究だぜ\n", encoding="utf-8"
    )
    out = tmp_path / "marisa.jsonl"
    assert (
        main(["prepare", "--format", "script", str(raw), "-o", str(out), "--persona-speaker", "魔理紗"]) == 1
    )
    err = capsys.readouterr().err
    assert "no turn of --persona-speaker '魔理紗' was found; the speakers are " in err
    assert "ユーザー (2 turns)" in err and "魔理沙 (2 turns)" in err and "did you mean 魔理沙?" in err
    assert not out.exists()


def test_nucc_speakers_are_listed_too(tmp_path, capsys):
    fixtures = ROOT / "tests" / "fixtures" / "convert" / "nucc"
    out = tmp_path / "nucc.jsonl"
    assert (
        main(["prepare", "--format", "nucc", str(fixtures), "-o", str(out), "--persona-speaker", "F999"]) == 1
    )
    err = capsys.readouterr().err
    assert "no turn of --persona-speaker 'F999' was found; the speakers are " in err and "F101" in err


@pytest.mark.parametrize("where", ["before", "after"])
def test_config_is_accepted_before_or_after_the_command(workdir, capsys, where):
    config = workdir / "other.toml"
    config.write_text('[schedule]\ncron = "30 5 * * *"\n', encoding="utf-8")
    args = ["schedule", "--next", "1"]
    argv = ["--config", str(config), *args] if where == "before" else [*args, "--config", str(config)]
    assert main(argv) == 0
    assert "cron '30 5 * * *'" in capsys.readouterr().out


def test_start_up_says_where_the_settings_and_relative_paths_come_from(workdir, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="trainer"):
        main(["eval", "--persona", "marisa"])
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("settings:")]
    assert f"config file {workdir / 'oshaberi.toml'}" in line
    assert f"relative paths are relative to the working directory {workdir}" in line
    assert any("paths.adapters_dir" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)


def test_hints_name_the_interpreter_as_it_can_be_typed_here(tmp_path, monkeypatch):
    import sys

    from bot.ops import commandline

    venv_python = tmp_path / ".venv" / "bin" / "python"
    venv_python.parent.mkdir(parents=True)
    shutil.copy(sys.executable, venv_python)
    monkeypatch.setattr(sys, "executable", str(venv_python))
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # the venv is not activated
    monkeypatch.chdir(tmp_path)
    assert commandline.module_command("trainer prepare") == ".venv/bin/python -m trainer prepare"
    monkeypatch.chdir(ROOT)  # elsewhere: the full path, which works from anywhere
    assert commandline.python_command() == str(venv_python)
    monkeypatch.setenv("PATH", f"{venv_python.parent}:/usr/bin:/bin")  # activated: plain python
    assert commandline.python_command() == "python"


def test_paths_in_trainer_messages_are_absolute(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "d.txt").write_text("ユーザー: おはよう\n魔理沙: おう\n", encoding="utf-8")
    assert (
        main(
            ["prepare", "--format", "script", "raw", "-o", "data/marisa.jsonl", "--persona-speaker", "魔理沙"]
        )
        == 0
    )
    assert f"wrote {tmp_path / 'data' / 'marisa.jsonl'}" in capsys.readouterr().out
