"""The on-disk adapter layout, in one place: where a persona's adapter versions live, which
one is current, and how a new one is published. The trainer writes through this module and
the bot reads through it; nothing else knows the layout.

Layout::

    adapters/<persona>/<version>/adapter_config.json, adapter_model.safetensors, metadata.json
    adapters/<persona>/CURRENT      # one line: the version in use
    adapters/<persona>/CANARY       # optional, JSON {"version": ..., "share": 0.1}: a candidate
                                    # served to that share of requests beside CURRENT
    adapters/.staging/<persona>-<version>/   # a version being written (see publish_version)

Publishing is rename-then-pointer: a version is written under ``.staging/``, renamed into
place whole, and only then may ``CURRENT`` move. The pointer is a small file replaced
atomically (write + ``os.replace``), so a reader sees the old version or the new one, never
half of either, and a failed training run that never reaches :func:`set_current` leaves the
adapter in use untouched.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bot.ops.filemode import respect_umask
from personas.card import PersonaCard

CURRENT_FILE = "CURRENT"
CANARY_FILE = "CANARY"
REQUIRED_FILES = ("adapter_config.json",)
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
METADATA_FILE = "metadata.json"
STAGING_DIR = ".staging"  # under adapters/; not a persona id, so never listed as a version
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class Canary:
    """A candidate version served to ``share`` (0 < share < 1) of a persona's requests."""

    version: str
    share: float


@dataclass(frozen=True)
class AdapterSource:
    """Where to load a persona's adapter from: a local folder or a hub id.

    ``immutable``: a published version folder (``adapters/<persona>/<version>/``), which is
    renamed into place whole and never written again, so a server that already holds this
    path and version may keep it instead of reading it again. A card's own adapter path or a
    hub id may change in place and is always read again.
    """

    path: str
    version: str | None
    is_local: bool
    immutable: bool = False


def new_version_name(now: datetime | None = None) -> str:
    """A sortable version name: the UTC time the run started."""
    return (now or datetime.now(UTC)).strftime("v%Y%m%d-%H%M%S")


def is_version_name(version: str) -> bool:
    """Whether ``version`` may name a version folder: letters, digits, ``.``, ``_``, ``-``
    (at most 64 characters, not starting with a dot, so never a hidden or parent folder)."""
    return bool(VERSION_RE.match(version))


def persona_dir(adapters_dir: str | Path, persona_id: str) -> Path:
    """The folder holding all of a persona's versions and its ``CURRENT`` pointer."""
    return Path(adapters_dir) / persona_id


def version_dir(adapters_dir: str | Path, persona_id: str, version: str) -> Path:
    """The folder of one version (it may not exist)."""
    return persona_dir(adapters_dir, persona_id) / version


def current_version(adapters_dir: str | Path, persona_id: str) -> str | None:
    """The version ``CURRENT`` names, or None when there is no pointer or it holds no valid name."""
    pointer = persona_dir(adapters_dir, persona_id) / CURRENT_FILE
    try:
        version = pointer.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    return version if is_version_name(version) else None


def list_versions(adapters_dir: str | Path, persona_id: str) -> list[str]:
    """The complete versions (folders with an ``adapter_config.json``), oldest name first."""
    root = persona_dir(adapters_dir, persona_id)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and (p / "adapter_config.json").is_file())


def set_current(adapters_dir: str | Path, persona_id: str, version: str) -> None:
    """Point the persona at ``version``; only called once that version is complete on disk.

    Raises ValueError for a bad version name, FileNotFoundError when the version's files are missing.
    """
    if not is_version_name(version):
        raise ValueError(f"bad version name {version!r}")
    root = persona_dir(adapters_dir, persona_id)
    check_adapter_files(root / version)
    _replace_file(root / CURRENT_FILE, version + "\n")


def read_canary(adapters_dir: str | Path, persona_id: str) -> Canary | None:
    """The persona's canary, or None when there is none or the file is not a valid one."""
    try:
        data = json.loads((persona_dir(adapters_dir, persona_id) / CANARY_FILE).read_text("utf-8"))
        version, share = data["version"], float(data["share"])
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if not isinstance(version, str) or not is_version_name(version) or not 0.0 < share < 1.0:
        return None
    return Canary(version, share)


def write_canary(adapters_dir: str | Path, persona_id: str, version: str, share: float) -> None:
    """Serve ``version`` to ``share`` of the persona's requests beside ``CURRENT``.

    Raises ValueError for a bad version name or a share outside (0, 1), FileNotFoundError when
    the version's files are missing. The file is replaced atomically, like ``CURRENT``.
    """
    if not is_version_name(version):
        raise ValueError(f"bad version name {version!r}")
    if not 0.0 < share < 1.0:
        raise ValueError(f"a canary share is between 0 and 1 (exclusive), not {share}")
    root = persona_dir(adapters_dir, persona_id)
    check_adapter_files(root / version)
    _replace_file(root / CANARY_FILE, json.dumps({"version": version, "share": share}) + "\n")


def clear_canary(adapters_dir: str | Path, persona_id: str) -> None:
    """End the persona's canary, if any: every request gets ``CURRENT`` again."""
    (persona_dir(adapters_dir, persona_id) / CANARY_FILE).unlink(missing_ok=True)


def _replace_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temp file and ``os.replace``: readers see old or new."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name.lower()}-")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    respect_umask(tmp)
    os.replace(tmp, path)


def publish_version(
    adapters_dir: str | Path,
    persona_id: str,
    version: str,
    write: Callable[[Path], None],
    metadata: dict[str, Any],
    *,
    activate: bool,
) -> Path:
    """Publish a new version: ``write(folder)`` saves the adapter files into a staging folder,
    ``metadata`` goes beside them as ``metadata.json``, the folder is renamed into place whole,
    and then (when ``activate``) ``CURRENT`` moves to it. Returns the version's folder.

    Raises ValueError for a bad version name, FileExistsError when the version exists; whatever
    ``write`` raises propagates, with the staging folder removed and ``CURRENT`` untouched.
    """
    if not is_version_name(version):
        raise ValueError(f"bad version name {version!r} (letters, digits, '.', '_', '-')")
    adapters = Path(adapters_dir)
    target = version_dir(adapters, persona_id, version)
    if target.exists():
        raise FileExistsError(f"adapter version {target} already exists")
    staging = adapters / STAGING_DIR / f"{persona_id}-{version}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        write(staging)
        (staging / METADATA_FILE).write_text(
            json.dumps(metadata, ensure_ascii=False, indent=1), encoding="utf-8"
        )
        respect_umask(staging)  # safetensors writes through a 0600 temp file
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if activate:
        set_current(adapters, persona_id, version)
    return target


def version_metadata(adapters_dir: str | Path, persona_id: str, version: str) -> dict[str, Any] | None:
    """A version's ``metadata.json`` as a dict, or None when it is missing or unreadable."""
    try:
        meta = json.loads((version_dir(adapters_dir, persona_id, version) / METADATA_FILE).read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def last_export_time(adapters_dir: str | Path, persona_id: str) -> str | None:
    """The newest review export (ISO time) any version of the persona was trained on, if any."""
    times = []
    for version in list_versions(adapters_dir, persona_id):
        value = (version_metadata(adapters_dir, persona_id, version) or {}).get("reviews_exported_at")
        if isinstance(value, str):
            times.append(value)
    return max(times) if times else None


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
        return published_source(adapters_dir, card.id, version)
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


def published_source(adapters_dir: str | Path, persona_id: str, version: str) -> AdapterSource:
    """A published version of the layout as a source (it may not exist: loading checks)."""
    return AdapterSource(str(version_dir(adapters_dir, persona_id, version)), version, True, immutable=True)


def resolve_canary(card: PersonaCard, adapters_dir: str | Path) -> tuple[AdapterSource, float] | None:
    """The persona's canary (see :func:`read_canary`) as a source and its share of requests.

    None when there is no valid ``CANARY`` file, or when it names the version ``CURRENT``
    already serves (a split between a version and itself is no split).
    """
    canary = read_canary(adapters_dir, card.id)
    if canary is None or canary.version == current_version(adapters_dir, card.id):
        return None
    return published_source(adapters_dir, card.id, canary.version), canary.share


def _metadata_version(path: Path) -> str | None:
    try:
        return json.loads((path / METADATA_FILE).read_text(encoding="utf-8")).get("version")
    except (OSError, ValueError, AttributeError):
        return path.name or None
