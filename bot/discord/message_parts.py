"""A discord.py message as :class:`~bot.chatflow.said.MessageParts`: the one place that reads
what a message holds (text, a forward's snapshot, a poll, a voice message, stickers …) for the
Discord-free rule in bot/chatflow/said.py."""

from __future__ import annotations

from typing import Any

import discord

from bot.chatflow.said import MessageParts, Said, what_was_said


def is_forward(message: Any) -> bool:
    """A forward: a message reference of type forward, or message snapshots (Discord sends both)."""
    ref = getattr(message, "reference", None)
    if ref is not None and getattr(ref, "type", None) == discord.MessageReferenceType.forward:
        return True
    return bool(getattr(message, "message_snapshots", None))


def parts_of(message: Any) -> MessageParts:
    """The parts of ``message`` that decide what was said (attributes a message may lack count as none)."""
    poll = getattr(message, "poll", None)
    flags = getattr(message, "flags", None)
    return MessageParts(
        content=getattr(message, "content", "") or "",
        forwarded=is_forward(message),
        poll_question=poll.question if poll is not None else None,
        poll_answers=tuple(a.text for a in poll.answers) if poll is not None else (),
        voice=bool(getattr(flags, "voice", False)),
        attachments=len(getattr(message, "attachments", None) or ()),
        stickers=len(getattr(message, "stickers", None) or ()),
        embeds=len(getattr(message, "embeds", None) or ()),
        activity=getattr(message, "activity", None) is not None,
        components=len(getattr(message, "components", None) or ()),
    )


def said(message: Any) -> Said:
    """What the member said in ``message`` (see :func:`bot.chatflow.said.what_was_said`)."""
    return what_was_said(parts_of(message))
