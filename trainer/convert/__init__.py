"""Source formats -> normalized dialogues (one JSON object a line).

Each format is a module with ``NAME``, ``PATTERNS`` (what to pick up from a folder),
``OPTIONS`` (which :class:`ConvertOptions` fields it reads) and
``convert(path, opts, report)`` yielding raw dialogues. :func:`convert_files` applies the
rules shared by all formats, so a converter only has to understand its own syntax.
Nothing here imports torch, transformers or discord: preparing data stays cheap.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from types import ModuleType

from trainer.convert import alpaca, lines, nucc, open2ch, pairs, script
from trainer.convert.common import (
    ConvertOptions,
    Dialogue,
    Report,
    find_files,
    normalize,
    split_turns,
)

FORMATS: dict[str, ModuleType] = {m.NAME: m for m in (nucc, open2ch, script, pairs, alpaca, lines)}
# Options every format honours, applied here after conversion.
COMMON_OPTIONS = frozenset({"source", "exclude", "max_turns"})


def collect_files(fmt: str, sources: Iterable[Path], exclude: Iterable[Path] = ()) -> list[Path]:
    """The files to convert, in a stable order. Two files with one stem would give the
    same ids, so that is refused before anything is written."""
    skip = {p.resolve() for p in exclude}
    # Keyed by the resolved path: one file named twice (a folder and a file in it) is read once.
    files: dict[Path, Path] = {}
    for src in sources:
        for path in find_files(src, FORMATS[fmt].PATTERNS):
            if path.resolve() not in skip:
                files.setdefault(path.resolve(), path)
    seen: dict[str, Path] = {}
    for path in files.values():
        if path.stem in seen:
            raise ValueError(
                f"{seen[path.stem]} and {path} share the stem {path.stem!r}, so their ids would collide"
            )
        seen[path.stem] = path
    return list(files.values())


def convert_files(
    fmt: str, files: Iterable[Path], opts: ConvertOptions, report: Report
) -> Iterator[Dialogue]:
    """Convert, normalize, filter and window every file; counts go to ``report``."""
    module = FORMATS[fmt]
    opts = replace(opts, source=opts.source or fmt)
    for path in files:
        try:
            for raw in module.convert(path, opts, report):
                dialogue, reason = normalize(raw)
                if dialogue is None:
                    report.skip(reason)
                    if reason == "no persona text":
                        report.unmatched_speakers.update(turn.speaker for turn in raw.turns)
                    continue
                if opts.exclude is not None and any(opts.exclude.search(t.text) for t in dialogue.turns):
                    report.skip("--exclude-regex")
                    continue
                for piece in split_turns(dialogue, opts.max_turns):
                    report.kept += 1
                    yield piece
        except OSError as exc:  # one unreadable file must not end the whole run
            report.bad(path, 0, f"cannot read: {exc.strerror or exc}")


__all__ = [
    "COMMON_OPTIONS",
    "FORMATS",
    "ConvertOptions",
    "Dialogue",
    "Report",
    "collect_files",
    "convert_files",
]
