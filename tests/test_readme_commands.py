"""The commands in README.md and docs/*.md run as written.

Two checks, so a documentation edit that breaks a command fails the suite:

* every ``.venv/bin/python -m bot …`` and ``… -m trainer …`` line in a ``bash`` block is parsed by
  the real argument parser (a renamed flag or subcommand fails), every other ``-m MODULE`` names
  a module that exists, and every ``make TARGET`` a Makefile target;
* the blocks marked ``<!-- readme-test: run -->`` (the offline newcomer path: the tiny model,
  fetch from ``../shared``, prepare, train, chat) run as bash scripts, in order, in a fresh
  directory that looks like a clone with ``../shared`` beside it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN_MARK = "<!-- readme-test: run -->"
# Placeholders the documents use where the reader fills in a value.
PLACEHOLDERS = {
    "SERVER_ID": "123456789012345678",
    "ID": "marisa",
    "FILE": "x.toml",
    "HUB_ID_OR_DIR": "models/x",
}


@dataclass(frozen=True)
class Block:
    document: Path
    line: int  # 1-based line of the opening fence
    text: str
    run: bool


def bash_blocks(document: Path) -> list[Block]:
    """The ```bash blocks of a Markdown file (indented ones inside lists included)."""
    blocks = []
    lines = document.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        opening = re.match(r"^(\s*)```bash\s*$", lines[i])
        if not opening:
            i += 1
            continue
        indent = len(opening[1])
        start = i
        body = []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][indent:])
            i += 1
        marked = start > 0 and lines[start - 1].strip() == RUN_MARK
        blocks.append(Block(document, start + 1, "\n".join(body) + "\n", marked))
        i += 1
    return blocks


ALL_BLOCKS = [block for document in DOCUMENTS for block in bash_blocks(document)]


def commands(block: Block) -> list[list[str]]:
    """Each simple command of a block as argv, with env assignments dropped and heredoc bodies skipped."""
    text = re.sub(r"<<'?(\w+)'?\n.*?\n\1\n", "\n", block.text, flags=re.DOTALL)  # heredoc bodies
    text = text.replace("\\\n", " ")
    argvs = []
    for line in text.splitlines():
        line = re.sub(r"\[[^\]]*\]", "", line)  # [--optional ARGS] in a synopsis
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError as exc:
            raise AssertionError(
                f"{block.document.name}:{block.line}: cannot parse {line!r}: {exc}"
            ) from None
        argv: list[str] = []
        for token in [*tokens, "|"]:
            if token in ("|", "&&", "||", ";", ">", ">>", "<"):
                if argv:
                    argvs.append(argv)
                argv = [] if token not in (">", ">>", "<") else ["<redirect>"]
                continue
            if argv == ["<redirect>"]:
                argv = []  # the redirect's target is no command
                continue
            if not argv and re.match(r"^[A-Z_][A-Z0-9_]*=", token):
                continue  # VAR=value before a command
            argv.append(PLACEHOLDERS.get(token, token))
        argvs = [a for a in argvs if a and a != ["<redirect>"]]
    return argvs


def parse_with(parser_factory, args: list[str]) -> str | None:
    """None when argparse accepts ``args``; else what it printed."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            parser_factory().parse_args(args)
        except SystemExit as exc:
            if exc.code not in (0, None):
                return err.getvalue().strip().splitlines()[-1]
    return None


def makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    return set(re.findall(r"^([a-z][\w-]*):", text, flags=re.MULTILINE))


def check_command(argv: list[str]) -> str | None:
    """A problem with one documented command, or None."""
    from bot.__main__ import build_parser as bot_parser
    from trainer.__main__ import build_parser as trainer_parser

    program = argv[0]
    if program == "python" or (program.startswith("python") and "/" not in program):
        return "bare python: write .venv/bin/python (see the README's 'Running commands')"
    if program == "make":
        missing = [t for t in argv[1:] if "=" not in t and t not in makefile_targets()]
        return f"no Makefile target {missing}" if missing else None
    if program != ".venv/bin/python" or argv[1:2] != ["-m"]:
        return None
    module, args = argv[2], argv[3:]
    if module == "bot":
        return parse_with(bot_parser, args)
    if module == "trainer":
        return parse_with(trainer_parser, args)
    if importlib.util.find_spec(module) is None:
        return f"no module {module}"
    return None


def test_the_documents_have_commands_to_check():
    found = [argv for block in ALL_BLOCKS for argv in commands(block)]
    assert sum(argv[:3] == [".venv/bin/python", "-m", "trainer"] for argv in found) >= 10
    assert sum(argv[:3] == [".venv/bin/python", "-m", "bot"] for argv in found) >= 3
    assert sum(block.run for block in ALL_BLOCKS) >= 3


@pytest.mark.parametrize("block", ALL_BLOCKS, ids=lambda b: f"{b.document.name}:{b.line}")
def test_every_documented_command_parses(block: Block):
    problems = []
    for argv in commands(block):
        problem = check_command(argv)
        if problem:
            problems.append(f"{shlex.join(argv)}: {problem}")
    assert not problems, f"{block.document.relative_to(ROOT)}:{block.line}:\n" + "\n".join(problems)


@pytest.mark.shared
def test_the_marked_blocks_run_on_a_fresh_clone(tmp_path):
    if not SHARED.is_dir():
        pytest.skip("needs ../shared beside the checkout")
    clone = tmp_path / "oshaberi"
    clone.mkdir()
    (clone / ".venv").symlink_to(ROOT / ".venv")
    (tmp_path / "shared").symlink_to(SHARED)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OSHABERI_", "DISCORD_"))}
    env["PYTHONPATH"] = str(ROOT)  # this checkout's code, as `make` would install it
    # One clone per document, as a reader would follow one page top to bottom.
    by_document: dict[Path, list[Block]] = {}
    for block in ALL_BLOCKS:
        if block.run:
            by_document.setdefault(block.document, []).append(block)
    for document, blocks in by_document.items():
        cwd = clone if document.name == "README.md" else tmp_path / f"clone-{document.stem}"
        if cwd != clone:
            cwd.mkdir()
            (cwd / ".venv").symlink_to(ROOT / ".venv")
        for block in blocks:
            where = f"{document.relative_to(ROOT)}:{block.line}"
            result = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", block.text],
                cwd=cwd,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert result.returncode == 0, f"{where} failed:\n{result.stdout}\n{result.stderr}"
            assert "Traceback" not in result.stderr, f"{where}:\n{result.stderr}"
            if "tiny-model models/tiny" in block.text:
                # The hint the command prints follows the documents' way of running commands.
                assert "try it: OSHABERI_MODEL=models/tiny .venv/bin/python -m bot chat" in result.stdout
