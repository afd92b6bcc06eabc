"""The Discord bot when DISCORD_TOKEN is set (in the environment or .env), else the console chat.

Without a command: Discord if a token is set, else the console chat with the default persona.
  chat            the console chat; with --backend vllm --vllm-url URL it generates on vLLM servers
  run             Discord only: stops with one line when no token is set
  sync-commands   register the slash commands (once, and after an upgrade; --guild ID: at once)
docs/operations.md lists the start-up errors and what to do about each.
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
from bot.ops.commandline import HelpFormatter, module_command
from bot.ops.quiet import quiet_libraries
from bot.ops.startup import check_paths, describe_sources, load_env_file, too_late
from bot.ops.startup import log as startup_log
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
        metavar="FILE",
        help="config TOML (default: oshaberi.toml, or $OSHABERI_CONFIG)",
    )
    common.add_argument(
        "--model",
        default=argparse.SUPPRESS,
        metavar="HUB_ID_OR_DIR",
        help="base model: a hub id or a local folder (default: model.base_model, or $OSHABERI_MODEL)",
    )
    common.add_argument(
        "--backend",
        choices=("local", "vllm"),
        default=argparse.SUPPRESS,
        help="serving backend: the in-process engine or vLLM servers (default: engine.backend, local)",
    )
    common.add_argument(
        "--vllm-url",
        action="append",
        default=argparse.SUPPRESS,
        metavar="URL",
        help="a vLLM server's base URL; repeat for several (default: engine.vllm_urls, none)",
    )
    common.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="debug logs and library notices",
    )
    parser = argparse.ArgumentParser(
        prog=module_command("bot"),
        description=__doc__,
        parents=[common],
        formatter_class=HelpFormatter,
    )
    sub = parser.add_subparsers(dest="command")
    chat = sub.add_parser(
        "chat",
        parents=[common],
        formatter_class=HelpFormatter,
        help="talk to a persona in the terminal (reads stdin when piped)",
    )
    chat.add_argument("--persona", help="persona id (default: chat.default_persona)")
    sub.add_parser(
        "run",
        parents=[common],
        formatter_class=HelpFormatter,
        help="run the Discord bot (needs DISCORD_TOKEN)",
    )
    sync = sub.add_parser(
        "sync-commands",
        parents=[common],
        formatter_class=HelpFormatter,
        help="register the slash commands with Discord (globally, or instantly in one --guild)",
    )
    sync.add_argument(
        "--guild", type=int, help="a server id: sync there only, which shows at once (default: every server)"
    )
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
    """The command line's --model, --backend and --vllm-url over the configured settings; each
    is recorded as the origin of what it set, so a message about it names the flag."""
    origins = dict(settings.origins)
    if getattr(args, "model", None):
        settings = replace(settings, model=replace(settings.model, base_model=args.model))
        origins["model.base_model"] = "--model"
    engine = settings.engine
    if getattr(args, "vllm_url", None):
        engine = replace(engine, vllm_urls=tuple(args.vllm_url))
        origins["engine.vllm_urls"] = "--vllm-url"
        if not hasattr(args, "backend"):
            engine = replace(engine, backend="vllm")  # a server named on the command line means: use it
            origins["engine.backend"] = "--vllm-url"
    if getattr(args, "backend", None):
        engine = replace(engine, backend=args.backend)
        origins["engine.backend"] = "--backend"
    settings = replace(settings, origins=origins)
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
    # Before anything reads the environment: .env's variables, as Docker Compose passes them.
    from_env_file = load_env_file()
    args = build_parser().parse_args(argv)
    verbose = getattr(args, "verbose", False)
    # Logs go to stderr, so piped console output stays clean.
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    quiet_libraries(verbose)
    for warning in too_late(from_env_file):
        startup_log.warning("%s", warning)
    if malloc_setting is not None:
        log.info("%s", malloc_setting)
    if not verbose:
        # Offline, the hub client warns once per file it tries; the one-line error below says it all.
        from huggingface_hub.utils import logging as hub_logging

        hub_logging.set_verbosity_error()
        # ...but say what a long wait is for: finding and loading the model (bot/model/source.py),
        # and confirm a reload an operator caused from elsewhere (trainer promote/rollback/canary).
        for name in ("bot.model.source", "bot.model.loading", "bot.ops.startup", "bot.learning.pointer_watch"):
            logging.getLogger(name).setLevel(logging.INFO)
    from bot.model.loading import ModelLoadError  # imports torch: after bot/ops/allocator.py's setting

    settings = None
    try:
        settings = apply_cli_overrides(load_settings(getattr(args, "config", None)), args)
        token = discord_token()
        warnings = check_paths(settings)
        if args.command != "sync-commands":
            # chat.default_persona answers mentions in Discord and starts the console: check it first.
            wanted = [("chat.default_persona", settings.chat.default_persona)]
            if getattr(args, "persona", None):
                wanted.append(("--persona", args.persona))
            check_personas(settings, wanted)
        # Only once the start is going ahead, so that a mistake above stays a single line.
        startup_log.info("%s", describe_sources(settings, from_env_file))
        if args.command == "sync-commands":
            if not token:
                print("error: DISCORD_TOKEN is not set (environment or .env)", file=sys.stderr)
                return 2
            from bot.discord.app import sync_commands

            return sync_commands(settings, token, args.guild)
        for warning in warnings:  # what the persona cards will answer with: not for sync-commands
            startup_log.warning("%s", warning)
        if args.command == "run" or (args.command is None and token):
            if not token:
                print("error: DISCORD_TOKEN is not set (environment or .env)", file=sys.stderr)
                return 2
            return run_discord(settings, token)
        return run_chat(settings, getattr(args, "persona", None))
    except ModelLoadError as exc:
        print(f"error: {exc.for_settings(settings) if settings else exc}", file=sys.stderr)
        return 2
    except (ConfigError, UnknownPersonaError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    # Before torch is imported, so all its allocations follow the setting (bot/ops/allocator.py).
    from bot.ops.allocator import fix_mmap_threshold

    malloc_setting = fix_mmap_threshold()
    sys.exit(main())
