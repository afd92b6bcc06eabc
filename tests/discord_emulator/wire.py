"""JSON as Discord writes it on the wire: UTF-8, and a lone surrogate (half of an emoji, which a
client can send) as its ``\\udXXX`` escape rather than an encoding error."""

from __future__ import annotations

import json
from typing import Any


def dumps(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` with ``ensure_ascii=False`` when the text is valid UTF-8, else escaped."""
    text = json.dumps(obj, ensure_ascii=False, **kwargs)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(obj, ensure_ascii=True, **kwargs)
    return text
