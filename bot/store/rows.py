"""The store's rows: what is logged, what a review card and an export read back.

Rows are read by column NAME (``sqlite3.Row``), never by position: a migration that adds a column,
or a SELECT that lists them in another order, cannot shift a value into the wrong field. Each
dataclass field is a column; the ``*_SOURCES`` aliases say which column or expression it comes from.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

R = TypeVar("R")

Decision = Literal["approved", "rejected", "edited"]
DECISIONS: tuple[str, ...] = ("approved", "rejected", "edited")
STATUSES: tuple[str, ...] = ("pending", "blocked")
ORIGINS: tuple[str, ...] = ("live", "generated")
MAX_EDITED_CHARS = 4000


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def normalize_iso(value: str) -> str:
    """Any ISO 8601 time (``Z``, offset, or naive meaning UTC) as the store's own UTC format.

    Stored times are compared as strings, which is only right when they share one format.
    """
    parsed = datetime.fromisoformat(value.strip())
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class LogEntry:
    """One generated reply as it is logged."""

    guild_id: int | None
    channel_id: int | None
    message_id: int | None
    user_id: int | None
    persona_id: str
    adapter_version: str | None
    prompt: str
    user_text: str
    reply: str
    params: dict[str, Any] = field(default_factory=dict)
    latency_ms: int | None = None
    status: str = "pending"  # pending | blocked (held back by the word filter, still reviewed)
    origin: str = "live"  # live | generated (the trainer's augment candidates)
    reply_message_id: int | None = None
    blocked_words: tuple[str, ...] = ()
    # Users whose words are in the prompt (the requester included): /forget and opt-out reach them.
    participants: tuple[int, ...] = ()
    # When the user's message was sent; a /forget after this time wins over a late log write.
    requested_at: str | None = None
    # Persona turns since the member's message (0: this answers the member; see chat.cast_followups).
    turn: int = 0
    # Who pressed Stop while it was written (the reply is what was shown by then), if anyone.
    stopped_by: int | None = None
    # The log id of the reply this one was regenerated from (Regenerate), if any.
    replaces: int | None = None


@dataclass(frozen=True)
class ReviewItem:
    log_id: int
    created_at: str
    guild_id: int | None
    channel_id: int | None
    message_id: int | None
    user_id: int | None
    persona_id: str
    adapter_version: str | None
    prompt: str
    user_text: str
    reply: str
    params: dict[str, Any]
    latency_ms: int | None
    status: str
    origin: str
    reply_message_id: int | None
    blocked_words: tuple[str, ...]
    decision: str | None
    edited_text: str | None
    decided_by: int | None
    decided_at: str | None
    review_channel_id: int | None
    review_message_id: int | None
    turn: int = 0
    stopped_by: int | None = None
    # Set when a member pressed Regenerate and this reply was replaced: a member's weak signal,
    # never a moderator's rejection (``decision`` stays whatever moderators decide).
    regenerated_by: int | None = None
    regenerated_at: str | None = None
    replaces: int | None = None

    @property
    def final_text(self) -> str:
        return self.edited_text or self.reply


@dataclass(frozen=True)
class DecisionOutcome:
    """The decision that stands for a row; ``already_decided`` means it was someone else's."""

    log_id: int
    decision: str
    moderator_id: int
    decided_at: str
    edited_text: str | None
    already_decided: bool


@dataclass(frozen=True)
class ExportRow:
    log_id: int
    persona_id: str
    question: str
    reply: str  # the final text: the moderator's edit, else the generated reply
    original_reply: str
    decision: str
    prompt: str
    origin: str
    adapter_version: str | None
    decided_at: str | None  # None for a word-filter block no moderator decided on
    params: dict[str, Any]
    status: str  # pending | blocked (the word filter held the reply back)


@dataclass(frozen=True)
class ForgetResult:
    deleted: int
    # Review cards that showed the deleted rows, so the bot can delete them from Discord too.
    review_cards: tuple[tuple[int, int], ...]


_REVIEW_ITEM_SOURCES: dict[str, str] = {"log_id": "id"}
_EXPORT_ROW_SOURCES: dict[str, str] = {
    "log_id": "l.id",
    "question": "l.user_text",
    "reply": "COALESCE(l.edited_text, l.reply)",
    "original_reply": "l.reply",
}


def _select_list(row_type: type, sources: dict[str, str], table_alias: str = "") -> str:
    """``expr AS field`` for every field of the dataclass ``row_type``, for a SELECT list."""
    prefix = f"{table_alias}." if table_alias else ""
    return ", ".join(f"{sources.get(f.name, prefix + f.name)} AS {f.name}" for f in fields(row_type))


LOG_COLUMNS = _select_list(ReviewItem, _REVIEW_ITEM_SOURCES)
EXPORT_COLUMNS = _select_list(ExportRow, _EXPORT_ROW_SOURCES, "l")


def from_row(row_type: type[R], row: sqlite3.Row, decoded: dict[str, Any]) -> R:
    """Build ``row_type`` from ``row`` by column name; ``decoded`` overrides fields parsed from JSON.

    Raises IndexError naming the column when the SELECT lacks one of the dataclass's fields.
    """
    return row_type(
        **{f.name: decoded[f.name] if f.name in decoded else row[f.name] for f in fields(row_type)}
    )


def review_item(row: sqlite3.Row) -> ReviewItem:
    """A ``logs`` row selected with :data:`LOG_COLUMNS` as a :class:`ReviewItem`."""
    return from_row(
        ReviewItem,
        row,
        {
            "params": json.loads(row["params"] or "{}"),
            "blocked_words": tuple(json.loads(row["blocked_words"] or "[]")),
        },
    )


def export_row(row: sqlite3.Row) -> ExportRow:
    """A ``logs`` row selected with :data:`EXPORT_COLUMNS` as an :class:`ExportRow`."""
    return from_row(ExportRow, row, {"params": json.loads(row["params"] or "{}")})
