"""NUCC (名大会話コーパス) transcripts: one ``dataNNN.txt`` is one conversation.

The transcript mixes speech with annotations, and the seed article's greedy
``＜.*＞|（.*）`` deleted everything between the first ``（`` and the last ``）`` of a line,
real words included. Every mark here is matched with a bracket class (``＜[^＜＞]*＞``),
so only the mark itself goes.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from pathlib import Path

from trainer.convert.common import (
    ConvertOptions,
    Dialogue,
    Report,
    Utterance,
    has_replacement_char,
    iter_lines,
    join_speech,
)

NAME = "nucc"
PATTERNS = ("data*.txt",)
OPTIONS = frozenset({"persona_speaker", "keep_x"})
NON_PARTICIPANT = "X"  # TV, announcements, a waiter: not one of the recorded speakers

# Participant IDs are F033, M023, …; the transcripts use a full-width colon, but a
# half-width one or a full-width ID costs nothing to accept.
_TURN_RE = re.compile(r"^([A-ZＡ-Ｚ][0-9０-９]{1,4}[A-ZＡ-Ｚ]?|[XＸ])\s*[：:](.*)$")
_NON_VERBAL_RE = re.compile(r"＜[^＜＞]*＞")  # ＜笑い＞, ＜間＞
_BACK_CHANNEL_RE = re.compile(r"（[^（）]*）")  # the other speaker's （うん）, and （笑）
_OVERLAP_RE = re.compile(r"【【|】】")  # overlapping speech: the words stay
_SPACES_RE = re.compile(r"[ \t\u3000]+")


def clean_speech(text: str) -> str:
    """Remove non-verbal marks and back-channels, keep overlapped words and ＊＊＊.

    Removal repeats until nothing changes so a nested ``（（うん））`` goes as a whole.
    """
    previous = None
    while previous != text:
        previous = text
        text = _NON_VERBAL_RE.sub("", text)
        text = _BACK_CHANNEL_RE.sub("", text)
    text = _OVERLAP_RE.sub("", text)
    return _SPACES_RE.sub(" ", text).strip()


def _is_end(line: str) -> bool:
    return unicodedata.normalize("NFKC", line).strip().upper() == "@END"


def convert(path: Path, opts: ConvertOptions, report: Report) -> Iterator[Dialogue]:
    turns: list[Utterance] = []
    for number, raw in iter_lines(path):
        line = raw.strip()
        if not line:
            continue
        if has_replacement_char(line):
            report.bad(path, number, "undecodable bytes (is the file's encoding mixed?)")
            continue
        if line.startswith(("＠", "@")):  # header lines, and ＠ＥＮＤ which ends the transcript
            if _is_end(line):
                break
            continue
        if line.startswith(("％", "%")):  # ％ｃｏｍ： transcriber comments
            continue
        match = _TURN_RE.match(line)
        if match:
            speaker = unicodedata.normalize("NFKC", match.group(1))
            turns.append(Utterance(speaker, clean_speech(match.group(2)), number))
        elif turns:
            # No ID: the line goes on with the previous speaker's turn.
            last = turns[-1]
            turns[-1] = Utterance(last.speaker, join_speech(last.text, clean_speech(line)), last.line)
        elif clean_speech(line):  # a lone ＜間＞ before the first turn is no loss
            report.bad(path, number, "speech before the first 'ID：' turn")
    if not opts.keep_x:
        # Dropped before merging, so F901, X, F901 becomes one F901 turn.
        turns = [t for t in turns if t.speaker != NON_PARTICIPANT]
    first_line = turns[0].line if turns else 1
    yield Dialogue(opts.source, f"{path.stem}:{first_line}", turns, opts.persona_speaker)
