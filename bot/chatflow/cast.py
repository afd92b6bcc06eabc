"""A channel with a cast of personas: which cast a channel has, which member a message
addresses, how one persona sees another's lines, and who speaks next when personas answer each
other.

Discord-free: the Discord layer hands in ids, texts and cards, so every rule is tested without a
client. The rules, and why:

* **The cast**: a channel's own (``/persona``, ``/cast``), else, for a thread or a forum post,
  its parent channel's. History stays the thread's own; only who answers is inherited.
* **Who answers**: the persona a message names at its start (display name, id, or the speaker
  name the card uses, e.g. 「魔理沙、…」), else the persona whose message it replies to, else
  the lead. A name is a whole word: it must be followed by punctuation, a space or the end
  (「ずんだもん、」 and 「ずんだもんさん！」 name her; 「ずんだもん餅」 does not). The longest name
  wins; two personas sharing the longest name are *ambiguous*, and the member is asked to say
  which rather than one being picked behind their back.
* **Other personas' lines** appear in a persona's prompt as turns of another speaker under
  that persona's display name, never as its own turns (a label equal to this persona's own
  speaker or the user's label gets the id added, so it cannot pass for either).
* **Answering each other** (``chat.cast_followups``, off by default) is bounded by counting
  what is visible in the channel since the member's message, so no chain outlives its limit,
  a restart included: a chain is never resumed from memory, and a member speaking ends it.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from personas.card import PersonaCard
from personas.render import COMMON_LABELS

# Honorifics a member may put after a name: 「ずんだもんさん、」 still names her.
HONORIFICS = ("さん", "ちゃん", "くん", "君", "様", "さま", "氏")
# Markup that may come before the name: a mention of the bot, a role, "@".
_LEADING = ("@",)


class CastReader(Protocol):
    async def channel_cast(self, channel_id: int) -> tuple[str, ...] | None: ...


@dataclass(frozen=True)
class EffectiveCast:
    """The personas answering in a channel, lead first, and where that cast was set."""

    persona_ids: tuple[str, ...]
    set_in: int | None  # the channel whose cast this is (the thread's parent when inherited); None: none set

    @property
    def lead(self) -> str | None:
        return self.persona_ids[0] if self.persona_ids else None

    def inherited(self, channel_id: int) -> bool:
        return self.set_in is not None and self.set_in != channel_id


async def effective_cast(store: CastReader, channel_id: int, parent_id: int | None) -> EffectiveCast:
    """``channel_id``'s own cast if one was set there (``()`` for ``off``), else its parent's
    (a thread or forum post: ``parent_id``), else none."""
    own = await store.channel_cast(channel_id)
    if own is not None:
        return EffectiveCast(own, channel_id)
    if parent_id is not None:
        inherited = await store.channel_cast(parent_id)
        if inherited is not None:
            return EffectiveCast(inherited, parent_id)
    return EffectiveCast((), None)


# -- who answers -------------------------------------------------------------------------------


def _norm(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


def address_names(card: PersonaCard) -> tuple[str, ...]:
    """The names a member may address ``card`` by: display name, id, and its speaker name
    unless that is a generic label (zundamon's rinna template speaks as 「システム」)."""
    names = [card.display_name, card.id]
    if card.speaker not in COMMON_LABELS and card.speaker != card.user_label:
        names.append(card.speaker)
    return tuple(dict.fromkeys(n for n in names if n.strip()))


def _strip_leading(text: str) -> str:
    """Drop what may come before a name: spaces, Discord mentions (``<@1>``, ``<@&1>``), ``@``."""
    text = text.lstrip()
    while True:
        if text.startswith("<@"):
            end = text.find(">")
            if end == -1:
                return text
            text = text[end + 1 :].lstrip()
        elif text.startswith(_LEADING):
            text = text[1:].lstrip()
        else:
            return text


def _ends_word(rest: str) -> bool:
    """Whether a name followed by ``rest`` is a whole word (then punctuation, space or nothing)."""
    for honorific in HONORIFICS:
        if rest.startswith(honorific):
            rest = rest[len(honorific) :]
            break
    return not rest or unicodedata.category(rest[0])[0] not in "LN"


def named_at_start(text: str, cards: Sequence[PersonaCard]) -> tuple[PersonaCard, ...]:
    """The cards ``text`` names at its start by their longest matching name: one card, several
    (ambiguous: they share that name), or none."""
    head = _norm(_strip_leading(text))
    best = 0
    found: dict[str, PersonaCard] = {}
    for card in cards:
        for name in address_names(card):
            key = _norm(name)
            if not key or not head.startswith(key) or not _ends_word(head[len(key) :]):
                continue
            if len(key) > best:
                best, found = len(key), {card.id: card}
            elif len(key) == best:
                found[card.id] = card
    return tuple(found.values())


@dataclass(frozen=True)
class Addressee:
    """Who answers a message: ``card`` (None only when the name is ambiguous), and why."""

    card: PersonaCard | None
    how: str  # "name" | "reply" | "lead" | "ambiguous"
    candidates: tuple[PersonaCard, ...] = ()
    said: str = ""  # the name as the member wrote it (ambiguous only)

    def ambiguity_notice(self) -> str:
        """What to tell a member whose message names two personas at once."""
        options = " or ".join(f"{c.display_name} (`{c.id}`)" for c in self.candidates)
        return (
            f"「{self.said}」 could mean {options}. Start your message with the full name or the id "
            "of the one you mean."
        )


def who_answers(text: str, cast: Sequence[PersonaCard], replied_to: str | None) -> Addressee:
    """The cast member that answers ``text``: named at the start, else the author of the persona
    message it replies to (``replied_to``, a persona id), else the lead (``cast[0]``).

    Raises ValueError for an empty cast (the caller decides who answers where no cast is set).
    """
    if not cast:
        raise ValueError("who_answers needs a cast of at least one persona")
    named = named_at_start(text, cast)
    if len(named) == 1:
        return Addressee(named[0], "name")
    if len(named) > 1:
        return Addressee(None, "ambiguous", named, _name_as_written(text, named[0]))
    for card in cast:
        if card.id == replied_to:
            return Addressee(card, "reply")
    return Addressee(cast[0], "lead")


def _name_as_written(text: str, card: PersonaCard) -> str:
    """The longest of ``card``'s names ``text`` starts with, as the member typed it."""
    head = _strip_leading(text)
    lengths = [len(n) for n in address_names(card) if _norm(head).startswith(_norm(n))]
    return head[: max(lengths)] if lengths else head[:20]


def other_speaker_label(card: PersonaCard, other: PersonaCard) -> str:
    """How ``other``'s lines are labelled in ``card``'s prompt: its display name, with its id
    added where the name could pass for ``card`` itself or for the user."""
    reserved = {card.speaker, card.user_label, *COMMON_LABELS}
    label = other.display_name
    return f"{label}（{other.id}）" if label in reserved else label


# -- personas answering each other ------------------------------------------------------------


def persona_turns_since(speakers: Sequence[str | None]) -> int | None:
    """Persona turns in the lines after a member's message (oldest first), each line's persona
    id, None for a line a member wrote; a run of lines by one persona is one turn (a long
    reply is split). None when a member spoke in between: the chain is over."""
    if any(s is None for s in speakers):
        return None
    turns, last = 0, None
    for speaker in speakers:
        if speaker != last:
            turns += 1
            last = speaker
    return turns


def next_speaker(
    cast: Sequence[PersonaCard], last_speaker: str, last_line: str, turns_done: int, limit: int
) -> PersonaCard | None:
    """Who answers ``last_speaker``'s line ``last_line``, or None when the chain ends.

    ``turns_done`` persona turns followed the member's message so far (the first answer
    included), ``limit`` is ``chat.cast_followups``: at most ``limit`` turns after the first,
    so at most ``1 + limit`` in all. The member a line names at its start answers it; otherwise
    the next in cast order after the speaker. Nobody answers themself.
    """
    if limit <= 0 or turns_done < 1 or turns_done > limit:
        return None
    others = [c for c in cast if c.id != last_speaker]
    if not others:
        return None
    named = named_at_start(last_line, others)
    if len(named) == 1:
        return named[0]
    ids = [c.id for c in cast]
    start = ids.index(last_speaker) + 1 if last_speaker in ids else 0
    for offset in range(len(cast)):
        candidate = cast[(start + offset) % len(cast)]
        if candidate.id != last_speaker:
            return candidate
    return None
