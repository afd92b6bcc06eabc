"""The emulator object: an aiohttp server on loopback plus the Python hooks tests drive it with.

Runs in the test's own event loop (``async with DiscordEmulator() as emu``) so
tests can await hooks and recorded calls directly, or standalone via
``python -m tests.discord_emulator`` where the same hooks are reachable over
HTTP under ``/_emulator/`` for a bot under test that lives in another process.
"""

from __future__ import annotations

import dataclasses
import os
import struct
import time
import zlib
from collections.abc import Callable
from typing import Any

from aiohttp import web

from .actions import Actions
from .errors import ApiError
from .faults import Fault, FaultInjector
from .gateway import OP_HEARTBEAT, OP_RECONNECT, PRIVILEGED_INTENTS, Gateway
from .hooks import (
    INTERACTION_APPLICATION_COMMAND,
    INTERACTION_MESSAGE_COMPONENT,
    INTERACTION_MODAL_SUBMIT,
    HookBuilder,
)
from .messages import MessageFactory
from .recorder import Call, GatewayRecord, Recorder
from .rest import RestApi
from .routes_core import CoreRoutes
from .routes_interactions import InteractionRoutes
from .routes_messages import MessageRoutes
from .state import AUDIT_BOT_ADD, EmulatorState, InteractionRecord, StoredMessage
from .threads import Threads

LOOPBACK_HOSTS = {"127.0.0.1", "::1", "localhost"}
# Hooks the HTTP control API may call by name (standalone mode).
CONTROL_HOOKS = (
    "send_message",
    "create_thread",
    "create_forum_post",
    "edit_message",
    "delete_message",
    "add_reaction",
    "slash_command",
    "click_button",
    "select_menu",
    "submit_modal",
    "add_bot_to_guild",
    "delete_channel",
    "delete_role",
    "drop_connection",
    "send_reconnect",
    "invalidate_session",
    "request_heartbeat",
    "fail_next",
    "clear_faults",
)


def _png_1x1() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 6, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0\0\0\0\0"))
        + chunk(b"IEND", b"")
    )


class DiscordEmulator:
    """A Discord API (REST v10 + gateway) emulator bound to loopback.

    ``token=None`` accepts any bot token; pass a string to make the emulator
    reject others (401 on REST, close 4004 on the gateway) like Discord does.
    ``interaction_ack_timeout`` is Discord's 3-second window to answer an
    interaction; ``None`` disables it (e.g. when stepping through in a debugger).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        state_file: str | os.PathLike[str] | None = None,
        token: str | None = None,
        heartbeat_interval_ms: int = 41250,
        interaction_ack_timeout: float | None = 3.0,
        interaction_token_ttl: float = 15 * 60,
        allowed_intents: int = PRIVILEGED_INTENTS,
    ) -> None:
        if host not in LOOPBACK_HOSTS:
            raise ValueError(f"the emulator only binds to loopback, not {host!r}")
        self.host = host
        self.port = port
        self.token = token
        self.interaction_ack_timeout = interaction_ack_timeout
        self.interaction_token_ttl = interaction_token_ttl
        self.state = EmulatorState(state_file)
        self.calls: Recorder[Call] = Recorder()
        self.gateway_log: Recorder[GatewayRecord] = Recorder()
        self.unhandled: list[str] = []
        self.faults = FaultInjector()
        self.factory = MessageFactory(self.state, "")
        self.hooks = HookBuilder(self.state, self.factory)
        self.actions = Actions(self)
        self.gateway = Gateway(
            self.state,
            self.gateway_log,
            check_token=self.check_token,
            ws_base=lambda: self.ws_base,
            heartbeat_interval_ms=heartbeat_interval_ms,
            allowed_intents=allowed_intents,
        )
        self.rest = RestApi(self)
        self.threads = Threads(self)
        for routes in (CoreRoutes(self), MessageRoutes(self), InteractionRoutes(self), self.threads):
            routes.register(self.rest.router)
        self._runner: web.AppRunner | None = None
        self._trigger_mark = 0

    # -------------------------------------------------------------- lifecycle
    async def start(self) -> str:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/api/{tail:.*}", self.rest.handle)
        app.router.add_get("/gateway", self.gateway.handle)
        app.router.add_get("/gateway/resume", self.gateway.handle)
        app.router.add_get("/attachments/{channel_id}/{attachment_id}/{filename}", self._attachment)
        app.router.add_get("/cdn/{tail:.*}", self._cdn)
        app.router.add_get("/_emulator/world", self._control_world)
        app.router.add_get("/_emulator/calls", self._control_calls)
        app.router.add_get("/_emulator/messages", self._control_messages)
        app.router.add_post("/_emulator/hooks/{name}", self._control_hook)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        assert server is not None and server.sockets  # type: ignore[attr-defined]
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self.factory.base_url = self.base_url
        self.state.save()
        return self.base_url

    async def stop(self) -> None:
        await self.gateway.close_all()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self.state.save()

    async def __aenter__(self) -> DiscordEmulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        """What to give ``point_discord_at`` / ``DISCORD_API_BASE``: ``http://127.0.0.1:PORT``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def api_base(self) -> str:
        return f"{self.base_url}/api/v10"

    @property
    def ws_base(self) -> str:
        return "ws" + self.base_url[len("http") :]

    def check_token(self, token: str | None) -> bool:
        return bool(token) if self.token is None else token == self.token

    # ---------------------------------------------------------- world lookups
    @property
    def guild_id(self) -> str:
        return self.state.guild_id

    @property
    def application_id(self) -> str:
        return self.state.application_id

    def user_id(self, key: str) -> str:
        """Seed users: "bot", "moderator" (has the Moderator role), "member", "member2"."""
        return self.state.user_keys[key]

    def guild(self, key: str) -> str:
        """A guild's id by key: the seed guild is "main"; tests add others with ``state.add_guild``."""
        return self.state.guild_keys[key]

    def channel_id(self, key: str) -> str:
        """Seed text channels: "general", "chat", "review"."""
        return self.state.channel_keys[key]

    def role_id(self, key: str) -> str:
        """Seed roles: "everyone", "moderator", "bot"."""
        return self.state.role_keys[key]

    def dm_channel_id(self, user: str | int) -> str:
        """The DM channel between the bot and ``user`` (created if needed), for ``send_message``."""
        cid = self.state.dm_channel(self.state.resolve_user(user))
        self.state.save()
        return cid

    def messages(self, channel: str | int) -> list[StoredMessage]:
        return self.state.channel_messages(self.state.resolve_channel(channel))

    def message(self, message_id: str | int) -> StoredMessage:
        return self.state.messages[str(message_id)]

    def interaction(self, interaction_id: str) -> InteractionRecord:
        return self.state.interactions[str(interaction_id)]

    # ------------------------------------------------------------ test hooks
    def _mark_trigger(self) -> None:
        self._trigger_mark = len(self.calls)

    async def send_message(
        self,
        channel_id: str | int,
        author: str | int | dict[str, Any],
        content: str = "",
        *,
        mentions: list[Any] | None = None,
        mention_roles: list[Any] | None = None,
        mention_everyone: bool | None = None,
        attachments: list[dict[str, Any]] | None = None,
        message_reference: Any = None,
        embeds: list[dict[str, Any]] | None = None,
        message_type: int | None = None,
        forward_of: str | int | None = None,
        poll: dict[str, Any] | None = None,
        sticker_names: list[str] | None = None,
        voice_message: bool = False,
        activity: bool = False,
    ) -> dict[str, Any]:
        """A user posts a message; dispatches MESSAGE_CREATE and returns the message payload.

        ``forward_of`` forwards that message (type 0, no content, a message snapshot);
        ``poll`` (``{"question", "answers"}``), ``sticker_names``, ``voice_message`` and
        ``activity`` send those message kinds (see ``HookBuilder.what_else``).

        ``message_type`` sends a system message on the user's behalf instead (18: thread
        created, 6: pinned, 7: joined …); by default 0, or 19 with a reference.

        ``author``/``mentions`` take seed keys ("moderator") or ids; ``<@id>``
        mentions in ``content`` are parsed like Discord does. ``attachments``
        items are ``{"filename", "content": str|bytes, "content_type"}`` and are
        downloadable from the emulator.
        """
        self._mark_trigger()
        cid = self.state.resolve_channel(channel_id)
        msg = self.hooks.user_message(
            cid,
            self.state.resolve_user(author),
            content,
            mentions=mentions,
            mention_roles=mention_roles,
            mention_everyone=mention_everyone,
            attachments=attachments,
            message_reference=message_reference,
            embeds=embeds,
            message_type=message_type,
            extras=self.hooks.what_else(
                cid,
                forward_of=forward_of,
                poll=poll,
                sticker_names=sticker_names,
                voice_message=voice_message,
                activity=activity,
            ),
        )
        self.gateway.dispatch("MESSAGE_CREATE", self.factory.gateway_payload(msg), channel_id=cid)
        self.state.save()
        return msg.payload

    async def create_thread(
        self,
        channel_id: str | int,
        user: str | int | dict[str, Any],
        name: str,
        *,
        message_id: str | int | None = None,
        private: bool = False,
        key: str | None = None,
    ) -> dict[str, Any]:
        """A member starts a thread in a text channel, from ``message_id`` or on its own;
        dispatches THREAD_CREATE (and the "thread created" message). ``key`` names the thread
        for later hooks (``send_message(key, …)``). Returns the thread's channel object."""
        self._mark_trigger()
        thread = self.threads.start(
            self.state.resolve_channel(channel_id),
            self.state.resolve_user(user),
            name,
            message_id=str(message_id) if message_id is not None else None,
            private=private,
        )
        if key is not None:
            self.state.channel_keys[key] = thread["id"]
        self.state.save()
        return thread

    async def create_forum_post(
        self,
        forum_id: str | int,
        user: str | int | dict[str, Any],
        name: str,
        content: str,
        *,
        key: str | None = None,
    ) -> dict[str, Any]:
        """A member opens a post in a forum channel: THREAD_CREATE, then MESSAGE_CREATE of its
        first message (whose id is the thread's). Returns that first message's payload."""
        self._mark_trigger()
        thread, first = self.threads.forum_post(
            self.state.resolve_channel(forum_id), self.state.resolve_user(user), name, content
        )
        if key is not None:
            self.state.channel_keys[key] = thread["id"]
        self.state.save()
        return first.payload

    async def edit_message(
        self,
        channel_id: str | int,
        message_id: str | int,
        content: str | None = None,
        *,
        embeds: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """A user edits their message; dispatches MESSAGE_UPDATE."""
        self._mark_trigger()
        msg = self.state.get_message(self.state.resolve_channel(channel_id), str(message_id))
        body: dict[str, Any] = {}
        if content is not None:
            body["content"] = content
        if embeds is not None:
            body["embeds"] = embeds
        self.actions.edit_from_body(msg, body, [], by_bot=False)
        self.state.save()
        return msg.payload

    async def delete_message(self, channel_id: str | int, message_id: str | int) -> None:
        """A user (or moderator) deletes a message; dispatches MESSAGE_DELETE."""
        self._mark_trigger()
        msg = self.state.get_message(self.state.resolve_channel(channel_id), str(message_id))
        self.actions.delete(msg)
        self.state.save()

    async def add_reaction(
        self, channel_id: str | int, message_id: str | int, user: str | int, emoji: str
    ) -> None:
        """A user reacts with a unicode ``emoji``; dispatches MESSAGE_REACTION_ADD."""
        self._mark_trigger()
        cid = self.state.resolve_channel(channel_id)
        msg = self.state.get_message(cid, str(message_id))
        uid = self.state.resolve_user(user)
        reactions = msg.payload.setdefault("reactions", [])
        entry = next((r for r in reactions if r["emoji"]["name"] == emoji), None)
        if entry is None:
            entry = {"emoji": {"id": None, "name": emoji}, "count": 0, "me": False}
            reactions.append(entry)
        entry["count"] += 1
        data: dict[str, Any] = {
            "user_id": uid,
            "channel_id": cid,
            "message_id": msg.id,
            "emoji": {"id": None, "name": emoji},
            "message_author_id": str(msg.payload["author"]["id"]),
            "burst": False,
            "type": 0,
        }
        guild_id = self.state.guild_of(cid)
        if guild_id is not None:
            data["guild_id"] = guild_id
            data["member"] = self.state.member_payload(uid, guild_id=guild_id)
        self.gateway.dispatch("MESSAGE_REACTION_ADD", data, channel_id=cid)
        self.state.save()

    def _dispatch_interaction(self, record: InteractionRecord, payload: dict[str, Any]) -> InteractionRecord:
        self.gateway.dispatch("INTERACTION_CREATE", payload)
        self.state.save()
        return record

    async def slash_command(
        self,
        channel_id: str | int,
        user: str | int,
        name: str,
        options: dict[str, Any] | None = None,
    ) -> InteractionRecord:
        """A user runs ``/name`` (``"group sub"`` for subcommands); needs the command synced first.

        ``data.id`` is the synced command's id. Options are ``{name: value}``;
        user/role/channel options take seed keys or ids and get ``resolved``.
        """
        self._mark_trigger()
        cid = self.state.resolve_channel(channel_id)
        data = self.hooks.command_data(name, options, self.state.guild_of(cid))
        record, payload = self.hooks.interaction(
            INTERACTION_APPLICATION_COMMAND, cid, self.state.resolve_user(user), data
        )
        return self._dispatch_interaction(record, payload)

    async def click_button(
        self, channel_id: str | int, user: str | int, message_id: str | int, custom_id: str
    ) -> InteractionRecord:
        """A user clicks a button the bot posted (it must exist on the message and be enabled)."""
        return await self._component(channel_id, user, message_id, custom_id, None)

    async def select_menu(
        self, channel_id: str | int, user: str | int, message_id: str | int, custom_id: str, values: list[str]
    ) -> InteractionRecord:
        """A user picks ``values`` in a select menu on a bot message."""
        return await self._component(channel_id, user, message_id, custom_id, values)

    async def _component(
        self,
        channel_id: str | int,
        user: str | int,
        message_id: str | int,
        custom_id: str,
        values: list[str] | None,
    ) -> InteractionRecord:
        self._mark_trigger()
        cid = self.state.resolve_channel(channel_id)
        message = self.state.get_message(cid, str(message_id))
        data = self.hooks.component_data(message, custom_id, values)
        record, payload = self.hooks.interaction(
            INTERACTION_MESSAGE_COMPONENT, cid, self.state.resolve_user(user), data, message=message
        )
        return self._dispatch_interaction(record, payload)

    async def submit_modal(
        self,
        user: str | int,
        custom_id: str,
        values: dict[str, Any],
        *,
        channel_id: str | int | None = None,
    ) -> InteractionRecord:
        """A user submits the modal the bot opened (callback type 9) with ``{input_custom_id: value}``.

        The submitted component tree mirrors the modal (action rows or labels).
        Without a matching opened modal, ``channel_id`` is required and plain
        action rows of text inputs are sent.
        """
        self._mark_trigger()
        uid = self.state.resolve_user(user)
        opener = None
        for record in reversed(list(self.state.interactions.values())):
            if record.modal and record.modal.get("custom_id") == custom_id and record.user_id == uid:
                opener = record
                break
        if opener is None and channel_id is None:
            raise LookupError(
                f"no modal {custom_id!r} was opened for this user; pass channel_id to force one"
            )
        cid = self.state.resolve_channel(channel_id) if channel_id is not None else opener.channel_id  # type: ignore[union-attr]
        message = None
        if opener is not None and opener.message_id is not None:
            message = self.state.messages.get(opener.message_id)
        data = {
            "custom_id": custom_id,
            "components": self.hooks.modal_components(opener.modal if opener else None, values),
        }
        record, payload = self.hooks.interaction(INTERACTION_MODAL_SUBMIT, cid, uid, data, message=message)
        return self._dispatch_interaction(record, payload)

    async def add_bot_to_guild(self, guild: str | int, added_by: str | int) -> str:
        """``added_by`` adds the bot to ``guild`` (a key from ``state.add_guild(..., bot_member=False)``
        or an id): the bot becomes a member with its managed role, the guild's audit log records who
        added it (action 28, BOT_ADD), and the bot gets GUILD_CREATE. Returns the guild id."""
        self._mark_trigger()
        state = self.state
        guild_id = state.resolve_guild(guild)
        bot_role = next(
            rid
            for rid, role in state.roles.items()
            if state.role_guilds.get(rid) == guild_id and role.get("managed")
        )
        state.add_member(state.application_id, roles=[bot_role], guild=guild_id)
        state.audit_log.setdefault(guild_id, []).append(
            {
                "id": state.ids.next(),
                "user_id": state.resolve_user(added_by),
                "target_id": state.application_id,
                "action_type": AUDIT_BOT_ADD,
                "changes": [],
                "reason": None,
            }
        )
        payload = state.guild_create_payload(guild_id, include_members=False)
        del payload["unavailable"]  # Discord leaves it out for a join (False: an outage ended)
        self.gateway.dispatch("GUILD_CREATE", payload, guild_id=guild_id)
        state.save()
        return guild_id

    async def delete_channel(self, channel: str | int) -> None:
        """A guild channel is deleted (its messages go with it); dispatches CHANNEL_DELETE."""
        self._mark_trigger()
        cid = self.state.resolve_channel(channel)
        payload = self.state.channels.pop(cid)
        for msg in self.state.messages.values():
            if msg.channel_id == cid:
                msg.deleted = True
        self.gateway.dispatch("CHANNEL_DELETE", payload, channel_id=None)
        self.state.save()

    async def delete_role(self, role: str | int) -> None:
        """A role is deleted and taken from every member; dispatches GUILD_ROLE_DELETE."""
        self._mark_trigger()
        rid = self.state.resolve_role(role)
        self.state.roles.pop(rid)
        guild_id = self.state.role_guilds.pop(rid, self.state.guild_id)
        for member in self.state.members_of(guild_id).values():
            if rid in member["roles"]:
                member["roles"].remove(rid)
        self.gateway.dispatch("GUILD_ROLE_DELETE", {"guild_id": guild_id, "role_id": rid})
        self.state.save()

    async def drop_connection(self, code: int | None = None) -> int:
        """Kill every gateway socket: abruptly (``code=None``, the bot should RESUME) or with a close code."""
        return self.gateway.drop_connections(code)

    async def send_reconnect(self) -> int:
        """Send op 7 RECONNECT: the bot should close and RESUME on ``resume_gateway_url``."""
        return self.gateway.send_op(OP_RECONNECT)

    async def invalidate_session(self, resumable: bool = False) -> int:
        """Send op 9 INVALID_SESSION; with ``resumable=False`` the bot must IDENTIFY again."""
        return self.gateway.invalidate_sessions(resumable)

    async def request_heartbeat(self) -> int:
        """Send op 1: the bot must heartbeat immediately."""
        return self.gateway.send_op(OP_HEARTBEAT, None)

    def fail_next(
        self,
        method: str,
        path_regex: str,
        status: int = 500,
        *,
        retry_after: float = 1.0,
        count: int = 1,
        scope: str = "user",
        code: int | None = None,
        message: str | None = None,
        body: dict[str, Any] | None = None,
        skip: int = 0,
    ) -> Fault:
        """Fail the next ``count`` REST calls whose method matches and path (after /api/v10) matches
        ``path_regex`` (re.search), after letting ``skip`` of them through. 429s carry
        ``retry_after``, ``Retry-After``, ``X-RateLimit-*`` (``scope`` = "user" | "global" |
        "shared"); other statuses carry Discord's error body (``code``: 50083 a thread archived …)."""
        return self.faults.add(
            Fault(method, path_regex, status, count, retry_after, scope, code, message, body, skip)
        )

    def clear_faults(self) -> None:
        self.faults.clear()

    # ----------------------------------------------------------------- waits
    def mark(self) -> int:
        """Index of the next REST call; pass as ``since=`` to only consider later calls."""
        return len(self.calls)

    async def wait_for_call(
        self, predicate: Callable[[Call], bool], timeout: float = 10.0, *, since: int | None = None
    ) -> Call:
        """First REST call matching ``predicate`` recorded since the last hook call (or ``since``)."""
        start = self._trigger_mark if since is None else since
        return await self.calls.wait_for(predicate, timeout=timeout, since=start)

    async def wait_for_gateway(
        self, predicate: Callable[[GatewayRecord], bool], timeout: float = 10.0, *, since: int = 0
    ) -> GatewayRecord:
        return await self.gateway_log.wait_for(predicate, timeout=timeout, since=since)

    async def wait_until_connected(self, timeout: float = 10.0) -> str:
        """Wait until a bot holds an identified (or resumed) gateway connection; returns its session id."""
        live = self.gateway.live_connections()
        if live and live[0].session is not None:
            return live[0].session.id
        since = len(self.gateway_log)
        record = await self.gateway_log.wait_for(
            lambda r: r.kind in ("ready", "resume"), timeout=timeout, since=since
        )
        assert record.session_id is not None
        return record.session_id

    # -------------------------------------------------- HTTP file/control API
    async def _attachment(self, request: web.Request) -> web.StreamResponse:
        data = self.state.blobs.get(request.match_info["attachment_id"])
        if data is None:
            return web.Response(status=404)
        return web.Response(body=data)

    async def _cdn(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=_png_1x1(), content_type="image/png")

    async def _control_world(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(
            {
                "base_url": self.base_url,
                "guild_id": self.guild_id,
                "guilds": self.state.guild_keys,
                "application_id": self.application_id,
                "users": self.state.user_keys,
                "channels": self.state.channel_keys,
                "roles": self.state.role_keys,
            }
        )

    async def _control_calls(self, request: web.Request) -> web.StreamResponse:
        since = int(request.query.get("since", 0))
        return web.json_response([c.to_json() for c in self.calls.items[since:]])

    async def _control_messages(self, request: web.Request) -> web.StreamResponse:
        msgs = self.messages(request.query["channel_id"])
        return web.json_response([dataclasses.asdict(m) for m in msgs])

    async def _control_hook(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in CONTROL_HOOKS:
            return web.json_response({"error": f"unknown hook {name!r}"}, status=404)
        kwargs = await request.json() if request.can_read_body else {}
        started = time.monotonic()
        try:
            result = getattr(self, name)(**kwargs)
            if hasattr(result, "__await__"):
                result = await result
        except (LookupError, ValueError, TypeError, ApiError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        if dataclasses.is_dataclass(result) and not isinstance(result, type):
            result = {k: v for k, v in dataclasses.asdict(result).items() if not k.startswith("_")}
        return web.json_response({"result": result, "elapsed": time.monotonic() - started})
