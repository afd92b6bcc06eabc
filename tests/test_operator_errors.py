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
