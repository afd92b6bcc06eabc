"""The store's schema, as an ordered list of migrations.

A database records the last migration applied in ``schema_version``; opening it applies the
missing ones in order, each in the same transaction as its version bump, so a crash mid-way
leaves the previous version intact. Migrations are append-only: a released one is never edited,
because databases in the field already ran it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "channel state, reply log with review decisions, user preferences",
        (
            """
            CREATE TABLE channel_state (
                channel_id INTEGER PRIMARY KEY,
                persona_id TEXT,
                reset_after INTEGER,
                updated_at TEXT NOT NULL
            )
            """,
            """
            CREATE TABLE logs (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                created_at TEXT NOT NULL,
                requested_at TEXT,
                guild_id INTEGER,
                channel_id INTEGER,
                message_id INTEGER,
                user_id INTEGER,
                persona_id TEXT NOT NULL,
                adapter_version TEXT,
                prompt TEXT NOT NULL,
                user_text TEXT NOT NULL,
                reply TEXT NOT NULL,
                params TEXT NOT NULL,
                latency_ms INTEGER,
                status TEXT NOT NULL CHECK (status IN ('pending', 'blocked')),
                origin TEXT NOT NULL CHECK (origin IN ('live', 'generated')),
                reply_message_id INTEGER,
                decision TEXT CHECK (decision IN ('approved', 'rejected', 'edited')),
                edited_text TEXT,
                decided_by INTEGER,
                decided_at TEXT
            )
            """,
            "CREATE INDEX logs_user ON logs (user_id)",
            "CREATE INDEX logs_decision ON logs (decision, persona_id)",
            """
            CREATE TABLE user_prefs (
                user_id INTEGER PRIMARY KEY,
                opted_out INTEGER NOT NULL DEFAULT 0,
                updated_at TEXT NOT NULL
            )
            """,
        ),
    ),
    Migration(
        2,
        "review cards posted once, blocked words, conversation participants, forget tombstones",
        (
            "ALTER TABLE logs ADD COLUMN blocked_words TEXT NOT NULL DEFAULT '[]'",
            "ALTER TABLE logs ADD COLUMN review_channel_id INTEGER",
            "ALTER TABLE logs ADD COLUMN review_message_id INTEGER",
            # A claim (unix time) stops two posters from posting one item; a stale claim is retried.
            "ALTER TABLE logs ADD COLUMN review_claimed_at REAL",
            "CREATE INDEX logs_unposted ON logs (id) WHERE review_message_id IS NULL",
            "CREATE INDEX logs_reply_message ON logs (reply_message_id)",
            # Everyone whose words are in a row's prompt, so /forget and opt-out reach those rows too.
            """
            CREATE TABLE log_participants (
                log_id INTEGER NOT NULL REFERENCES logs (id) ON DELETE CASCADE,
                user_id INTEGER NOT NULL,
                PRIMARY KEY (log_id, user_id)
            )
            """,
            "CREATE INDEX log_participants_user ON log_participants (user_id)",
            """
            CREATE TABLE forgotten_users (
                user_id INTEGER PRIMARY KEY,
                forgotten_at TEXT NOT NULL
            )
            """,
            # Rows logged before this migration: their requester is their only known participant.
            """
            INSERT OR IGNORE INTO log_participants (log_id, user_id)
            SELECT id, user_id FROM logs WHERE user_id IS NOT NULL
            """,
        ),
    ),
    Migration(
        3,
        "find a row by the message it answered (a user deleting their message withdraws it)",
        ("CREATE INDEX logs_message ON logs (message_id)",),
    ),
    Migration(
        4,
        "members behind proxied messages (PluralKit, Tupperbox): whose words a proxy's webhook repost is",
        (
            """
            CREATE TABLE proxied_messages (
                message_id INTEGER PRIMARY KEY,
                original_id INTEGER NOT NULL,
                user_id INTEGER NOT NULL,
                channel_id INTEGER,
                created_at TEXT NOT NULL
            )
            """,
            "CREATE INDEX proxied_messages_user ON proxied_messages (user_id)",
        ),
    ),
)

LATEST_VERSION = MIGRATIONS[-1].version
