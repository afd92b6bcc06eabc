"""Test harness for the Discord app: dpytest for guilds, channels and messages; real
``discord.Interaction`` objects built from gateway payloads for slash commands, buttons and modals;
a recording stand-in for Discord's interaction/webhook HTTP endpoints; and a fake runtime whose
chat service answers on cue, so no model is needed."""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import discord
import discord.ext.test as dpytest
from discord.ext.test import backend as dpy_backend
from discord.ext.test import factories as dpy_factories
from discord.webhook.async_ import AsyncWebhookAdapter

from bot.config import DiscordSettings, PathSettings, Settings
from bot.discord.app import UnshardedOshaberiBot as OshaberiBot
from bot.discord.app import intents as OshaberiBot_intents
from bot.generation import (
    AdapterError,
    AdapterInfo,
    GenerationError,
    GenerationResult,
    QueueFullError,
    RequestCancelledError,
    WorkerStats,
)
from bot.store import Store
from personas.card import CardSet, PersonaCard, load_cards
from personas.render import PromptRenderer, Turn, validate_user_message

_ids = itertools.count(int(discord.utils.time_snowflake(datetime.now(UTC))) + 10_000)


def snowflake() -> int:
    """A fresh id newer than anything dpytest made so far (ids order messages in time)."""
    return discord.utils.time_snowflake(datetime.now(UTC)) + next(_ids) % 4096


# -- a fake runtime ----------------------------------------------------------------------------------


@dataclass
class Script:
    """What the fake model does for one request."""

    reply: str | BaseException = "おう、元気だぜ！"
    positions: list[int] = field(default_factory=lambda: [0])  # reported queue positions, in order
    gate: asyncio.Event | None = None  # generation waits for it (to hold a request in flight)


class FakePending:
    def __init__(self, card: PersonaCard, prompt: str, script: Script) -> None:
        self.card = card
        self.prompt = prompt
        self.script = script
        self.result: GenerationResult | None = None
        self.cancelled = False
        self._positions = collections.deque(script.positions)
        self._cancel_event = asyncio.Event()

    @property
    def params(self):
        return self.card.generation

    @property
    def position(self) -> int:
        if len(self._positions) > 1:
            return self._positions.popleft()
        return self._positions[0] if self._positions else 0

    async def text(self) -> str:
        if self.script.gate is not None:
            gate = asyncio.ensure_future(self.script.gate.wait())
            cancel = asyncio.ensure_future(self._cancel_event.wait())
            await asyncio.wait({gate, cancel}, return_when=asyncio.FIRST_COMPLETED)
            gate.cancel()
            cancel.cancel()
        else:
            await asyncio.sleep(0)
        if self.cancelled:
            raise RequestCancelledError("The request was cancelled.")
        if isinstance(self.script.reply, BaseException):
            raise self.script.reply
        self.result = GenerationResult(
            text=self.script.reply,
            new_tokens=12,
            finish_reason="stop",
            adapter=self.card.id,
            adapter_version="v20250101-000000",
            seconds=0.25,
            batch_size=2,
        )
        return self.script.reply

    def cancel(self) -> None:
        self.cancelled = True
        self._cancel_event.set()


class FakeChat:
    """Validates and renders like the real chat service; answers from a queue of scripts."""

    def __init__(self, cards: CardSet) -> None:
        self.cards = cards
        self.scripts: collections.deque[Script] = collections.deque()
        self.submitted: list[tuple[str, list[Turn]]] = []
        self.pending: list[FakePending] = []
        self.full = False

    def submit(self, persona_id: str, history: list[Turn]) -> FakePending:
        card = self.cards.get(persona_id)
        if not history:
            validate_user_message("")
        newest = history[-1]
        checked = Turn(newest.speaker, validate_user_message(newest.text), newest.is_persona)
        if self.full:
            raise QueueFullError(64, 64)
        rendered = PromptRenderer(card).render_prompt([*history[:-1], checked])
        self.submitted.append((persona_id, list(history)))
        pending = FakePending(card, rendered.text, self.scripts.popleft() if self.scripts else Script())
        self.pending.append(pending)
        return pending


class FakeWorker:
    def stats(self) -> WorkerStats:
        return WorkerStats(
            queue_depth=3,
            queue_capacity=64,
            in_flight=2,
            recent_batch_sizes=[1, 4, 2],
            tokens_per_s=42.5,
            batches_run=17,
            requests_failed=1,
            adapters=[AdapterInfo("marisa", "/adapters/marisa/v2", "v2", 1234)],
            device="cuda:0",
            device_memory_mb=5120.0,
        )


class FakeRuntime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.cards = load_cards()
        self.chat = FakeChat(self.cards)
        self.worker = FakeWorker()
        self.reload_error: Exception | None = None
        self.reloaded: list[str | None] = []
        self.closed = False

    async def reload(self, persona_id: str | None = None) -> list[str]:
        self.reloaded.append(persona_id)
        if self.reload_error is not None:
            raise self.reload_error
        ids = [persona_id] if persona_id else sorted(self.cards.cards)
        return [f"{pid}: adapter v3" for pid in ids]

    async def close(self) -> None:
        self.closed = True


# -- recording Discord's interaction and webhook endpoints -------------------------------------------


@dataclass
class Call:
    method: str
    path: str
    payload: dict[str, Any] | None

    @property
    def data(self) -> dict[str, Any]:
        return (self.payload or {}).get("data", self.payload or {})

    @property
    def ephemeral(self) -> bool:
        return bool(self.data.get("flags", 0) & 64)

    @property
    def content(self) -> str:
        return self.data.get("content") or ""


class HttpRecorder:
    """Stands in for discord.py's webhook adapter (interaction responses, followups, webhooks)."""

    def __init__(self, bot_user: dict[str, Any]) -> None:
        self.calls: list[Call] = []
        self.bot_user = bot_user
        self.fail_webhook_sends = 0
        self.webhook_messages: list[discord.Message] = []

    def install(self, monkeypatch) -> None:
        recorder = self

        async def request(adapter, route, session=None, *, payload=None, multipart=None, files=None, **kw):
            if payload is None and multipart:
                payload = json.loads(multipart[0]["value"])
            return recorder.respond(route, payload)

        monkeypatch.setattr(AsyncWebhookAdapter, "request", request)

    def respond(self, route, payload: dict[str, Any] | None) -> Any:
        call = Call(route.method, route.url, payload)
        self.calls.append(call)
        if route.url.endswith("/callback"):
            interaction_id = route.url.split("/interactions/")[1].split("/")[0]
            return {"interaction": {"id": interaction_id, "type": 2}}
        if route.method == "POST" and "/webhooks/" in route.url:
            if "/interactions/" not in route.url and self.fail_webhook_sends > 0:
                self.fail_webhook_sends -= 1
                raise discord.HTTPException(_FakeResponse(500), "webhook send failed")
            return self.message_payload(route.url, payload or {})
        if route.method in ("PATCH", "GET"):
            return self.message_payload(route.url, payload or {})
        return None

    def message_payload(self, url: str, payload: dict[str, Any]) -> dict[str, Any]:
        webhook_id = url.split("/webhooks/")[1].split("/")[0] if "/webhooks/" in url else None
        author = dict(self.bot_user)
        if payload.get("username"):
            author = {
                "id": webhook_id,
                "username": payload["username"],
                "discriminator": "0000",
                "avatar": None,
                "bot": True,
            }
        return {
            "id": str(snowflake()),
            "channel_id": str(payload.get("channel_id") or 0),
            "author": author,
            "content": payload.get("content") or "",
            "timestamp": datetime.now(UTC).isoformat(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": [],
            "embeds": payload.get("embeds") or [],
            "components": payload.get("components") or [],
            "pinned": False,
            "type": 0,
            "flags": payload.get("flags", 0),
            **({"webhook_id": webhook_id} if webhook_id else {}),
        }

    def responses(self) -> list[Call]:
        return [c for c in self.calls if c.path.endswith("/callback")]

    def followups(self) -> list[Call]:
        return [
            c
            for c in self.calls
            if "/interactions/" not in c.path
            and c.method == "POST"
            and "/webhooks/" in c.path
            and "/messages" not in c.path
            and not self._is_persona_webhook(c)
        ]

    def webhook_sends(self) -> list[Call]:
        return [c for c in self.calls if self._is_persona_webhook(c)]

    @staticmethod
    def _is_persona_webhook(call: Call) -> bool:
        return bool(call.payload and call.payload.get("username"))

    def last_text(self) -> str:
        """Everything the last response or followup said (content and embeds), for assertions."""
        for call in reversed(self.calls):
            if call.payload is not None:
                return _all_text(call.data)
        return ""


def _all_text(data: dict[str, Any]) -> str:
    parts = [data.get("content") or ""]
    for embed in data.get("embeds") or []:
        parts += [embed.get("title") or "", embed.get("description") or ""]
        parts += [f"{f.get('name')}: {f.get('value')}" for f in embed.get("fields") or []]
        parts.append((embed.get("footer") or {}).get("text") or "")
    return "\n".join(parts)


class _FakeResponse:
    def __init__(self, status: int) -> None:
        self.status = status
        self.reason = "fake"


# -- building the bot --------------------------------------------------------------------------------


@dataclass
class Harness:
    bot: OshaberiBot
    runtime: FakeRuntime
    store: Store
    http: HttpRecorder
    guild: discord.Guild
    chat: discord.TextChannel
    review: discord.TextChannel
    other: discord.TextChannel
    alice: discord.Member
    bob: discord.Member
    mod: discord.Member
    payloads: list[dict[str, Any]] = field(default_factory=list)
    outbox: list[discord.Message] = field(default_factory=list)

    @property
    def fake_chat(self) -> FakeChat:
        return self.runtime.chat

    def set_discord(self, **changes: Any) -> None:
        s = self.bot.settings
        self.bot.settings = replace(s, discord=replace(s.discord, **changes))

    def set_chat(self, **changes: Any) -> None:
        s = self.bot.settings
        self.bot.settings = replace(s, chat=replace(s.chat, **changes))

    # -- messages -------------------------------------------------------------------------------

    async def say(self, text: str, *, channel: Any = None, member: Any = None) -> discord.Message:
        return await dpytest.message(text, channel=channel or self.chat, member=member or self.alice)

    async def raw_message(
        self,
        text: str,
        *,
        channel: Any = None,
        author: Any = None,
        reply_to: discord.Message | None = None,
        webhook_id: int | None = None,
        mentions: list[Any] | None = None,
    ) -> discord.Message:
        """A message dpytest cannot make by itself: a reply, or a webhook post."""
        channel = channel or self.chat
        author = author or self.alice
        data = dpy_factories.make_message_dict(channel, author, content=text, mentions=mentions or [])
        if webhook_id is not None:
            data["webhook_id"] = str(webhook_id)
            data.pop("member", None)
        if reply_to is not None:
            data["message_reference"] = {
                "message_id": str(reply_to.id),
                "channel_id": str(channel.id),
                "guild_id": str(self.guild.id),
            }
            data["referenced_message"] = dpy_factories.dict_from_message(reply_to)
            data["type"] = 19
        state = dpy_backend.get_state()
        state.parse_message_create(data)
        dpy_backend._cur_config.messages.setdefault(channel.id, []).append(data)
        await dpytest.run_all_events()
        return state._get_message(data["id"])

    def sent(self, channel: Any = None) -> list[discord.Message]:
        """Messages the bot sent as itself since the last call (in ``channel`` if given), oldest first."""
        while not dpytest.sent_queue.empty():
            self.outbox.append(dpytest.get_message())
        channel = channel or self.chat
        mine = [m for m in self.outbox if m.channel.id == channel.id]
        self.outbox = [m for m in self.outbox if m.channel.id != channel.id]
        return mine

    # -- interactions ---------------------------------------------------------------------------

    def interaction_payload(
        self,
        kind: int,
        data: dict[str, Any],
        *,
        member: discord.Member,
        channel: Any = None,
        permissions: discord.Permissions | None = None,
        message: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        channel = channel or self.chat
        perms = permissions if permissions is not None else channel.permissions_for(member)
        payload: dict[str, Any] = {
            "id": str(snowflake()),
            "application_id": str(self.bot.application_id or 4242),
            "type": kind,
            "token": f"interaction-token-{snowflake()}",
            "version": 1,
            "guild_id": str(self.guild.id),
            "channel_id": str(channel.id),
            "channel": {
                "id": str(channel.id),
                "type": 0,
                "guild_id": str(self.guild.id),
                "name": channel.name,
            },
            "member": {
                "user": {
                    "id": str(member.id),
                    "username": member.name,
                    "discriminator": "0001",
                    "avatar": None,
                },
                "roles": [str(r.id) for r in member.roles if r.id != self.guild.id],
                "joined_at": "2024-01-01T00:00:00+00:00",
                "deaf": False,
                "mute": False,
                "flags": 0,
                "permissions": str(perms.value),
            },
            "app_permissions": str(discord.Permissions.all().value),
            "locale": "en-US",
            "guild_locale": "en-US",
            "attachment_size_limit": 8 * 1024 * 1024,
            "entitlements": [],
            "authorizing_integration_owners": {},
            "context": 0,
            "data": data,
        }
        if message is not None:
            payload["message"] = message
        return payload

    async def dispatch(self, payload: dict[str, Any]) -> None:
        """Feed an INTERACTION_CREATE through discord.py's own routing, then wait for handlers."""
        self.bot._connection.parse_interaction_create(payload)
        await settle()

    async def command(
        self,
        name: str,
        *,
        member: discord.Member | None = None,
        channel: Any = None,
        permissions: discord.Permissions | None = None,
        **options: Any,
    ) -> None:
        data = {
            "id": str(snowflake()),
            "name": name,
            "type": 1,
            "options": [{"name": k, "type": 3, "value": v} for k, v in options.items() if v is not None],
        }
        await self.dispatch(
            self.interaction_payload(
                2, data, member=member or self.alice, channel=channel, permissions=permissions
            )
        )

    async def autocomplete(self, name: str, option: str, value: str) -> list[dict[str, Any]]:
        data = {
            "id": str(snowflake()),
            "name": name,
            "type": 1,
            "options": [{"name": option, "type": 3, "value": value, "focused": True}],
        }
        before = len(self.http.calls)
        await self.dispatch(self.interaction_payload(4, data, member=self.alice))
        calls = self.http.calls[before:]
        assert calls, "no autocomplete response"
        return calls[-1].data.get("choices", [])

    async def click(
        self,
        card: dict[str, Any],
        custom_id: str,
        *,
        member: discord.Member,
        permissions: discord.Permissions | None = None,
        dispatch: bool = True,
    ) -> dict[str, Any]:
        payload = self.interaction_payload(
            3,
            {"custom_id": custom_id, "component_type": 2},
            member=member,
            channel=self.review,
            permissions=permissions,
            message=card,
        )
        if dispatch:
            await self.dispatch(payload)
        return payload

    async def submit_modal(
        self,
        card: dict[str, Any] | None,
        modal_id: str,
        text: str,
        *,
        member: discord.Member,
        permissions: discord.Permissions | None = None,
    ) -> None:
        data = {
            "custom_id": modal_id,
            "components": [
                {
                    "type": 1,
                    "components": [{"type": 4, "custom_id": "oshaberi:review:edited-text", "value": text}],
                }
            ],
        }
        await self.dispatch(
            self.interaction_payload(
                5, data, member=member, channel=self.review, permissions=permissions, message=card
            )
        )


async def settle(timeout: float = 10.0) -> None:
    """Wait for every task discord.py started for an event or interaction to finish."""
    me = asyncio.current_task()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        busy = [t for t in asyncio.all_tasks() if t is not me and not t.done() and _is_handler(t)]
        if not busy:
            await asyncio.sleep(0)
            if not [t for t in asyncio.all_tasks() if t is not me and not t.done() and _is_handler(t)]:
                return
            continue
        await asyncio.wait(busy, timeout=max(0.01, deadline - loop.time()))
    raise AssertionError("handlers did not finish in time")


def _is_handler(task: asyncio.Task[Any]) -> bool:
    name = task.get_name()
    coro = getattr(task.get_coro(), "__name__", "")
    return name.startswith(("discord-ui", "CommandTree", "discord.py:")) or coro in ("_run_event", "wrapper")


async def make_harness(tmp_path: Path, monkeypatch, **discord_settings: Any) -> Harness:
    settings = Settings(
        paths=PathSettings(database=str(tmp_path / "bot.sqlite3"), adapters_dir=str(tmp_path / "adapters")),
        discord=DiscordSettings(
            use_webhooks=True, review_poll_s=3600, shutdown_grace_s=1.0, **discord_settings
        ),
    )
    runtime = FakeRuntime(settings)

    async def factory(_settings: Settings) -> FakeRuntime:
        return runtime

    store = await Store.open(settings.paths.database)
    # dpytest builds members through the member cache, which needs the members intent; the bot
    # itself does not ask for it (it is privileged and not needed in production).
    test_intents = OshaberiBot_intents()
    test_intents.members = True
    bot = OshaberiBot(settings, runtime_factory=factory, store=store, gateway_intents=test_intents)
    await bot._async_setup_hook()
    dpytest.configure(
        bot, text_channels=["chat", "review", "other"], voice_channels=0, members=["alice", "bob", "mod"]
    )
    bot._connection._command_tree = bot.tree  # dpytest swaps the connection state the tree was bound to
    bot._connection.application_id = 4242
    await bot.setup_hook()
    config = dpytest.get_config()
    guild = config.guilds[0]
    chat, review, other = config.channels[:3]
    bot.settings = replace(bot.settings, discord=replace(bot.settings.discord, review_channel=review.id))
    alice, bob, mod = config.members
    user = bot.user
    http = HttpRecorder(
        {"id": str(user.id), "username": user.name, "discriminator": "0001", "avatar": None, "bot": True}
    )
    http.install(monkeypatch)
    harness = Harness(bot, runtime, store, http, guild, chat, review, other, alice, bob, mod)
    _spy_payloads(monkeypatch, harness.payloads)
    return harness


def _spy_payloads(monkeypatch, recorded: list[dict[str, Any]]) -> None:
    """Record every message payload discord.py builds (channel sends, edits, webhooks)."""
    import discord.abc
    import discord.http
    import discord.message
    import discord.webhook.async_

    original = discord.http.handle_message_parameters

    def spy(*args: Any, **kwargs: Any):
        params = original(*args, **kwargs)
        recorded.append(dict(params.payload or {}))
        return params

    for module in (discord.abc, discord.message, discord.webhook.async_):
        monkeypatch.setattr(module, "handle_message_parameters", spy)


async def close_harness(h: Harness) -> None:
    review = h.bot.get_cog("Review")
    if review is not None:
        review.stop_polling()
    await dpytest.empty_queue()
    if not h.bot.is_closed():
        h.bot.ws = None  # dpytest's fake gateway cannot be closed like a real one
        await h.bot.close()


MOD_PERMS = discord.Permissions(
    discord.Permissions.text().value | discord.Permissions(manage_messages=True).value
)
USER_PERMS = discord.Permissions(send_messages=True, read_messages=True, read_message_history=True)


def card_message(h: Harness, log_id: int) -> dict[str, Any]:
    """The review card as Discord would send it back in a button interaction (with components)."""
    from bot.discord.cogs.review import review_view

    item_msg = {
        "id": str(snowflake()),
        "channel_id": str(h.review.id),
        "author": h.http.bot_user,
        "content": "",
        "timestamp": datetime.now(UTC).isoformat(),
        "edited_timestamp": None,
        "tts": False,
        "mention_everyone": False,
        "mentions": [],
        "mention_roles": [],
        "attachments": [],
        "embeds": [],
        "pinned": False,
        "type": 0,
        "flags": 0,
        "components": review_view(log_id).to_components(),
    }
    return item_msg


__all__ = [
    "MOD_PERMS",
    "USER_PERMS",
    "AdapterError",
    "FakeRuntime",
    "GenerationError",
    "Harness",
    "Script",
    "card_message",
    "close_harness",
    "make_harness",
    "settle",
    "snowflake",
]
