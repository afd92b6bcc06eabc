"""How a streamed reply ends when Discord refuses its last round, and how replies sharing one
webhook share its limit: the per-webhook edit budget (finals first, a 429 pauses everyone), the
final round's retries (rate limits waited out, permanent refusals given up at once), and
``settle``, which leaves the channel showing the final text, a draft it could not remove (said
so), or nothing — never a draft beside a row that claims the reply was shown."""

from __future__ import annotations

import asyncio
import time

import pytest

from bot.discord.sender import Shown
from bot.discord.streaming import settle
from bot.text import streaming
from bot.text.edit_budget import EditBudget, EditBudgets
from bot.text.streaming import SendError, StreamedReply
from tests.test_streaming import WORDS, RecordingSink, feed


def streamed(
    sink: RecordingSink, interval_s: float = 0.01, budget: EditBudget | None = None
) -> StreamedReply[int]:
    reply: StreamedReply[int] = StreamedReply(sink, WORDS, lambda raw: raw.strip(), interval_s, budget=budget)
    reply.start()
    return reply


# -- the budget ----------------------------------------------------------------------------------


async def test_the_budget_grants_capacity_rounds_per_period() -> None:
    budget = EditBudget(capacity=3, period_s=0.3)
    began = time.monotonic()
    times = []
    for _ in range(7):
        await budget.acquire(final=False)
        times.append(time.monotonic() - began)
    assert times[2] < 0.1 and times[3] >= 0.3 * 0.95 and times[6] >= 0.6 * 0.95
    for i in range(len(times) - 3):
        assert times[i + 3] - times[i] >= 0.3 * 0.95  # never more than 3 in any 0.3 s


async def test_a_final_round_goes_before_waiting_drafts() -> None:
    budget = EditBudget(capacity=1, period_s=0.2)
    await budget.acquire(final=False)  # the window is full
    order: list[str] = []

    async def take(name: str, final: bool, delay: float) -> None:
        await asyncio.sleep(delay)
        await budget.acquire(final=final)
        order.append(name)

    await asyncio.gather(take("draft-1", False, 0), take("draft-2", False, 0.01), take("final", True, 0.05))
    assert order[0] == "final"  # it arrived last, and went first


async def test_a_rate_limit_pauses_every_reply_sharing_the_budget() -> None:
    budget = EditBudget(capacity=10, period_s=1.0)
    await budget.rate_limited(0.3)
    began = time.monotonic()
    await asyncio.gather(budget.acquire(final=True), budget.acquire(final=False))
    assert time.monotonic() - began >= 0.3 * 0.95


def test_budgets_are_one_per_key() -> None:
    budgets = EditBudgets()
    assert budgets.for_key(1) is budgets.for_key(1) and budgets.for_key(1) is not budgets.for_key(2)
    with pytest.raises(ValueError):
        EditBudget(capacity=0)


def test_budgets_keep_the_channels_used_last_so_memory_stays_bounded() -> None:
    budgets = EditBudgets(max_keys=3)
    one, two, three = (budgets.for_key(k) for k in (1, 2, 3))
    assert budgets.for_key(1) is one  # used again: now the most recent
    budgets.for_key(4)  # one too many: the least recently used, 2, goes
    assert len(budgets) == 3
    assert budgets.for_key(1) is one and budgets.for_key(3) is three
    assert budgets.for_key(2) is not two  # made afresh


async def test_replies_sharing_a_budget_stay_within_it_and_all_finish() -> None:
    budget = EditBudget(capacity=3, period_s=0.3)
    sinks = [RecordingSink() for _ in range(3)]
    replies = [streamed(sink, interval_s=0.02, budget=budget) for sink in sinks]
    raws = await asyncio.gather(*(feed(r, [f"{i}語 " for i in range(20)], gap_s=0.01) for r in replies))
    done = await asyncio.gather(*(r.finish(raw.strip()) for r, raw in zip(replies, raws, strict=True)))
    assert all(
        d == [1] and s.contents == {1: raw.strip()} for d, s, raw in zip(done, sinks, raws, strict=True)
    )
    times = sorted(op.at for s in sinks for op in s.ops)
    for i in range(len(times) - 3):
        assert times[i + 3] - times[i] >= 0.3 * 0.9, "more than 3 rounds in 0.3 s across the replies"


# -- the final round's retries -------------------------------------------------------------------


async def test_rate_limits_on_the_final_round_are_waited_out_not_counted(monkeypatch) -> None:
    monkeypatch.setattr(streaming, "FINAL_ATTEMPTS", 2)
    sink = RecordingSink()
    reply = streamed(sink)
    await feed(reply, ["途中"], gap_s=0.05)
    sink.failures += [SendError("429", retry_after=0.02) for _ in range(6)]  # more than FINAL_ATTEMPTS
    assert await reply.finish("途中と最後") == [1] and reply.complete
    assert sink.contents == {1: "途中と最後"}


async def test_a_permanent_refusal_gives_up_at_once() -> None:
    sink = RecordingSink()
    reply = streamed(sink)
    await feed(reply, ["途中"], gap_s=0.05)
    sink.failures += [SendError("thread archived", permanent=True), SendError("never reached")]
    assert await reply.finish("途中と最後") == [] and not reply.complete
    assert len(sink.failures) == 1  # one try, not FINAL_ATTEMPTS
    assert reply.shown_text == "途中"


async def test_other_failures_give_up_after_the_attempts() -> None:
    sink = RecordingSink()
    reply = streamed(sink)
    await feed(reply, ["途中"], gap_s=0.05)
    sink.failures += [SendError("503") for _ in range(streaming.FINAL_ATTEMPTS)]
    assert await reply.finish("途中と最後") == [] and not reply.complete


# -- settle: what the channel shows is what the row says ----------------------------------------


def whole(sink: RecordingSink, posted: list[str]):
    async def post() -> Shown:
        message = await sink.post(posted[0])
        return Shown([message], "full")

    return post


async def test_a_final_edit_refused_for_good_replaces_the_drafts_with_the_whole_reply() -> None:
    sink = RecordingSink()
    reply = streamed(sink)
    await feed(reply, ["途中"], gap_s=0.05)
    sink.failures.append(SendError("webhook gone", permanent=True))
    shown = await settle(reply, "途中と最後", whole(sink, ["途中と最後"]))
    assert shown.state == "full" and sink.contents == {2: "途中と最後"} and shown.messages == [2]


async def test_drafts_that_cannot_be_removed_are_reported_as_shown_in_part() -> None:
    sink = RecordingSink()
    reply = streamed(sink)
    await feed(reply, ["途中まで"], gap_s=0.05)
    sink.failures += [SendError("archived", permanent=True), SendError("archived", permanent=True)]
    posted = []

    async def post() -> Shown:
        posted.append(1)
        return Shown([], "none")

    shown = await settle(reply, "途中までと最後", post)
    assert (shown.state, shown.text, shown.messages) == ("partial", "途中まで", [1]) and posted == []
    assert sink.contents == {1: "途中まで"}


async def test_a_reply_a_moderator_deleted_is_not_posted_again() -> None:
    sink = RecordingSink()
    reply = streamed(sink)
    await feed(reply, ["一つ目"], gap_s=0.05)
    sink.failures.append(SendError("gone", gone=True))
    await feed(reply, ["一つ目 二つ目"], gap_s=0.05)
    posted = []

    async def post() -> Shown:
        posted.append(1)
        return Shown([9], "full")

    shown = await settle(reply, "一つ目 二つ目 三つ目", post)
    assert shown.state == "none" and shown.messages == [] and posted == []


async def test_settle_after_the_question_was_withdrawn_posts_nothing() -> None:
    sink = RecordingSink()
    reply = streamed(sink, interval_s=1.0)
    await feed(reply, ["途中"], gap_s=0.05)
    posted = []

    async def post() -> Shown:
        posted.append(1)
        return Shown([9], "full")

    settling = asyncio.ensure_future(settle(reply, "途中と最後", post))
    await asyncio.sleep(0.1)
    await reply.withdraw()
    shown = await settling
    assert shown.state == "none" and posted == [] and sink.contents == {}
