"""First-run failures of the real entry points: one ``error:`` line, no traceback, never the token.

``python -m bot`` and ``python -m bot sync-commands`` run in a subprocess as an operator runs
them, against an address nothing listens on, a name that does not resolve, and the loopback
Discord emulator set up to refuse the token, to refuse the Message Content intent, or to drop
the gateway connection before READY. Everything else on stderr must be ordinary log lines.
"""

from __future__ import annotations

import asyncio
import re
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.discord_emulator import DiscordEmulator
from tests.e2e.harness import TOKEN, BotConfig, BotProcess

# "%(asctime)s %(levelname)s %(name)s: %(message)s" at INFO/WARNING: start-up chatter, not the failure.
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO|WARNING) [\w.]+: ")
# tqdm's progress bars (transformers' "Loading weights") show a slow step, not a failure.
PROGRESS_LINE = re.compile(r"^[\w ]+:\s+\d+%\|")
WRONG_TOKEN = "e2e.d3JvbmctdG9rZW4.wrong-token-never-print"


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str

    def error_line(self, secret: str) -> str:
        """The one line the operator reads; asserts everything else about the output."""
        assert self.code != 0, f"exit code 0; stderr:\n{self.stderr}"
        everything = self.stdout + self.stderr
        assert "Traceback" not in everything, everything
        assert secret not in everything, "the token appears in the output"
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("error: ")]
        others = [
            line
            for line in lines
            if not line.startswith("error: ") and not LOG_LINE.match(line) and not PROGRESS_LINE.match(line)
        ]
        assert len(errors) == 1 and not others, f"want one error line and log lines only:\n{self.stderr}"
        return errors[0]


def _bot_process(emu: DiscordEmulator, workdir: Path, model_dir: Path) -> BotProcess:
    config = BotConfig(
        review_channel=int(emu.channel_id("review")), moderator_role=int(emu.role_id("moderator"))
    )
    return BotProcess(emu, workdir, model_dir, config)


async def run_entry(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 180.0) -> Outcome:
    """``python -m bot ARGS`` to its end; stdout and stderr go to files so a hang still shows them."""
    out_path, err_path = cwd / "stdout.txt", cwd / "stderr.txt"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", *args, cwd=cwd, env=env, stdout=out, stderr=err
        )
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            pytest.fail(
                f"python -m bot {' '.join(args)} still ran after {timeout:.0f}s:\n"
                + err_path.read_text(errors="replace")[-3000:]
            )
    return Outcome(
        proc.returncode or 0, out_path.read_text(errors="replace"), err_path.read_text(errors="replace")
    )


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


ENTRY_POINTS = [
    pytest.param([], id="run"),
    pytest.param(["sync-commands", "--guild", "1"], id="sync-commands"),
]


@pytest.mark.parametrize("args", ENTRY_POINTS)
@pytest.mark.parametrize(
    ("base", "expected"),
    [
        pytest.param(lambda: f"http://127.0.0.1:{closed_port()}", "refused", id="connection-refused"),
        # .invalid never resolves (RFC 2606): the same failure as a machine without network or DNS
        pytest.param(lambda: "http://discord.oshaberi-test.invalid", "does not resolve", id="dns-failure"),
    ],
)
async def test_unreachable_discord_is_one_line(
    args: list[str], base: Callable[[], str], expected: str, tiny_neox: Path, tmp_path: Path
) -> None:
    async with DiscordEmulator(token=TOKEN) as emu:
        env = _bot_process(emu, tmp_path, tiny_neox).env()
    env["DISCORD_API_BASE"] = base()
    line = (await run_entry(args, env, tmp_path, timeout=120)).error_line(TOKEN)
    assert "cannot reach Discord" in line and expected in line and "network" in line


@pytest.mark.parametrize("args", ENTRY_POINTS)
async def test_a_wrong_token_is_one_line(args: list[str], tiny_neox: Path, tmp_path: Path) -> None:
    async with DiscordEmulator(token=TOKEN) as emu:  # accepts TOKEN only: 401 for anything else
        env = _bot_process(emu, tmp_path, tiny_neox).env()
        env["DISCORD_TOKEN"] = WRONG_TOKEN
        line = (await run_entry(args, env, tmp_path, timeout=120)).error_line(WRONG_TOKEN)
    assert "refused the token" in line and "DISCORD_TOKEN" in line and "Reset Token" in line


async def test_sync_to_a_server_without_the_bot_is_one_line(tiny_neox: Path, tmp_path: Path) -> None:
    async with DiscordEmulator(token=TOKEN) as emu:
        bot = _bot_process(emu, tmp_path, tiny_neox)
        emu.fail_next("PUT", r"/guilds/\d+/commands", 403, code=50001, message="Missing Access")
        line = (await run_entry(["sync-commands", "--guild", emu.guild_id], bot.env(), tmp_path)).error_line(
            TOKEN
        )
    assert "403" in line and "applications.commands" in line


async def test_missing_message_content_intent_names_the_portal_switch(
    tiny_neox: Path, tmp_path: Path
) -> None:
    async with DiscordEmulator(token=TOKEN, allowed_intents=0) as emu:  # no privileged intent enabled
        bot = _bot_process(emu, tmp_path, tiny_neox)
        outcome = await run_entry([], bot.env(), tmp_path)
    line = outcome.error_line(TOKEN)
    assert "Privileged Gateway Intents" in line and "MESSAGE CONTENT INTENT" in line
    assert outcome.code == 2


async def test_gateway_lost_before_ready_is_one_line(tiny_neox: Path, tmp_path: Path) -> None:
    async with DiscordEmulator(token=TOKEN) as emu:
        bot = _bot_process(emu, tmp_path, tiny_neox)
        identified: list[bool] = []

        def drop_at_identify(conn, data) -> None:  # the network fails between HELLO and READY
            identified.append(True)
            conn.abort()

        emu.gateway._identify = drop_at_identify  # type: ignore[method-assign]
        outcome = await run_entry([], bot.env(), tmp_path)
    assert identified, "the bot never reached IDENTIFY"
    line = outcome.error_line(TOKEN)
    assert "gateway was lost during start-up" in line and "network" in line
    assert outcome.code == 1


async def test_gateway_unreachable_at_first_connect_is_one_line(
    tiny_neox: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # REST works, the websocket does not (a firewall, a proxy): GET /gateway/bot names a port
    # nothing listens on. discord.py's AutoShardedClient would log a traceback and retry for ever.
    port = closed_port()
    monkeypatch.setattr(DiscordEmulator, "ws_base", property(lambda _emu: f"ws://127.0.0.1:{port}"))
    async with DiscordEmulator(token=TOKEN) as emu:
        bot = _bot_process(emu, tmp_path, tiny_neox)
        outcome = await run_entry([], bot.env(), tmp_path, timeout=120)
    line = outcome.error_line(TOKEN)
    assert "gateway" in line and "refused" in line and "network" in line
    assert outcome.code == 1
