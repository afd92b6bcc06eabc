"""A character's lines with no partner: one line of text is one persona turn.

Useful for quotes collected from a game or a wiki; the trainer learns the voice from them
even though nobody asked anything.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from trainer.convert.common import (
    PERSONA_SPEAKER,
    ConvertOptions,
    Dialogue,
    Report,
    Utterance,
    has_replacement_char,
    in_ranges,
    iter_lines,
)

NAME = "lines"
PATTERNS = ("*.txt",)
OPTIONS = frozenset({"skip_rows"})


def convert(path: Path, opts: ConvertOptions, report: Report) -> Iterator[Dialogue]:
    row_number = 0
    for line, text in iter_lines(path):
        if not text.strip():  # blank lines are not rows, so --skip-rows counts what you see
            continue
        row_number += 1
        if in_ranges(row_number, opts.skip_rows):
            report.skip("--skip-rows")
            continue
        if has_replacement_char(text):
            report.bad(path, line, "undecodable bytes")
            continue
        yield Dialogue(
            opts.source, f"{path.stem}:{line}", [Utterance(PERSONA_SPEAKER, text, line)], PERSONA_SPEAKER
        )
