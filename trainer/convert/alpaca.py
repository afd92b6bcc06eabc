"""Instruction data in the alpaca / dolly / oasst-ja shape, as a JSON list or JSONL.

``instruction`` + optional ``input`` (dolly: ``context``) -> ``output`` (dolly: ``response``).
The input goes before the instruction in the user turn, joined by a newline.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

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
)

NAME = "alpaca"
PATTERNS = ("*.json", "*.jsonl")
OPTIONS = frozenset({"skip_rows"})


def convert(path: Path, opts: ConvertOptions, report: Report) -> Iterator[Dialogue]:
    for row_number, line, record in iter_records(path):
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
            instruction = field_text(record, "instruction")
            context = field_text(record, "input", "context") or ""
            output = field_text(record, "output", "response")
        except ValueError as exc:
            report.bad(path, line, str(exc))
            continue
        if instruction is None or output is None:
            report.bad(path, line, "needs instruction and output (or dolly's response)")
            continue
        user = instruction_text(instruction, context)
        if has_replacement_char(user + output):
            report.bad(path, line, "undecodable bytes")
            continue
        turns = [Utterance(USER_SPEAKER, user, line), Utterance(PERSONA_SPEAKER, output, line)]
        yield Dialogue(opts.source, f"{path.stem}:{line}", turns, PERSONA_SPEAKER)
