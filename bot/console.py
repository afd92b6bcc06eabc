"""The terminal chat: the same runtime, worker and chat service the Discord bot uses.

Interactive on a terminal (``/persona ID``, ``/personas``, ``/reset``, ``/quit``). With
piped stdin it is a filter for scripts: exactly one stdout line per input line — the
reply with its newlines folded, or an empty line for a command or an input that could
not be answered (the reason goes to stderr) — and nothing else on stdout.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import TextIO

from bot.generation import GenerationError
from bot.runtime import Runtime
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
            for card in cards.cards.values():
                mark = "*" if card.id == self.persona_id else " "
                self._say(f"{mark} {card.id:10} {card.display_name}: {card.description}")
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
        else:
            self._say(HELP)
        return True

    async def message(self, text: str) -> str | None:
        chat = self.runtime.chat
        turn = chat.user_turn(self.persona_id, text)
        try:
            reply = await chat.reply(self.persona_id, [*self.history, turn])
        except (InputError, GenerationError) as exc:
            print(f"error: {exc}", file=self.err, flush=True)
            return None
        self.history += [turn, chat.persona_turn(self.persona_id, reply)]
        return reply

    async def run(self, stdin: TextIO) -> int:
        if self.interactive:
            self._say(f"talking with {self.runtime.cards.get(self.persona_id).display_name}. {HELP}")
        while True:
            if self.interactive:
                try:
                    # input() edits the line with readline (arrow keys, history) once it is imported.
                    line = await asyncio.to_thread(input, f"{self.persona_id}> ")
                except EOFError:
                    return 0
            else:
                line = await asyncio.to_thread(stdin.readline)
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
            if self.interactive:
                if reply is not None:
                    name = self.runtime.cards.get(self.persona_id).display_name
                    print(f"{name}: {reply}", file=self.out, flush=True)
            else:
                print(" ".join((reply or "").splitlines()), file=self.out, flush=True)


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
    return await chat.run(stdin)
