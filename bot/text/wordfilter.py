"""The output word filter: a reply containing a blocked word is held back and sent to review.

Matching is on a normalized form, because a model (or a user steering it) writes the same word many
ways: full-width or half-width (NFKC), upper or lower case, katakana or hiragana, with spaces or
dots between the letters. Japanese entries match anywhere; ASCII entries match as whole words,
so "ass" does not block "class". Lines starting with ``!`` are allowed phrases, removed before
matching, for the everyday words that contain a blocked one (ばかり contains ばか).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

SHIPPED_LIST = Path(__file__).with_name("blocked_words.txt")
# Characters people put between letters to slip past a filter; dropped before matching.
_SEPARATORS = re.compile(r"[\s\u200b-\u200f\u2060\ufeff・･.\-_*~|/\\]+")
_KATAKANA = {code: code - 0x60 for code in range(ord("ァ"), ord("ヶ") + 1)}


def normalize(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold()
    return text.translate(_KATAKANA)


def _compact(text: str) -> str:
    return _SEPARATORS.sub("", normalize(text))


@dataclass(frozen=True)
class _Entry:
    original: str
    pattern: re.Pattern[str] | None  # ASCII entries: a whole-word regex on the spaced text
    compact: str  # other entries: a substring of the compact text


class WordFilter:
    def __init__(self, words: Iterable[str], allowed: Iterable[str] = ()) -> None:
        entries: dict[str, _Entry] = {}
        for word in words:
            word = word.strip()
            if not word:
                continue
            norm = normalize(word)
            if norm.isascii():
                parts = [re.escape(p) for p in _SEPARATORS.split(norm) if p]
                if not parts:
                    continue
                sep = r"[\s.\-_*~|/\\]*"
                pattern = re.compile(rf"(?<![a-z0-9]){sep.join(parts)}(?![a-z0-9])")
                entries[norm] = _Entry(word, pattern, "")
            else:
                compact = _compact(word)
                if compact:
                    entries[compact] = _Entry(word, None, compact)
        self._entries = list(entries.values())
        # Every entry in its compact form (ASCII ones with separators dropped), for partial_tail.
        self._starts = [e.compact or _compact(e.original) for e in self._entries]
        # Longest first, so an allowed phrase is removed whole before a shorter one inside it.
        self._allowed = sorted({_compact(a) for a in allowed if _compact(a)}, key=len, reverse=True)

    @classmethod
    def from_lines(cls, lines: Iterable[str]) -> WordFilter:
        words, allowed = [], []
        for line in lines:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("!"):
                allowed.append(line[1:])
            else:
                words.append(line)
        return cls(words, allowed)

    @classmethod
    def from_file(cls, path: str | Path | None = None) -> WordFilter:
        """Load a word list; an empty path means the list shipped with the bot."""
        path = Path(path) if path else SHIPPED_LIST
        return cls.from_lines(path.read_text(encoding="utf-8").splitlines())

    def __len__(self) -> int:
        return len(self._entries)

    def partial_tail(self, text: str) -> int:
        """How many characters at the end of ``text`` could be the start of a blocked entry.

        A reply shown while it is written holds these back, so not even the first half of a
        blocked word appears before the rest of it arrives. Compared in the matching form
        (normalized, separators dropped); 0 when the end starts nothing on the list.
        """
        starts = self._starts
        if not starts or not text:
            return 0
        # Separators between letters are dropped before comparing, so a tail may be longer
        # than the word; a generous window is still only a few dozen characters.
        window = min(len(text), 3 * max(len(s) for s in starts) + 8)
        for size in range(window, 0, -1):
            tail = _compact(text[-size:])
            if tail and any(len(s) > len(tail) and s.startswith(tail) for s in starts):
                return size
        return 0

    def check(self, text: str) -> list[str]:
        """The blocked entries found in ``text`` (as written in the list); empty means clean."""
        spaced = normalize(text)
        compact = _SEPARATORS.sub("", spaced)
        for phrase in self._allowed:
            compact = compact.replace(phrase, "\x00")
        found = []
        for entry in self._entries:
            if entry.pattern is not None:
                if entry.pattern.search(spaced):
                    found.append(entry.original)
            elif entry.compact in compact:
                found.append(entry.original)
        return found
