"""Split a reply into Discord-sized messages at natural boundaries.

Discord refuses messages over 2,000 characters. Cutting mid-sentence reads badly and cutting inside
a code fence breaks the formatting of everything after it, so the cut goes, in order of preference,
at a blank line, a line end, the end of a sentence (。！？ and friends, with closing quotes), a comma
or a space, and only then anywhere. An open code fence is closed at the cut and reopened after it.
"""

from __future__ import annotations

import re

DISCORD_LIMIT = 2000
FENCE = "```"
_SENTENCE_END = re.compile(r"[。！？!?．…]+[」』）)\]\"'”’]*")
_SOFT = re.compile(r"[、，,]|\s")


def _best_cut(text: str, limit: int, floor: int = 0) -> int:
    """Index to cut ``text`` at, floor < index <= limit.

    ``floor`` is the length of a reopened fence line at the start: cutting there would make no
    progress and loop forever.
    """
    window = text[:limit]
    candidates: list[list[int]] = [
        [m.end() for m in re.finditer(r"\n\n", window)],
        [m.end() for m in re.finditer(r"\n", window)],
        [m.end() for m in _SENTENCE_END.finditer(window)],
        [m.end() for m in _SOFT.finditer(window)],
    ]
    # A boundary in the second half keeps chunks reasonably full; otherwise take any boundary.
    for positions in candidates:
        good = [p for p in positions if max(limit // 2, floor + 1) <= p <= limit]
        if good:
            return good[-1]
    for positions in candidates:
        good = [p for p in positions if floor < p <= limit]
        if good:
            return good[-1]
    return limit


def _open_fence(text: str) -> str | None:
    """The opening line of a code fence left open at the end of ``text``, or None."""
    opening = None
    for match in re.finditer(r"```([^\n`]*)", text):
        opening = None if opening is not None else match.group(1)[:20]
    return opening


def split_message(text: str, limit: int = DISCORD_LIMIT) -> list[str]:
    """Chunks of at most ``limit`` characters that join back to the text (bar whitespace at cuts)."""
    if limit < 64:
        raise ValueError("limit is too small to split sensibly")
    text = text.strip()
    chunks: list[str] = []
    # Room to close a fence at a cut: "\n```".
    reserve = len(FENCE) + 1 if FENCE in text else 0
    floor = 0
    while len(text) > limit:
        cut = _best_cut(text, limit - reserve, floor)
        head, rest = text[:cut].rstrip(), text[cut:].lstrip("\n")
        if not head:  # only whitespace before the cut: take the hard cut instead
            head, rest = text[: limit - reserve], text[limit - reserve :]
        lang = _open_fence(head)
        floor = 0
        if lang is not None:
            head += "\n" + FENCE
            rest = f"{FENCE}{lang}\n{rest}"
            floor = len(FENCE) + len(lang) + 1
        chunks.append(head)
        text = rest
    if text.strip():
        chunks.append(text)
    return chunks
