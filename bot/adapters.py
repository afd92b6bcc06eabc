"""Where a persona's adapter lives on disk, and which version is current.

Layout written by the trainer and read by the bot::

    adapters/<persona>/<version>/adapter_config.json, adapter_model.safetensors, metadata.json
    adapters/<persona>/CURRENT      # one line: the version in use

The pointer is a small file replaced atomically (write + ``os.replace``), so a reader
sees the old version or the new one, never half of either, and a failed training run
that never reaches :func:`set_current` leaves the adapter in use untouched.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bot.filemode import respect_umask
from personas.card import PersonaCard

CURRENT_FILE = "CURRENT"
REQUIRED_FILES = ("adapter_config.json",)
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class AdapterSource:
    """Where to load a persona's adapter from: a local folder or a hub id."""

    path: str
    version: str | None
    is_local: bool


def new_version_name(now: datetime | None = None) -> str:
    """A sortable version name: the UTC time the run started."""
    return (now or datetime.now(UTC)).strftime("v%Y%m%d-%H%M%S")


def persona_dir(adapters_dir: str | Path, persona_id: str) -> Path:
    return Path(adapters_dir) / persona_id


def current_version(adapters_dir: str | Path, persona_id: str) -> str | None:
    pointer = persona_dir(adapters_dir, persona_id) / CURRENT_FILE
    try:
        version = pointer.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    return version if _VERSION_RE.match(version) else None


def list_versions(adapters_dir: str | Path, persona_id: str) -> list[str]:
    root = persona_dir(adapters_dir, persona_id)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and (p / "adapter_config.json").is_file())


def set_current(adapters_dir: str | Path, persona_id: str, version: str) -> None:
    """Point the persona at ``version``; only called once that version is complete on disk."""
    if not _VERSION_RE.match(version):
        raise ValueError(f"bad version name {version!r}")
    root = persona_dir(adapters_dir, persona_id)
    check_adapter_files(root / version)
    fd, tmp = tempfile.mkstemp(dir=root, prefix=".current-")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(version + "\n")
    respect_umask(tmp)
    os.replace(tmp, root / CURRENT_FILE)


def check_adapter_files(path: Path) -> None:
    """Raise FileNotFoundError naming what is missing from an adapter folder."""
    if not path.is_dir():
        raise FileNotFoundError(f"adapter folder {path} does not exist")
    for name in REQUIRED_FILES:
        if not (path / name).is_file():
            raise FileNotFoundError(f"adapter folder {path} has no {name}")
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        raise FileNotFoundError(f"adapter folder {path} has no weights ({' or '.join(WEIGHT_FILES)})")


def resolve_adapter(card: PersonaCard, adapters_dir: str | Path) -> AdapterSource | None:
    """The adapter a persona should use now, or None for a prompt-only persona.

    A trained version under ``adapters_dir`` wins over the card's ``adapter`` field, so
    a retrained persona is picked up without editing its card.
    """
    version = current_version(adapters_dir, card.id)
    if version is not None:
        return AdapterSource(str(persona_dir(adapters_dir, card.id) / version), version, True)
    if card.adapter is None:
        return None
    local = Path(card.adapter).expanduser()
    if not local.is_absolute() and card.source:
        # A relative path in a card is relative to the card's folder, then to the working directory.
        beside_card = Path(card.source).parent / local
        local = beside_card if beside_card.exists() else local
    if local.exists() or card.adapter.startswith((".", "/", "~")):
        return AdapterSource(str(local), _metadata_version(local), True)
    return AdapterSource(card.adapter, None, False)  # a hub id


def _metadata_version(path: Path) -> str | None:
    try:
        return json.loads((path / "metadata.json").read_text(encoding="utf-8")).get("version")
    except (OSError, ValueError, AttributeError):
        return path.name or None
