"""How a streamed reply ends (bot/text/streaming.py): a sink that shows "still being written"
beside the text (Discord: Stop, then Regenerate) learns of the last round and gets its first
message edited in it, paced like any round; Stop keeps exactly what is shown."""

from __future__ import annotations

import asyncio
import time

from bot.text.streaming import FinishingSink, StreamedReply
from bot.text.wordfilter import WordFilter
from tests.test_streaming import RecordingSink

WORDS = WordFilter([])


class DoneSink(RecordingSink):
    """Records, per edit and post, whether the sink had been told the reply is done."""

    def __init__(self, limit: int = 2000) -> None:
        super().__init__(limit)
        self.done = False
        self.marks: list[tuple[str, int, bool]] = []

    def finishing(self) -> None:
        self.done = True

    async def post(self, text: str) -> int:
        message = await super().post(text)
        self.marks.append(("post", message, self.done))
        return message

    async def edit(self, message: int, text: str) -> None:
        await super().edit(message, text)
        self.marks.append(("edit", message, self.done))


def streamed(sink: RecordingSink, interval_s: float) -> StreamedReply[int]:
    reply: StreamedReply[int] = StreamedReply(sink, WORDS, lambda raw: raw, interval_s)
    reply.start()
    return reply


async def test_the_last_round_edits_the_first_message_even_when_its_text_is_unchanged() -> None:
    sink = DoneSink(limit=200)
    assert isinstance(sink, FinishingSink) and not isinstance(RecordingSink(), FinishingSink)
    reply = streamed(sink, interval_s=0.05)
    text = "一二三四五六七八九十。" * 30  # two messages at a limit of 200
    reply.feed(text)
    await asyncio.sleep(0.3)  # shown in full before the end
    assert len(sink.contents) == 2 and "".join(sink.contents.values()) == text
    before = len(sink.marks)
    await reply.finish(text)
    assert sink.marks[before:] == [("edit", 1, True)]  # one edit, of the first message only


async def test_without_the_capability_an_unchanged_end_costs_nothing() -> None:
    sink = RecordingSink()
    reply = streamed(sink, interval_s=0.05)
    reply.feed("おしまい")
    await asyncio.sleep(0.15)
    before = len(sink.ops)
    await reply.finish("おしまい")
    assert len(sink.ops) == before


async def test_a_reply_done_before_its_first_post_is_posted_done() -> None:
    sink = DoneSink()
    reply: StreamedReply[int] = StreamedReply(sink, WORDS, lambda raw: raw, 0.05)
    await reply.finish("一気に書けた")
    assert sink.marks == [("post", 1, True)]


async def test_stop_keeps_what_is_shown_and_ends_with_a_paced_last_round() -> None:
    sink = DoneSink()
    interval = 0.2
    reply = streamed(sink, interval_s=interval)
    reply.feed("ここまで見えた")
    await asyncio.sleep(0.05)
    reply.feed("ここまで見えたけど、この先はまだ")  # not shown yet: the interval has not passed
    kept = await reply.stop_here()
    assert kept == "ここまで見えた" and sink.contents == {1: "ここまで見えた"}
    post, edit = sink.ops
    assert (post.action, edit.action) == ("post", "edit") and sink.marks[-1] == ("edit", 1, True)
    assert edit.at - post.at >= interval * 0.9  # the last round waited its turn
    assert await reply.finish(kept) == [1] and len(sink.ops) == 2  # finishing afterwards adds nothing


async def test_stop_before_anything_was_shown_keeps_nothing() -> None:
    sink = DoneSink()
    reply = streamed(sink, interval_s=0.05)
    started = time.monotonic()
    assert await reply.stop_here() == ""
    assert sink.ops == [] and time.monotonic() - started < 1
