"""Streaming a reply: what is visible at each moment, when edits go out, where messages split.

The rules (bot/text/streaming.py) are tested directly; StreamedReply runs against a recording sink
that stands in for Discord (the Discord side itself is tested through the emulator in
tests/test_e2e_streaming.py).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field, replace

import pytest

from bot.text.mentions import has_live_mention
from bot.text.splitter import split_message
from bot.text.streaming import EditPacer, SendError, Step, StreamedReply, layout, mention_tail, plan, screen
from bot.text.wordfilter import WordFilter
from personas.card import load_cards
from personas.render import PromptRenderer, TokenizerFacts

CARDS = load_cards()
FACTS = TokenizerFacts(eos_text="</s>", special_texts=("</s>", "<pad>", "<unk>"), count_tokens=len)
SHIPPED = WordFilter.from_file()
WORDS = WordFilter(["ばか", "死ね", "kill yourself", "ass"], allowed=["ばかり"])


def prefixes(text: str) -> list[str]:
    return [text[:i] for i in range(len(text) + 1)]


# -- what is visible -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "held"),
    [
        ("こんにちは", 0),
        ("メールは a@", 1),
        ("みんな @every", 6),
        ("みんな @HERE", 0),  # complete: defused, not held
        ("みんな @he", 3),
        ("<", 1),
        ("あ <@", 2),
        ("あ <@!12345", 8),
        ("あ <@&9", 4),
        ("あ <@123>", 0),
        ("メール a@b", 0),
    ],
)
def test_mention_tail_holds_what_could_still_become_a_mention(text: str, held: int) -> None:
    assert mention_tail(text) == held


@pytest.mark.parametrize(
    "reply",
    [
        "おまえは死ねと言われた",
        "ほんとにばかだなあ",
        "ば・か・だなあ",  # separators between the letters
        "please kill  yourself now",
        "a big ass problem",
    ],
)
def test_a_blocked_word_arriving_piece_by_piece_never_shows(reply: str) -> None:
    """Every prefix (every way the word could be split across pieces) is screened: what is
    visible never contains the blocked word, nor ends with the beginning of it."""
    for draft in prefixes(reply):
        visible = screen(draft, WORDS)
        assert WORDS.check(visible.text) == [], (draft, visible)
        assert WORDS.partial_tail(visible.text) == 0, (draft, visible)
    assert screen(reply, WORDS).blocked  # the whole reply is held back for review


def test_a_word_that_only_looks_like_a_blocked_one_shows_once_complete() -> None:
    for reply in ["ばかりか、もっと", "a classic assignment"]:
        shown = [screen(d, WORDS).text for d in prefixes(reply)]
        assert all(WORDS.check(s) == [] for s in shown)
        assert shown[-1] == reply


def test_the_shipped_word_list_is_screened_too() -> None:
    for reply in ["それは死ねって意味", "kys lol", "あいつ 殺すぞ と言った"]:
        for draft in prefixes(reply):
            assert SHIPPED.check(screen(draft, SHIPPED).text) == []


def test_mentions_are_defused_in_every_visible_state() -> None:
    reply = "みんな聞いて @everyone と <@123456> と <@&42> へ"
    for draft in prefixes(reply):
        visible = screen(draft, WORDS).text
        assert not has_live_mention(visible), visible
        assert not visible.endswith(("@", "@every", "<@", "<@12345"))
    assert "@\u200beveryone" in screen(reply, WORDS).text


def test_layout_splits_like_a_whole_reply() -> None:
    text = "。".join(f"文{i:03d}" * 8 for i in range(200))
    assert layout(text, 500) == split_message(text, 500)
    assert all(len(chunk) <= 500 for chunk in layout(text, 500))
    assert layout("  \n ", 500) == []


@pytest.mark.parametrize(
    ("posted", "target", "steps"),
    [
        ([], ["a"], [Step("post", 0, "a")]),
        (["a"], ["ab"], [Step("edit", 0, "ab")]),
        (["a"], ["a"], []),
        (["x" * 3], ["x" * 3, "y"], [Step("post", 1, "y")]),
        (["a", "b"], ["a2", "b2", "c"], [Step("edit", 0, "a2"), Step("edit", 1, "b2"), Step("post", 2, "c")]),
        (["a", "b", "c"], ["a"], [Step("delete", 2), Step("delete", 1)]),
    ],
)
def test_plan_touches_only_what_changed(posted: list[str], target: list[str], steps: list[Step]) -> None:
    assert plan(posted, target) == steps


# -- the renderer's drafts -------------------------------------------------------------------------


def renderer(persona_id: str) -> PromptRenderer:
    return PromptRenderer(CARDS.get(persona_id), FACTS)


@pytest.mark.parametrize(
    ("persona_id", "raw"),
    [
        ("marisa", "魔理沙: よう、元気だぜ。魔法を見せてやる\nユーザー: それは"),
        ("marisa", "魔理沙は今日も元気だぜ！ユーザー: うん"),
        ("zundamon", "ずんだもんなのだ<NL>ユーザー: やあ"),
        ("ojousama", "ごきげんよう。</s>### 指示"),
    ],
)
def test_each_draft_is_the_start_of_the_final_reply(persona_id: str, raw: str) -> None:
    r = renderer(persona_id)
    final = r.clean_reply(raw)
    for part in prefixes(raw):
        draft = r.draft_reply(part)
        assert final.startswith(draft), (part, draft, final)
    assert r.draft_reply(raw) == final


def test_draft_holds_back_a_stop_string_or_marker_before_it_is_complete() -> None:
    r = renderer("zundamon")
    assert r.draft_reply("なのだ<N") == "なのだ"
    assert r.draft_reply("なのだ<NL") == "なのだ"
    assert r.draft_reply("なのだユー") == "なのだ"
    assert r.draft_reply("なのだ<b") == "なのだ<b"  # cannot become a marker any more


def test_draft_shows_nothing_while_the_start_may_be_the_personas_own_label() -> None:
    r = renderer("marisa")
    assert r.draft_reply("魔理") == ""
    assert r.draft_reply("魔理沙 ") == ""
    assert r.draft_reply("魔理沙: よう") == "よう"
    assert r.draft_reply("魔理沙はね") == "魔理沙はね"


def test_draft_holds_back_a_banned_word_of_the_card() -> None:
    r = PromptRenderer(replace(CARDS.get("marisa"), banned_words=("だぜ",)), FACTS)
    assert r.draft_reply("元気だ") == "元気"
    assert r.draft_reply("元気だぜ！") == "元気！"


# -- when edits go out -----------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_pacer_allows_one_round_per_interval_and_respects_retry_after() -> None:
    clock = FakeClock()
    pacer = EditPacer(1.5, clock)
    assert pacer.delay() == 0  # the first post goes at once
    pacer.done()
    assert pacer.delay() == pytest.approx(1.5)
    clock.now += 1.0
    assert pacer.delay() == pytest.approx(0.5)
    pacer.rate_limited(4.0)  # Discord asked for more than the interval
    assert pacer.delay() == pytest.approx(4.0)
    clock.now += 4.0
    assert pacer.delay() == 0
    pacer.rate_limited(0.1)  # a shorter Retry-After never shortens the interval
    pacer.done()
    assert pacer.delay() == pytest.approx(1.5)
    with pytest.raises(ValueError):
        EditPacer(0)


@dataclass
class Op:
    action: str
    message: int
    text: str
    at: float = field(default_factory=time.monotonic)


class RecordingSink:
    """Stands in for Discord: numbered messages, every operation recorded with its time."""

    def __init__(self, limit: int = 2000) -> None:
        self.limit = limit
        self.ops: list[Op] = []
        self.contents: dict[int, str] = {}
        self.failures: list[SendError] = []  # raised by the next operations, in order
        self._ids = 0

    def _maybe_fail(self) -> None:
        if self.failures:
            raise self.failures.pop(0)

    async def post(self, text: str) -> int:
        self._maybe_fail()
        self._ids += 1
        self.contents[self._ids] = text
        self.ops.append(Op("post", self._ids, text))
        return self._ids

    async def edit(self, message: int, text: str) -> None:
        self._maybe_fail()
        self.contents[message] = text
        self.ops.append(Op("edit", message, text))

    async def delete(self, message: int) -> None:
        self._maybe_fail()
        del self.contents[message]
        self.ops.append(Op("delete", message, ""))


def streamed(sink: RecordingSink, interval_s: float, words: WordFilter = WORDS) -> StreamedReply[int]:
    reply: StreamedReply[int] = StreamedReply(sink, words, lambda raw: raw.strip(), interval_s)
    reply.start()
    return reply


async def feed(reply: StreamedReply[int], pieces: list[str], gap_s: float) -> str:
    raw = ""
    for piece in pieces:
        raw += piece
        reply.feed(raw)
        await asyncio.sleep(gap_s)
    return raw


async def test_pieces_are_coalesced_into_at_most_one_edit_per_interval() -> None:
    sink = RecordingSink()
    reply = streamed(sink, interval_s=0.2)
    started = time.monotonic()
    raw = await feed(reply, [f"語{i} " for i in range(60)], gap_s=0.01)
    messages = await reply.finish(raw.strip())
    elapsed = time.monotonic() - started
    assert messages == [1] and sink.contents == {1: raw.strip()}
    assert sink.ops[0].action == "post" and sink.ops[0].text == "語0"  # the first words at once
    assert all(op.message == 1 for op in sink.ops)
    assert len(sink.ops) <= elapsed / 0.2 + 2  # bounded by time, not by the 60 pieces
    gaps = [b.at - a.at for a, b in zip(sink.ops, sink.ops[1:], strict=False)]
    assert min(gaps) >= 0.2 * 0.95


async def test_a_reply_past_the_limit_continues_in_a_new_message() -> None:
    sink = RecordingSink(limit=100)
    reply = streamed(sink, interval_s=0.05)
    sentences = [f"これは{i:02d}番目の文です。" for i in range(40)]
    raw = await feed(reply, sentences, gap_s=0.005)
    final = raw.strip()
    messages = await reply.finish(final)
    chunks = split_message(final, 100)
    assert len(messages) == len(chunks) > 1
    assert [sink.contents[m] for m in messages] == chunks
    assert all(len(op.text) <= 100 for op in sink.ops)
    posts = [op.message for op in sink.ops if op.action == "post"]
    assert posts == sorted(posts) == messages  # in reading order, each posted once


async def test_a_rate_limited_edit_waits_for_retry_after() -> None:
    sink = RecordingSink()
    reply = streamed(sink, interval_s=0.05)
    reply.feed("はじめの言葉")
    await asyncio.sleep(0.1)
    assert [op.action for op in sink.ops] == ["post"]
    sink.failures.append(SendError("429", retry_after=0.5))
    refused_at = time.monotonic()
    reply.feed("はじめの言葉 続き")
    messages = await reply.finish("はじめの言葉 続きと終わり")
    edits = [op for op in sink.ops if op.action == "edit"]
    assert edits and edits[0].at - refused_at >= 0.5 * 0.95
    assert sink.contents[messages[0]] == "はじめの言葉 続きと終わり"


async def test_a_blocked_word_split_across_pieces_never_reaches_the_sink() -> None:
    sink = RecordingSink()
    reply = streamed(sink, interval_s=0.01)
    await feed(reply, ["きみは", "ほんとに", "ば", "・", "か", "だね", "ほんとに"], gap_s=0.03)
    await reply.withdraw()  # the final text is blocked: the chat layer withdraws the reply
    assert sink.ops, "the clean start should have been shown"
    for op in sink.ops:
        assert WORDS.check(op.text) == [] and WORDS.partial_tail(op.text) == 0, op
    assert sink.contents == {}


async def test_withdraw_deletes_every_posted_message_and_stops() -> None:
    sink = RecordingSink(limit=64)
    reply = streamed(sink, interval_s=0.01)
    await feed(reply, ["あ" * 50, "い" * 50, "う" * 50], gap_s=0.05)
    assert len(sink.contents) >= 2
    await reply.withdraw()
    assert sink.contents == {}
    count = len(sink.ops)
    reply.feed("もっと")
    await asyncio.sleep(0.05)
    assert len(sink.ops) == count


async def test_a_message_deleted_by_someone_else_stops_the_updates() -> None:
    sink = RecordingSink()
    reply = streamed(sink, interval_s=0.01)
    await feed(reply, ["一つ目"], gap_s=0.05)
    sink.failures.append(SendError("gone", gone=True))
    await feed(reply, ["一つ目 二つ目"], gap_s=0.05)
    count = len(sink.ops)
    assert await reply.finish("一つ目 二つ目 三つ目") == [] and not reply.complete
    # nothing posted or edited after a moderator removed it, and what is left goes too
    assert [op.action for op in sink.ops[count:]] == ["delete"] and sink.contents == {}


async def test_finish_without_any_earlier_piece_posts_the_final_text() -> None:
    sink = RecordingSink()
    reply = streamed(sink, interval_s=1.0)
    assert await reply.finish("一度に全部") == [1]
    assert [(op.action, op.text) for op in sink.ops] == [("post", "一度に全部")]


async def test_a_failed_final_edit_is_retried() -> None:
    sink = RecordingSink()
    reply = streamed(sink, interval_s=0.01)
    await feed(reply, ["途中"], gap_s=0.05)
    sink.failures += [SendError("502"), SendError("429", retry_after=0.05)]
    messages = await reply.finish("途中と最後")
    assert sink.contents[messages[0]] == "途中と最後"


async def test_withdraw_while_the_final_edit_waits_for_the_pacer() -> None:
    """The question is deleted after generation ended, while the final edit waits out the
    interval: the reply is withdrawn all the same, and finish reports no messages."""
    sink = RecordingSink()
    reply = streamed(sink, interval_s=1.0)
    await feed(reply, ["途中まで"], gap_s=0.05)
    finishing = asyncio.ensure_future(reply.finish("途中までと最後"))
    await asyncio.sleep(0.1)
    assert not finishing.done()  # waiting for the interval
    await reply.withdraw()
    assert await finishing == [] and sink.contents == {}
    assert [op.action for op in sink.ops] == ["post", "delete"]
