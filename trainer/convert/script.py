"""Hand-written scripts: ``話者: 台詞`` lines, a blank line between scenes.

Each scene becomes one dialogue. A line without a speaker continues the turn above it,
so a long line can be wrapped.
"""

from __future__ import annotations

import re
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

NAME = "script"
PATTERNS = ("*.txt",)
OPTIONS = frozenset({"persona_speaker"})
# A speaker name is short and has no sentence punctuation, so "時刻は12:30" inside a
# wrapped line is not mistaken for a speaker called "時刻は12".
_NAME_CHARS = r"[^:：「」『』。、！？!?\s]"
_LINE_RE = re.compile(rf"^({_NAME_CHARS}(?:[^:：「」『』。、！？!?]{{0,28}}{_NAME_CHARS})?)\s*[:：](.*)$")


def convert(path: Path, opts: ConvertOptions, report: Report) -> Iterator[Dialogue]:
    scene: list[Utterance] = []
    scene_line = 0

    def finish() -> Iterator[Dialogue]:
        if scene:
            yield Dialogue(opts.source, f"{path.stem}:{scene_line}", list(scene), opts.persona_speaker)

    for number, raw in iter_lines(path):
        line = raw.strip()
        if not line:  # a blank line ends the scene
            yield from finish()
            scene.clear()
            continue
        if has_replacement_char(line):
            report.bad(path, number, "undecodable bytes")
            continue
        if not scene:
            scene_line = number
        match = _LINE_RE.match(line)
        if match:
            scene.append(Utterance(match.group(1).strip(), match.group(2).strip(), number))
        elif scene:
            last = scene[-1]
            scene[-1] = Utterance(last.speaker, join_speech(last.text, line), last.line)
        else:
            report.bad(path, number, "a scene must start with '話者: 台詞'")
    yield from finish()
