"""The Discord bot: wiring, start-up, graceful shutdown, command sync and the token's safety.

Start-up (``setup_hook``) opens the store, builds the runtime (model, adapters, worker), loads the
cogs and registers the review buttons, so a click on a card posted before a restart still works.
Shutdown (SIGTERM, SIGINT or ``close()``) stops taking messages, lets in-flight replies finish for
a grace period, fails the rest with a message in their channel, stops the worker and flushes the
database.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import discord
from discord.ext import commands

from bot.chatflow.ratelimit import RateLimiter
from bot.chatflow.replyflow import LogSpool, ReplyFlow
from bot.config import Settings
from bot.discord.api_base import apply_api_base_from_env
from bot.discord.cast_lookup import CastLookup
from bot.discord.cogs.adapters import AdapterCommands
from bot.discord.cogs.admin import Admin
from bot.discord.cogs.cast import Cast
from bot.discord.cogs.chat import Chat
from bot.discord.cogs.help import Help
from bot.discord.cogs.persona import Persona
from bot.discord.cogs.reply_buttons import ReplyButtons
from bot.discord.cogs.review import Review
from bot.discord.cogs.server_access import ServerAccess
from bot.discord.cogs.settings import ServerSettingsCog
from bot.discord.command_tree import OshaberiTree
from bot.discord.connect_errors import (
    CONNECT_ERRORS,
    GatewayStartupError,
    StartupShardLog,
    describe_connect_error,
    ignore_outcome,
)
from bot.discord.review_queue import ReviewQueue
from bot.discord.sender import NO_PINGS, ReplySender
from bot.discord.token_redaction import install_token_redaction
from bot.ops.looplag import LoopLagMonitor
from bot.store.server_book import ServerSettingsBook
from bot.store.store import Store
from bot.text.wordfilter import WordFilter

if TYPE_CHECKING:
    from bot.learning.retrain_schedule import RetrainingSchedule
    from bot.runtime import Runtime

log = logging.getLogger(__name__)
RuntimeFactory = Callable[[Settings], Awaitable["Runtime"]]
# Lost gateway connections tolerated before the first READY (Discord may ask for one reconnect).
STARTUP_RECONNECTS = 3


async def _start_runtime(settings: Settings) -> Runtime:
    from bot.runtime import Runtime  # imports torch: only when the bot really generates

    return await Runtime.start(settings)


def intents() -> discord.Intents:
    """Guilds and guild messages to see conversations; Message Content to read what people say."""
    wanted = discord.Intents.none()
    wanted.guilds = True
    wanted.guild_messages = True
    wanted.message_content = True
    return wanted


class OshaberiClient:
    """The bot's behaviour, on either discord.py bot class (see :class:`OshaberiBot`);
    ``runtime_factory`` and ``store`` are injectable so tests run without a model."""

    def __init__(
        self,
        settings: Settings,
        *,
        runtime_factory: RuntimeFactory | None = _start_runtime,
        store: Store | None = None,
        sync_only: bool = False,
        gateway_intents: discord.Intents | None = None,
        freeze_gc: bool = False,
    ) -> None:
        super().__init__(
            command_prefix=lambda _bot, _msg: [],  # slash commands only; no text commands
            intents=gateway_intents or intents(),
            allowed_mentions=NO_PINGS,
            help_command=None,
            tree_cls=OshaberiTree,
        )
        self.settings = settings
        self._runtime_factory = runtime_factory
        self.store: Store | None = store
        # Each server's settings over the TOML defaults; read from the store in setup_hook.
        self.servers = ServerSettingsBook(lambda: self.settings, store)
        self.runtime: Runtime | None = None
        self.sync_only = sync_only
        self.accepting = not sync_only
        self.freeze_gc = freeze_gc  # run() sets it; tests building many bots in one process do not
        self.sender = ReplySender(self, settings.discord.use_webhooks)
        self.flow: ReplyFlow | None = None
        self.retrainer: RetrainingSchedule | None = None
        # Built in setup_hook, with the store and runtime they need (None for a sync-only bot).
        self.reviews: ReviewQueue | None = None
        self.chat: Chat | None = None
        # Is the event loop really never blocked? Measured for the whole run: /status and shutdown log.
        self.loop_lag = LoopLagMonitor()
        self._closing: asyncio.Task[None] | None = None
        self._was_ready = False
        self._startup_disconnects = 0
        self._startup_failed: asyncio.Future[GatewayStartupError] | None = None  # set by connect()

    async def connect(self, *, reconnect: bool = True) -> None:
        """discord.py's ``connect()``, ended with a :class:`GatewayStartupError` when the gateway
        fails before the first READY (see :meth:`dispatch`).

        With ``AutoShardedBot`` the failure shows up in a shard's own reader task
        (``Shard.worker``), where an exception dies unseen while ``connect()`` waits on the shard
        queue for ever, or in ``launch_shard``, which logs a traceback and retries the first
        connection for ever. So ``connect()`` runs as a task of its own and this waits for
        whichever comes first: its end, or the failure. Raises what ``connect()`` raises, or the
        :class:`GatewayStartupError`.
        """
        failed: asyncio.Future[GatewayStartupError] = asyncio.get_running_loop().create_future()
        self._startup_failed = failed
        shard_log = StartupShardLog(self)
        logging.getLogger("discord.shard").addFilter(shard_log)
        connecting = asyncio.ensure_future(super().connect(reconnect=reconnect))
        connecting.add_done_callback(ignore_outcome)  # read below, unless the failure came first
        try:
            await asyncio.wait((connecting, failed), return_when=asyncio.FIRST_COMPLETED)
        finally:
            logging.getLogger("discord.shard").removeFilter(shard_log)
            # A shard reconnecting may swallow the cancel; close() (async with) then ends it.
            connecting.cancel()
        if failed.done():
            raise failed.result()
        await connecting

    def _startup_failure(self, failure: BaseException) -> None:
        """End start-up with a :class:`GatewayStartupError` caused by ``failure`` (first one wins)."""
        if self._startup_failed is not None and not self._startup_failed.done():
            error = GatewayStartupError(
                f"the gateway connection failed {max(self._startup_disconnects, 1)} times before READY"
            )
            error.__cause__ = failure
            self._startup_failed.set_result(error)

    def dispatch(self, event_name: str, /, *args: Any, **kwargs: Any) -> None:
        """discord.py's dispatch, plus: a gateway that keeps failing before the first READY ends the start.

        Before the bot was ever ready, discord.py either raises the failure raw (a traceback) or
        reconnects forever (a connection lost between HELLO and READY is "resumed", invalidated,
        identified again, lost again...). The cause then is nearly always the operator's (no
        network, a firewall, a portal switch), so start-up stops with one line instead: at once
        for an error, after ``STARTUP_RECONNECTS`` tries for a lost connection. Once ready,
        discord.py's reconnect and resume work as before, and a disconnect caused by our own
        ``close()`` (SIGTERM) is never a failure.

        Where ``disconnect`` comes from (discord.py 2.x): ``Client.connect()`` and the sharded
        ``Shard._handle_disconnect`` dispatch it inside their ``except`` block, so the failure is
        ``sys.exc_info()``; ``Shard.reidentify`` dispatches it outside one, and is only ever called
        for a :class:`~discord.gateway.ReconnectWebSocket` (the connection closed, Discord asked
        to reconnect or invalidated the session), which then stands in as the cause. Never
        raises here: the failure goes to :meth:`connect`, whichever task this runs in.
        """
        # "connect" is dispatched on the READY payload itself; "ready" waits for the guilds.
        if event_name in ("connect", "ready", "resumed"):
            self._was_ready = True
        elif (
            event_name == "disconnect"
            and not self._was_ready
            and self._closing is None
            and not self.is_closed()
            and self._startup_failed is not None
            and not self._startup_failed.done()
        ):
            failure = sys.exc_info()[1] or discord.gateway.ReconnectWebSocket(None)
            self._startup_disconnects += 1
            retry = isinstance(failure, discord.gateway.ReconnectWebSocket)
            if not retry or self._startup_disconnects > STARTUP_RECONNECTS:
                self._startup_failure(failure)
        super().dispatch(event_name, *args, **kwargs)

    # -- start-up ------------------------------------------------------------------------------

    async def setup_hook(self) -> None:
        if not self.sync_only:
            if self.store is None:
                self.store = await Store.open(self.settings.paths.database)
            self.servers.store = self.store
            await self.servers.load()
            if not self.settings.discord.allowed_servers:
                log.info(
                    "discord.allowed_servers is empty: every server that adds the bot is served, and a "
                    "server's approved replies train only once its admins run /settings training on"
                )
            chat = self.settings.chat
            self.flow = ReplyFlow(
                RateLimiter(chat.rate_limit_per_minute, chat.rate_limit_burst),
                WordFilter.from_file(chat.blocked_words_file or None),
                LogSpool(self.store),
            )
            if self._runtime_factory is not None:
                self.runtime = await self._runtime_factory(self.settings)
            if self.settings.schedule.enabled and self.runtime is not None:
                self.start_retraining()
        await self.add_cogs()
        if not self.sync_only:
            if self.freeze_gc:
                freeze_startup_objects()
            # From here on the loop serves Discord; start-up (imports, model load) is not counted.
            self.loop_lag.start()

    async def add_cogs(self) -> None:
        """Build each cog with its collaborators (store, reply flow, runtime, review queue): no
        cog looks another up by name, and every dependency is visible here."""
        store, flow, runtime = self.store, self.flow, self.runtime
        self.reviews = ReviewQueue(self, store, self.persona_name) if store is not None else None
        casting = CastLookup(self, store) if store is not None else None
        self.chat = Chat(self, store, flow, runtime, self.reviews, casting)
        review = Review(self, store, self.reviews, self.persona_name)
        buttons = ReplyButtons(self, store, self.chat, casting, self.reviews)
        # Registered before any event: a click on a card or a reply from before the restart
        # finds its handler.
        self.add_dynamic_items(review.button_class, buttons.button_class)
        for cog in (
            Persona(self, store, runtime),
            Cast(self, store, runtime, casting, self.chat.replies),
            self.chat,
            review,
            buttons,
            Admin(self, store, flow, runtime, self.reviews),
            AdapterCommands(self, store, runtime),
            Help(self, store, runtime),
            ServerSettingsCog(self, runtime),
            ServerAccess(self, store),
        ):
            await self.add_cog(cog)

    def persona_name(self, persona_id: str) -> str | None:
        """A persona's display name, or None when it is not loaded (a card then shows the id)."""
        card = self.runtime.cards.cards.get(persona_id) if self.runtime is not None else None
        return card.display_name if card is not None else None

    # -- scheduled retraining (bot/learning/retrain_schedule.py) ----------------------------------------------

    def start_retraining(self) -> None:
        """Retrain on ``schedule.cron`` in a child process; the bot keeps serving meanwhile."""
        from bot.learning.retrain_schedule import RetrainingSchedule

        self.retrainer = RetrainingSchedule(
            self.settings, on_new_version=self.load_trained_version, on_failure=self.report_training_failure
        )
        self.retrainer.start()

    async def load_trained_version(self, persona_id: str, version: str) -> None:
        """Hot-reload a version the promotion gate passed (now CURRENT or a canary); an
        AdapterError goes back to the scheduler, which reports it (the persona keeps its old adapter)."""
        assert self.runtime is not None  # retraining is only started with a runtime
        lines = await self.runtime.reload(persona_id)
        log.warning("scheduled training: %s now serves %s (%s)", persona_id, version, "; ".join(lines))

    async def report_training_failure(self, persona_id: str, message: str) -> None:
        """Tell the operator's moderators in ``discord.review_channel`` (the personas are the
        operator's, not one server's), in one line (a refused or failed candidate; the serving
        version is untouched); the log has it too."""
        log.error("scheduled training of %s: %s", persona_id, message)
        channel_id = self.settings.discord.review_channel
        channel = self.get_channel(channel_id) if channel_id else None
        if channel is None or not hasattr(channel, "send"):
            return
        line = " ".join(message.split())  # one line, whatever the child printed
        text = f"⚠️ Scheduled training of `{persona_id}`: {line}"[:1900]
        try:
            await channel.send(text, allowed_mentions=NO_PINGS)
        except discord.HTTPException as exc:
            log.warning("could not report the training failure: %s", exc)

    async def on_ready(self) -> None:
        log.info(
            "connected as %s (%s) to %d servers", self.user, getattr(self.user, "id", "?"), len(self.guilds)
        )

    # -- shutdown ------------------------------------------------------------------------------

    async def close(self) -> None:
        """Graceful: one shutdown even when SIGTERM and a second close() arrive together."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._shutdown())
        await asyncio.shield(self._closing)

    async def _shutdown(self) -> None:
        self.accepting = False
        if self.chat is not None:
            await self.chat.drain(self.settings.discord.shutdown_grace_s)
            self.chat.reply_log.flusher.cancel()  # the final flush is below
        if self.reviews is not None:
            self.reviews.stop_polling()
        if self.retrainer is not None:
            self.retrainer.shutdown()
        if self.runtime is not None:
            try:
                await self.runtime.close()
            except Exception:
                log.exception("the runtime did not stop cleanly")
        if self.flow is not None and self.store is not None:
            left = len(self.flow.spool)
            await self.flow.spool.flush()
            if len(self.flow.spool):
                log.error(
                    "%d of %d spooled log entries could not be written at shutdown",
                    len(self.flow.spool),
                    left,
                )
        if self.store is not None:
            await self.store.close()
        if self.loop_lag.running:
            # One line an operator (and the e2e harness) can read after the run.
            log.warning("shutdown: %s", (await self.loop_lag.stop()).line())
        await super().close()

    def install_signal_handlers(self) -> None:
        """SIGTERM (docker stop) and SIGINT start the graceful shutdown instead of killing the loop."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):  # not on Windows / not main thread
                loop.add_signal_handler(sig, lambda s=sig: self._on_signal(s))

    def _on_signal(self, sig: signal.Signals) -> None:
        log.warning("received %s: shutting down gracefully", sig.name)
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._shutdown())


class OshaberiBot(OshaberiClient, commands.AutoShardedBot):
    """The bot. AutoSharded: Discord says how many shards it needs (``GET /gateway/bot``) and
    discord.py runs them all in this process, so a bot in thousands of servers shards without
    code changes."""


def freeze_startup_objects() -> None:
    """Exclude everything allocated during start-up from later garbage collections.

    torch, transformers and the model are about half a million long-lived objects. Every full
    (generation 2) collection walked all of them: about 0.25 s on the 2-core reference machine,
    during which no Python thread runs, the event loop included. The e2e load run measured
    it as event-loop lag spikes of 120-165 ms (p99 5 ms). After ``gc.freeze()`` a full
    collection only looks at what the bot allocated while serving (a few ms). Collect first so
    start-up garbage is freed rather than kept forever.
    """
    gc.collect()
    gc.freeze()


# -- entry points ----------------------------------------------------------------------------------


def _api_host() -> str:
    """Where the REST calls go (``discord.com`` or the DISCORD_API_BASE host), for error lines."""
    import yarl

    url = yarl.URL(discord.http.Route.BASE)
    return f"{url.host}:{url.port}" if url.port not in (80, 443, None) else str(url.host)


def _report_connect_error(exc: BaseException, token: str) -> int:
    """Print the one ``error:`` line for a failed login/connect/sync; returns the exit code."""
    failure = describe_connect_error(exc, api_host=_api_host(), token=token)
    log.debug("connecting to Discord failed", exc_info=exc)  # the whole story, with -v only
    print(f"error: {failure.line}", file=sys.stderr)
    return failure.exit_code


def run(settings: Settings, token: str) -> int:
    """Run the bot until SIGTERM/SIGINT; returns the process exit code (2: a setting is wrong)."""
    if settings.schedule.enabled:
        from bot.ops.cron import cron_trigger

        try:
            cron_trigger(settings.schedule.cron)  # fails now, not after the model has loaded
        except ValueError as exc:
            print(f"error: [schedule] {exc}", file=sys.stderr)
            return 2
    install_token_redaction(token)
    apply_api_base_from_env()

    async def main() -> int:
        bot = OshaberiBot(settings, freeze_gc=True)
        bot.install_signal_handlers()
        async with bot:
            try:
                await bot.start(token)
            except (GatewayStartupError, *CONNECT_ERRORS) as exc:
                return _report_connect_error(exc, token)
        return 0

    return asyncio.run(main())


def sync_commands(settings: Settings, token: str, guild_id: int | None = None) -> int:
    """Register the slash commands with Discord: globally, or in one guild (instant, for testing).

    An explicit step because Discord rate-limits command registration and a global change takes a
    while to reach every client; doing it on every start would be slow and fragile.
    """
    install_token_redaction(token)
    apply_api_base_from_env()

    async def main() -> int:
        bot = OshaberiBot(settings, runtime_factory=None, sync_only=True)
        async with bot:
            try:
                await bot.login(token)
                if guild_id:
                    guild = discord.Object(id=guild_id)
                    bot.tree.copy_global_to(guild=guild)
                    synced = await bot.tree.sync(guild=guild)
                    where = f"guild {guild_id}"
                else:
                    synced = await bot.tree.sync()
                    where = "all servers (global; may take a while to appear)"
            except CONNECT_ERRORS as exc:
                return _report_connect_error(exc, token)
        print(f"synced {len(synced)} commands to {where}: {', '.join('/' + c.name for c in synced)}")
        return 0

    return asyncio.run(main())
