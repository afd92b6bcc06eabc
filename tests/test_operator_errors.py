"""An operator's mistake gets one line that says what to do: the real entry points, in a subprocess.

Every case here fails before any model is loaded, so each run takes only the interpreter's start-up.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_entry_point(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OSHABERI_", "DISCORD_"))}
    clean.update(env, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, *args],
        env=clean,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (
            ["-m", "bot", "chat"],
            {"OSHABERI_CHAT__HISTORY_MESSAGES": "abc"},
            "error: OSHABERI_CHAT__HISTORY_MESSAGES: 'abc' is not an integer",
        ),
        (
            ["-m", "bot", "chat"],
            {"OSHABERI_CHAT__RATE_LIMIT_PER_MINUTE": "-1"},
            "error: chat.rate_limit_per_minute (OSHABERI_CHAT__RATE_LIMIT_PER_MINUTE): -1.0 must be >= 0",
        ),
        # The model path does not exist either: the persona must be reported first, before any load.
        (
            ["-m", "bot"],
            {"OSHABERI_DEFAULT_PERSONA": "nobody", "OSHABERI_MODEL": "models/none", "DISCORD_TOKEN": "x.y.z"},
            "error: chat.default_persona: unknown persona 'nobody' (known: ",
        ),
        (
            ["-m", "bot", "chat", "--persona", "nobody"],
            {"OSHABERI_MODEL": "models/none"},
            "error: --persona: unknown persona 'nobody' (known: ",
        ),
    ],
    ids=["env-not-integer", "negative-rate-limit", "bad-default-persona-discord", "bad-persona-console"],
)
def test_one_line_and_no_traceback(tmp_path, args, env, expected):
    result = run_entry_point(args, env, tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(expected), lines[0]
    assert "Traceback" not in result.stderr
    assert "x.y.z" not in result.stderr


@pytest.mark.parametrize("program", ["bot", "trainer"])
def test_outside_the_venv_one_line_says_to_use_it(tmp_path, program):
    # -S leaves site-packages off the path: the project's code is found, its dependencies are not,
    # exactly as with a system python that never had the project installed.
    result = run_entry_point(["-S", "-m", program, "chat" if program == "bot" else "prepare"], {}, tmp_path)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "does not have the project's dependencies (missing: torch" in lines[0]
    assert f".venv/bin/python -m {program}" in lines[0] and "make run" in lines[0]


def test_a_broken_default_persona_card_is_named_before_the_model_loads(tmp_path):
    from dataclasses import replace

    from bot.__main__ import check_personas
    from bot.config import Settings
    from personas.card import UnknownPersonaError

    shipped = ROOT / "personas"
    for persona in ("marisa", "zundamon"):
        (tmp_path / persona).mkdir()
        for file in (shipped / persona).iterdir():
            (tmp_path / persona / file.name).write_bytes(file.read_bytes())
    card = tmp_path / "marisa" / "persona.toml"
    card.write_text("not_a_field = 1\n" + card.read_text(encoding="utf-8"), encoding="utf-8")
    settings = Settings()
    settings = replace(settings, paths=replace(settings.paths, personas_dir=str(tmp_path)))

    with pytest.raises(UnknownPersonaError) as caught:
        check_personas(settings, [("chat.default_persona", "marisa")])
    message = str(caught.value)
    assert message.startswith("chat.default_persona: persona 'marisa' cannot be used: ")
    assert str(card) in message and "not_a_field" in message
    check_personas(settings, [("--persona", "zundamon")])  # a card that loads passes
