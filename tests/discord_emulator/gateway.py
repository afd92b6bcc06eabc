"""The gateway websocket: HELLO/IDENTIFY/READY, heartbeats, sequence numbers, RESUME with replay.

Sessions outlive connections on purpose: when a test drops the socket, events
dispatched while the bot is away are buffered and replayed on RESUME, exactly
the path a production bot takes after a network blip. Each connection sends
through a queue drained by one writer task, so a REST handler can dispatch an
event without awaiting the socket and ordering is still one sequence.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import WSMsgType, web

from . import wire
from .recorder import GatewayRecord, Recorder
from .state import EmulatorState

try:  # discord.py prefers zstd-stream when `zstandard` is installed; follow it if we can.
    import zstandard as _zstd  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the environment
    _zstd = None

log = logging.getLogger(__name__)

OP_DISPATCH = 0
OP_HEARTBEAT = 1
OP_IDENTIFY = 2
OP_PRESENCE_UPDATE = 3
OP_VOICE_STATE_UPDATE = 4
OP_RESUME = 6
OP_RECONNECT = 7
OP_REQUEST_GUILD_MEMBERS = 8
OP_INVALID_SESSION = 9
OP_HELLO = 10
OP_HEARTBEAT_ACK = 11

CLOSE_UNKNOWN_OPCODE = 4001
CLOSE_DECODE_ERROR = 4002
CLOSE_NOT_AUTHENTICATED = 4003
CLOSE_AUTHENTICATION_FAILED = 4004
CLOSE_ALREADY_AUTHENTICATED = 4005
CLOSE_INVALID_INTENTS = 4013
CLOSE_DISALLOWED_INTENTS = 4014

I_GUILDS = 1 << 0
I_GUILD_MEMBERS = 1 << 1
I_GUILD_PRESENCES = 1 << 8
I_GUILD_MESSAGES = 1 << 9
I_GUILD_MESSAGE_REACTIONS = 1 << 10
I_GUILD_MESSAGE_TYPING = 1 << 11
I_DIRECT_MESSAGES = 1 << 12
I_DIRECT_MESSAGE_REACTIONS = 1 << 13
I_DIRECT_MESSAGE_TYPING = 1 << 14
I_MESSAGE_CONTENT = 1 << 15
PRIVILEGED_INTENTS = I_GUILD_MEMBERS | I_GUILD_PRESENCES | I_MESSAGE_CONTENT

# Which intent an event needs: (in a guild channel, in a DM).
_EVENT_INTENTS: dict[str, tuple[int, int]] = {
    "GUILD_CREATE": (I_GUILDS, I_GUILDS),
    "GUILD_UPDATE": (I_GUILDS, I_GUILDS),
    "GUILD_DELETE": (I_GUILDS, I_GUILDS),
    "CHANNEL_CREATE": (I_GUILDS, I_GUILDS),
    "CHANNEL_UPDATE": (I_GUILDS, I_GUILDS),
    "CHANNEL_DELETE": (I_GUILDS, I_GUILDS),
    "THREAD_CREATE": (I_GUILDS, I_GUILDS),
    "THREAD_UPDATE": (I_GUILDS, I_GUILDS),
    "THREAD_DELETE": (I_GUILDS, I_GUILDS),
    "GUILD_ROLE_CREATE": (I_GUILDS, I_GUILDS),
    "GUILD_ROLE_UPDATE": (I_GUILDS, I_GUILDS),
    "GUILD_MEMBER_ADD": (I_GUILD_MEMBERS, I_GUILD_MEMBERS),
    "GUILD_MEMBER_UPDATE": (I_GUILD_MEMBERS, I_GUILD_MEMBERS),
    "GUILD_MEMBER_REMOVE": (I_GUILD_MEMBERS, I_GUILD_MEMBERS),
    "MESSAGE_CREATE": (I_GUILD_MESSAGES, I_DIRECT_MESSAGES),
    "MESSAGE_UPDATE": (I_GUILD_MESSAGES, I_DIRECT_MESSAGES),
    "MESSAGE_DELETE": (I_GUILD_MESSAGES, I_DIRECT_MESSAGES),
    "MESSAGE_DELETE_BULK": (I_GUILD_MESSAGES, I_DIRECT_MESSAGES),
    "MESSAGE_REACTION_ADD": (I_GUILD_MESSAGE_REACTIONS, I_DIRECT_MESSAGE_REACTIONS),
    "MESSAGE_REACTION_REMOVE": (I_GUILD_MESSAGE_REACTIONS, I_DIRECT_MESSAGE_REACTIONS),
    "TYPING_START": (I_GUILD_MESSAGE_TYPING, I_DIRECT_MESSAGE_TYPING),
}
_CONTENT_FIELDS = ("content", "embeds", "attachments", "components", "poll")
REPLAY_BUFFER = 5000
MAX_IDLE_SESSIONS = 4


@dataclass
class _Close:
    code: int
    reason: str = ""


class _Compressor:
    """Transport compression: one shared stream per connection, flushed per message."""

    def __init__(self, mode: str | None) -> None:
        self.mode = mode
        self._obj: Any = None
        if mode == "zlib-stream":
            self._obj = zlib.compressobj()
        elif mode == "zstd-stream":
            if _zstd is None:
                raise ValueError("zstd-stream requested but the zstandard package is not installed")
            self._obj = _zstd.ZstdCompressor().compressobj()
        elif mode is not None:
            raise ValueError(f"unsupported compress={mode!r}")

    def encode(self, text: str) -> str | bytes:
        if self._obj is None:
            return text
        data = text.encode("utf-8")
        if self.mode == "zlib-stream":
            return self._obj.compress(data) + self._obj.flush(zlib.Z_SYNC_FLUSH)
        return self._obj.compress(data) + self._obj.flush(_zstd.COMPRESSOBJ_FLUSH_BLOCK)


class Connection:
    """One websocket; outgoing payloads go through ``queue`` so they stay ordered."""

    def __init__(self, ws: web.WebSocketResponse, request: web.Request, compress: str | None) -> None:
        self.ws = ws
        self.transport = request.transport
        self.path = request.path
        self.compressor = _Compressor(compress)
        self.queue: asyncio.Queue[dict[str, Any] | _Close] = asyncio.Queue()
        self.session: Session | None = None
        self.closed = False
        self.server_closed = False  # we sent the close frame (or aborted), not the client
        self.writer: asyncio.Task[None] | None = None

    def send(self, payload: dict[str, Any]) -> None:
        if not self.closed:
            self.queue.put_nowait(payload)

    def close(self, code: int, reason: str = "") -> None:
        if not self.closed:
            self.server_closed = True
            self.queue.put_nowait(_Close(code, reason))

    def abort(self) -> None:
        """Drop the TCP connection without a close frame (a network failure, not a shutdown)."""
        self.closed = True
        self.server_closed = True
        if self.transport is not None:
            self.transport.abort()
        if self.writer is not None:
            self.writer.cancel()


class Session:
    """A gateway session: sequence numbers and the replay buffer survive disconnects."""

    def __init__(self, intents: int, shard: list[int] | None) -> None:
        self.id = secrets.token_hex(16)
        self.intents = intents
        self.shard = shard
        self.seq = 0
        self.buffer: deque[dict[str, Any]] = deque(maxlen=REPLAY_BUFFER)
        self.conn: Connection | None = None
        self.disconnected_at = 0.0

    def dispatch(self, event: str, data: Any) -> int:
        self.seq += 1
        payload = {"op": OP_DISPATCH, "t": event, "s": self.seq, "d": data}
        self.buffer.append(payload)
        if self.conn is not None:
            self.conn.send(payload)
        return self.seq

    def can_replay_from(self, seq: int) -> bool:
        if seq >= self.seq:
            return True
        return bool(self.buffer) and self.buffer[0]["s"] <= seq + 1


class Gateway:
    """Accepts websocket connections at ``/gateway`` (and ``/gateway/resume``) and routes events."""

    def __init__(
        self,
        state: EmulatorState,
        log_recorder: Recorder[GatewayRecord],
        *,
        check_token: Callable[[str | None], bool],
        ws_base: Callable[[], str],
        heartbeat_interval_ms: int = 41250,
        allowed_intents: int = PRIVILEGED_INTENTS,
    ) -> None:
        self.state = state
        self.log = log_recorder
        self.check_token = check_token
        self.ws_base = ws_base
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.allowed_intents = allowed_intents
        self.sessions: dict[str, Session] = {}
        self.connections: set[Connection] = set()

    # ---------------------------------------------------------------- serving
    async def handle(self, request: web.Request) -> web.StreamResponse:
        encoding = request.query.get("encoding", "json")
        if encoding != "json":
            return web.json_response({"message": "only encoding=json is emulated", "code": 0}, status=400)
        try:
            compressor_mode = request.query.get("compress") or None
            _Compressor(compressor_mode)
        except ValueError as exc:
            return web.json_response({"message": str(exc), "code": 0}, status=400)

        ws = web.WebSocketResponse(autoping=True, max_msg_size=0)
        await ws.prepare(request)
        conn = Connection(ws, request, compressor_mode)
        self.connections.add(conn)
        conn.writer = asyncio.create_task(self._writer(conn), name="emulator-gateway-writer")
        self._record("connect", None, data={"path": request.path, "query": dict(request.query)})
        conn.send({"op": OP_HELLO, "d": {"heartbeat_interval": self.heartbeat_interval_ms}})
        try:
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    raw: str | bytes = msg.data
                elif msg.type is WSMsgType.BINARY:
                    raw = msg.data
                else:
                    break
                try:
                    payload = json.loads(raw)
                except ValueError:
                    conn.close(CLOSE_DECODE_ERROR, "Decode error")
                    continue
                self._handle_payload(conn, payload)
        except ConnectionResetError:
            pass
        finally:
            self._on_disconnect(conn, ws.close_code)
        return ws

    async def _writer(self, conn: Connection) -> None:
        try:
            while True:
                item = await conn.queue.get()
                if isinstance(item, _Close):
                    conn.closed = True
                    self._record("close", conn.session.id if conn.session else None, data={"code": item.code})
                    await conn.ws.close(code=item.code, message=item.reason.encode())
                    return
                text = wire.dumps(item, separators=(",", ":"))
                encoded = conn.compressor.encode(text)
                if isinstance(encoded, bytes):
                    await conn.ws.send_bytes(encoded)
                else:
                    await conn.ws.send_str(encoded)
                self._record(
                    "send",
                    conn.session.id if conn.session else None,
                    op=item.get("op"),
                    event=item.get("t"),
                    data=item.get("d"),
                )
        except (ConnectionResetError, RuntimeError, asyncio.CancelledError):
            conn.closed = True

    def _on_disconnect(self, conn: Connection, close_code: int | None) -> None:
        conn.closed = True
        self.connections.discard(conn)
        if conn.writer is not None and not conn.writer.done():
            conn.writer.cancel()
        session = conn.session
        sid = session.id if session else None
        self._record("disconnect", sid, data={"close_code": close_code})
        if session is None or session.conn is not conn:
            return
        session.conn = None
        # A client closing with 1000/1001 ends its session for good (Discord's rule);
        # anything else (4000 after RECONNECT, a dropped socket) leaves it resumable.
        # (discord.py itself closes with 4000 on shutdown, so its sessions stay resumable.)
        if close_code in (1000, 1001) and not conn.server_closed:
            self.sessions.pop(session.id, None)
        session.disconnected_at = time.monotonic()
        self._expire_sessions()

    def _expire_sessions(self) -> None:
        """Forget all but the newest few disconnected sessions so dead bots don't buffer forever."""
        idle = sorted(
            (s for s in self.sessions.values() if s.conn is None),
            key=lambda s: s.disconnected_at,
        )
        for session in idle[: max(0, len(idle) - MAX_IDLE_SESSIONS)]:
            self.sessions.pop(session.id, None)

    # --------------------------------------------------------------- handling
    def _handle_payload(self, conn: Connection, payload: dict[str, Any]) -> None:
        op = payload.get("op")
        data = payload.get("d")
        sid = conn.session.id if conn.session else None
        logged = dict(data) if isinstance(data, dict) else data
        if isinstance(logged, dict) and "token" in logged:
            logged["token"] = "<redacted>"
        self._record("recv", sid, op=op, data=logged)
        if op == OP_HEARTBEAT:
            conn.send({"op": OP_HEARTBEAT_ACK})
        elif op == OP_IDENTIFY:
            self._identify(conn, data or {})
        elif op == OP_RESUME:
            self._resume(conn, data or {})
        elif conn.session is None:
            conn.close(CLOSE_NOT_AUTHENTICATED, "Not authenticated")
        elif op == OP_REQUEST_GUILD_MEMBERS:
            self._request_members(conn.session, data or {})
        elif op in (OP_PRESENCE_UPDATE, OP_VOICE_STATE_UPDATE):
            pass  # recorded above; nothing to emulate
        else:
            conn.close(CLOSE_UNKNOWN_OPCODE, "Unknown opcode")

    def _identify(self, conn: Connection, data: dict[str, Any]) -> None:
        if conn.session is not None:
            conn.close(CLOSE_ALREADY_AUTHENTICATED, "Already authenticated")
            return
        if not self.check_token(data.get("token")):
            conn.close(CLOSE_AUTHENTICATION_FAILED, "Authentication failed")
            return
        if "intents" not in data:
            conn.close(CLOSE_INVALID_INTENTS, "Invalid intent(s)")
            return
        intents = int(data["intents"])
        if intents & PRIVILEGED_INTENTS & ~self.allowed_intents:
            conn.close(CLOSE_DISALLOWED_INTENTS, "Disallowed intent(s)")
            return
        session = Session(intents, data.get("shard"))
        self.sessions[session.id] = session
        session.conn = conn
        conn.session = session
        self._record("identify", session.id, data={"intents": intents, "shard": session.shard})
        state = self.state
        on_shard = [g for g in state.bot_guilds() if self._guild_on_shard(session, g)]
        guilds = [{"id": g, "unavailable": True} for g in on_shard]
        app = state.application_payload()
        user = state.user_payload(state.application_id)
        user.update({"verified": True, "mfa_enabled": False, "email": None, "locale": "ja"})
        ready: dict[str, Any] = {
            "v": 10,
            "user": user,
            "guilds": guilds,
            "session_id": session.id,
            "session_type": "normal",
            "resume_gateway_url": f"{self.ws_base()}/gateway/resume",
            "application": {"id": app["id"], "flags": app["flags"]},
            "user_settings": {},
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "guild_join_requests": [],
            "geo_ordered_rtc_regions": [],
            "_trace": ['["discord-emulator",{"micros":0}]'],
        }
        if session.shard is not None:
            ready["shard"] = session.shard
        session.dispatch("READY", ready)
        if intents & I_GUILDS:
            for guild_id in on_shard:
                payload = state.guild_create_payload(
                    guild_id, include_members=bool(intents & I_GUILD_MEMBERS)
                )
                session.dispatch("GUILD_CREATE", payload)
        self._record("ready", session.id)

    def _resume(self, conn: Connection, data: dict[str, Any]) -> None:
        if not self.check_token(data.get("token")):
            conn.close(CLOSE_AUTHENTICATION_FAILED, "Authentication failed")
            return
        session = self.sessions.get(str(data.get("session_id")))
        seq = int(data.get("seq") or 0)
        if session is None or not session.can_replay_from(seq):
            self._record("resume_failed", str(data.get("session_id")), data={"seq": seq})
            if session is not None:
                self.sessions.pop(session.id, None)
            conn.send({"op": OP_INVALID_SESSION, "d": False})
            return
        old = session.conn
        if old is not None and old is not conn:
            old.session = None
            old.abort()
        session.conn = conn
        conn.session = session
        replay = [p for p in session.buffer if p["s"] > seq]
        for payload in replay:
            conn.send(payload)
        self._record("resume", session.id, data={"seq": seq, "replayed": len(replay)})
        session.dispatch("RESUMED", {"_trace": ['["discord-emulator",{"micros":0}]']})

    def _request_members(self, session: Session, data: dict[str, Any]) -> None:
        state = self.state
        query = (data.get("query") or "").lower()
        user_ids = data.get("user_ids")
        if isinstance(user_ids, (str, int)):
            user_ids = [user_ids]
        wanted = {str(u) for u in user_ids} if user_ids else None
        guild_id = str(data.get("guild_id", state.guild_id))
        guild_members = state.members_of(guild_id) if guild_id in state.guilds else {}
        members = []
        for uid, member in guild_members.items():
            if wanted is not None and uid not in wanted:
                continue
            user = state.users[uid]
            names = [user["username"], user.get("global_name") or "", member.get("nick") or ""]
            if query and not any(n.lower().startswith(query) for n in names):
                continue
            members.append(state.member_payload(uid, guild_id=guild_id))
        limit = int(data.get("limit") or 0)
        if limit:
            members = members[:limit]
        chunk: dict[str, Any] = {
            "guild_id": guild_id,
            "members": members,
            "chunk_index": 0,
            "chunk_count": 1,
        }
        if wanted is not None:
            chunk["not_found"] = sorted(wanted - set(guild_members))
        if data.get("nonce") is not None:
            chunk["nonce"] = data["nonce"]
        session.dispatch("GUILD_MEMBERS_CHUNK", chunk)

    # ----------------------------------------------------------------- events
    def dispatch(
        self, event: str, data: dict[str, Any], *, channel_id: str | None = None, guild_id: str | None = None
    ) -> int:
        """Send an event to every live-or-resumable session whose intents allow it; returns how many.

        ``guild_id`` (a GUILD_* event's guild; default the primary one) picks the shard."""
        is_dm = channel_id is not None and not self.state.is_guild_channel(channel_id)
        needed = _EVENT_INTENTS.get(event, (0, 0))[1 if is_dm else 0]
        delivered = 0
        for session in list(self.sessions.values()):
            if needed and not session.intents & needed:
                continue
            guild = (
                guild_id or (data.get("id") if event.startswith("GUILD_") else None) or self.state.guild_id
            )
            if event in ("GUILD_CREATE", "GUILD_UPDATE", "GUILD_DELETE") and not self._guild_on_shard(
                session, str(guild)
            ):
                continue
            session.dispatch(event, self._filter_content(session, event, data, is_dm))
            delivered += 1
        return delivered

    def _filter_content(
        self, session: Session, event: str, data: dict[str, Any], is_dm: bool
    ) -> dict[str, Any]:
        """Blank message content without MESSAGE_CONTENT, except where Discord keeps it."""
        if event not in ("MESSAGE_CREATE", "MESSAGE_UPDATE") or session.intents & I_MESSAGE_CONTENT:
            return data
        bot_id = self.state.application_id
        author_id = str((data.get("author") or {}).get("id"))
        mentioned = any(str(m.get("id")) == bot_id for m in data.get("mentions") or [])
        if is_dm or author_id == bot_id or mentioned:
            return data
        stripped = dict(data)
        for key in _CONTENT_FIELDS:
            if key in stripped:
                stripped[key] = "" if key == "content" else []
        return stripped

    def _guild_on_shard(self, session: Session, guild_id: str | None = None) -> bool:
        if not session.shard:
            return True
        shard_id, shard_count = session.shard
        return (int(guild_id or self.state.guild_id) >> 22) % int(shard_count) == int(shard_id)

    # ------------------------------------------------------------------ hooks
    def live_connections(self) -> list[Connection]:
        return [c for c in self.connections if not c.closed and c.session is not None]

    def drop_connections(self, code: int | None = None) -> int:
        """Abort (``code=None``) or close with ``code`` every identified connection."""
        conns = self.live_connections()
        for conn in conns:
            if code is None:
                self._record("drop", conn.session.id if conn.session else None)
                conn.abort()
            else:
                conn.close(code, "emulator close")
        return len(conns)

    def send_op(self, op: int, data: Any = None) -> int:
        conns = self.live_connections()
        for conn in conns:
            conn.send({"op": op, "d": data})
        return len(conns)

    def invalidate_sessions(self, resumable: bool) -> int:
        conns = self.live_connections()
        for conn in conns:
            if not resumable and conn.session is not None:
                self.sessions.pop(conn.session.id, None)
            conn.send({"op": OP_INVALID_SESSION, "d": resumable})
        return len(conns)

    async def close_all(self) -> None:
        for conn in list(self.connections):
            conn.close(1001, "emulator shutting down")
        for conn in list(self.connections):
            if conn.writer is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.wait_for(conn.writer, 2)
            conn.abort()

    def _record(self, kind: str, session_id: str | None, **kw: Any) -> None:
        self.log.append(GatewayRecord(kind, session_id, **kw))
