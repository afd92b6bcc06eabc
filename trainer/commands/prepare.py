"""``prepare --format FORMAT SRC... -o OUT.jsonl``: raw sources -> one normalized JSONL.

Bad rows are reported with file:line and skipped; OUT is replaced atomically and only
when at least one dialogue was kept, so a failed run never clobbers a good file.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from dataclasses import fields
from pathlib import Path

from trainer.convert import COMMON_OPTIONS, FORMATS, collect_files, convert_files
from trainer.convert.common import ConvertOptions, JsonlWriter, Report, parse_row_ranges
from trainer.convert.open2ch import load_ng_words


def _row_ranges(text: str) -> tuple[tuple[int, int], ...]:
    try:
        return parse_row_ranges(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _regex(text: str) -> re.Pattern[str]:
    try:
        return re.compile(text)
    except re.error as exc:
        raise argparse.ArgumentTypeError(f"bad regular expression: {exc}") from None


def _positive(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", "-f", required=True, choices=sorted(FORMATS), help="source format")
    parser.add_argument("src", nargs="+", type=Path, metavar="SRC", help="a file, or a folder to scan")
    parser.add_argument("-o", "--output", required=True, type=Path, help="the JSONL to write")
    parser.add_argument(
        "--source", default="", help='the "source" written on each line (default: the format)'
    )
    parser.add_argument(
        "--persona-speaker",
        help="nucc/open2ch/script: the speaker the persona learns from (default: none, train's persona_speakers)",
    )
    parser.add_argument("--keep-x", action="store_true", help="nucc: keep X (non-participant) turns")
    parser.add_argument(
        "--ranking",
        action="store_true",
        default=None,
        help="open2ch: the files are ranking TSVs (default: detected from a 0/1 first column)",
    )
    ng = parser.add_mutually_exclusive_group()
    ng.add_argument("--ng-words", type=Path, metavar="FILE", help="open2ch: NG word list (default: shipped)")
    ng.add_argument("--no-ng-words", action="store_true", help="open2ch: do not filter NG words")
    parser.add_argument(
        "--skip-rows",
        type=_row_ranges,
        metavar="ROWS",
        help="pairs/alpaca/lines: rows to leave out, e.g. 79-88,100, 1-based (default: none)",
    )
    parser.add_argument(
        "--exclude-regex",
        type=_regex,
        metavar="RE",
        help="skip dialogues with a matching turn (default: none)",
    )
    parser.add_argument(
        "--max-turns",
        type=_positive,
        default=0,
        metavar="N",
        help="cut longer dialogues into windows of N turns (default: 0, never)",
    )


def _options(args: argparse.Namespace) -> ConvertOptions:
    ng_words: tuple[str, ...] = ()
    if args.format == "open2ch" and not args.no_ng_words:
        ng_words = load_ng_words(args.ng_words)
    return ConvertOptions(
        source=args.source,
        persona_speaker=args.persona_speaker,
        keep_x=args.keep_x,
        ranking=args.ranking,
        ng_words=ng_words,
        skip_rows=args.skip_rows or (),
        exclude=args.exclude_regex,
        max_turns=args.max_turns,
    )


def _warn_unused(fmt: str, opts: ConvertOptions) -> None:
    """Say so when an option means nothing for this format, instead of silently ignoring it."""
    used = FORMATS[fmt].OPTIONS | COMMON_OPTIONS
    defaults = ConvertOptions()
    for f in fields(ConvertOptions):
        if f.name not in used and getattr(opts, f.name) != getattr(defaults, f.name):
            flag = "--" + f.name.replace("_", "-")
            print(f"note: {flag} has no effect with --format {fmt}", file=sys.stderr)


def _speaker_hint(wanted: str, found: Counter[str]) -> str:
    """Which speakers the files do have, when --persona-speaker matched none of them."""
    import difflib

    close = difflib.get_close_matches(wanted, list(found), n=1, cutoff=0.5)
    listed = ", ".join(f"{name} ({count} turns)" for name, count in found.most_common(10))
    more = f" and {len(found) - 10} more" if len(found) > 10 else ""
    guess = f"; did you mean {close[0]}?" if close else ""
    return (
        f"prepare: no turn of --persona-speaker {wanted!r} was found; the speakers are {listed}{more}{guess}"
    )


def run(args: argparse.Namespace) -> int:
    try:
        opts = _options(args)
        files = collect_files(args.format, args.src, exclude=[args.output])
    except (OSError, ValueError) as exc:
        print(f"prepare: {exc}", file=sys.stderr)
        return 2
    if not files:
        patterns = " or ".join(FORMATS[args.format].PATTERNS)
        print(
            f"prepare: no {args.format} files ({patterns}) in {', '.join(map(str, args.src))}; "
            "name a file directly to read one with another name",
            file=sys.stderr,
        )
        return 2
    _warn_unused(args.format, opts)
    report = Report()
    speakers: Counter[str] = Counter()
    with JsonlWriter(args.output) as writer:
        for dialogue in convert_files(args.format, files, opts, report):
            writer.write(dialogue)
            if not dialogue.persona:
                speakers.update(turn.speaker for turn in dialogue.turns)
        if writer.count:
            writer.commit()
    print(f"{args.format}: {len(files)} file(s); {report.summary()}")
    if opts.persona_speaker and report.unmatched_speakers and not report.kept:
        print(_speaker_hint(opts.persona_speaker, report.unmatched_speakers), file=sys.stderr)
    if not report.kept:
        print(f"prepare: no dialogue kept; {args.output.absolute()} was not written", file=sys.stderr)
        return 1
    print(f"wrote {args.output.absolute()}")
    if speakers and "persona_speaker" in FORMATS[args.format].OPTIONS:
        # Without it `train` finds persona turns only under the speakers its config names.
        common = ", ".join(f"{name} ({count} turns)" for name, count in speakers.most_common(5))
        print(
            "note: no --persona-speaker, so no turn is marked as the persona's; `train` then "
            f"learns only from the speakers its persona_speakers lists. Most frequent: {common}"
        )
    return 0
