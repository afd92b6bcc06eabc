"""Start and stop the real bot the way an operator does, and read what it left behind.

``BotProcess`` writes an ``oshaberi.toml`` (review channel, moderator role, allowed channels,
rate limit, queue size), runs ``python -m bot sync-commands --guild ID`` once, then
``python -m bot`` with the token and paths in the environment and ``DISCORD_API_BASE`` pointing
at the emulator. Nothing in the bot knows it is being tested; faults come from the emulator,
from the test holding the SQLite file, or from ``faultinject/sitecustomize.py`` put on the
bot's PYTHONPATH. Output goes to a log file that the tests search for tracebacks and the token.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from tests.discord_emulator import DiscordEmulator

REPO = Path(__file__).resolve().parents[2]
FAULT_PATH = Path(__file__).resolve().parent / "faultinject"
# Distinctive, so a leak into the log cannot be a coincidence.
TOKEN = "e2e.MTIzNDU2Nzg5MDEyMzQ1Njc4.never-log-this-token"
FAULT_MARKER = "E2E-MODEL-FAULT"
SLOW_MARKER = "E2E-SLOW-MODEL"
SCRIPT_MARKER = "E2E-SCRIPTED-REPLY"
TRACEBACK = "Traceback (most recent call last)"
LAG_RE = re.compile(r"loop lag p50=([\d.]+) p99=([\d.]+) max=([\d.]+) ms \((\d+) samples")


@dataclass
class BotConfig:
    """The settings a test chooses; written to the TOML file the bot reads (OSHABERI_CONFIG)."""

    review_channel: int
    moderator_role: int
    allowed_channels: tuple[int, ...] = ()
    allowed_servers: tuple[int, ...] = ()
    rate_limit_per_minute: float = 0.0  # 0: off, so functional tests are not throttled
    rate_limit_burst: int = 3
    queue_size: int = 32
    max_batch_size: int = 8
    history_messages: int = 20
    queue_notice_position: int = 4
    review_poll_s: float = 2.0
    shutdown_grace_s: float = 10.0
    request_timeout_s: float = 120.0
    default_persona: str = "marisa"
    max_new_tokens: int = 16  # in the test copies of the persona cards
    stream_replies: bool = True
    stream_edit_interval_s: float = 1.5
    backend: str = "local"
    vllm_urls: tuple[str, ...] = ()
    adapter_poll_s: float = 3.0  # how soon a pointer moved by the trainer CLI is served
    prefix_cache_mb: int | None = None  # None: the default (worker.prefix_cache_mb)

    def toml(self, personas_dir: Path) -> str:
        channels = ", ".join(str(c) for c in self.allowed_channels)
        return "\n".join(
            [
                "# written by tests/e2e/harness.py",
                "[model]",
                'device = "cpu"',
                "",
                "[paths]",
                f"personas_dir = {_toml_str(str(personas_dir))}",
                "",
                "[worker]",
                f"queue_size = {self.queue_size}",
                f"max_batch_size = {self.max_batch_size}",
                f"request_timeout_s = {float(self.request_timeout_s)}",
                *([f"prefix_cache_mb = {self.prefix_cache_mb}"] if self.prefix_cache_mb is not None else []),
                "",
                "[chat]",
                f"default_persona = {_toml_str(self.default_persona)}",
                f"history_messages = {self.history_messages}",
                f"rate_limit_per_minute = {float(self.rate_limit_per_minute)}",
                f"rate_limit_burst = {self.rate_limit_burst}",
                f"queue_notice_position = {self.queue_notice_position}",
                f"stream_replies = {'true' if self.stream_replies else 'false'}",
                f"stream_edit_interval_s = {float(self.stream_edit_interval_s)}",
                "",
                "[discord]",
                f"allowed_channels = [{channels}]",
                f"allowed_servers = [{', '.join(str(g) for g in self.allowed_servers)}]",
                f"review_channel = {self.review_channel}",
                f"moderator_role = {self.moderator_role}",
                f"review_poll_s = {float(self.review_poll_s)}",
                f"shutdown_grace_s = {float(self.shutdown_grace_s)}",
                "",
                *self._engine_toml(),
            ]
        )

    def _engine_toml(self) -> list[str]:
        lines = ["[engine]", f"adapter_poll_s = {float(self.adapter_poll_s)}"]
        if self.backend == "local":
            return [*lines, ""]
        urls = ", ".join(_toml_str(u) for u in self.vllm_urls)
        return [*lines, f"backend = {_toml_str(self.backend)}", f"vllm_urls = [{urls}]", ""]


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_test_personas(
    dest: Path, *, max_new_tokens: int = 16, ids: Iterable[str] = ("marisa", "zundamon")
) -> Path:
    """Copies of the shipped cards, greedy and short: random weights then answer the same way
    every run, with a few tokens at least, so a test never depends on sampling luck."""
    for pid in ids:
        text = (REPO / "personas" / pid / "persona.toml").read_text(encoding="utf-8")
        text = re.sub(r"(?m)^temperature = .*$", "temperature = 0.0", text)
        text = re.sub(
            r"(?m)^max_new_tokens = .*$", f"max_new_tokens = {max_new_tokens}\nmin_new_tokens = 4", text
        )
        text = re.sub(r"(?m)^stop = .*$", "stop = []", text)
        (dest / pid).mkdir(parents=True, exist_ok=True)
        (dest / pid / "persona.toml").write_text(text, encoding="utf-8")
    return dest


def read_proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, … in kB from /proc/<pid>/status (Linux); empty once the process is gone."""
    values: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return values
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key.startswith("Vm") and rest.strip().endswith("kB"):
            values[key] = int(rest.split()[0])
    return values


@dataclass
class LogCheck:
    tracebacks: list[str] = field(default_factory=list)
    token_leaked: bool = False
    loop_lag: dict[str, float] | None = None


def check_log(text: str, *, allowed_traceback: str | None = None) -> LogCheck:
    """Tracebacks not mentioning ``allowed_traceback`` (the injected fault), a leaked token, and
    the shutdown loop-lag line (the last one, if the bot ran several times)."""
    result = LogCheck(token_leaked=TOKEN in text)
    for block in text.split(TRACEBACK)[1:]:
        # A traceback ends at the first line that is not indented, after its exception line.
        lines = block.splitlines()
        end = next(
            (i for i, line in enumerate(lines[1:], 1) if line and not line.startswith(" ")), len(lines)
        )
        excerpt = "\n".join(lines[: end + 1])
        if allowed_traceback is None or allowed_traceback not in excerpt:
            result.tracebacks.append(TRACEBACK + excerpt)
    found = LAG_RE.findall(text)
    if found:
        p50, p99, mx, n = found[-1]
        result.loop_lag = {"p50_ms": float(p50), "p99_ms": float(p99), "max_ms": float(mx), "samples": int(n)}
    return result


class BotProcess:
    """``python -m bot`` against ``emu``, in ``workdir`` (its database, adapters, config and log)."""

    def __init__(
        self,
        emu: DiscordEmulator,
        workdir: Path,
        model_dir: Path,
        config: BotConfig,
        *,
        fault_injection: bool = False,
        slow_s: float = 3.0,
    ) -> None:
        self.emu = emu
        self.workdir = workdir
        self.model_dir = model_dir
        self.config = config
        self.fault_injection = fault_injection
        self.slow_s = slow_s
        self.db_path = workdir / "oshaberi.sqlite3"
        self.log_path = workdir / "bot.log"
        self.script_path = workdir / "e2e-script.json"  # replies for E2E-SCRIPTED-REPLY prompts
        self.config_path = workdir / "oshaberi.toml"
        # With fault injection, the bot's database reads wait while this file exists.
        self.stall_reads_file = workdir / "stall-db-reads"
        self.personas_dir = write_test_personas(workdir / "personas", max_new_tokens=config.max_new_tokens)
        self.config_path.write_text(config.toml(self.personas_dir), encoding="utf-8")
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0
        self._log: IO[bytes] | None = None

    def script_reply(self, pieces: list[str], gap_s: float = 0.05, fail_after: int | None = None) -> None:
        """What the next ``E2E-SCRIPTED-REPLY`` prompt is answered with (needs fault_injection)."""
        script = {"pieces": pieces, "gap_s": gap_s, "fail_after": fail_after}
        self.script_path.write_text(json.dumps(script, ensure_ascii=False), encoding="utf-8")

    # -- environment -----------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """What an operator sets; inherited OSHABERI_* variables are dropped so only this run counts."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OSHABERI_", "DISCORD_"))}
        paths = [str(REPO)]
        if self.fault_injection:
            paths.insert(0, str(FAULT_PATH))
            env["E2E_DB_STALL_FILE"] = str(self.stall_reads_file)
        # A folder with a sitecustomize.py to instrument the bot (docs/memory.md's probe).
        if probe := os.environ.get("E2E_BOT_PYTHONPATH"):
            paths.insert(0, probe)
        env.update(
            {
                "PYTHONPATH": os.pathsep.join(paths),
                "PYTHONUNBUFFERED": "1",
                "DISCORD_TOKEN": TOKEN,
                "DISCORD_API_BASE": self.emu.api_base,
                "OSHABERI_CONFIG": str(self.config_path),
                "OSHABERI_MODEL": str(self.model_dir),
                "OSHABERI_DB": str(self.db_path),
                "OSHABERI_ADAPTERS_DIR": str(self.workdir / "adapters"),
                "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false",
                "E2E_SLOW_S": str(self.slow_s),
                "E2E_SCRIPT_FILE": str(self.script_path),
            }
        )
        return env

    def _open_log(self, title: str) -> IO[bytes]:
        log = self.log_path.open("ab")
        log.write(f"\n===== e2e harness: {title} =====\n".encode())
        log.flush()
        return log

    # -- lifecycle -------------------------------------------------------------------------------

    async def sync_commands(self, timeout: float = 120.0) -> None:
        """``python -m bot sync-commands --guild ID``: the explicit step an operator runs first."""
        with self._open_log("sync-commands") as log:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bot",
                "sync-commands",
                "--guild",
                self.emu.guild_id,
                cwd=self.workdir,
                env=self.env(),
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
            )
            try:
                code = await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                raise
        if code != 0:
            raise RuntimeError(f"sync-commands exited with {code}:\n{self.log_tail()}")

    async def start(self, timeout: float = 180.0) -> None:
        """Start ``python -m bot`` and return once it has identified on the emulator's gateway
        (the model is loaded by then: the bot loads it before it connects)."""
        if self.proc is not None and self.proc.returncode is None:
            raise RuntimeError("the bot is already running")
        since = len(self.emu.gateway_log)
        self.starts += 1
        self._log = self._open_log(f"python -m bot (start {self.starts})")
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bot",
            cwd=self.workdir,
            env=self.env(),
            stdout=self._log,
            stderr=asyncio.subprocess.STDOUT,
        )
        ready = asyncio.ensure_future(
            self.emu.wait_for_gateway(lambda r: r.kind == "ready", timeout=timeout, since=since)
        )
        exited = asyncio.ensure_future(self.proc.wait())
        done, _ = await asyncio.wait(
            {ready, exited}, timeout=timeout + 5, return_when=asyncio.FIRST_COMPLETED
        )
        for task in (ready, exited):
            if task not in done:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                    await task
        if ready not in done or ready.exception() is not None:
            await self.kill()
            raise RuntimeError(f"the bot did not connect within {timeout:.0f}s:\n{self.log_tail()}")

    async def stop(self, timeout: float = 90.0) -> int:
        """SIGTERM, as ``docker stop`` sends; the bot drains and exits by itself. Returns its exit code."""
        proc = self.proc
        if proc is None:
            return 0
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                await self.kill()
                raise RuntimeError(f"the bot did not stop within {timeout:.0f}s of SIGTERM") from None
        self._close_log()
        return int(proc.returncode or 0)

    async def kill(self) -> None:
        proc = self.proc
        if proc is not None and proc.returncode is None:
            proc.kill()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 30)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    # -- what it left behind ---------------------------------------------------------------------

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def memory_kb(self) -> dict[str, int]:
        return read_proc_status(self.pid) if self.running else {}

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_text()[-chars:]

    def check_log(self, *, allowed_traceback: str | None = None) -> LogCheck:
        return check_log(self.log_text(), allowed_traceback=allowed_traceback)

    def assert_clean_log(self, *, allowed_traceback: str | None = None) -> LogCheck:
        """No traceback (except the injected fault's) and never the token."""
        result = self.check_log(allowed_traceback=allowed_traceback)
        assert not result.token_leaked, "the bot token appears in the bot's log"
        assert not result.tracebacks, (
            "tracebacks in the bot's log:\n" + "\n---\n".join(result.tracebacks)[:6000]
        )
        return result
