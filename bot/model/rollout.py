"""Moving a persona's pointers: promote, roll back, start and stop a canary, with a history.

Every move takes the persona's lock (``adapters/<persona>/.lock``, an exclusive ``flock``), reads
the pointers, checks the target, replaces the pointer file atomically (``bot.model.adapters``)
and appends one line to ``adapters/<persona>/HISTORY.jsonl``, all before it lets go. So two
moves at once (two operators, a moderator and the scheduler, two rollbacks) run one after the
other, each sees what the other did, and the history reads as a chain: each move's ``from`` is
the previous move's ``to``. A move that is refused changes nothing and writes nothing.

The running bot notices a move made by another process within a few seconds
(``bot.learning.pointer_watch``) and reloads that persona; nothing restarts.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import json
import os
import struct
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bot.model.adapters import (
    METADATA_FILE,
    check_adapter_files,
    clear_canary,
    current_version,
    is_version_name,
    list_versions,
    persona_dir,
    read_canary,
    set_current,
    version_dir,
    version_metadata,
    write_canary,
)

HISTORY_FILE = "HISTORY.jsonl"
LOCK_FILE = ".lock"
LOCK_TIMEOUT_S = 30.0
ACTIONS = ("promote", "rollback", "canary-start", "canary-stop")


class RolloutError(ValueError):
    """A move that cannot be made; the message is one line saying why and what to do."""


class NothingToMove(RolloutError):
    """The pointers already are where the move would put them (not a failure)."""


@dataclass(frozen=True)
class Move:
    """One line of the history: who moved which pointer of ``persona`` from where to where."""

    at: str  # UTC ISO time
    persona: str
    action: str  # one of ACTIONS
    from_version: str | None  # CURRENT (or the canary, for canary moves) before
    to_version: str | None  # after (None: the canary stopped)
    by: str  # "cli:<login>", "discord:<user id>", "schedule"
    reason: str = ""
    forced: bool = False  # promoted although the gate refused or never judged it
    share: float | None = None  # canary moves: the share of requests

    def describe(self) -> str:
        forced = " (forced)" if self.forced else ""
        if self.action == "canary-start":
            return f"{self.persona}: canary {self.to_version} on {self.share:.0%} of requests beside CURRENT"
        if self.action == "canary-stop":
            return f"{self.persona}: canary {self.from_version} stopped; every request gets CURRENT"
        return f"{self.persona}: CURRENT {self.from_version or 'none'} → {self.to_version}{forced}"


def cli_actor() -> str:
    """``cli:<login name>`` for moves made from a terminal."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


# -- the lock and the history -----------------------------------------------------------------


@contextlib.contextmanager
def pointer_lock(
    adapters_dir: str | Path, persona_id: str, timeout_s: float = LOCK_TIMEOUT_S
) -> Iterator[None]:
    """Hold the persona's move lock (an exclusive ``flock``, released when the process dies).

    Raises RolloutError when another move holds it for longer than ``timeout_s`` seconds.
    """
    root = persona_dir(adapters_dir, persona_id)
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RolloutError(
                        f"another move of {persona_id}'s adapter is still running; try again in a moment"
                    ) from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def read_history(adapters_dir: str | Path, persona_id: str) -> list[Move]:
    """The persona's moves, oldest first; a line that cannot be read (a crash mid-append) is skipped."""
    path = persona_dir(adapters_dir, persona_id) / HISTORY_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    moves = []
    for line in text.splitlines():
        try:
            moves.append(Move(**json.loads(line)))
        except (ValueError, TypeError):
            continue
    return moves


def _append_history(adapters_dir: str | Path, move: Move) -> None:
    path = persona_dir(adapters_dir, move.persona) / HISTORY_FILE
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(asdict(move), ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _now() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat(timespec="seconds")


# -- checks -----------------------------------------------------------------------------------


def check_version_usable(adapters_dir: str | Path, persona_id: str, version: str) -> Path:
    """The version's folder, when it can be served: a valid name, the files present,
    ``adapter_config.json`` a JSON object and a safetensors file whole (header and data).

    Raises RolloutError naming what is wrong, with the known versions for a missing one. Reads
    no weights: a truncated or overwritten file is caught from its header and size alone.
    """
    if not is_version_name(version):
        raise RolloutError(f"{version!r} is not a version name (letters, digits, '.', '_', '-')")
    path = version_dir(adapters_dir, persona_id, version)
    if not path.is_dir():
        known = ", ".join(list_versions(adapters_dir, persona_id)) or "none yet"
        raise RolloutError(f"{persona_id} has no version {version!r} (known: {known})")
    try:
        check_adapter_files(path)
        config = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
        if not isinstance(config, dict):
            raise ValueError("adapter_config.json is not a JSON object")
        weights = path / "adapter_model.safetensors"
        if weights.is_file():
            _check_safetensors(weights)
    except (OSError, ValueError) as exc:
        raise RolloutError(f"version {version} of {persona_id} is corrupt: {exc}") from None
    return path


def _check_safetensors(path: Path) -> None:
    """Raise ValueError unless ``path`` has a readable safetensors header and all the bytes it names.

    The format (huggingface/safetensors, docs "format"): an 8-byte little-endian header length,
    a JSON header mapping each tensor to ``data_offsets`` [begin, end) in the data that follows.
    """
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise ValueError(f"{path.name} is truncated")
        (length,) = struct.unpack("<Q", head)
        if length > size - 8 or length > 100 << 20:
            raise ValueError(f"{path.name} has a broken header")
        try:
            header = json.loads(fh.read(length))
        except (ValueError, UnicodeDecodeError):
            raise ValueError(f"{path.name} has a broken header") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path.name} has a broken header")
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    if not ends or 8 + length + max(ends) > size:
        raise ValueError(f"{path.name} is truncated ({size} bytes)")


def gate_record(adapters_dir: str | Path, persona_id: str, version: str) -> dict[str, Any] | None:
    """The promotion gate's last verdict on ``version`` (``metadata.json``'s ``gate``), if any."""
    record = (version_metadata(adapters_dir, persona_id, version) or {}).get("gate")
    return record if isinstance(record, dict) else None


def record_gate(adapters_dir: str | Path, persona_id: str, version: str, record: dict[str, Any]) -> None:
    """Store the gate's verdict in the version's ``metadata.json`` (replaced atomically)."""
    path = version_dir(adapters_dir, persona_id, version) / METADATA_FILE
    meta = version_metadata(adapters_dir, persona_id, version) or {}
    meta["gate"] = record
    tmp = path.with_name(f".{METADATA_FILE}.tmp")
    tmp.write_text(json.dumps(meta, ensure_ascii=False, indent=1), encoding="utf-8")
    os.replace(tmp, path)


# -- moves --------------------------------------------------------------------------------------


def promote(
    adapters_dir: str | Path,
    persona_id: str,
    version: str,
    *,
    by: str,
    reason: str = "",
    forced: bool = False,
) -> Move:
    """Make ``version`` CURRENT (and end its canary, if it was one). Raises RolloutError when it
    cannot be served, NothingToMove when it already is CURRENT."""
    with pointer_lock(adapters_dir, persona_id):
        check_version_usable(adapters_dir, persona_id, version)
        before = current_version(adapters_dir, persona_id)
        if before == version:
            raise NothingToMove(f"{version} already is {persona_id}'s current version")
        return _move_current(adapters_dir, persona_id, "promote", before, version, by, reason, forced)


def rollback(
    adapters_dir: str | Path, persona_id: str, to: str | None = None, *, by: str, reason: str = ""
) -> Move:
    """Make an earlier version CURRENT: ``to``, else the newest version older than CURRENT that
    was ever served (from the history; without one, the newest older complete version the gate
    did not refuse). Raises RolloutError when there is none or it cannot be served."""
    with pointer_lock(adapters_dir, persona_id):
        before = current_version(adapters_dir, persona_id)
        target = to if to is not None else _previous(adapters_dir, persona_id, before)
        check_version_usable(adapters_dir, persona_id, target)
        if before == target:
            raise NothingToMove(f"{target} already is {persona_id}'s current version")
        return _move_current(adapters_dir, persona_id, "rollback", before, target, by, reason, False)


def start_canary(
    adapters_dir: str | Path, persona_id: str, version: str, share: float, *, by: str, reason: str = ""
) -> Move:
    """Serve ``version`` to ``share`` (0 < share < 1) of the persona's requests beside CURRENT,
    replacing any canary. Raises RolloutError for a bad share, a version that cannot be served
    or the current version itself."""
    if not 0.0 < share < 1.0:
        raise RolloutError(f"a canary share is between 0 and 1 (for example 0.1), not {share}")
    with pointer_lock(adapters_dir, persona_id):
        check_version_usable(adapters_dir, persona_id, version)
        if current_version(adapters_dir, persona_id) == version:
            raise RolloutError(
                f"{version} is already {persona_id}'s current version; a canary is another one"
            )
        old = read_canary(adapters_dir, persona_id)
        if old is not None and (old.version, old.share) == (version, share):
            raise NothingToMove(f"{version} already is {persona_id}'s canary on {share:.0%} of requests")
        write_canary(adapters_dir, persona_id, version, share)
        move = Move(
            _now(), persona_id, "canary-start", old.version if old else None, version, by, reason, share=share
        )
        _append_history(adapters_dir, move)
        return move


def stop_canary(adapters_dir: str | Path, persona_id: str, *, by: str, reason: str = "") -> Move:
    """End the persona's canary. Raises NothingToMove when there is none."""
    with pointer_lock(adapters_dir, persona_id):
        old = read_canary(adapters_dir, persona_id)
        if old is None:
            raise NothingToMove(f"{persona_id} has no canary")
        clear_canary(adapters_dir, persona_id)
        move = Move(_now(), persona_id, "canary-stop", old.version, None, by, reason, share=old.share)
        _append_history(adapters_dir, move)
        return move


def _move_current(
    adapters_dir: str | Path,
    persona_id: str,
    action: str,
    before: str | None,
    version: str,
    by: str,
    reason: str,
    forced: bool,
) -> Move:
    """Inside the lock: point CURRENT at ``version``, end a canary of that version, record it."""
    set_current(adapters_dir, persona_id, version)
    canary = read_canary(adapters_dir, persona_id)
    if canary is not None and canary.version == version:
        clear_canary(adapters_dir, persona_id)  # it now gets every request, not a share
    move = Move(_now(), persona_id, action, before, version, by, reason, forced)
    _append_history(adapters_dir, move)
    return move


def _previous(adapters_dir: str | Path, persona_id: str, current: str | None) -> str:
    """The version a rollback without ``to`` goes to: the one served before CURRENT.

    The history is replayed as a stack of served versions: a promotion pushes, a rollback pops
    back to its target, so rolling back twice steps back twice and never returns to a version
    that was rolled back from. Without a usable history (pointers moved by hand), the newest
    version whose name sorts before CURRENT's (names default to start times) and that the gate
    did not refuse.
    """
    if current is None:
        raise RolloutError(f"{persona_id} has no current version to roll back from")
    stack: list[str] = []
    for move in read_history(adapters_dir, persona_id):
        if move.action not in ("promote", "rollback") or not move.to_version:
            continue
        if not stack and move.from_version:
            stack.append(move.from_version)
        if move.action == "rollback" and move.to_version in stack:
            del stack[len(stack) - stack[::-1].index(move.to_version) :]
        else:
            stack.append(move.to_version)
    complete = set(list_versions(adapters_dir, persona_id))
    if stack and stack[-1] == current:
        for version in reversed(stack[:-1]):
            if version != current and version in complete:
                return version
    older = [
        v
        for v in sorted(complete)
        if v < current
        and (gate_record(adapters_dir, persona_id, v) or {}).get("verdict") != "refuse"
        and v not in stack
    ]
    if not older:
        raise RolloutError(
            f"{persona_id} has no earlier version than {current} to roll back to (name one with --to)"
        )
    return older[-1]
