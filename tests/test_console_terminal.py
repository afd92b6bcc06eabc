"""The console on a real terminal (a pseudo-terminal): line editing, and an empty Enter asks nothing."""

from __future__ import annotations

import contextlib
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LEFT = "\x1b[D"  # what the left-arrow key sends


class Terminal:
    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=ROOT)
        os.close(slave)
        self.seen = ""

    def expect(self, text: str, timeout: float = 120.0) -> str:
        """Read until ``text`` has appeared since the last expect; returns what was read."""
        deadline = time.monotonic() + timeout
        start = len(self.seen)
        while text not in self.seen[start:]:
            left = deadline - time.monotonic()
            exited = self.proc.poll() is not None and not select.select([self.master], [], [], 0)[0]
            if left <= 0 or exited:
                raise AssertionError(f"never saw {text!r}; the terminal showed:\n{self.seen}")
            if select.select([self.master], [], [], min(left, 0.5))[0]:
                with contextlib.suppress(OSError):  # the other side closed
                    self.seen += os.read(self.master, 4096).decode("utf-8", "replace")
        return self.seen[start:]

    def type(self, keys: str) -> None:
        os.write(self.master, keys.encode("utf-8"))

    def close(self) -> int:
        try:
            return self.proc.wait(timeout=60)
        finally:
            os.close(self.master)


@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")
def test_arrow_keys_edit_the_line_and_an_empty_enter_is_ignored(tiny_neox):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OSHABERI_CONFIG": "", "DISCORD_TOKEN": "", "TERM": "xterm"}
    env["PYTHONPATH"] = str(ROOT)
    term = Terminal(
        [sys.executable, "-m", "bot", "chat", "--model", str(tiny_neox), "--persona", "marisa"], env
    )
    try:
        term.expect("marisa> ")
        term.type("\r")  # Enter on an empty line
        after_empty = term.expect("marisa> ")
        assert "error" not in after_empty
        # "/persona zundamn", left arrow, "o": with line editing that is "/persona zundamon".
        term.type(f"/persona zundamn{LEFT}o\r")
        assert "now talking with ずんだもん" in term.expect("zundamon> ")
        term.type("/quit\r")
        assert term.close() == 0
    finally:
        if term.proc.poll() is None:
            term.proc.kill()
