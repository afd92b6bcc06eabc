"""--help for the operator: every option of every command of both entry points has a one-line
help that names its default, commands come in the order an operator uses them, and the top
of ``--help`` is written for the operator. The rule is checked over the real parsers, so a
command added later is held to it without editing this file."""

from __future__ import annotations

import argparse
import re

import pytest

from bot.__main__ import build_parser as bot_parser
from bot.ops.commandline import HelpFormatter
from trainer.__main__ import COMMANDS
from trainer.__main__ import build_parser as trainer_parser

# The trainer commands an operator runs, in the order they run them (others may sit in between).
OPERATOR_ORDER = ["fetch", "prepare", "train", "eval", "augment", "export-reviews", "schedule"]


def commands(parser: argparse.ArgumentParser, name: str) -> list[tuple[str, argparse.ArgumentParser]]:
    """(``program command``, parser) for the program and each of its subcommands."""
    found = [(name, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found += [(f"{name} {sub}", p) for sub, p in action.choices.items()]
    return found


ALL = commands(bot_parser(), "bot") + commands(trainer_parser(), "trainer")
OPTIONS = [
    (f"{where} {action.option_strings[0] if action.option_strings else action.dest}", action)
    for where, parser in ALL
    for action in parser._actions
    if not isinstance(action, argparse._HelpAction | argparse._SubParsersAction)
]


def test_every_command_is_covered():
    names = {where for where, _ in ALL}
    assert {f"trainer {c}" for c in COMMANDS} <= names and {
        "bot chat",
        "bot run",
        "bot sync-commands",
    } <= names
    assert len(OPTIONS) > 60


@pytest.mark.parametrize(("where", "action"), OPTIONS, ids=[where for where, _ in OPTIONS])
def test_every_option_has_one_line_of_help_that_names_its_default(where, action):
    assert action.help and action.help is not argparse.SUPPRESS, f"{where}: no help"
    shown = HelpFormatter("x")._get_help_string(action)
    assert "\n" not in shown and len(shown) <= 200, f"{where}: more than one line: {shown!r}"
    # A flag's default is "off"; an option or positional says what happens when it is not given.
    is_flag = action.nargs == 0
    assert is_flag or "default" in shown or action.required, f"{where}: no default in {shown!r}"
    assert "%" not in shown.replace("%%", ""), f"{where}: a bare % breaks argparse's formatting"


@pytest.mark.parametrize(("where", "parser"), ALL, ids=[where for where, _ in ALL])
def test_help_renders_without_metavars_made_of_dest_names(where, parser):
    text = parser.format_help()
    assert "CFG_" not in text and "Traceback" not in text, text
    assert parser.formatter_class is HelpFormatter, where


def test_trainer_commands_come_in_the_order_an_operator_uses_them():
    listed = [name for name in COMMANDS if name in OPERATOR_ORDER]
    assert listed == OPERATOR_ORDER
    help_text = trainer_parser().format_help()
    positions = [
        re.search(rf"^ +{re.escape(name)}\b", help_text, re.MULTILINE).start() for name in OPERATOR_ORDER
    ]
    assert positions == sorted(positions)


@pytest.mark.parametrize(
    ("factory", "words"), [(trainer_parser, ("fetch", "train")), (bot_parser, ("chat", "run"))]
)
def test_the_top_of_help_is_written_for_the_operator(factory, words):
    description = factory().description or ""
    for developer_word in ("``", "add_arguments", "run(args)", "module", "python -m"):
        assert developer_word not in description, developer_word
    assert all(word in description for word in words)


def test_config_is_accepted_before_and_after_the_command():
    parser = trainer_parser()
    for argv in (["--config", "x.toml", "schedule", "--once"], ["schedule", "--once", "--config", "x.toml"]):
        assert parser.parse_args(argv).config == "x.toml"
    assert not hasattr(parser.parse_args(["schedule", "--once"]), "config")  # main() fills in None
