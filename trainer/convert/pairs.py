"""Prompt/reply pairs: CSV or JSONL of prompt/completion or instruction/output, and the
chat variant with ``{"messages": [...]}`` (or ShareGPT's ``{"conversations": [...]}``).

The prompt side is spoken by ``ユーザー`` and the reply by ``persona``. OpenAI's old
fine-tuning layout leaves artefacts (``"おはよう ->"``, ``" おはようございます\\n"``) that are
stripped here so they are never learned.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from trainer.convert.common import (
    PERSONA_SPEAKER,
    USER_SPEAKER,
    BadRow,
    ConvertOptions,
    Dialogue,
    Report,
    Utterance,
    field_text,
    has_replacement_char,
    in_ranges,
    instruction_text,
    iter_records,
    open_text,
)

NAME = "pairs"
PATTERNS = ("*.csv", "*.jsonl", "*.json")
OPTIONS = frozenset({"skip_rows"})
_PROMPT_SEPARATOR_RE = re.compile(r"\s*->\s*$")  # the legacy fine-tuning prompt separator
_ROLES = {
    "user": USER_SPEAKER,
    "human": USER_SPEAKER,
    "assistant": PERSONA_SPEAKER,
    "gpt": PERSONA_SPEAKER,
    "model": PERSONA_SPEAKER,
}
_IGNORED_ROLES = {"system"}  # the persona card brings its own system prompt
COLUMNS_HELP = "prompt/completion, instruction/output or question/answer"


def _chat_turns(messages: Any, line: int) -> list[Utterance]:
    if not isinstance(messages, list):
        raise ValueError("messages must be a list")
    turns = []
    for message in messages:
        if not isinstance(message, dict):
            raise ValueError("each message must be an object")
        role = field_text(message, "role", "from")
        text = field_text(message, "content", "value")
        if role is None or text is None:
            raise ValueError("a message needs role and content")
        role = role.strip().lower()
        if role in _IGNORED_ROLES:
            continue
        if role not in _ROLES:
            raise ValueError(f"unknown role {role!r}")
        turns.append(Utterance(_ROLES[role], text, line))
    return turns


def record_turns(record: dict[str, Any], line: int) -> list[Utterance]:
    """The turns of one row. ValueError (with a reason fit for the report) if it is no pair."""
    for key in ("messages", "conversations"):
        if key in record:
            return _chat_turns(record[key], line)
    prompt = field_text(record, "prompt")
    if prompt is not None:
        reply = field_text(record, "completion")
        prompt = _PROMPT_SEPARATOR_RE.sub("", prompt)
    else:
        instruction = field_text(record, "instruction", "question")
        reply = field_text(record, "output", "answer")
        prompt = (
            None if instruction is None else instruction_text(instruction, field_text(record, "input") or "")
        )
    if prompt is None or reply is None:
        raise ValueError(f"no {COLUMNS_HELP} fields")
    return [Utterance(USER_SPEAKER, prompt, line), Utterance(PERSONA_SPEAKER, reply, line)]


def _csv_rows(path: Path) -> Iterator[tuple[int, int, Any]]:
    """(data row, line where the row starts, row keyed by lower-case header, or BadRow)."""
    with open_text(path, newline="") as fh:
        reader = csv.reader(fh)
        header = [h.strip().lower() for h in next(reader, [])]
        previous_end = reader.line_num
        row_number = 0
        for row in reader:
            start, previous_end = previous_end + 1, reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            row_number += 1
            if len(row) != len(header):
                yield row_number, start, BadRow(f"{len(row)} fields where the header has {len(header)}")
            else:
                yield row_number, start, dict(zip(header, row, strict=True))


def _rows(path: Path) -> Iterator[tuple[int, int, Any]]:
    return _csv_rows(path) if path.suffix.lower() == ".csv" else iter_records(path)


def convert(path: Path, opts: ConvertOptions, report: Report) -> Iterator[Dialogue]:
    for row_number, line, record in _rows(path):
        if in_ranges(row_number, opts.skip_rows):
            report.skip("--skip-rows")
            continue
        if isinstance(record, BadRow):
            report.bad(path, line, record.message)
            continue
        if not isinstance(record, dict):
            report.bad(path, line, "a row must be an object")
            continue
        try:
            turns = record_turns(record, line)
        except ValueError as exc:
            report.bad(path, line, str(exc))
            continue
        if any(has_replacement_char(t.text) for t in turns):
            report.bad(path, line, "undecodable bytes")
            continue
        yield Dialogue(opts.source, f"{path.stem}:{line}", turns, PERSONA_SPEAKER)
