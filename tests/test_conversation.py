"""Discord-free conversation rules: turns, names, participants, queue notices, prefixes."""

from __future__ import annotations

from bot.chatflow.conversation import (
    ChatMessage,
    build_conversation,
    parse_prefixed,
    persona_prefix,
    queue_notice,
    strip_markup,
)
from personas.card import load_cards

CARDS = load_cards()
MARISA = CARDS.get("marisa")


def test_users_become_the_user_label_and_persona_lines_the_speaker() -> None:
    conv = build_conversation(
        MARISA,
        [
            ChatMessage(1, 10, "やあ"),
            ChatMessage(2, None, "よう！", is_persona=True),
            ChatMessage(3, None, "元気だぜ", is_persona=True),  # the rest of a split reply
            ChatMessage(4, 20, "僕も混ぜて"),
            ChatMessage(5, 10, "調子はどう？"),
        ],
        max_messages=20,
    )
    assert [(t.speaker, t.text, t.is_persona) for t in conv.turns] == [
        ("ユーザー", "やあ", False),
        ("魔理沙", "よう！ 元気だぜ", True),
        ("ユーザー", "僕も混ぜて", False),
        ("ユーザー", "調子はどう？", False),
    ]
    assert conv.participants == (10, 20)


def test_history_is_capped_but_the_newest_message_is_always_kept() -> None:
    msgs = [ChatMessage(i, 10, f"m{i}") for i in range(30)]
    conv = build_conversation(MARISA, msgs, max_messages=5)
    assert [t.text for t in conv.turns] == ["m24", "m25", "m26", "m27", "m28", "m29"]
    assert [t.text for t in build_conversation(MARISA, msgs, max_messages=0).turns] == ["m29"]


def test_markup_that_names_people_never_reaches_the_prompt() -> None:
    text = "<@123> と <@!456> と <@&789> は <#42> にいる </cmd:99> <:wave:555> <a:dance:556>"
    assert strip_markup(text) == "と と は にいる :wave: :dance:"
    conv = build_conversation(MARISA, [ChatMessage(1, 10, "   "), ChatMessage(2, 11, "<@1>")], 10)
    assert [t.text for t in conv.turns] == [""]  # empty newest: the chat service explains it
    assert conv.participants == (11,)


def test_old_messages_are_bounded() -> None:
    conv = build_conversation(MARISA, [ChatMessage(1, 10, "あ" * 10_000), ChatMessage(2, 10, "ね")], 5)
    assert len(conv.turns[0].text) == 4000


def test_queue_notice_threshold() -> None:
    assert queue_notice(3, 4) is None
    assert "number 4" in queue_notice(4, 4) and "3 ahead" in queue_notice(4, 4)
    assert queue_notice(100, 0) is None


def test_prefix_round_trip() -> None:
    line = persona_prefix(MARISA) + "おう"
    card, text = parse_prefixed(line, CARDS.cards.values())
    assert card.id == "marisa" and text == "おう"
    assert parse_prefixed("**誰か**: やあ", CARDS.cards.values()) is None
