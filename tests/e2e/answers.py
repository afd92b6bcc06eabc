"""Which answer did the bot give to each message? Worked out from what the emulator recorded.

The bot promises that every message it takes up ends in something the user sees: a reply, or a
notice (busy, too fast, an error), or a 🐢 reaction. Notices and prefixed replies reference the
user's message; a 🐢 is put on the message itself. A persona's webhook reply cannot reference
anything (Discord has no replies for webhooks), so it is matched to its question through the
bot's log (``logs.reply_message_id`` → ``logs.message_id``), the same link the bot uses to
follow reply chains. Queue-position notices are progress, not answers: the bot deletes them.

The notice texts are the bot's own (bot/discord/cogs/chat.py, bot/chatflow/replyflow.py,
bot/serving/generation.py, personas/render.py); a notice matching none of them is "unclassified", which
the tests treat as a failure, so a reworded notice is noticed here.
"""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

from bot.discord.cogs.chat import SHUTDOWN_NOTICE
from tests.discord_emulator import Call, DiscordEmulator

KINDS = ("reply", "busy", "rate_limited", "error", "refused", "shutdown")
TURTLE = "🐢"

# (prefix or fragment, kind); checked in order, first match wins. None: progress, not an answer.
NOTICES: tuple[tuple[str, str | None], ...] = (
    ("⏳ The bot is busy: your message is number", None),
    ("✍️ Your reply is being written now.", None),
    ("🚦 ", "busy"),
    (f"{TURTLE} You are sending messages faster", "rate_limited"),
    (SHUTDOWN_NOTICE, "shutdown"),
    ("Sorry, no reply this time:", "error"),
    ("Sorry, something went wrong", "error"),
    ("Sorry, that could not be answered:", "error"),
    ("could not answer that:", "error"),
    ("Sorry: ", "error"),
    ("That message is too long", "refused"),
    ("That message is empty", "refused"),
    ("holds nothing but formatting markers", "refused"),
    ("There is no message to answer", "refused"),
    ("Only text can be answered", "refused"),
    ("had nothing to say to that", "refused"),
    ("stopped before it said anything", "refused"),
    ("Start your message with the full name or the id", "refused"),
    ("reply was held back for a moderator", "refused"),
    ("The bot is still starting up", "refused"),
    ("is not available any more", "refused"),
    ("cannot answer on this model", "refused"),
    ("you do not have a role", "refused"),
)


def notice_kind(text: str) -> str | bool | None:
    """The kind of a bot notice; None for a progress notice; False when unknown."""
    for fragment, kind in NOTICES:
        if text.startswith(fragment) or fragment in text:
            return kind
    return False


@dataclass
class Sent:
    message_id: str
    channel_id: str
    user: str
    at: float  # time.monotonic() when the message was posted


@dataclass
class Answer:
    kind: str
    at: float  # time.monotonic() when the emulator recorded the bot's call
    answer_id: str  # the answering message ("" for a reaction)
    text: str = ""


@dataclass
class AnswerBook:
    """Messages sent, and for each the bot's answers; ``refresh()`` reads what is new."""

    emu: DiscordEmulator
    db_path: Path
    persona_prefixes: tuple[str, ...] = ("**霧雨魔理沙**: ", "**ずんだもん**: ")
    sent: dict[str, Sent] = field(default_factory=dict)
    answers: dict[str, list[Answer]] = field(default_factory=dict)
    unclassified: list[str] = field(default_factory=list)
    unrecognised: dict[str, str] = field(default_factory=dict)  # user message id → the unknown notice
    progress_notices: int = 0
    _calls_seen: int = 0
    _webhook_replies: dict[str, Call] = field(default_factory=dict)  # reply id → its call
    _attributed: set[str] = field(default_factory=set)

    def record_sent(self, payload: dict[str, object], user: str, at: float | None = None) -> Sent:
        sent = Sent(
            str(payload["id"]), str(payload["channel_id"]), user, time.monotonic() if at is None else at
        )
        self.sent[sent.message_id] = sent
        return sent

    def _add(self, user_message: str, answer: Answer) -> None:
        self.answers.setdefault(user_message, []).append(answer)

    def refresh(self) -> None:
        calls = self.emu.calls.items
        new, self._calls_seen = calls[self._calls_seen :], len(calls)
        app = self.emu.application_id
        for call in new:
            if call.status >= 300 or call.injected:
                continue
            if (
                call.method == "POST"
                and call.path.endswith("/messages")
                and call.path.startswith("/channels/")
            ):
                self._channel_message(call)
            elif call.method == "PUT" and "/reactions/" in call.path:
                parts = call.path.split("/")  # /channels/C/messages/M/reactions/E/@me
                if len(parts) >= 7 and unquote(parts[6]) == TURTLE and parts[4] in self.sent:
                    self._add(parts[4], Answer("rate_limited", call.at, "", TURTLE))
            elif (
                call.method == "POST"
                and call.path.startswith("/webhooks/")
                and not call.path.startswith(f"/webhooks/{app}/")
                and isinstance(call.response, dict)
            ):
                self._webhook_replies[str(call.response["id"])] = call
        self._attribute_webhook_replies()

    def _channel_message(self, call: Call) -> None:
        response = call.response if isinstance(call.response, dict) else {}
        ref = (response.get("message_reference") or {}).get("message_id")
        if ref is None or str(ref) not in self.sent:
            return
        text = str(response.get("content") or "")
        if text.startswith(self.persona_prefixes):
            self._add(str(ref), Answer("reply", call.at, str(response["id"]), text))
            return
        kind = notice_kind(text)
        if kind is None:
            self.progress_notices += 1
        elif kind is False:
            self.unclassified.append(text)
            self.unrecognised[str(ref)] = text
        else:
            self._add(str(ref), Answer(str(kind), call.at, str(response["id"]), text))

    def _attribute_webhook_replies(self) -> None:
        waiting = {rid for rid in self._webhook_replies if rid not in self._attributed}
        if not waiting or not self.db_path.exists():
            return
        with closing(sqlite3.connect(self.db_path, timeout=5)) as db:
            rows = db.execute(
                "SELECT message_id, reply_message_id FROM logs WHERE reply_message_id IS NOT NULL"
            ).fetchall()
        for message_id, reply_id in rows:
            rid = str(reply_id)
            if rid in waiting and str(message_id) in self.sent:
                call = self._webhook_replies[rid]
                text = str((call.json or {}).get("content") or "")
                self._add(str(message_id), Answer("reply", call.at, rid, text))
                self._attributed.add(rid)

    # -- summaries ---------------------------------------------------------------------------------

    def final(self, message_id: str) -> Answer | None:
        """The first answer a message got (what its user saw)."""
        found = self.answers.get(message_id)
        return min(found, key=lambda a: a.at) if found else None

    def unanswered(self) -> list[str]:
        return [mid for mid in self.sent if mid not in self.answers]

    def duplicates(self) -> list[str]:
        return [mid for mid, found in self.answers.items() if len(found) > 1]

    def unattributed_replies(self) -> list[str]:
        """Webhook replies no log row points at: a reply whose log was lost."""
        return [rid for rid in self._webhook_replies if rid not in self._attributed]

    def counts(self) -> Counter[str]:
        counts: Counter[str] = Counter({kind: 0 for kind in KINDS})
        for mid in self.sent:
            answer = self.final(mid)
            counts[answer.kind if answer else "lost"] += 1
        counts.setdefault("lost", 0)
        return counts

    def latencies(self, kind: str | None = None) -> list[float]:
        """Seconds from posting to the answer, for answers of ``kind`` (all when None)."""
        out = []
        for mid, sent in self.sent.items():
            answer = self.final(mid)
            if answer is not None and (kind is None or answer.kind == kind):
                out.append(answer.at - sent.at)
        return sorted(out)

    def wait_text(self, message_id: str) -> str:
        answer = self.final(message_id)
        return f"{answer.kind}: {answer.text[:80]}" if answer else "no answer"
