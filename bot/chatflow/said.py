"""What a member said in a message: the text a persona reads, and what it cannot read.

A chat message (Discord's type 0 or 19) is not always words a member typed to the persona. A
forward carries someone else's message in its snapshot and has no text of its own; a poll's
words are its question and answers; a voice message, a sticker, an attachment, an embed or an
activity invite has no text the persona can read. Deciding that once, here, keeps every place a
message is read (the input, channel history, reply chains, "is this addressed to the bot") in
step, and keeps "That message is empty" for a member who sent nothing at all.

Decisions:

* **A forward is not conversation.** It is treated like a system message: never answered, never
  history, never logged. Its snapshot is someone else's words, from another channel or server,
  whose author Discord does not name, so that author's opt-out or forget could not be honoured
  in logs and training data. (Discord sends a comment added to a forward as a separate ordinary
  message, which is read as usual.)
* **A poll is read as text**: its question and answers are the member's own words.
* **Everything else without text** gets one notice naming what cannot be read.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MessageParts:
    """The parts of a chat message that decide what was said (no Discord types)."""

    content: str = ""
    forwarded: bool = False  # a forward (message reference of type forward, a message snapshot)
    poll_question: str | None = None
    poll_answers: tuple[str, ...] = ()
    voice: bool = False  # a voice message (its audio is an attachment)
    attachments: int = 0
    stickers: int = 0
    embeds: int = 0
    activity: bool = False  # an activity or game invite
    components: int = 0


@dataclass(frozen=True)
class Said:
    """``text``: the words a persona reads (None: not conversation at all, such as a forward).
    ``unreadable``: the parts sent that it cannot read, for the notice."""

    text: str | None
    unreadable: tuple[str, ...] = ()


def poll_text(question: str, answers: tuple[str, ...]) -> str:
    """A poll as the words it shows: ``（投票）夕飯は？（カレー／ラーメン）``."""
    shown = [a.strip() for a in answers if a and a.strip()]
    choices = f"（{'／'.join(shown)}）" if shown else ""
    return f"（投票）{question.strip()}{choices}"


def what_was_said(parts: MessageParts) -> Said:
    """The member's words in ``parts`` and the parts a persona cannot read."""
    if parts.forwarded:
        return Said(None)
    text = parts.content
    if parts.poll_question is not None:
        poll = poll_text(parts.poll_question, parts.poll_answers)
        text = f"{text}\n{poll}" if text.strip() else poll
    unreadable: list[str] = []
    if parts.voice:
        unreadable.append("voice messages")
    if (parts.attachments and not parts.voice) or parts.stickers:
        unreadable.append("attachments and stickers")
    if parts.embeds:
        unreadable.append("embeds")
    if parts.activity:
        unreadable.append("activity invites")
    if parts.components:
        unreadable.append("buttons and menus")
    return Said(text, tuple(unreadable))


def only_text_notice(unreadable: tuple[str, ...]) -> str:
    """What a member reads when a message holds nothing a persona can read but ``unreadable``."""
    if not unreadable:
        return "Only text can be answered. Please write what you want to say."
    listed = unreadable[0] if len(unreadable) == 1 else f"{', '.join(unreadable[:-1])}, and {unreadable[-1]}"
    return f"Only text can be answered: {listed} are not read. Please write what you want to say."
