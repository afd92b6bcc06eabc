"""Showing a reply while it is written: what may be visible, when to edit, where to split.

Discord-free. A front end hands :class:`StreamedReply` the raw text as it grows; the reply
posts its first message as soon as there are words to show, then edits it at most once per
interval (pieces that arrive in between are coalesced into one edit), continues in a new
message past the length limit, and ends with one edit to the final text. The chat platform is
behind :class:`MessageSink`, so the rules here are tested without a client
(``bot/discord/streaming.py`` is the Discord sink).

Every state shown passes the output word filter and has its mentions defused: a tail that
could still become a blocked word or a mention is held back until the next piece decides it,
and a state that fails the filter is not shown at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar, runtime_checkable

from bot.text.edit_budget import EditBudget
from bot.text.mentions import defuse_mentions
from bot.text.splitter import split_message
from bot.text.wordfilter import WordFilter

log = logging.getLogger(__name__)
M = TypeVar("M")
# The end of a text that may still become a mention: "@", "@ever", "<", "<@", "<@!12".
_MENTION_START = re.compile(
    r"(?:@(?:e(?:v(?:e(?:r(?:y(?:o(?:n)?)?)?)?)?)?|h(?:e(?:r)?)?)?|<(?:@[!&]?\d*)?)$", re.IGNORECASE
)
# A final round that fails this often (not counting rate limits) is given up: discord.py has
# already retried each request itself. Rate limits are waited out, up to FINAL_WAIT_S in all.
FINAL_ATTEMPTS = 2
FINAL_WAIT_S = 60.0


# -- what is visible -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Visible:
    """One screened state: ``text`` may be shown (mentions defused) unless ``blocked`` is set."""

    text: str
    blocked: tuple[str, ...] = ()


def mention_tail(text: str) -> int:
    """How many characters at the end of ``text`` could still grow into a mention (0 if none)."""
    match = _MENTION_START.search(text)
    return len(match.group(0)) if match else 0


def screen(draft: str, words: WordFilter) -> Visible:
    """What of ``draft`` (cleaned reply text so far) may be shown now.

    Holds back a tail that could be the start of a blocked word or a mention; the rest is
    checked against the word filter (``blocked`` lists what it found: show nothing new) and
    has its mentions defused.
    """
    held = max(mention_tail(draft), words.partial_tail(draft))
    shown = draft[: len(draft) - held].rstrip()
    blocked = tuple(words.check(shown))
    return Visible("" if blocked else defuse_mentions(shown), blocked)


def layout(text: str, limit: int) -> list[str]:
    """The messages ``text`` is shown in: chunks of at most ``limit`` characters (none if blank)."""
    return split_message(text, limit) if text.strip() else []


@dataclass(frozen=True)
class Step:
    """One change to the posted messages: ``post`` a new one, ``edit`` or ``delete`` message ``index``."""

    action: str  # "post" | "edit" | "delete"
    index: int
    text: str = ""


def plan(posted: Sequence[str], target: Sequence[str]) -> list[Step]:
    """The steps that turn messages showing ``posted`` into ones showing ``target``.

    Only messages whose text changes are edited; new chunks are posted in order; surplus
    messages are deleted from the last one back.
    """
    steps = [Step("edit", i, text) for i, text in enumerate(target[: len(posted)]) if posted[i] != text]
    steps += [Step("post", i, text) for i, text in enumerate(target) if i >= len(posted)]
    steps += [Step("delete", i) for i in range(len(posted) - 1, len(target) - 1, -1)]
    return steps


# -- when to edit ----------------------------------------------------------------------------------


class EditPacer:
    """At most one round of changes per ``interval_s``, and none before a Retry-After has passed.

    Times are seconds on ``clock`` (monotonic). The interval runs from the end of the last
    round, so a round that discord.py held back for a 429 pushes the next one back as well.
    """

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be > 0")
        self.interval_s = interval_s
        self.clock = clock
        self._not_before = float("-inf")

    def delay(self) -> float:
        """Seconds to wait before the next round may start (0 when it may start now)."""
        return max(0.0, self._not_before - self.clock())

    def done(self) -> None:
        """A round has just finished."""
        self._not_before = max(self._not_before, self.clock() + self.interval_s)

    def rate_limited(self, retry_after_s: float) -> None:
        """The platform answered 429 with ``Retry-After: retry_after_s``."""
        self._not_before = max(self._not_before, self.clock() + max(retry_after_s, 0.0))


# -- the platform ----------------------------------------------------------------------------------


class SendError(Exception):
    """A post, edit or delete failed. ``retry_after`` (seconds) for a rate limit; ``gone`` when
    the message no longer exists (someone deleted it); ``permanent`` when trying again cannot
    help (the thread was archived or locked, permissions or the webhook were taken away)."""

    def __init__(
        self, message: str, *, retry_after: float | None = None, gone: bool = False, permanent: bool = False
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.gone = gone
        self.permanent = permanent


class MessageSink(Protocol[M]):
    """Where a streamed reply is shown. Each method raises :class:`SendError` on failure."""

    @property
    def limit(self) -> int:
        """Characters one message may hold (the platform's limit less any name prefix)."""
        ...

    async def post(self, text: str) -> M: ...

    async def edit(self, message: M, text: str) -> None: ...

    async def delete(self, message: M) -> None: ...


@runtime_checkable
class FinishingSink(Protocol):
    """A sink that shows, beside the text, whether the reply is still being written (Discord: a
    Stop button that becomes Regenerate). :meth:`finishing` is called before the last round,
    and that round always edits the first message (even when its text is unchanged), so the
    change rides on an edit that is paced like any other instead of costing one more."""

    def finishing(self) -> None: ...


# -- the reply -------------------------------------------------------------------------------------


class StreamedReply(Generic[M]):
    """Keeps a row of messages showing the newest visible state of a reply being written.

    Feed it with :meth:`feed` (the raw text so far; cheap, called per piece); one task does all
    posting and editing, so the order of changes is never in doubt. End it with
    :meth:`finish` (the final, filtered text) or :meth:`withdraw` (delete what was posted).

    After :meth:`finish`, :attr:`complete` says whether the messages show the final text; when
    they do not (the last round failed for good, or someone deleted one of them), the caller
    decides what the channel should show (``bot/discord/streaming.py: settle``). Rounds draw on
    ``budget``, shared by every reply behind the same webhook (:mod:`bot.text.edit_budget`).
    """

    def __init__(
        self,
        sink: MessageSink[M],
        words: WordFilter,
        draft: Callable[[str], str],
        interval_s: float,
        *,
        on_first_post: Callable[[], Awaitable[None]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        budget: EditBudget | None = None,
    ) -> None:
        self.sink = sink
        self.words = words
        self.draft = draft  # raw text so far -> cleaned text that may be shown (renderer rules)
        self.pacer = EditPacer(interval_s, clock)
        self.budget = budget  # None: this reply alone decides its pace
        self.on_first_post = on_first_post
        self.complete = False  # the messages show the final text
        self.stuck: list[tuple[M, str]] = []  # messages a deletion could not remove (still shown)
        self.posted: list[tuple[M, str]] = []
        self._raw = ""
        self._shown = ""  # the visible text of the last round
        self._final: str | None = None
        self._withdraw = False
        self._keep = False  # stopped by a member: what is shown now is the reply
        self._gone = False  # a message of ours was deleted by someone: stop touching the reply
        self._permanent = False  # a round failed in a way no later round can fix
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()  # cuts a pacing wait short (withdrawal)
        self._task: asyncio.Task[None] | None = None

    @property
    def messages(self) -> list[M]:
        return [m for m, _ in self.posted]

    @property
    def withdrawn(self) -> bool:
        return self._withdraw

    @property
    def interrupted(self) -> bool:
        """Someone deleted one of the reply's messages (a moderator): it is not to be shown again."""
        return self._gone and not self._permanent

    @property
    def shown_text(self) -> str:
        """What the channel shows of the reply now (its messages' texts, joined)."""
        return "".join(text for _, text in self.posted)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="streamed-reply")

    def feed(self, raw: str) -> None:
        """The raw generated text so far (not cleaned; it is screened when next shown)."""
        self._raw = raw
        self._wake.set()

    async def finish(self, text: str) -> list[M]:
        """Show ``text`` (final, filtered, mentions defused) once the pacer allows; returns the
        messages that show it, in order: empty unless :attr:`complete`."""
        self._final = text
        self._wake.set()
        await self._join()
        return self.messages if self.complete else []

    async def withdraw(self) -> None:
        """Delete every message posted so far and stop (the reply is not to be seen)."""
        self._withdraw = True
        self._stop.set()
        self._wake.set()
        await self._join()
        if self.posted:  # never started, or it ended before the withdrawal
            await self._delete_all()

    async def stop_here(self) -> str:
        """Stop updating and keep what is shown (a member pressed Stop) as the final text;
        returns it (screened and defused, "" when nothing was shown). A round already under way
        ends first, so the text returned is what the messages show; then the last round runs
        as after :meth:`finish` (paced, and telling a :class:`FinishingSink` it is done)."""
        self._keep = True
        self._wake.set()
        await self._join()
        return self._shown

    def cancel(self) -> None:
        """Stop updating at once, leaving what is posted (the owner is going away)."""
        if self._task is not None:
            self._task.cancel()

    async def _join(self) -> None:
        self.start()
        assert self._task is not None
        await asyncio.shield(self._task)

    async def _run(self) -> None:
        attempts = 0
        waited = 0.0  # rate-limit waits of the final round, seconds
        while True:
            await self._wake.wait()
            if self._withdraw:
                await self._delete_all()
                return
            if self._keep and self._final is None:
                self._final = self._shown  # stopped: what is shown is the reply
            delay = self.pacer.delay()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
                continue  # look again: withdrawn, finished, or simply due now
            self._wake.clear()
            final = self._final
            shown_now: str | None = None
            if self._gone:
                if final is not None:
                    await self._delete_all()  # a moderator removed part of it: none of it stays
                    return
                continue
            if final is not None:
                if isinstance(self.sink, FinishingSink):
                    self.sink.finishing()
                target = layout(final, self.sink.limit)
            else:
                visible = screen(self.draft(self._raw), self.words)
                if visible.blocked or self._shown.startswith(visible.text):
                    # Nothing new that may be shown; a tail held back now that was shown before
                    # (it looked harmless then) is left as it is rather than flickering away.
                    continue
                target = layout(visible.text, self.sink.limit)
                shown_now = visible.text
            try:
                if self.budget is not None:
                    await self.budget.acquire(final=final is not None)
                await self._apply(target, last_round=final is not None)
            except Exception as exc:
                if not isinstance(exc, SendError):  # a bug or an unforeseen client error
                    log.exception("updating a streamed reply failed")
                    exc = SendError(str(exc))
                if exc.gone:
                    log.info("a streamed reply's message was deleted; it is no longer updated")
                    self._gone = True
                elif exc.retry_after is not None:
                    self.pacer.rate_limited(exc.retry_after)
                    if self.budget is not None:
                        await self.budget.rate_limited(exc.retry_after)  # every reply behind it waits
                else:
                    log.warning("could not update a streamed reply: %s", exc)
                    self.pacer.done()
                if final is not None:
                    if exc.retry_after is not None:
                        waited += exc.retry_after
                    else:
                        attempts += 1
                    if self._gone:
                        self._wake.set()  # the next turn removes the rest
                        continue
                    if exc.permanent or attempts >= FINAL_ATTEMPTS or waited > FINAL_WAIT_S:
                        log.warning(
                            "gave up the final edit of a streamed reply (%s; %d tries, %.0f s rate-limited)",
                            exc,
                            attempts,
                            waited,
                        )
                        return
                elif exc.permanent:
                    self._gone = self._permanent = True  # no later round can succeed; finish decides
                self._wake.set()  # try again once the pacer allows
                continue
            if shown_now is None:
                self.complete = True
                return  # the final text is shown
            self._shown = shown_now

    async def _apply(self, target: list[str], *, last_round: bool = False) -> None:
        """One round: make the messages show ``target``; raises SendError (done steps are kept)."""
        steps = plan([text for _, text in self.posted], target)
        touch_first = last_round and self.posted and target and isinstance(self.sink, FinishingSink)
        if touch_first and not any(step.index == 0 and step.action == "edit" for step in steps):
            steps.insert(0, Step("edit", 0, target[0]))  # the sink shows the reply is done
        if not steps:
            return
        first = not self.posted
        try:
            for step in steps:
                if step.action == "post":
                    self.posted.append((await self.sink.post(step.text), step.text))
                elif step.action == "edit":
                    message = self.posted[step.index][0]
                    await self.sink.edit(message, step.text)
                    self.posted[step.index] = (message, step.text)
                else:
                    await self.sink.delete(self.posted[step.index][0])
                    del self.posted[step.index]
        finally:
            if first and self.posted and self.on_first_post is not None:
                try:
                    await self.on_first_post()
                except Exception:  # stopping a typing indicator must not lose the reply
                    log.exception("first-post callback failed")
        self.pacer.done()

    async def _delete_all(self) -> None:
        """Delete every posted message; one that cannot be deleted (not gone) is kept in :attr:`stuck`."""
        while self.posted:
            message, _text = self.posted.pop()
            try:
                await self.sink.delete(message)
            except SendError as exc:
                if not exc.gone:
                    log.warning("could not delete a withdrawn reply's message: %s", exc)
                    self.stuck.insert(0, (message, _text))
