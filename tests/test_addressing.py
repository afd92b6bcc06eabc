"""Who addresses the bot: its user mention in both forms, or the role Discord made for it."""

from __future__ import annotations

from types import SimpleNamespace

from bot.chatflow.conversation import strip_markup
from bot.discord.history import mentions_bot

BOT = 900
BOT_ROLE = SimpleNamespace(id=901, tags=SimpleNamespace(bot_id=BOT))
OTHER_BOTS_ROLE = SimpleNamespace(id=902, tags=SimpleNamespace(bot_id=555))
PLAIN_ROLE = SimpleNamespace(id=903, tags=None)
BOOSTER_ROLE = SimpleNamespace(id=904, tags=SimpleNamespace(bot_id=None))


def message(users: tuple[int, ...] = (), roles: tuple[object, ...] = ()) -> SimpleNamespace:
    return SimpleNamespace(mentions=[SimpleNamespace(id=u) for u in users], role_mentions=list(roles))


def test_the_bots_user_and_managed_role_address_it() -> None:
    assert mentions_bot(message(users=(BOT,)), BOT)  # <@900> and <@!900> both land in mentions
    assert mentions_bot(message(roles=(BOT_ROLE,)), BOT)
    assert mentions_bot(message(users=(12,), roles=(PLAIN_ROLE, BOT_ROLE)), BOT)


def test_other_mentions_do_not() -> None:
    assert not mentions_bot(message(), BOT)
    assert not mentions_bot(message(users=(12, 555)), BOT)
    assert not mentions_bot(message(roles=(OTHER_BOTS_ROLE, PLAIN_ROLE, BOOSTER_ROLE)), BOT)


def test_every_mention_form_is_stripped_from_the_prompt() -> None:
    for mention in (f"<@{BOT}>", f"<@!{BOT}>", f"<@&{BOT_ROLE.id}>"):
        assert strip_markup(f"{mention} やあ、元気？") == "やあ、元気？"
        assert strip_markup(f"やあ {mention} 元気？") == "やあ 元気？"
