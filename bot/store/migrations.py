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
        "settings per Discord server, their change log, notices to servers not on the allow-list",
        (
            # NULL in a column: the server uses the operator's default (oshaberi.toml). Lists are
            # JSON arrays of ids; '[]' (everyone, every channel) differs from NULL (the default).
            """
            CREATE TABLE server_settings (
                guild_id INTEGER PRIMARY KEY,
                review_channel INTEGER,
                moderator_role INTEGER,
                default_persona TEXT,
                allowed_roles TEXT,
                allowed_channels TEXT,
                training INTEGER CHECK (training IN (0, 1)),
                updated_at TEXT NOT NULL
            )
            """,
            # Every change, who made it and what it replaced; changed_by NULL: this migration.
            """
            CREATE TABLE server_setting_changes (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                guild_id INTEGER NOT NULL,
                setting TEXT NOT NULL,
                old_value TEXT,
                new_value TEXT,
                changed_by INTEGER,
                changed_at TEXT NOT NULL
            )
            """,
            "CREATE INDEX server_setting_changes_guild ON server_setting_changes (guild_id, id)",
            # The one notice a server not on discord.allowed_servers gets, across restarts.
            """
            CREATE TABLE server_notices (
                guild_id INTEGER PRIMARY KEY,
                noticed_at TEXT NOT NULL
            )
            """,
            "CREATE INDEX logs_guild ON logs (guild_id, decision)",
            # A database from before: its servers' approved replies trained until now, and keep
            # doing so with no operator action (new servers start with training off).
            """
            INSERT INTO server_settings (guild_id, training, updated_at)
            SELECT DISTINCT guild_id, 1, strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')
            FROM logs WHERE guild_id IS NOT NULL
            """,
            """
            INSERT INTO server_setting_changes (guild_id, setting, old_value, new_value, changed_by, changed_at)
            SELECT guild_id, 'training', NULL, 'on', NULL, updated_at FROM server_settings
            """,
        ),
    ),
    Migration(
        5,
        "a cast of personas per channel (threads may set their own), reply buttons pressed once, "
        "stopped and regenerated replies",
        (
            # The cast in order; the first is the lead. channel_state.persona_id keeps the lead, so
            # code that asks for "the channel's persona" still gets one answer.
            """
            CREATE TABLE channel_cast (
                channel_id INTEGER NOT NULL,
                persona_id TEXT NOT NULL,
                position INTEGER NOT NULL,
                added_at TEXT NOT NULL,
                PRIMARY KEY (channel_id, persona_id)
            )
            """,
            # 1 once /persona or /cast was used here (``off`` included): a thread then no longer
            # takes its parent channel's cast.
            "ALTER TABLE channel_state ADD COLUMN cast_set INTEGER NOT NULL DEFAULT 0",
            """
            INSERT INTO channel_cast (channel_id, persona_id, position, added_at)
            SELECT channel_id, persona_id, 0, updated_at FROM channel_state WHERE persona_id IS NOT NULL
            """,
            "UPDATE channel_state SET cast_set = 1 WHERE persona_id IS NOT NULL",
            # Persona turns between the member's message and this reply: 0 answers the member,
            # 1.. answers another persona (chat.cast_followups).
            "ALTER TABLE logs ADD COLUMN turn INTEGER NOT NULL DEFAULT 0",
            # Member feedback, kept apart from moderators' decisions: a weak signal, never a rejection.
            "ALTER TABLE logs ADD COLUMN stopped_by INTEGER",
            "ALTER TABLE logs ADD COLUMN regenerated_by INTEGER",
            "ALTER TABLE logs ADD COLUMN regenerated_at TEXT",
            "ALTER TABLE logs ADD COLUMN replaces INTEGER",
            # One row per effective press of a reply's button (Regenerate; a Stop is recorded in
            # the reply's own row): the primary key makes a second press of the same button
            # (another member, a double click, a second process) lose.
            """
            CREATE TABLE reply_presses (
                action TEXT NOT NULL,
                message_id INTEGER NOT NULL,
                user_id INTEGER NOT NULL,
                pressed_at TEXT NOT NULL,
                PRIMARY KEY (action, message_id)
            )
            """,
            "CREATE INDEX reply_presses_user ON reply_presses (user_id)",
        ),
    ),
    Migration(
        6,
        "moderators' adapter moves from Discord (promote, rollback, canary), each recorded once",
        (
            # One row per command: the interaction id is unique, so a command Discord delivers
            # twice is carried out once; the outcome is written when the move is done.
            """
            CREATE TABLE adapter_actions (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                interaction_id INTEGER NOT NULL UNIQUE,
                created_at TEXT NOT NULL,
                guild_id INTEGER,
                channel_id INTEGER,
                moderator_id INTEGER NOT NULL,
                persona_id TEXT NOT NULL,
                action TEXT NOT NULL,
                requested_version TEXT,
                forced INTEGER NOT NULL DEFAULT 0,
                outcome TEXT NOT NULL DEFAULT 'pending'
                    CHECK (outcome IN ('pending', 'moved', 'unchanged', 'refused', 'failed')),
                from_version TEXT,
                to_version TEXT,
                message TEXT,
                finished_at TEXT
            )
            """,
            "CREATE INDEX adapter_actions_persona ON adapter_actions (persona_id, id)",
        ),
    ),
    Migration(
        7,
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
