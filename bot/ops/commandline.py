"""How to type a command of this project here, for the hints messages print.

The README runs everything as ``.venv/bin/python -m …`` because a bare ``python`` outside the
venv lacks the dependencies. A hint therefore names the interpreter that is running: ``python``
only where that word already finds it (an activated venv, the Docker image), else its path,
relative to the working directory when it lies below it (``.venv/bin/python``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path


def python_command() -> str:
    """The shortest way to name the running interpreter in a shell opened in the working directory."""
    executable = Path(sys.executable)
    on_path = shutil.which("python")
    if on_path and os.path.abspath(on_path) == os.path.abspath(executable):
        return "python"
    here = Path.cwd()
    return str(executable.relative_to(here)) if executable.is_relative_to(here) else str(executable)


def module_command(arguments: str) -> str:
    """``python -m <arguments>`` as the user can type it here, e.g. ``.venv/bin/python -m trainer prepare``."""
    return f"{python_command()} -m {arguments}"


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The entry points' --help: descriptions as written, and "(default: X)" after an option's
    help when it has a default its help does not already name."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        # `is`, not `in`: a default of 0 equals False, and 0 is worth showing.
        unset = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if "default" in text or not action.option_strings or unset:
            return text
        value = action.default
        shown = " ".join(map(str, value)) if isinstance(value, list | tuple) else value
        return f"{text} (default: {shown})"
