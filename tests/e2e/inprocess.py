"""The real Discord app in the test's own process, against the loopback emulator, on a fake runtime.

``python -m bot`` in a subprocess (``tests/e2e/harness.py``) is the end-to-end check with a real
model; this is the same ``OshaberiBot`` with the same cogs, logging in over REST and a gateway
websocket to the emulator, but with :class:`tests.fake_runtime.FakeRuntime` instead of a model,
so a test can script each reply (hold it, fail it, make it long) and look at the bot's store.

Each helper waits until the bot has received what it triggered and every handler discord.py
started for it has finished (:meth:`EmulatedBot.settle`), so a test asserts on a quiet bot.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import discord

from bot.config import ChatSettings, DiscordSettings, PathSettings, Settings
from bot.discord.api_base import point_discord_at
from bot.discord.app import OshaberiBot
from bot.store.store import ExportRow, Store
from tests.discord_emulator import Call, DiscordEmulator, InteractionRecord, StoredMessage
from tests.fake_runtime import FakeChat, FakeRuntime

APPLICATION_COMMAND_AUTOCOMPLETE = 4  # the interaction type (Discord's API docs)
TOKEN = "inprocess-secret-token-do-not-log"
WAIT_S = 10.0


class RecordingBot(OshaberiBot):
    """The production bot, recording the events it dispatches so a test knows what it received."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.dispatched: list[tuple[str, tuple[Any, ...]]] = []
        # discord.py waits this long after the last GUILD_CREATE before READY (2 s by default);
        # the emulator sends its one guild at once.
        self._connection.guild_ready_timeout = 0.05

    def dispatch(self, event_name: str, /, *args: Any, **kwargs: Any) -> None:
        self.dispatched.append((event_name, args))
        super().dispatch(event_name, *args, **kwargs)

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        """No 5 s pause before a re-identify in tests."""


def _is_handler(task: asyncio.Task[Any]) -> bool:
    """A task discord.py started for one event or interaction (not the gateway, nor a loop)."""
    name = task.get_name()
    coro = getattr(task.get_coro(), "__name__", "")
    return name.startswith(("discord-ui", "CommandTree", "discord.py:")) or coro == "_run_event"


@dataclass
class EmulatedBot:
    emu: DiscordEmulator
    bot: RecordingBot
    runtime: FakeRuntime
    _seen: dict[str, int] = field(default_factory=dict)  # bot messages per channel, deleted ones too

    # -- who and where (ints, as the bot sees them) ------------------------------------------------

    @property
    def store(self) -> Store:
        assert self.bot.store is not None
        return self.bot.store

    @property
    def fake_chat(self) -> FakeChat:
        return self.runtime.chat

    def channel(self, key: str) -> int:
        return int(self.emu.channel_id(key))

    def user(self, key: str) -> int:
        return int(self.emu.user_id(key))

    @property
    def chat(self) -> int:
        return self.channel("chat")

    @property
    def review(self) -> int:
        return self.channel("review")

    @property
    def other(self) -> int:
        return self.channel("general")

    @property
    def alice(self) -> int:
        return self.user("member")

    @property
    def bob(self) -> int:
        return self.user("member2")

    @property
    def mod(self) -> int:
        return self.user("moderator")

    @property
    def me(self) -> int:
        return int(self.emu.application_id)

    async def exported(self, persona_id: str | None = None) -> list[ExportRow]:
        """What ``export-reviews`` would take if the operator listed every guild of this emulator
        (so their approved replies train): the review flow's result, whichever server it was in.
        Which servers train is tested with the store's own ``listed_servers``."""
        listed = [int(g) for g in self.emu.state.guilds]
        return await self.store.approved_for_export(persona_id, listed_servers=listed)

    def set_discord(self, **changes: Any) -> None:
        s = self.bot.settings
        self.bot.settings = replace(s, discord=replace(s.discord, **changes))

    def set_chat(self, **changes: Any) -> None:
        s = self.bot.settings
        self.bot.settings = replace(s, chat=replace(s.chat, **changes))

    # -- waiting ----------------------------------------------------------------------------------

    async def settle(self, timeout: float = WAIT_S) -> None:
        """Wait for every task discord.py started for an event or interaction to finish."""
        me = asyncio.current_task()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            busy = [t for t in asyncio.all_tasks() if t is not me and not t.done() and _is_handler(t)]
            if not busy:
                await asyncio.sleep(0.01)  # a handler may be about to start another (a view's callback)
                if not [t for t in asyncio.all_tasks() if t is not me and not t.done() and _is_handler(t)]:
                    return
                continue
            await asyncio.wait(busy, timeout=max(0.01, deadline - loop.time()))
        raise AssertionError("the bot's handlers did not finish in time")

    async def received(self, event: str, match: Callable[[Any], bool], timeout: float = WAIT_S) -> Any:
        """The first ``event`` the bot dispatched whose first argument matches; waits for it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for name, args in self.bot.dispatched:
                if name == event and args and match(args[0]):
                    return args[0]
            if loop.time() > deadline:
                raise AssertionError(f"the bot never received the {event} event")
            await asyncio.sleep(0.005)

    # -- what people do ---------------------------------------------------------------------------

    async def say(self, text: str, *, channel: str = "chat", user: str = "member", **kwargs: Any) -> int:
        """``user`` posts ``text`` in ``channel``; returns once the bot has handled it (the message id)."""
        payload = await self.emu.send_message(channel, user, text, **kwargs)
        message_id = int(payload["id"])
        await self.received("message", lambda m: m.id == message_id)
        await self.settle()
        return message_id

    async def start_thread(
        self,
        key: str,
        name: str,
        *,
        channel: str = "chat",
        user: str = "member",
        from_message: int | None = None,
    ) -> int:
        """``user`` starts a thread (from ``from_message`` or on its own) known as ``key`` to later
        helpers; returns once the bot has it (its id)."""
        thread = await self.emu.create_thread(channel, user, name, message_id=from_message, key=key)
        thread_id = int(thread["id"])
        await self.received("thread_create", lambda t: t.id == thread_id)
        await self.settle()
        return thread_id

    async def forum_post(
        self, key: str, name: str, content: str, *, forum: str = "forum", user: str = "member"
    ) -> int:
        """``user`` opens a post in ``forum`` known as ``key``; returns once the bot has handled
        its first message (whose id is the post's)."""
        first = await self.emu.create_forum_post(forum, user, name, content, key=key)
        post_id = int(first["id"])
        await self.received("message", lambda m: m.id == post_id)
        await self.settle()
        return post_id

    async def delete(self, message_id: int, *, channel: str = "chat") -> None:
        """A user deletes their message; returns once the bot has handled the deletion."""
        await self.emu.delete_message(channel, message_id)
        await self.received("raw_message_delete", lambda e: e.message_id == message_id)
        await self.settle()

    async def command(
        self,
        name: str,
        *,
        user: str = "member",
        channel: str = "chat",
        options: dict[str, Any] | None = None,
        **more: Any,
    ) -> Interaction:
        """``user`` runs ``/name`` in ``channel`` with ``options`` and ``more`` (None values left
        out; ``options`` for an option named like a parameter here, ``channel``); returns its answers."""
        mark = self.emu.mark()
        given = {**(options or {}), **more}
        record = await self.emu.slash_command(
            channel, user, name, {k: v for k, v in given.items() if v is not None}
        )
        await self.received("interaction", lambda i: i.id == int(record.id))
        await self.settle()
        return Interaction(self.emu, record, mark)

    async def autocomplete(
        self, name: str, option: str, value: str, *, user: str = "member"
    ) -> list[dict[str, Any]]:
        """The choices the bot offers while ``user`` types ``value`` into ``/name``'s ``option``."""
        mark = self.emu.mark()
        data = self.emu.hooks.command_data(name, {option: value})
        leaves = data["options"]
        while leaves and leaves[0]["type"] in (1, 2):  # subcommand (group): the options are inside
            leaves = leaves[0]["options"]
        for opt in leaves:
            opt["focused"] = opt["name"] == option
        record, payload = self.emu.hooks.interaction(
            APPLICATION_COMMAND_AUTOCOMPLETE, self.emu.channel_id("chat"), self.emu.user_id(user), data
        )
        self.emu.gateway.dispatch("INTERACTION_CREATE", payload)
        await self.received("interaction", lambda i: i.id == int(record.id))
        await self.settle()
        answer = Interaction(self.emu, record, mark)
        assert answer.callback["type"] == 8, answer.callback
        return list(answer.callback["data"].get("choices") or [])

    async def click(
        self, message_id: int, custom_id: str, *, user: str, channel: str = "review", settle: bool = True
    ) -> Interaction:
        """``user`` clicks a button; returns once the bot is quiet again, or (``settle=False``,
        while a reply is held in flight) once it has answered this click."""
        mark = self.emu.mark()
        record = await self.emu.click_button(channel, user, message_id, custom_id)
        await self.received("interaction", lambda i: i.id == int(record.id))
        if settle:
            await self.settle()
        else:
            await self.answered(record)
        return Interaction(self.emu, record, mark)

    def prepare_click(
        self, message_id: int, custom_id: str, *, user: str, channel: str = "chat"
    ) -> PreparedClick:
        """A click made now (the button is there) that reaches the bot only when sent: a press
        in flight while the message changes."""
        cid = self.emu.state.resolve_channel(channel)
        message = self.emu.state.get_message(cid, str(message_id))
        data = self.emu.hooks.component_data(message, custom_id, None)
        record, payload = self.emu.hooks.interaction(
            3, cid, self.emu.state.resolve_user(user), data, message=message
        )
        payload["message"] = dict(message.payload)  # as the client saw it then
        return PreparedClick(self, record, payload)

    async def answered(self, record: InteractionRecord, timeout: float = WAIT_S) -> None:
        """Wait until the bot has answered the interaction ``record`` (a callback or more)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not record.responses:
            if loop.time() > deadline:
                raise AssertionError("the bot did not answer the interaction")
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.05)  # a follow-up comes right after the callback

    async def submit_modal(self, custom_id: str, values: dict[str, str], *, user: str) -> Interaction:
        mark = self.emu.mark()
        record = await self.emu.submit_modal(user, custom_id, values)
        await self.received("interaction", lambda i: i.id == int(record.id))
        await self.settle()
        return Interaction(self.emu, record, mark)

    # -- what the bot did -------------------------------------------------------------------------

    def sent(self, channel: str = "chat") -> list[StoredMessage]:
        """Messages the bot posted in ``channel`` (as itself or through a webhook) since the last
        call for that channel and still there, oldest first."""
        cid = self.emu.state.resolve_channel(channel)
        mine = sorted(
            (
                m
                for m in self.emu.state.messages.values()
                if m.channel_id == cid and m.source in ("bot", "webhook")
            ),
            key=lambda m: int(m.id),
        )
        start = self._seen.get(channel, 0)
        self._seen[channel] = len(mine)  # counted with the deleted ones, so a deletion shifts nothing
        return [m for m in mine[start:] if not m.deleted and not m.ephemeral]

    def present(self, channel: str) -> list[StoredMessage]:
        """Every message now in ``channel`` (deleted ones left out)."""
        return [m for m in self.emu.messages(channel) if not m.deleted]

    def calls(self, since: int = 0) -> list[Call]:
        return list(self.emu.calls)[since:]


@dataclass
class PreparedClick:
    """A click built while its button was on the message; :meth:`send` delivers it."""

    harness: EmulatedBot
    record: InteractionRecord
    payload: dict[str, Any]

    async def send(self) -> Interaction:
        h = self.harness
        mark = h.emu.mark()
        self.record.created_at = time.time()  # Discord's 3 s to answer start on delivery
        h.emu.gateway.dispatch("INTERACTION_CREATE", self.payload)
        await h.received("interaction", lambda i: i.id == int(self.record.id))
        await h.settle()
        return Interaction(h.emu, self.record, mark)


@dataclass
class Interaction:
    """What the bot answered to one interaction: the callback, then follow-ups and edits."""

    emu: DiscordEmulator
    record: InteractionRecord
    mark: int

    @property
    def id(self) -> int:
        return int(self.record.id)

    @property
    def calls(self) -> list[Call]:
        hook = f"/webhooks/{self.emu.application_id}/{self.record.token}"
        return [
            c
            for c in list(self.emu.calls)[self.mark :]
            if c.path.startswith(f"/interactions/{self.record.id}/") or c.path.startswith(hook)
        ]

    @property
    def callback(self) -> dict[str, Any]:
        """The first response (``type`` 4 message, 5 deferred, 6 deferred update, 8 choices, 9 modal)."""
        assert self.record.responses, "the bot did not answer the interaction"
        return self.record.responses[0]

    @property
    def ephemeral(self) -> bool:
        """Whether the user alone sees the answer (flag 64 on the callback)."""
        return bool(int((self.callback.get("data") or {}).get("flags") or 0) & 64)

    @property
    def last(self) -> dict[str, Any]:
        """The body of the last message the user was shown: the callback's data, a follow-up or an edit."""
        bodies = [self.callback.get("data") or {}] if self.callback.get("type") == 4 else []
        bodies += [
            c.json for c in self.calls if c.method in ("POST", "PATCH") and c.path.startswith("/webhooks/")
        ]
        assert bodies, "the bot showed the user nothing"
        return bodies[-1]

    @property
    def text(self) -> str:
        return str(self.last.get("content") or "")


@contextlib.asynccontextmanager
async def emulated_bot(
    tmp_path: Path,
    *,
    discord_settings: dict[str, Any] | None = None,
    chat_settings: dict[str, Any] | None = None,
    world: Callable[[DiscordEmulator], None] | None = None,
    emu: DiscordEmulator | None = None,
    runtime_factory: Callable[[Settings], Any] | None = None,
) -> AsyncIterator[EmulatedBot]:
    """An emulator and a connected bot with the fake runtime; commands synced to the guild.

    ``world`` may add users and channels to the emulator before the bot connects. Defaults:
    webhooks off (replies are "**Name**: text" messages from the bot), no streaming (the fake
    runtime answers whole replies; streaming is tested in tests/test_e2e_streaming.py), the
    review poller stopped after its start-up round (a test runs a round by calling it). Pass a running ``emu`` to start a second bot
    (a restart) in the same Discord; it is left running. ``runtime_factory`` (settings → an
    awaitable runtime) replaces the fake runtime, for a scenario with a real model.
    """
    if emu is not None:
        async with _connected(tmp_path, emu, discord_settings, chat_settings, runtime_factory) as harness:
            yield harness
        return
    async with DiscordEmulator(token=TOKEN) as own:
        if world is not None:
            world(own)
        async with _connected(tmp_path, own, discord_settings, chat_settings, runtime_factory) as harness:
            yield harness


@contextlib.asynccontextmanager
async def _connected(
    tmp_path: Path,
    emu: DiscordEmulator,
    discord_settings: dict[str, Any] | None,
    chat_settings: dict[str, Any] | None,
    runtime_factory: Callable[[Settings], Any] | None = None,
) -> AsyncIterator[EmulatedBot]:
    saved = (
        discord.http.Route.BASE,
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY,
        discord.asset.Asset.BASE,
    )
    point_discord_at(emu.base_url)
    settings = Settings(
        paths=PathSettings(database=str(tmp_path / "bot.sqlite3"), adapters_dir=str(tmp_path / "adapters")),
        discord=DiscordSettings(
            **{
                "review_channel": int(emu.channel_id("review")),
                "use_webhooks": False,
                "review_poll_s": 3600,
                "shutdown_grace_s": 1.0,
                **(discord_settings or {}),
            }
        ),
        chat=ChatSettings(**{"stream_replies": False, **(chat_settings or {})}),
    )
    runtime: Any = FakeRuntime(settings)

    async def factory(_s: Settings) -> Any:
        nonlocal runtime
        if runtime_factory is not None:
            runtime = await runtime_factory(_s)
        return runtime

    bot = RecordingBot(settings, runtime_factory=factory)
    task: asyncio.Task[None] | None = None
    try:
        await bot.login(TOKEN)
        # The review poller would run a round as soon as the bot is ready, then every
        # review_poll_s; a background round would race what a test does. It is stopped while it
        # still waits for READY (cancelling a round mid-write would leave a transaction open),
        # and its start-up round is run below instead; tests run more with
        # ``bot.reviews.poller()``. The chat cog's log-spool flusher likewise: tests call
        # ``bot.chat.reply_log.flush_spool()``.
        review = bot.reviews
        if review is not None:
            review.stop_polling()
        if bot.chat is not None:
            bot.chat.reply_log.flusher.cancel()
        for guild_id in emu.state.bot_guilds():  # every guild of the world (tests may add one)
            guild = discord.Object(int(guild_id))
            bot.tree.copy_global_to(guild=guild)
            await bot.tree.sync(guild=guild)
        task = asyncio.create_task(bot.connect(reconnect=True))
        await asyncio.wait_for(bot.wait_until_ready(), WAIT_S)
        harness = EmulatedBot(emu, bot, runtime)
        await harness.settle()
        if review is not None:
            await review.poller()  # the start-up round, to its end
        yield harness
    finally:
        if not bot.is_closed():
            await bot.close()
        if task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, WAIT_S)
        (
            discord.http.Route.BASE,
            discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY,
            discord.asset.Asset.BASE,
        ) = saved
