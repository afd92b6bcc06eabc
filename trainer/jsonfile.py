"""Reading a JSON file the trainer wrote (checkpoint state, metadata) with errors that name it.

``json.loads`` alone says "Expecting property name… line 1 column 2" and not which file, so a
truncated checkpoint or a hand-edited metadata file left the operator guessing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class JsonFileError(ValueError):
    """A JSON file that cannot be used; the message starts with its path."""


def read_json(path: str | Path, *, expect: type = dict) -> Any:
    """The parsed content of ``path`` (UTF-8 JSON), which must be an ``expect`` (default: an object).

    Raises FileNotFoundError when it is missing, JsonFileError (a ValueError) naming the file
    and the line and column when it is not valid JSON or not of the expected shape.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise JsonFileError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise JsonFileError(f"{path}:{exc.lineno}: not valid JSON (column {exc.colno}: {exc.msg})") from None
    if not isinstance(value, expect):
        raise JsonFileError(f"{path}: expected a JSON {expect.__name__}, found {type(value).__name__}")
    return value
