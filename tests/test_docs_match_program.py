"""What the documents show of the program's output is what the program prints: log lines name
loggers that exist and messages their modules write, and console lines use the cards' names.
(The console's banner is compared with docs/console.md on a real terminal in
tests/test_console_terminal.py.)"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from personas.card import load_cards

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# The bot's log format (bot/__main__.py): asctime, level, logger name, message.
LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (DEBUG|INFO|WARNING|ERROR) ([\w.]+): (.+)$")
PLACEHOLDER = "\x00"  # where a literal has a value filled in


def documented_log_lines() -> list[tuple[str, str, str]]:
    found = []
    for document in DOCUMENTS:
        for number, line in enumerate(document.read_text(encoding="utf-8").splitlines(), 1):
            match = LOG_LINE.match(line.strip())
            if match:
                found.append((f"{document.name}:{number}", match[3], match[4]))
    return found


def message_patterns(source: str) -> list[re.Pattern[str]]:
    """A regex per string literal of a module (f-strings included): what it can print, each value
    filled in (``{x}``, ``%s``) matching anything. Only literals with at least 10 fixed characters."""
    patterns = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.JoinedStr):
            text = "".join(v.value if isinstance(v, ast.Constant) else PLACEHOLDER for v in node.values)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
        else:
            continue
        text = re.sub(r"%(\.\d+)?[sdrf]", PLACEHOLDER, text)
        if len(text.replace(PLACEHOLDER, "")) >= 10:
            regex = ".*?".join(re.escape(piece) for piece in text.split(PLACEHOLDER))
            patterns.append(re.compile(regex, re.DOTALL))
    return patterns


def test_the_documents_show_log_lines():
    assert len(documented_log_lines()) >= 5


@pytest.mark.parametrize(
    ("where", "logger", "message"), documented_log_lines(), ids=[w for w, _, _ in documented_log_lines()]
)
def test_a_documented_log_line_comes_from_its_logger(where, logger, message):
    module = ROOT / Path(*logger.split(".")).with_suffix(".py")
    assert module.is_file(), f"{where}: no module for logger {logger}"
    source = module.read_text(encoding="utf-8")
    assert "getLogger(__name__)" in source, f"{where}: {module.name} does not log under its own name"
    assert any(p.search(message) for p in message_patterns(source)), (
        f"{where}: {module.relative_to(ROOT)} writes nothing like {message!r}"
    )


def test_the_check_would_catch_a_renamed_logger_or_message():
    source = (ROOT / "bot" / "model" / "loading.py").read_text(encoding="utf-8")
    patterns = message_patterns(source)
    assert any(p.search("loading the tokenizer of models/tiny") for p in patterns)
    assert not any(p.search("reading the tokenizer of models/tiny") for p in patterns)


def test_console_lines_in_the_documents_use_the_cards_display_names():
    cards = load_cards().cards
    seen = 0
    for document in DOCUMENTS:
        text = document.read_text(encoding="utf-8")
        for name in re.findall(r"talking with (\S+?)[ .(]", text):
            seen += 1
            assert name in {c.display_name for c in cards.values()}, f"{document.name}: {name}"
        for persona_id, name in re.findall(r"[*] (\w+) +(\S+) \[", text):
            seen += 1
            assert cards[persona_id].display_name == name, f"{document.name}: {persona_id} {name}"
    assert seen >= 3


def test_bot_log_lines_in_the_documents_start_with_the_time_as_the_bot_prints_them():
    undated = [
        f"{document.name}:{number}: {line.strip()}"
        for document in DOCUMENTS
        for number, line in enumerate(document.read_text(encoding="utf-8").splitlines(), 1)
        if re.match(r"^(DEBUG|INFO|WARNING|ERROR) bot\.[\w.]+: ", line.strip())
    ]
    assert undated == []
