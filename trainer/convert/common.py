"""What every converter shares: the normalized dialogue, reading text in whatever encoding
the source came in, writing JSONL atomically, and counting what was kept or skipped.

Converters only turn source rows into :class:`Dialogue` objects; :func:`normalize` then
applies the rules common to all formats (strip, drop empty turns, merge a speaker's
consecutive turns, require persona-usable text) so no format can forget one of them.
"""

from __future__ import annotations

import codecs
import json
import os
import re
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from bot.ops.filemode import respect_umask

USER_SPEAKER = "ユーザー"
PERSONA_SPEAKER = "persona"
# Enough bytes to see past an ASCII-only header before the first multibyte character.
ENCODING_SAMPLE_BYTES = 1 << 20
# Joining two pieces of speech needs no space after sentence-final or closing punctuation.
_NO_SPACE_AFTER = tuple("。、．，！？!?…‥」』）)】〕〉》ー～〜")


@dataclass(frozen=True)
class ConvertOptions:
    """What the user asked for; each converter reads only the fields that mean something to it."""

    source: str = ""  # the JSONL "source"; empty: the format's name
    persona_speaker: str | None = None  # nucc, open2ch, script: which speaker is the persona
    keep_x: bool = False  # nucc: keep X (TV, announcements, waiters)
    ranking: bool | None = None  # open2ch: None = detect from the first column
    ng_words: tuple[str, ...] = ()  # open2ch: a dialogue containing one is skipped
    skip_rows: tuple[tuple[int, int], ...] = ()  # pairs, alpaca, lines: 1-based data rows
    exclude: re.Pattern[str] | None = None  # any format: a dialogue with a matching turn is skipped
    max_turns: int = 0  # any format: cut longer dialogues into windows (0: never)


def parse_row_ranges(spec: str) -> tuple[tuple[int, int], ...]:
    """``"79-88,100"`` -> ((79, 88), (100, 100)); rows are 1-based data rows."""
    ranges = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        lo_text, sep, hi_text = part.partition("-")
        try:
            lo = int(lo_text)
            hi = int(hi_text) if sep else lo
        except ValueError:
            raise ValueError(f"not a row or range of rows: {part!r} (use e.g. 79-88,100)") from None
        if lo < 1 or hi < lo:
            raise ValueError(f"bad row range {part!r}: rows start at 1 and a range must not run backwards")
        ranges.append((lo, hi))
    if not ranges:
        raise ValueError("no rows given")
    return tuple(ranges)


def in_ranges(row: int, ranges: Iterable[tuple[int, int]]) -> bool:
    return any(lo <= row <= hi for lo, hi in ranges)


@dataclass(frozen=True)
class Utterance:
    """One turn. ``line`` is where it started in the source (for chunk ids); it is not written."""

    speaker: str
    text: str
    line: int = field(default=0, compare=False)


@dataclass
class Dialogue:
    """One normalized dialogue, the unit of a JSONL line."""

    source: str
    id: str
    turns: list[Utterance]
    persona: str | None = None

    def to_json(self) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "source": self.source,
            "id": self.id,
            "turns": [{"speaker": t.speaker, "text": t.text} for t in self.turns],
        }
        if self.persona is not None:
            obj["persona"] = self.persona
        return obj


@dataclass
class Report:
    """Counts of kept and skipped dialogues, and the bad rows with their file:line."""

    kept: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    bad_rows: list[str] = field(default_factory=list)
    # Turns per speaker in the dialogues skipped for "no persona text", to suggest a --persona-speaker.
    unmatched_speakers: Counter[str] = field(default_factory=Counter)
    max_printed: int = 50
    stream: IO[str] | None = None

    def skip(self, reason: str) -> None:
        self.skipped[reason] += 1

    def bad(self, path: Path | str, line: int | str, message: str) -> None:
        """Record a row that cannot be converted; the run goes on without it."""
        self.skip("bad row")
        where = f"{path}:{line}: {message}"
        self.bad_rows.append(where)
        # A broken file can have thousands of bad rows; the first ones tell the user enough.
        if len(self.bad_rows) <= self.max_printed:
            print(f"bad row: {where}", file=self.stream or sys.stderr)

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        text = f"kept {self.kept} dialogues, skipped {self.total_skipped}"
        if self.skipped:
            text += " (" + ", ".join(f"{k}: {v}" for k, v in sorted(self.skipped.items())) + ")"
        hidden = len(self.bad_rows) - self.max_printed
        if hidden > 0:
            text += f"; {hidden} more bad rows not listed"
        return text


# -- reading ------------------------------------------------------------------


def detect_encoding(path: Path) -> str:
    """UTF-8 (with or without BOM), else CP932 (how NUCC and older Japanese files come),
    else charset-normalizer's guess. Only a sample is read, so huge TSVs stay cheap."""
    with open(path, "rb") as fh:
        sample = fh.read(ENCODING_SAMPLE_BYTES)
    for encoding in ("utf-8-sig", "cp932"):
        # An incremental decoder tolerates a character cut in half at the end of the sample.
        try:
            codecs.getincrementaldecoder(encoding)().decode(sample, final=False)
            return encoding
        except UnicodeDecodeError:
            continue
    from charset_normalizer import from_bytes  # only for the rare file that is neither

    best = from_bytes(sample).best()
    return best.encoding if best is not None else "utf-8"


def open_text(path: Path, newline: str | None = None) -> IO[str]:
    """Open with the detected encoding. Undecodable bytes become U+FFFD instead of
    aborting the run; converters report rows that contain it as bad rows."""
    return open(path, encoding=detect_encoding(path), errors="replace", newline=newline)


def read_text(path: Path) -> str:
    with open_text(path) as fh:
        return fh.read()


def iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without its newline); CRLF and CR become LF on the way."""
    with open_text(path) as fh:
        for number, line in enumerate(fh, 1):
            yield number, line.rstrip("\n")


@dataclass(frozen=True)
class BadRow:
    """A data row that could not be parsed; yielded in place of the row so that row
    numbers (``--skip-rows``) stay the numbers the user sees in the file."""

    message: str


def iter_records(path: Path) -> Iterator[tuple[int, int, Any]]:
    """(data row, line, object or BadRow) of a JSONL file or a JSON list.

    A file whose first non-blank character is ``[`` is a JSON list, whatever its suffix;
    its items are numbered from 1 in place of lines. Blank JSONL lines are not rows.
    """
    text = read_text(path)
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            yield 1, exc.lineno, BadRow(f"not valid JSON: {exc.msg}")
            return
        for index, item in enumerate(items, 1):
            yield index, index, item
        return
    row = 0
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        row += 1
        try:
            yield row, number, json.loads(line)
        except json.JSONDecodeError as exc:
            yield row, number, BadRow(f"not valid JSON: {exc.msg}")


def find_files(src: Path, patterns: Iterable[str]) -> list[Path]:
    """SRC itself when it is a file; else every file under it matching a pattern, sorted
    by relative path so the output order (and so the ids' order) never depends on the disk."""
    if src.is_file():
        return [src]
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: no such file or folder")
    found = {
        p
        for pattern in patterns
        for p in src.rglob(pattern)
        if p.is_file() and not _is_hidden(p.relative_to(src))
    }
    return sorted(found, key=lambda p: p.relative_to(src).as_posix())


def _is_hidden(relative: Path) -> bool:
    """Dot files (editor backups, macOS ``._x.tsv`` forks) and zips' ``__MACOSX`` folders are
    not data, though they match the patterns."""
    return any(part.startswith(".") or part == "__MACOSX" for part in relative.parts)


# -- normalizing ---------------------------------------------------------------


def clean(text: str) -> str:
    """Line endings to LF and surrounding whitespace gone; inner text is left alone."""
    return text.replace("\r\n", "\n").replace("\r", "\n").strip()


def join_speech(first: str, second: str) -> str:
    """Join two pieces of one speaker's speech. Japanese needs no space after 。 or ？;
    elsewhere a space keeps two words from running into one."""
    if not first or not second:
        return first or second
    if first.endswith(_NO_SPACE_AFTER) or first[-1].isspace():
        return first + second
    return f"{first} {second}"


def merge_turns(turns: Iterable[Utterance]) -> list[Utterance]:
    """Drop empty turns, then merge consecutive turns of one speaker into the first.

    Dropping comes first on purpose: A, (empty B), A is one turn of A, not two.
    """
    merged: list[Utterance] = []
    for turn in turns:
        text = clean(turn.text)
        if not text:
            continue
        if merged and merged[-1].speaker == turn.speaker:
            last = merged[-1]
            merged[-1] = Utterance(last.speaker, join_speech(last.text, text), last.line)
        else:
            merged.append(Utterance(turn.speaker, text, turn.line))
    return merged


def normalize(dialogue: Dialogue) -> tuple[Dialogue | None, str]:
    """Apply the rules every format shares. Returns the dialogue, or None and why it was skipped."""
    turns = merge_turns(dialogue.turns)
    if not turns:
        return None, "empty"
    if dialogue.persona is not None and not any(t.speaker == dialogue.persona for t in turns):
        return None, "no persona text"
    return Dialogue(dialogue.source, dialogue.id, turns, dialogue.persona), ""


def split_turns(dialogue: Dialogue, max_turns: int) -> list[Dialogue]:
    """Cut a long conversation (a NUCC file is hundreds of turns) into windows of at most
    ``max_turns``; each window's id is the line of its first turn, so ids stay stable."""
    if max_turns <= 0 or len(dialogue.turns) <= max_turns:
        return [dialogue]
    stem = dialogue.id.rsplit(":", 1)[0]
    pieces = []
    for start in range(0, len(dialogue.turns), max_turns):
        turns = dialogue.turns[start : start + max_turns]
        pieces.append(Dialogue(dialogue.source, f"{stem}:{turns[0].line}", turns, dialogue.persona))
    return pieces


# -- writing -------------------------------------------------------------------


class JsonlWriter:
    """Writes dialogues to a temp file beside OUT and renames it over OUT only on
    :meth:`commit`, so a crash or an empty run never leaves a half-written or clobbered OUT."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.count = 0
        self._tmp: Path | None = None
        self._fh: IO[str] | None = None

    def __enter__(self) -> JsonlWriter:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.out.name}.", suffix=".tmp", dir=self.out.parent)
        self._tmp = Path(tmp)
        self._fh = os.fdopen(fd, "w", encoding="utf-8", newline="\n")
        return self

    def write(self, dialogue: Dialogue) -> None:
        assert self._fh is not None, "use JsonlWriter as a context manager"
        self._fh.write(json.dumps(dialogue.to_json(), ensure_ascii=False) + "\n")
        self.count += 1

    def commit(self) -> None:
        assert self._fh is not None and self._tmp is not None
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        respect_umask(self._tmp)
        os.replace(self._tmp, self.out)
        self._tmp = None

    def __exit__(self, *exc: object) -> None:
        if self._fh is not None and not self._fh.closed:
            self._fh.close()
        if self._tmp is not None:  # not committed: leave OUT as it was
            self._tmp.unlink(missing_ok=True)


def has_replacement_char(text: str) -> bool:
    """True when decoding met bytes it could not read (see :func:`open_text`)."""
    return "\ufffd" in text


def compile_words(words: Iterable[str]) -> re.Pattern[str] | None:
    """One alternation for a word list, longest first; None for an empty list."""
    unique = sorted({w for w in words if w}, key=len, reverse=True)
    return re.compile("|".join(re.escape(w) for w in unique)) if unique else None


def instruction_text(instruction: str, context: str = "") -> str:
    """The user turn of an instruction row: its input (if any) first, then the instruction,
    the order the seed's alpaca template read them in."""
    instruction, context = clean(instruction), clean(context)
    return f"{context}\n{instruction}" if context and instruction else context or instruction


def field_text(record: dict[str, Any], *keys: str) -> str | None:
    """The first of ``keys`` present in ``record`` as text; None when none is there.

    Numbers are accepted (a CSV or JSON exporter may write 42 for "42"); a list or an
    object is not text and raises ValueError so the row is reported.
    """
    for key in keys:
        if key in record:
            value = record[key]
            if value is None:
                return ""
            if isinstance(value, bool) or not isinstance(value, str | int | float):
                raise ValueError(f'"{key}" is not text')
            return str(value)
    return None
