"""The Discord-free rules of a channel with a cast (bot/chatflow/cast.py): which cast answers,
which member a message addresses, how one persona sees another, who speaks next."""

from __future__ import annotations

import dataclasses

import pytest

from bot.chatflow.cast import (
    address_names,
    effective_cast,
    named_at_start,
    next_speaker,
    other_speaker_label,
    persona_turns_since,
    who_answers,
)
from bot.chatflow.conversation import ChatMessage, build_conversation
from personas.card import load_cards
from personas.render import PromptRenderer

CARDS = load_cards().cards
MARISA, ZUNDA, OJOU, NUCC = CARDS["marisa"], CARDS["zundamon"], CARDS["ojousama"], CARDS["nucc"]
CAST = [MARISA, ZUNDA]


class FakeCasts:
    def __init__(self, casts: dict[int, tuple[str, ...]]) -> None:
        self.casts = casts

    async def channel_cast(self, channel_id: int) -> tuple[str, ...] | None:
        return self.casts.get(channel_id)


# -- which cast --------------------------------------------------------------------------------


async def test_a_thread_takes_its_parents_cast_unless_it_has_its_own() -> None:
    store = FakeCasts({1: ("marisa", "zundamon"), 3: ("zundamon",), 4: ()})
    inherited = await effective_cast(store, 2, parent_id=1)
    assert inherited.persona_ids == ("marisa", "zundamon") and inherited.lead == "marisa"
    assert inherited.inherited(2) and inherited.set_in == 1
    own = await effective_cast(store, 3, parent_id=1)
    assert own.persona_ids == ("zundamon",) and not own.inherited(3)
    # ``/persona off`` in the thread is a cast of its own: empty, not the parent's
    off = await effective_cast(store, 4, parent_id=1)
    assert off.persona_ids == () and off.lead is None and off.set_in == 4
    nothing = await effective_cast(store, 5, parent_id=None)
    assert nothing.persona_ids == () and nothing.set_in is None


# -- who answers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ずんだもん、元気？", "zundamon"),
        ("ずんだもん", "zundamon"),
        ("ずんだもんさん！おはよう", "zundamon"),  # an honorific still names her
        ("  @ずんだもん こんにちは", "zundamon"),
        ("<@123> ずんだもん、どう思う？", "zundamon"),  # the bot's mention before the name
        ("Zundamon: hi", "zundamon"),  # the id, any case
        ("ｚｕｎｄａｍｏｎ、やあ", "zundamon"),  # full-width letters are the same id
        ("魔理沙、どう思う？", "marisa"),  # the speaker name the card uses
        ("霧雨魔理沙、弾幕って何？", "marisa"),
        ("ずんだもん餅が食べたい", None),  # a name must be a whole word
        ("今日はずんだもん、来てる？", None),  # only at the start
        ("システム、応答して", None),  # zundamon's template label is no name of hers
        ("", None),
    ],
)
def test_a_message_names_a_cast_member_at_its_start(text: str, expected: str | None) -> None:
    named = named_at_start(text, CAST)
    assert [c.id for c in named] == ([expected] if expected else [])


def test_generic_speaker_labels_are_not_names() -> None:
    assert "システム" not in address_names(ZUNDA)
    assert address_names(MARISA) == ("霧雨魔理沙", "marisa", "魔理沙")


def test_the_longest_name_wins_and_a_shared_one_is_ambiguous() -> None:
    twin = dataclasses.replace(MARISA, id="marisa2")  # a second card with the same names
    named = named_at_start("魔理沙、元気？", [MARISA, twin])
    assert {c.id for c in named} == {"marisa", "marisa2"}
    addressee = who_answers("魔理沙、元気？", [MARISA, twin], None)
    assert addressee.card is None and addressee.how == "ambiguous"
    notice = addressee.ambiguity_notice()
    assert notice.startswith("「魔理沙」 could mean 霧雨魔理沙 (`marisa`) or 霧雨魔理沙 (`marisa2`)")
    assert "full name or the id" in notice
    spaced = who_answers("@ 魔理沙さん 元気？", [MARISA, twin], None)
    assert spaced.said == "魔理沙"
    # the id is unique, so it is not ambiguous
    assert who_answers("marisa2、元気？", [MARISA, twin], None).card.id == "marisa2"
    # a longer name beats a shorter one it contains
    short = dataclasses.replace(NUCC, id="ma", display_name="魔理", speaker="友達")
    assert [c.id for c in named_at_start("魔理沙、やあ", [short, MARISA])] == ["marisa"]
    assert [c.id for c in named_at_start("魔理、やあ", [short, MARISA])] == ["ma"]


def test_name_then_reply_then_lead() -> None:
    assert who_answers("ずんだもん、どう？", CAST, "marisa").card.id == "zundamon"  # the name is explicit
    reply = who_answers("それでどうなった？", CAST, "zundamon")
    assert (reply.card.id, reply.how) == ("zundamon", "reply")
    lead = who_answers("それでどうなった？", CAST, None)
    assert (lead.card.id, lead.how) == ("marisa", "lead")
    # a reply to a persona no longer in the cast goes to the lead
    assert who_answers("ねえ", CAST, "ojousama").card.id == "marisa"
    with pytest.raises(ValueError):
        who_answers("ねえ", [], None)


def test_other_personas_are_labelled_so_they_never_pass_for_this_one_or_the_user() -> None:
    assert other_speaker_label(MARISA, ZUNDA) == "ずんだもん"
    impostor = dataclasses.replace(NUCC, id="fake", display_name="魔理沙")  # marisa's own speaker label
    assert other_speaker_label(MARISA, impostor) == "魔理沙（fake）"
    user_like = dataclasses.replace(NUCC, id="u", display_name="ユーザー")
    assert other_speaker_label(MARISA, user_like) == "ユーザー（u）"


def test_another_personas_lines_are_its_turns_in_the_prompt() -> None:
    lines = [
        ChatMessage(1, 10, "みんな元気？"),
        ChatMessage(2, None, "おう、元気だぜ！", speaker=other_speaker_label(ZUNDA, MARISA)),
        ChatMessage(3, None, "今日も研究だ。", speaker=other_speaker_label(ZUNDA, MARISA)),  # a split reply
        ChatMessage(4, None, "ずんだ餅を食べたのだ", is_persona=True),
        ChatMessage(5, 11, "ずんだもん、それ美味しい？"),
    ]
    conversation = build_conversation(ZUNDA, lines, 20)
    assert [(t.speaker, t.text, t.is_persona) for t in conversation.turns] == [
        ("ユーザー", "みんな元気？", False),
        ("霧雨魔理沙", "おう、元気だぜ！ 今日も研究だ。", False),
        ("システム", "ずんだ餅を食べたのだ", True),
        ("ユーザー", "ずんだもん、それ美味しい？", False),
    ]
    assert conversation.participants == (10, 11)  # persona lines belong to nobody
    prompt = PromptRenderer(ZUNDA).render_prompt(conversation.turns).text
    assert "霧雨魔理沙: おう、元気だぜ！" in prompt
    # what marisa said is never zundamon's to learn: not one of her turns
    assert "システム: おう" not in prompt


def test_when_personas_answer_each_other_the_other_line_is_the_turn_answered() -> None:
    label = other_speaker_label(MARISA, ZUNDA)
    lines = [
        ChatMessage(1, 10, "二人とも、おすすめの食べ物は？"),
        ChatMessage(2, None, "ずんだ餅なのだ。", speaker=label),
        ChatMessage(3, None, "枝豆でできているのだ。", speaker=label),
    ]
    turns = build_conversation(MARISA, lines, 20).turns
    assert [(t.speaker, t.text) for t in turns] == [
        ("ユーザー", "二人とも、おすすめの食べ物は？"),
        ("ずんだもん", "ずんだ餅なのだ。 枝豆でできているのだ。"),
    ]


# -- answering each other ------------------------------------------------------------------------


def test_persona_turns_are_counted_from_what_the_channel_shows() -> None:
    assert persona_turns_since([]) == 0
    assert persona_turns_since(["marisa"]) == 1
    assert persona_turns_since(["marisa", "marisa", "zundamon"]) == 2  # a split reply is one turn
    assert persona_turns_since(["marisa", "zundamon", "marisa"]) == 3
    assert persona_turns_since(["marisa", None, "zundamon"]) is None  # a member spoke: the chain is over


def test_next_speaker_takes_turns_and_stops_at_the_limit() -> None:
    three = [MARISA, ZUNDA, OJOU]
    assert next_speaker(three, "marisa", "そうだぜ", turns_done=1, limit=2).id == "zundamon"
    assert next_speaker(three, "zundamon", "なのだ", turns_done=2, limit=2).id == "ojousama"
    assert next_speaker(three, "ojousama", "ですわ", turns_done=3, limit=5).id == "marisa"  # wraps round
    # a line naming a member hands the turn to that one
    assert next_speaker(three, "marisa", "お嬢様、どう思う？", turns_done=1, limit=2).id == "ojousama"
    # nobody answers themself, even when named
    assert next_speaker(three, "marisa", "魔理沙、がんばれ", turns_done=1, limit=2).id == "zundamon"
    # the first answer plus ``limit`` more, never beyond
    assert next_speaker(three, "zundamon", "なのだ", turns_done=3, limit=2) is None
    assert next_speaker(three, "marisa", "だぜ", turns_done=1, limit=0) is None  # off
    assert next_speaker([MARISA], "marisa", "だぜ", turns_done=1, limit=3) is None  # nobody else
    assert next_speaker(three, "marisa", "だぜ", turns_done=0, limit=3) is None  # nothing answered yet
