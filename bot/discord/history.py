"""Reading a conversation back from Discord: channel history since the reset, or a reply chain.

Discord is the record of the conversation (the bot keeps no copy), so a restart, an edited or a
deleted message are all reflected the next time history is read.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection, Container, Iterable, Mapping, Sequence
from typing import Any

import discord

from bot.chatflow.cast import other_speaker_label
from bot.chatflow.conversation import ChatMessage, Conversation, build_conversation, parse_prefixed
from bot.discord.message_parts import is_forward, said
from bot.store.store import Store
from personas.card import PersonaCard

log = logging.getLogger(__name__)

# What people write: a message and a reply. Every other type is made by Discord (thread created,
# pins, joins, boosts, the thread starter, poll results, calls …) or by an app answering a command,
# so its content is not something anyone said. A whitelist on purpose: types Discord adds later
# are left out until someone decides they are conversation.
CONVERSATION_TYPES = frozenset({discord.MessageType.default, discord.MessageType.reply})


def is_conversation(message: discord.Message) -> bool:
    """Whether ``message`` is something a person (or a persona) said: its type, and not a forward.

    False for every system message: those are never input, history, log rows or training data,
    and Discord refuses replies to them. False for a forward too: a type-0 message whose words
    are someone else's, in its snapshot (bot/chatflow/said.py says why it is not read).
    """
    return message.type in CONVERSATION_TYPES and not is_forward(message)


def persona_line(
    message: discord.Message,
    cards: Sequence[PersonaCard],
    *,
    bot_user_id: int | None,
    webhook_ids: set[int],
) -> tuple[PersonaCard, str] | None:
    """Which of ``cards`` said ``message``, and the line itself; None when no persona did.

    A persona speaks through the bot's webhook under its display name, or as the bot with a
    ``**name**:`` prefix (without webhooks).
    """
    if not is_conversation(message):
        return None
    if message.webhook_id is not None:
        if webhook_ids and message.webhook_id not in webhook_ids:
            return None
        name = message.author.name
        card = next((c for c in cards if c.display_name[:80] == name), None)
        return (card, message.content) if card is not None else None
    if bot_user_id is not None and message.author.id == bot_user_id:
        return parse_prefixed(message.content, cards)
    return None


def classify(
    message: discord.Message,
    *,
    bot_user_id: int | None,
    card: PersonaCard,
    webhook_ids: set[int],
    others: Sequence[PersonaCard] = (),
    proxy_bots: Collection[int] = (),
    proxied_authors: Mapping[int, int] | None = None,
) -> ChatMessage | None:
    """A message as a conversation line for ``card``; None for lines that are not part of it.

    Persona lines are the bot's webhook posts under the card's name and its own prefixed posts.
    Lines of ``others`` (the other personas: a cast) are another speaker's, under their names.
    A proxy bot's repost (an application in ``proxy_bots``) is the line of the member
    ``proxied_authors`` names for it, and left out when nobody is known to have written it.
    Other bots, other webhooks, the bot's notices and system messages (a thread's name, "pinned
    a message" …) are left out.
    """
    if not is_conversation(message):
        return None
    if message.webhook_id is not None and getattr(message, "application_id", None) in proxy_bots:
        author = (proxied_authors or {}).get(message.id)
        return ChatMessage(message.id, author, said(message).text or "") if author is not None else None
    if message.webhook_id is not None or (bot_user_id is not None and message.author.id == bot_user_id):
        spoken = persona_line(
            message,
            [card, *(o for o in others if o.id != card.id)],
            bot_user_id=bot_user_id,
            webhook_ids=webhook_ids,
        )
        if spoken is None:
            return None
        speaker, line = spoken
        if speaker.id == card.id:
            return ChatMessage(message.id, None, line, is_persona=True)
        return ChatMessage(message.id, None, line, speaker=other_speaker_label(card, speaker))
    if message.author.bot:
        return None
    return ChatMessage(message.id, message.author.id, said(message).text or "")


async def channel_history(
    message: discord.Message, *, after: int | None, limit: int
) -> list[discord.Message]:
    """Up to ``limit`` messages before ``message`` and after the reset marker, oldest first."""
    if limit <= 0:
        return []
    found = []
    try:
        async for earlier in message.channel.history(limit=limit, before=message):
            if after is None or earlier.id > after:
                found.append(earlier)
    except discord.HTTPException as exc:  # no Read Message History: answer the message alone
        log.warning("cannot read history of channel %s: %s", message.channel.id, exc)
    # Snowflakes order messages in time; sorting does not depend on the order the API returned.
    found.sort(key=lambda m: m.id)
    return found


async def reply_chain(
    message: discord.Message,
    *,
    after: int | None,
    limit: int,
    answered_by: Callable[[int], Awaitable[int | None]] | None = None,
) -> list[discord.Message]:
    """The messages ``message`` replies to, transitively, oldest first.

    A webhook reply carries no reply reference; ``answered_by`` (the store's log) names the user
    message it answered, so a chain through a persona's webhook line continues. The chain ends at
    a system message (a member can answer a join with a wave): it is not part of the
    conversation, and the message its own reference names (the pinned one, a thread's starter)
    was not replied to.
    """
    chain: list[discord.Message] = []
    current = message
    while len(chain) < limit:
        target = _reference_id(current)
        if target is None and answered_by is not None and current is not message:
            target = await answered_by(current.id)
        if target is None or (after is not None and target <= after):
            break
        earlier = await _resolve(current, target)
        if earlier is None or not is_conversation(earlier) or any(m.id == earlier.id for m in chain):
            break
        chain.append(earlier)
        current = earlier
    chain.reverse()
    return chain


def _reference_id(message: discord.Message) -> int | None:
    ref = message.reference
    if ref is None or ref.message_id is None:
        return None
    if getattr(ref, "type", None) == discord.MessageReferenceType.forward:
        return None  # a forward quotes another conversation; it does not continue this one
    if ref.channel_id is not None and ref.channel_id != message.channel.id:
        return None
    return ref.message_id


async def _resolve(current: discord.Message, target: int) -> discord.Message | None:
    ref = current.reference
    if ref is not None and ref.message_id == target:
        if isinstance(ref.resolved, discord.Message):
            return ref.resolved
        if ref.cached_message is not None:
            return ref.cached_message
    try:
        return await current.channel.fetch_message(target)
    except discord.HTTPException:
        return None


def is_reply_to_bot(message: discord.Message, *, bot_user_id: int | None, webhook_ids: Iterable[int]) -> bool:
    """Whether ``message`` replies to one of the bot's own posts (prefixed or through its webhook)."""
    ref = message.reference
    if ref is None or is_forward(message):
        return False  # a forward of the bot's message quotes it; it does not answer it
    resolved: Any = ref.resolved if isinstance(ref.resolved, discord.Message) else ref.cached_message
    if resolved is None or not is_conversation(resolved):
        return False  # e.g. a wave at the bot's own "joined the server" message
    if resolved.webhook_id is not None:
        return resolved.webhook_id in set(webhook_ids)
    return bot_user_id is not None and resolved.author.id == bot_user_id


def mentions_bot(message: discord.Message, bot_user_id: int) -> bool:
    """Whether ``message`` mentions the bot: ``<@id>`` or ``<@!id>`` (Discord lists both in
    ``mentions``), or the bot's managed role ``<@&role>``, which the mention picker offers beside
    the user under the same name (a role whose tags name the bot)."""
    if any(u.id == bot_user_id for u in message.mentions):
        return True
    return any(role.tags is not None and role.tags.bot_id == bot_user_id for role in message.role_mentions)


async def read_conversation(
    message: discord.Message,
    card: PersonaCard,
    store: Store,
    *,
    channel_has_persona: bool,
    limit: int,
    bot_user_id: int | None,
    webhook_ids: Iterable[int],
    others: Sequence[PersonaCard] = (),
    speaker: PersonaCard | None = None,
    proxy_bots: Collection[int] = (),
    reposted: Container[int] = frozenset(),
) -> Conversation:
    """The conversation ``message`` ends, at most ``limit`` earlier messages after the channel's
    reset marker. In a persona channel, the channel since the reset; elsewhere the bot was
    addressed directly, so only the reply chain counts (other people's chatter there was not
    meant for it, and would put their words into someone else's log).

    ``others`` are the other personas whose lines may appear (a cast, any loaded card); when
    ``message`` itself is one of their lines (``speaker``: personas answering each other), it
    ends the conversation as that persona's turn, not a member's.

    Proxy bots' reposts are their members' lines (the store knows who wrote each); an original a
    proxy already reposted but has not deleted yet (``reposted``) is left out, so its words are
    not read twice.
    """
    marker = await store.channel_reset_marker(message.channel.id)
    if channel_has_persona:
        earlier = await channel_history(message, after=marker, limit=limit)
    else:
        earlier = await reply_chain(message, after=marker, limit=limit, answered_by=store.message_answered_by)
    known = set(webhook_ids)
    earlier = [m for m in earlier if m.id not in reposted]
    proxied = [
        m.id for m in earlier if m.webhook_id is not None and getattr(m, "application_id", None) in proxy_bots
    ]
    authors = await store.proxied_authors(proxied) if proxied else {}
    lines: list[ChatMessage] = []
    for m in earlier:
        line = classify(
            m,
            bot_user_id=bot_user_id,
            card=card,
            webhook_ids=known,
            others=others,
            proxy_bots=proxy_bots,
            proxied_authors=authors,
        )
        if line is not None:
            lines.append(line)
    if speaker is not None:
        spoken = persona_line(message, [speaker], bot_user_id=bot_user_id, webhook_ids=known)
        text = spoken[1] if spoken else message.content
        lines.append(ChatMessage(message.id, None, text, speaker=other_speaker_label(card, speaker)))
    else:
        lines.append(ChatMessage(message.id, message.author.id, said(message).text or ""))
    return build_conversation(card, lines, limit)
