"""Run the emulator standalone: ``python -m tests.discord_emulator --port 0 --state-file emu.json``.

Prints the base URL (give it to the bot as ``DISCORD_API_BASE``) as the first
line of stdout, then serves until SIGINT/SIGTERM, saving state on exit. Hooks
are reachable over HTTP: ``POST /_emulator/hooks/<name>`` with the keyword
arguments as JSON, ``GET /_emulator/calls?since=N``, ``GET /_emulator/world``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from .server import DiscordEmulator


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.discord_emulator", description=__doc__)
    p.add_argument("--host", default="127.0.0.1", help="loopback address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port; 0 picks a free one (default)")
    p.add_argument("--state-file", default=None, help="JSON file to load state from and save it to")
    p.add_argument("--token", default=None, help="only accept this bot token (default: any)")
    p.add_argument("--heartbeat-ms", type=int, default=41250, help="gateway heartbeat_interval")
    p.add_argument(
        "--ack-timeout",
        type=float,
        default=3.0,
        help="seconds to answer an interaction before 10062 Unknown interaction; <=0 disables",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    emu = DiscordEmulator(
        host=args.host,
        port=args.port,
        state_file=args.state_file,
        token=args.token,
        heartbeat_interval_ms=args.heartbeat_ms,
        interaction_ack_timeout=args.ack_timeout if args.ack_timeout > 0 else None,
    )
    base_url = await emu.start()
    print(base_url, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await emu.stop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr)
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
