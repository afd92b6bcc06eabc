"""The running bot follows pointer moves made by other processes, without a restart.

``python -m trainer promote``, ``rollback`` and ``canary`` (or the scheduler's child, or an
operator's editor) change ``adapters/<persona>/CURRENT`` and ``CANARY`` on disk; the bot polls
them every ``engine.adapter_poll_s`` seconds and calls the serving backend's ``reload`` for a
persona whose pointers changed, as ``/reload`` would. Reading two small files per persona is
cheap, and polling needs no inotify (which misses changes on network and bind-mounted volumes,
where adapters often live in Docker deployments).

A reload that fails (a version that cannot load) is logged once; the backend keeps serving what
it had, and the watcher waits for the next change rather than retrying every few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

from bot.model.adapters import CANARY_FILE, CURRENT_FILE, persona_dir

log = logging.getLogger(__name__)

Reload = Callable[[str], Awaitable[object]]
Signature = tuple[bytes | None, bytes | None]


def pointer_signature(adapters_dir: str | Path, persona_id: str) -> Signature:
    """What ``CURRENT`` and ``CANARY`` hold now (None for a missing file): equal means unmoved.

    Contents rather than modification times: a move within one timestamp tick still shows,
    and rewriting a pointer with the same version does not reload for nothing.
    """
    root = persona_dir(adapters_dir, persona_id)
    out = []
    for name in (CURRENT_FILE, CANARY_FILE):
        try:
            out.append((root / name).read_bytes())
        except OSError:
            out.append(None)
    return out[0], out[1]


class PointerWatch:
    """Polls the personas' pointers and reloads a persona whose pointers moved."""

    def __init__(
        self, adapters_dir: str | Path, persona_ids: Iterable[str], reload: Reload, interval_s: float
    ) -> None:
        self.adapters_dir = adapters_dir
        self.persona_ids = list(persona_ids)
        self.reload = reload
        self.interval_s = interval_s
        self.seen: dict[str, Signature] = {p: pointer_signature(adapters_dir, p) for p in self.persona_ids}
        self._task: asyncio.Task[None] | None = None

    def mark(self, persona_id: str | None = None) -> None:
        """Take the pointers as they are now as served (after a reload made by someone else)."""
        for pid in [persona_id] if persona_id else self.persona_ids:
            self.seen[pid] = pointer_signature(self.adapters_dir, pid)

    async def check(self) -> list[str]:
        """Reload each persona whose pointers changed since last seen; returns those personas."""
        moved = []
        for pid in self.persona_ids:
            now = pointer_signature(self.adapters_dir, pid)
            if now == self.seen.get(pid):
                continue
            self.seen[pid] = now  # read before the reload: a move during it is seen next time
            moved.append(pid)
            try:
                lines = await self.reload(pid)
                log.info("adapter pointers of %s moved: reloaded (%s)", pid, lines)
            except Exception as exc:  # the backend keeps the adapter it had
                log.error("adapter pointers of %s moved, but the reload failed: %s", pid, exc)
        return moved

    def start(self) -> None:
        """Poll on the running event loop until :meth:`stop`."""
        if self._task is None and self.interval_s > 0:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="adapter-pointer-watch")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.check()
            except Exception:  # never let one bad poll end the watch
                log.exception("checking the adapter pointers failed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
