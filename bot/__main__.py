"""``python -m bot``: the Discord bot when DISCORD_TOKEN is set, else the console chat.

python -m bot                       # Discord if a token is set, else console chat
python -m bot chat [--persona ID] [--model HUB_ID_OR_DIR]
python -m bot chat --backend vllm --vllm-url http://HOST:8000   # generate on vLLM servers
python -m bot run                   # Discord only; fails without a token
python -m bot sync-commands [--guild ID]   # register the slash commands (an explicit step)
"""

from __future__ import annotations

# First, so that outside the venv the user gets one line instead of an import traceback.
from bot.ops.preflight import require_dependencies

require_dependencies("python -m bot")

import argparse
import asyncio
import logging
import sys
from dataclasses import replace
from pathlib import Path

from bot.config import ConfigError, Settings, discord_token, load_settings, validate
from bot.ops.quiet import quiet_libraries
from personas.card import UnknownPersonaError

log = logging.getLogger("bot")
malloc_setting: str | None = None  # what bot/ops/allocator.py did, when run as ``python -m bot``


def build_parser() -> argparse.ArgumentParser:
    # Shared options are accepted before or after the subcommand; SUPPRESS keeps the later
    # parser from overwriting an earlier value with its default.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        default=argparse.SUPPRESS,
        help="config TOML (default: oshaberi.toml, or $OSHABERI_CONFIG)",
    )
    common.add_argument(
        "--model",
        default=argparse.SUPPRESS,
        help="base model: a hub id or a local folder (overrides the config)",
    )
    common.add_argument(
        "--backend",
        choices=("local", "vllm"),
        default=argparse.SUPPRESS,
        help="serving backend: the in-process engine or vLLM servers (overrides engine.backend)",
    )
    common.add_argument(
        "--vllm-url",
        action="append",
        default=argparse.SUPPRESS,
        metavar="URL",
        help="a vLLM server's base URL; repeat for several (overrides engine.vllm_urls)",
    )
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS)
    parser = argparse.ArgumentParser(
        prog="python -m bot",
        description=__doc__,
        parents=[common],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command")
    chat = sub.add_parser(
        "chat", parents=[common], help="talk to a persona in the terminal (reads stdin when piped)"
    )
    chat.add_argument("--persona", help="persona id (default: chat.default_persona)")
    sub.add_parser("run", parents=[common], help="run the Discord bot (needs DISCORD_TOKEN)")
    sync = sub.add_parser(
        "sync-commands",
        parents=[common],
        help="register the slash commands with Discord (globally, or instantly in one --guild)",
    )
    sync.add_argument("--guild", type=int, help="a server id: sync there only (appears at once)")
    return parser


def check_personas(settings: Settings, persona_ids: list[tuple[str, str]]) -> None:
    """Raise UnknownPersonaError now, before the model loads (minutes), for a persona no card defines.

    ``persona_ids`` are (where it was set, persona id) pairs; the message starts with the where.
    Reading the cards is cheap (TOML files); the runtime reads them again and logs bad ones.
    """
    from personas.card import load_cards

    directory = settings.paths.personas_dir
    cards = load_cards(Path(directory) if directory else None)
    for where, persona_id in persona_ids:
        if persona_id in cards.cards:
            continue
        broken = [str(e) for e in cards.errors if Path(e.path).parent.name == persona_id]
        if broken:
            raise UnknownPersonaError(f"{where}: persona {persona_id!r} cannot be used: {broken[0]}")
        try:
            cards.get(persona_id)
        except UnknownPersonaError as exc:
            raise UnknownPersonaError(f"{where}: {exc}") from None


def apply_cli_overrides(settings: Settings, args: argparse.Namespace) -> Settings:
    """The command line's --model, --backend and --vllm-url over the configured settings."""
    if getattr(args, "model", None):
        settings = replace(settings, model=replace(settings.model, base_model=args.model))
    engine = settings.engine
    if getattr(args, "vllm_url", None):
        engine = replace(engine, vllm_urls=tuple(args.vllm_url))
        if not hasattr(args, "backend"):
            engine = replace(engine, backend="vllm")  # a server named on the command line means: use it
    if getattr(args, "backend", None):
        engine = replace(engine, backend=args.backend)
    if engine != settings.engine:
        settings = replace(settings, engine=engine)
        validate(settings)
    return settings


def run_chat(settings: Settings, persona_id: str | None) -> int:
    from bot.console import run_console
    from bot.runtime import Runtime

    async def main() -> int:
        runtime = await Runtime.start(settings)
        try:
            problem = runtime.backend_problem()
            if problem is not None:
                print(f"error: {problem}", file=sys.stderr)
                return 2
            return await run_console(runtime, persona_id or settings.chat.default_persona)
        finally:
            await runtime.close(drain_timeout=5)

    return asyncio.run(main())


def run_discord(settings: Settings, token: str) -> int:
    """Start the Discord bot (bot/discord/app.py)."""
    from bot.discord.app import run

    return run(settings, token)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    verbose = getattr(args, "verbose", False)
    # Logs go to stderr, so piped console output stays clean.
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    quiet_libraries(verbose)
    if malloc_setting is not None:
        log.info("%s", malloc_setting)
    if not verbose:
        # Offline, the hub client warns once per file it tries; the one-line error below says it all.
        from huggingface_hub.utils import logging as hub_logging

        hub_logging.set_verbosity_error()
        # ...but say what a long wait is for: finding and loading the model (bot/model/source.py).
        for name in ("bot.model.source", "bot.model.loading"):
            logging.getLogger(name).setLevel(logging.INFO)
    from bot.model.loading import ModelLoadError  # imports torch: after bot/ops/allocator.py's setting

    try:
        settings = apply_cli_overrides(load_settings(getattr(args, "config", None)), args)
        token = discord_token()
        if args.command != "sync-commands":
            # chat.default_persona answers mentions in Discord and starts the console: check it first.
            wanted = [("chat.default_persona", settings.chat.default_persona)]
            if getattr(args, "persona", None):
                wanted.append(("--persona", args.persona))
            check_personas(settings, wanted)
        if args.command == "sync-commands":
            if not token:
                print("error: DISCORD_TOKEN is not set (environment or .env)", file=sys.stderr)
                return 2
            from bot.discord.app import sync_commands

            return sync_commands(settings, token, args.guild)
        if args.command == "run" or (args.command is None and token):
            if not token:
                print("error: DISCORD_TOKEN is not set (environment or .env)", file=sys.stderr)
                return 2
            return run_discord(settings, token)
        return run_chat(settings, getattr(args, "persona", None))
    except (ConfigError, ModelLoadError, UnknownPersonaError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    # Before torch is imported, so all its allocations follow the setting (bot/ops/allocator.py).
    from bot.ops.allocator import fix_mmap_threshold

    malloc_setting = fix_mmap_threshold()
    sys.exit(main())
