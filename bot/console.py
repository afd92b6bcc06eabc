"""The terminal chat: the same runtime, worker and chat service the Discord bot uses.

Interactive on a terminal (``/persona ID``, ``/personas``, ``/reset``, ``/quit``). With
piped stdin it is a filter for scripts: exactly one stdout line per input line — the
reply with its newlines folded, or an empty line for a command or an input that could
not be answered (the reason goes to stderr) — and nothing else on stdout.

Ctrl-C ends the console at once, at the prompt as while a reply is written: lines are read on a
daemon thread, so nothing waits for a read that would only return on Enter.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
from collections.abc import Callable
from typing import TextIO

from bot.runtime import Runtime
from bot.serving.adapter_labels import persona_adapter_labels
from bot.serving.generation import GenerationError
from personas.card import UnknownPersonaError
from personas.render import InputError, Turn

HELP = "commands: /persona ID, /personas, /reset, /quit"


class ConsoleChat:
    def __init__(
        self, runtime: Runtime, persona_id: str, out: TextIO, err: TextIO, interactive: bool
    ) -> None:
        self.runtime = runtime
        self.persona_id = persona_id
        self.history: list[Turn] = []
        self.out = out
        self.err = err
        self.interactive = interactive

    def adapter_labels(self) -> dict[str, str]:
        """persona id → adapter version or ``prompt-only`` (bot/serving/adapter_labels.py)."""
        stats = self.runtime.worker.stats()
        return persona_adapter_labels(self.runtime.cards.cards, stats.adapters, stats.canaries)

    def _say(self, text: str) -> None:
        """Messages for the person at the terminal: stdout when interactive, stderr when piped."""
        print(text, file=self.out if self.interactive else self.err, flush=True)

    def command(self, line: str) -> bool:
        """Handle a /command; returns False on /quit."""
        name, _, arg = line.strip().partition(" ")
        cards = self.runtime.cards
        if name in ("/quit", "/exit"):
            return False
        if name == "/personas":
            labels = self.adapter_labels()
            for card in cards.cards.values():
                mark = "*" if card.id == self.persona_id else " "
                self._say(f"{mark} {card.id:10} {card.display_name} [{labels[card.id]}]: {card.description}")
        elif name == "/persona":
            try:
                cards.get(arg.strip())
            except UnknownPersonaError as exc:
                self._say(str(exc))
            else:
                self.persona_id = arg.strip()
                self.history = []  # a new persona starts a new conversation
                self._say(f"now talking with {cards.get(self.persona_id).display_name}")
        elif name == "/reset":
            self.history = []
            self._say("conversation forgotten")
        elif name in ("/help", "/?"):
            self._say(HELP)
        else:
            self._say(f"unknown command {name}; {HELP}")
        return True

    async def message(self, text: str) -> str | None:
        """Answer one line; interactive, the reply is printed (as it is written when streaming)."""
        chat = self.runtime.chat
        turn = chat.user_turn(self.persona_id, text)
        line = _StreamedLine(self.out, f"{self.runtime.cards.get(self.persona_id).display_name}: ")
        try:
            pending = chat.submit(self.persona_id, [*self.history, turn], "console")
            if self.interactive and self.runtime.settings.chat.stream_replies:
                raw = ""
                async for piece in pending.pieces():
                    raw += piece
                    line.show(pending.draft(raw))
            reply = await pending.text()
        except (InputError, GenerationError) as exc:
            line.cut()  # a reply cut off half-way ends its line before the error is told
            print(f"error: {exc}", file=self.err, flush=True)
            return None
        if self.interactive:
            line.finish(reply)
        self.history += [turn, chat.persona_turn(self.persona_id, reply)]
        return reply

    async def run(self, stdin: TextIO) -> int:
        if self.interactive:
            name = self.runtime.cards.get(self.persona_id).display_name
            self._say(f"talking with {name} (adapter: {self.adapter_labels()[self.persona_id]}). {HELP}")
        while True:
            if self.interactive and stdin is sys.stdin:
                try:
                    # input() edits the line with readline (arrow keys, history) once it is imported.
                    line = await read_on_daemon_thread(lambda: input(f"{self.persona_id}> "))
                except EOFError:
                    return 0
            else:
                if self.interactive:  # a terminal-like session on another stream: prompt, no readline
                    print(f"{self.persona_id}> ", end="", file=self.out, flush=True)
                line = await read_on_daemon_thread(stdin.readline)
                if not line:
                    return 0
            line = line.rstrip("\n")
            if self.interactive and not line.strip():
                continue  # an empty Enter asks nothing: a new prompt, no error
            if line.startswith("/"):
                keep_going = self.command(line)
                if not self.interactive:
                    print("", file=self.out, flush=True)
                if not keep_going:
                    return 0
                continue
            reply = await self.message(line)
            if not self.interactive:
                # Not streamed: a script reading lines sees nothing before the newline anyway.
                print(" ".join((reply or "").splitlines()), file=self.out, flush=True)


async def read_on_daemon_thread(read: Callable[[], str]) -> str:
    """``read()`` (a blocking read of one line) on a daemon thread; raises what it raises.

    ``asyncio.to_thread`` would use the loop's executor, which ``asyncio.run`` joins on the way
    out: after Ctrl-C the process would then wait for the read, i.e. for Enter. A daemon thread is
    left behind instead, and the process ends without it.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[str] = loop.create_future()

    def settle(outcome: Callable[[], None]) -> None:
        if not future.done():
            outcome()

    def target() -> None:
        try:
            line = read()
        except BaseException as exc:  # EOFError, or an error to raise in the loop's thread
            # Bound now: after the except block ends, Python deletes ``exc``.
            outcome = lambda exc=exc: future.set_exception(exc)  # noqa: E731
        else:
            outcome = lambda: future.set_result(line)  # noqa: E731
        with contextlib.suppress(RuntimeError):  # the loop is gone: the console has ended
            loop.call_soon_threadsafe(settle, outcome)

    threading.Thread(target=target, name="console-input", daemon=True).start()
    return await future


class _StreamedLine:
    """A reply printed while it is written: each draft adds what is new at the end of the line."""

    def __init__(self, out: TextIO, label: str) -> None:
        self.out = out
        self.label = label
        self.printed: str | None = None  # the reply text on screen; None before the label

    def show(self, draft: str) -> None:
        """Print what ``draft`` adds; drafts are prefixes of the reply (PromptRenderer.draft_reply)."""
        if not draft:
            return
        if self.printed is None:
            self._write(self.label)
            self.printed = ""
        if len(draft) > len(self.printed) and draft.startswith(self.printed):
            self._write(draft[len(self.printed) :])
            self.printed = draft

    def finish(self, reply: str) -> None:
        if self.printed is None:
            self._write(f"{self.label}{reply}\n")
        elif reply.startswith(self.printed):
            self._write(f"{reply[len(self.printed) :]}\n")
        else:
            # Cleaning the whole reply changed what was shown (rare): show the reply as it is.
            self._write(f"\n{self.label}{reply}\n")

    def cut(self) -> None:
        if self.printed is not None:
            self._write(" …\n")

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()


async def run_console(
    runtime: Runtime,
    persona_id: str,
    stdin: TextIO = sys.stdin,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> int:
    runtime.cards.get(persona_id)
    interactive = stdin.isatty()
    if interactive:
        with contextlib.suppress(ImportError):  # not on every platform (Windows)
            import readline  # noqa: F401 - importing it gives input() line editing
    chat = ConsoleChat(runtime, persona_id, out, err, interactive=interactive)
    saved = _terminal_settings(stdin) if interactive else None
    try:
        return await chat.run(stdin)
    except asyncio.CancelledError:  # Ctrl-C: the shell's prompt starts on a line of its own
        if interactive:
            print(file=out, flush=True)
        raise
    finally:
        if saved is not None:
            _restore_terminal(stdin, saved)


def _terminal_settings(stream: TextIO) -> list | None:
    """The terminal's settings, to put back on the way out: a read abandoned by Ctrl-C leaves
    the terminal as readline set it (no echo, no line editing by the terminal)."""
    try:
        import termios
    except ImportError:  # not a POSIX system
        return None
    try:
        return termios.tcgetattr(stream.fileno())
    except (termios.error, OSError, ValueError):  # not a terminal, or no file descriptor
        return None


def _restore_terminal(stream: TextIO, saved: list) -> None:
    import termios

    with contextlib.suppress(termios.error, OSError, ValueError):
        termios.tcsetattr(stream.fileno(), termios.TCSADRAIN, saved)
