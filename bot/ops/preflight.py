"""Before anything else is imported: is this the interpreter the project was installed into?

``python -m bot`` outside the venv would otherwise die on the first third-party import with a
ModuleNotFoundError traceback. This module imports only the standard library and parses on old
Pythons too, so the entry points can call it first and say in one line what to do instead.
"""

import importlib.util
import sys

# One import name per core dependency; any one missing means the venv is not the interpreter.
REQUIRED = ("torch", "transformers", "peft", "huggingface_hub", "dotenv", "tqdm")


def missing_dependencies() -> list:
    """The import names from REQUIRED that this interpreter cannot find (no import is done)."""
    return [name for name in REQUIRED if importlib.util.find_spec(name) is None]


def require_dependencies(program: str) -> None:
    """Exit with status 2 and one line on stderr unless Python >= 3.11 and the dependencies are found.

    ``program`` is how the user ran it (``python -m bot``), named in the message.
    """
    if sys.version_info < (3, 11):  # noqa: UP036 - this module runs before the version is known to fit
        version = ".".join(map(str, sys.version_info[:3]))
        sys.stderr.write(
            f"error: {program} needs Python 3.11 or newer, this is {version} ({sys.executable})\n"
        )
        sys.exit(2)
    missing = missing_dependencies()
    if missing:
        sys.stderr.write(
            f"error: {sys.executable} does not have the project's dependencies (missing: "
            f"{', '.join(missing)}); run `make run` once, then `.venv/bin/{program}` "
            "(or `source .venv/bin/activate` first)\n"
        )
        sys.exit(2)
