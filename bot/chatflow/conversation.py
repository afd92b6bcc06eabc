"""From chat messages to the turns a persona answers, and the small decisions around a reply.

Discord-free: the Discord layer turns its messages into :class:`ChatMessage` and calls these, so
the rules (what counts as a persona line, which names never reach a prompt, who took part in a
conversation) are tested without a client.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from personas.card import PersonaCard
from personas.render import MAX_INPUT_CHARS, Turn

# Discord markup that names people or places: <@1>, <@!1>, <@&1>, <#1>, </cmd:1>; removed so no
# id or display name reaches the prompt.
_ENTITY_MARKUP = re.compile(r"<(?:@[!&]?|#|/[^:>]{1,64}:)\d+>")
# Custom emoji <:name:1> / <a:name:1>: keep the name, which often carries the meaning.
_CUSTOM_EMOJI = re.compile(r"<a?:(\w{1,64}):\d+>")


@dataclass(frozen=True)
class ChatMessage:
    """A message as the conversation logic needs it; ``author_id`` is None for persona lines.

    ``is_persona`` marks the answering persona's own lines; ``speaker`` labels another persona's
    (a cast member: a turn of another speaker under that name, never one of this persona's own).
    """

    message_id: int
    author_id: int | None
    text: str
    is_persona: bool = False
    speaker: str | None = None


def strip_markup(text: str) -> str:
    text = _CUSTOM_EMOJI.sub(r":\1:", text)
    text = _ENTITY_MARKUP.sub("", text)
    return re.sub(r"[ \t]{2,}", " ", text).strip()


@dataclass(frozen=True)
class Conversation:
    turns: list[Turn]
    # Every user whose words are in the turns: the log row is theirs too (/forget, opt-out).
    participants: tuple[int, ...]


def build_conversation(card: PersonaCard, messages: Sequence[ChatMessage], max_messages: int) -> Conversation:
    """Turns for ``card``, oldest first, ending with the newest message (the one to answer).

    Users are all ``card.user_label``: display names never reach a prompt (they are personal data
    and would be learned by the adapter). Consecutive persona messages are one turn, because a long
    reply was split over several messages. Older messages keep at most ``MAX_INPUT_CHARS`` each:
    the renderer budgets tokens, this only bounds the work.
    """
    if not messages:
        return Conversation([], ())
    *earlier, newest = messages
    earlier = earlier[-max(0, max_messages) :] if max_messages > 0 else []
    turns: list[Turn] = []
    people: list[int] = []
    for msg in earlier:
        text = strip_markup(msg.text)[-MAX_INPUT_CHARS:]
        if not text:
            continue
        if msg.is_persona or msg.speaker is not None:
            speaker = card.speaker if msg.is_persona else str(msg.speaker)
            last = turns[-1] if turns else None
            if last is not None and last.speaker == speaker and last.is_persona == msg.is_persona:
                turns[-1] = Turn(speaker, f"{last.text} {text}", msg.is_persona)
            else:
                turns.append(Turn(speaker, text, msg.is_persona))
        else:
            turns.append(Turn(card.user_label, text))
            if msg.author_id is not None:
                people.append(msg.author_id)
    # The newest is kept whole (even empty): the chat service validates it and says what is wrong.
    # It is a member's message, or another persona's line when personas answer each other (the
    # earlier parts of that persona's split reply then join it: one turn, as for its own lines).
    newest_text = strip_markup(newest.text)
    if (
        newest.speaker is not None
        and turns
        and turns[-1].speaker == newest.speaker
        and not turns[-1].is_persona
    ):
        newest_text = f"{turns.pop().text} {newest_text}"
    turns.append(Turn(newest.speaker or card.user_label, newest_text))
    if newest.author_id is not None:
        people.append(newest.author_id)
    return Conversation(turns, tuple(dict.fromkeys(people)))


def queue_notice(position: int, threshold: int) -> str | None:
    """What to tell a user about their place in the queue, or None when it is not worth a message."""
    if threshold <= 0 or position < threshold:
        return None
    ahead = position - 1
    return f"⏳ The bot is busy: your message is number {position} in the queue ({ahead} ahead of it)."


def persona_prefix(card: PersonaCard) -> str:
    """How the bot marks a persona's line when it cannot speak through a webhook."""
    return f"**{card.display_name}**: "


def parse_prefixed(text: str, cards: Iterable[PersonaCard]) -> tuple[PersonaCard, str] | None:
    """The persona and line of one of the bot's own prefixed messages, else None."""
    for card in cards:
        prefix = persona_prefix(card)
        if text.startswith(prefix):
            return card, text[len(prefix) :]
    return None
