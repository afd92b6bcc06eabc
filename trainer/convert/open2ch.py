"""おーぷん2ちゃんねる対話コーパス: the corpus TSV and the response-ranking TSV.

Corpus rows are the posts of one dialogue, tab-separated; ranking rows add a leading
0/1 label and only label-1 rows end with the real reply (label 0 rows end with a random
post, so they are not dialogues). Posts alternate between two people, named A and B.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Iterator
from importlib import resources
from pathlib import Path

from trainer.convert.common import (
    ConvertOptions,
    Dialogue,
    Report,
    Utterance,
    compile_words,
    has_replacement_char,
    iter_lines,
    read_text,
)

NAME = "open2ch"
PATTERNS = ("*.tsv",)
OPTIONS = frozenset({"persona_speaker", "ranking", "ng_words"})
SPEAKERS = ("A", "B")
_BR_RE = re.compile(r"[ \t]*__BR__[ \t]*")
_LABELS = ("0", "1")


def fold(text: str) -> str:
    """NFKC + casefold, so ｼﾈ matches シネ and ＡＢＣ matches abc when checking NG words."""
    return unicodedata.normalize("NFKC", text).casefold()


def default_ng_words_path() -> Path:
    return Path(str(resources.files("trainer") / "data" / "ng_words.txt"))


def load_ng_words(path: Path | None = None) -> tuple[str, ...]:
    """One word a line; blank lines and ``#`` comments are ignored. The shipped list by default."""
    text = read_text(path or default_ng_words_path())
    words = (line.strip() for line in text.splitlines())
    return tuple(dict.fromkeys(fold(w) for w in words if w and not w.startswith("#")))


def _ng_pattern(words: Iterable[str]) -> re.Pattern[str] | None:
    return compile_words(fold(w) for w in words)


def convert(path: Path, opts: ConvertOptions, report: Report) -> Iterator[Dialogue]:
    ng = _ng_pattern(opts.ng_words)
    ranking = opts.ranking
    for number, line in iter_lines(path):
        if not line.strip():
            continue
        if has_replacement_char(line):
            report.bad(path, number, "undecodable bytes")
            continue
        columns = line.split("\t")
        if ranking is None:
            # A corpus post is at least 5 characters, so a bare 0/1 first column means ranking.
            ranking = columns[0].strip() in _LABELS
        if ranking:
            label = columns[0].strip()
            if label not in _LABELS:
                report.bad(path, number, f"ranking row without a 0/1 label (first column {label[:20]!r})")
                continue
            if label == "0":
                report.skip("ranking label 0")
                continue
            columns = columns[1:]
        posts = [_BR_RE.sub("\n", c).strip() for c in columns]
        if sum(1 for p in posts if p) < 2:
            report.skip("fewer than two posts")
            continue
        if ng is not None and any(ng.search(fold(p)) for p in posts):
            report.skip("ng word")
            continue
        turns = [Utterance(SPEAKERS[i % 2], post, number) for i, post in enumerate(posts)]
        yield Dialogue(opts.source, f"{path.stem}:{number}", turns, opts.persona_speaker)
