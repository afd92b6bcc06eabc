"""The console on a real terminal (a pseudo-terminal): line editing, an empty Enter asks nothing,
and Ctrl-C ends it at once, at the prompt as during a reply."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import select
import signal
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LEFT = "\x1b[D"  # what the left-arrow key sends


def _take_the_terminal() -> None:
    """In the child: make the pty (its stdin) the controlling terminal of a new session, so Ctrl-C
    typed on it sends SIGINT to the child, as a terminal does to its foreground program."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(
            args,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            cwd=ROOT,
            start_new_session=True,
            preexec_fn=_take_the_terminal,
        )
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

    def close(self, timeout: float = 60) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            os.close(self.master)


@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")
def test_arrow_keys_edit_the_line_and_an_empty_enter_is_ignored(tiny_neox, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OSHABERI_CONFIG": "", "DISCORD_TOKEN": "", "TERM": "xterm"}
    env["PYTHONPATH"] = str(ROOT)
    env["OSHABERI_ADAPTERS_DIR"] = str(tmp_path)  # no trained adapter: prompt-only, as in the docs
    term = Terminal(
        [sys.executable, "-m", "bot", "chat", "--model", str(tiny_neox), "--persona", "marisa"], env
    )
    try:
        shown = term.expect("marisa> ")
        # docs/console.md shows the banner the console prints.
        [banner] = [
            line
            for line in (ROOT / "docs" / "console.md").read_text("utf-8").splitlines()
            if line.startswith("talking with")
        ]
        assert banner in shown, shown
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


def console(model: Path) -> Terminal:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OSHABERI_CONFIG": "", "DISCORD_TOKEN": "", "TERM": "xterm"}
    env["PYTHONPATH"] = str(ROOT)
    return Terminal([sys.executable, "-m", "bot", "chat", "--model", str(model), "--persona", "marisa"], env)


def drain(term: Terminal, seconds: float) -> None:
    """Keep reading the terminal (a full pty would block the child's writes) for ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and term.proc.poll() is None:
        if select.select([term.master], [], [], 0.1)[0]:
            with contextlib.suppress(OSError):
                term.seen += os.read(term.master, 4096).decode("utf-8", "replace")


@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")
def test_ctrl_c_at_the_prompt_ends_the_console_at_once_and_restores_the_terminal(tiny_neox):
    term = console(tiny_neox)
    try:
        term.expect("marisa> ")
        before = termios.tcgetattr(term.master)
        term.type("\x03")  # Ctrl-C, as typed: the terminal turns it into SIGINT
        started = time.monotonic()
        drain(term, 15)
        assert term.proc.poll() is not None, (
            f"still running 15 s after Ctrl-C; the terminal showed:\n{term.seen}"
        )
        assert time.monotonic() - started < 15
        assert term.proc.returncode == 130
        assert "Traceback" not in term.seen
        after = termios.tcgetattr(term.master)
        assert after[3] & termios.ECHO and after[3] & termios.ICANON  # echo and line editing are back
        assert after[3] == before[3] or after[3] & termios.ISIG
    finally:
        if term.proc.poll() is None:
            term.proc.kill()
        with contextlib.suppress(OSError):
            os.close(term.master)


@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")
def test_ctrl_c_while_a_reply_is_written_ends_the_console(tiny_neox):
    term = console(tiny_neox)
    try:
        term.expect("marisa> ")
        term.type("こんにちは" * 20 + "\r")
        term.expect("霧雨魔理沙: ")  # the reply has started
        term.proc.send_signal(signal.SIGINT)
        drain(term, 15)
        assert term.proc.poll() == 130, f"not ended by Ctrl-C; the terminal showed:\n{term.seen}"
        assert "Traceback" not in term.seen
    finally:
        if term.proc.poll() is None:
            term.proc.kill()
        with contextlib.suppress(OSError):
            os.close(term.master)


def test_ctrl_c_while_reading_a_pipe_that_stays_open_ends_the_console(tiny_neox):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OSHABERI_CONFIG": "", "DISCORD_TOKEN": ""}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.Popen(
        [sys.executable, "-m", "bot", "chat", "--model", str(tiny_neox), "--persona", "marisa"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=ROOT,
    )
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write("こんにちは\n".encode())
        proc.stdin.flush()
        proc.stdout.readline()  # one answer: the console is now waiting on the open pipe
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 130
        assert b"Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdin.close()
