"""Replies being written right now, so that Stop, a deleted question, ``/cast remove`` and a
shutdown can find them.

Discord-free. A reply is known by the id of the message it answers (a member's message, or the
persona line another persona answers), which is unique among replies in progress: one message
is answered by one reply at a time. Everything here runs on the event loop, so checking and
setting a field is atomic: of two Stop presses, exactly one stops the reply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class Cancellable(Protocol):
    def cancel(self) -> None: ...


@dataclass
class ReplyInFlight:
    """One reply being written: ``persona_id`` answering ``message_id`` in ``channel_id`` for
    ``asker_id``; ``cast_channel_id`` is where the cast that chose it was set."""

    message_id: int
    channel_id: int
    persona_id: str
    asker_id: int
    pending: Cancellable
    cast_channel_id: int | None = None
    stopped_by: int | None = None

    def stop(self, user_id: int) -> bool:
        """Stop writing (what is shown stays); False when someone already stopped it."""
        if self.stopped_by is not None:
            return False
        self.stopped_by = user_id
        self.pending.cancel()
        return True


class RepliesInFlight:
    """The replies being written, by the id of the message each answers."""

    def __init__(self) -> None:
        self._by_message: dict[int, ReplyInFlight] = {}

    def __len__(self) -> int:
        return len(self._by_message)

    def begin(self, reply: ReplyInFlight) -> None:
        self._by_message[reply.message_id] = reply

    def end(self, message_id: int) -> None:
        self._by_message.pop(message_id, None)

    def get(self, message_id: int) -> ReplyInFlight | None:
        return self._by_message.get(message_id)

    def writing_for(self, cast_channel_id: int, persona_id: str) -> list[ReplyInFlight]:
        """Replies ``persona_id`` is writing because of the cast set in ``cast_channel_id``
        (in that channel, or in a thread that takes its cast)."""
        return [
            r
            for r in self._by_message.values()
            if r.persona_id == persona_id and cast_channel_id in (r.cast_channel_id, r.channel_id)
        ]

    def all(self) -> list[ReplyInFlight]:
        return list(self._by_message.values())
