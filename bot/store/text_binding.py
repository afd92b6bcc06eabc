"""Text as SQLite can hold it: every string bound to a statement is valid UTF-8.

SQLite stores TEXT as UTF-8, and Python's sqlite3 encodes each bound ``str`` strictly, so a
string holding a lone surrogate (``"こんにちは\\ud83d"``: half of an emoji, which Discord's JSON
can carry and ``json.loads`` keeps) raises ``UnicodeEncodeError`` at bind time. That error is no
database failure: retrying never helps, and a log write that raised it used to be lost while the
reply stayed up. So the store binds every parameter through :func:`storable`, in one place
(:class:`TextSafeConnection`), whatever the column: raw user text, prompts, replies, moderator
edits, JSON documents, lookups.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import aiosqlite

REPLACEMENT = "\ufffd"  # U+FFFD REPLACEMENT CHARACTER: visible, and says something was there


def storable(value: Any) -> Any:
    """``value`` unchanged unless it is a string SQLite cannot hold as UTF-8.

    A surrogate pair split into two code points (``"\\ud83d\\ude00"``) is joined into its
    character (😀: nothing is lost); a lone surrogate becomes U+FFFD, so the rest of the text is
    kept as written and the row shows where the broken character was. Everything else, including
    every valid string, is returned as is (the check is one strict encode).
    """
    if not isinstance(value, str):
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return value


def storable_params(params: Any) -> Any:
    """A statement's parameters (a sequence, or a mapping for named ones) through :func:`storable`."""
    if params is None:
        return None
    if isinstance(params, Mapping):
        return {key: storable(value) for key, value in params.items()}
    return tuple(storable(value) for value in params)


class TextSafeConnection:
    """An ``aiosqlite.Connection`` whose ``execute``/``executemany`` bind only storable text.

    Everything else (``in_transaction``, ``close``, ``row_factory`` …) is the wrapped connection's.
    """

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    def execute(self, sql: str, parameters: Any = None) -> Any:
        """Like :meth:`aiosqlite.Connection.execute` (awaitable and an async context manager)."""
        return self._conn.execute(sql, storable_params(parameters))

    def executemany(self, sql: str, parameters: Iterable[Any]) -> Any:
        return self._conn.executemany(sql, [storable_params(p) for p in parameters])

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "_conn":
            object.__setattr__(self, name, value)
        else:
            setattr(self._conn, name, value)
