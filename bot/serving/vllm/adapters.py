"""Persona adapters on vLLM servers, under versioned names (``marisa@v20261130-083008+1a2b3c``).

Publishing a new version loads it on every healthy server first; only then do new requests
use the new name, and the old name is unloaded once no request holds it any more. A server
that restarted (its listing lacks a current name) gets the current versions loaded again by
:meth:`AdapterRegistry.ensure_on`, which the pool calls after each passing health check.

The servers read the adapter folders themselves, so the folders must be on a volume they can
read; ``engine.vllm_adapters_dir`` maps the bot's adapters folder to the servers' path.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import logging
import struct
from dataclasses import dataclass
from pathlib import Path

from bot.config import Settings
from bot.model.adapters import AdapterSource, check_adapter_files, resolve_adapter
from bot.serving.generation import BASE_ADAPTER, AdapterError, AdapterInfo
from bot.serving.vllm.http import ServerError, ServerUnavailable
from bot.serving.vllm.pool import Server, ServerPool
from personas.card import CardError, CardSet, check_adapter_base

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PublishedAdapter:
    persona_id: str
    name: str  # the versioned name requests use as their model
    server_path: str  # the folder (or hub id) as the servers see it
    version: str | None
    parameters: int

    def info(self) -> AdapterInfo:
        return AdapterInfo(self.persona_id, self.server_path, self.version, self.parameters)


class AdapterRegistry:
    """Which versioned adapter each persona uses now, and where it is loaded."""

    def __init__(self, pool: ServerPool, settings: Settings, cards: CardSet) -> None:
        self.pool = pool
        self.settings = settings
        self.cards = cards
        self.current: dict[str, PublishedAdapter] = {}
        self._holds: collections.Counter[str] = collections.Counter()
        self._retiring: dict[str, PublishedAdapter] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        pool.on_ready = self.ensure_on

    # -- the request path ------------------------------------------------------

    def has(self, persona_id: str) -> bool:
        return persona_id in self.current

    def serving_name(self, adapter: str) -> str | None:
        """The versioned name to request for a persona's adapter; None for the base model."""
        if adapter == BASE_ADAPTER or adapter not in self.current:
            return None
        return self.current[adapter].name

    def version_of(self, name: str | None) -> str | None:
        for published in [*self.current.values(), *self._retiring.values()]:
            if published.name == name:
                return published.version
        return None

    def hold(self, name: str | None) -> None:
        """A request is about to use ``name``: it is not unloaded until :meth:`release`."""
        if name is not None:
            self._holds[name] += 1

    def release(self, name: str | None) -> None:
        if name is None:
            return
        self._holds[name] -= 1
        if self._holds[name] <= 0:
            del self._holds[name]
            old = self._retiring.pop(name, None)
            if old is not None:
                self._spawn(self._unload(old))

    def infos(self) -> list[AdapterInfo]:
        return [self.current[pid].info() for pid in sorted(self.current)]

    # -- publishing ----------------------------------------------------------------

    async def publish_all(self) -> list[str]:
        """Publish every persona's current adapter; a failing one keeps what it had (logged)."""
        lines = []
        for pid in sorted(self.cards.cards):
            try:
                lines.append(await self.publish(pid))
            except AdapterError as exc:
                had = self.current.get(pid)
                keeps = f"keeps {had.name}" if had else "answers prompt-only"
                log.error("%s; %s %s", exc, pid, keeps)
                lines.append(
                    f"{pid}: kept the previous adapter ({exc})" if had else f"{pid}: prompt-only ({exc})"
                )
        return lines

    async def publish(self, persona_id: str) -> str:
        """Load the persona's current version on every healthy server, then switch to it.

        Returns one status line. Raises AdapterError (the previous version keeps serving) when
        the files are unusable or no server could load it; servers that refused while others
        accepted are named in the line and in /status.
        """
        card = self.cards.get(persona_id)
        source = resolve_adapter(card, self.settings.paths.adapters_dir)
        if source is None:
            self._retire(self.current.pop(persona_id, None))
            return f"{persona_id}: prompt-only (no adapter)"
        if source.is_local:
            try:
                check_adapter_files(Path(source.path))
                check_adapter_base(card, Path(source.path), self.settings.model.base_model)
            except (FileNotFoundError, CardError) as exc:
                raise AdapterError(f"adapter for {persona_id!r} not loaded: {exc}") from None
        return await self.publish_source(persona_id, source)

    async def publish_source(self, persona_id: str, source: AdapterSource) -> str:
        """Publish an adapter folder (or hub id) for ``persona_id``, cards aside (benchmarks use
        this directly). Same result and errors as :meth:`publish`."""
        parameters = _parameter_count(Path(source.path)) if source.is_local else 0
        server_path = self._server_path(source)
        published = PublishedAdapter(
            persona_id,
            versioned_name(persona_id, source.version, server_path),
            server_path,
            source.version,
            parameters,
        )
        healthy = self.pool.healthy()
        if not healthy:
            raise AdapterError(f"adapter for {persona_id!r} not loaded: no vLLM server is reachable")
        results = await asyncio.gather(*(self._load(server, published) for server in healthy))
        failures = [line for line in results if line is not None]
        if len(failures) == len(healthy):
            raise AdapterError(f"adapter {published.name} was loaded by no server: {'; '.join(failures)}")
        old = self.current.get(persona_id)
        self.current[persona_id] = published
        if old is not None and old.name != published.name:
            self._retire(old)
        line = f"{persona_id}: adapter {source.version or source.path}"
        if failures:
            line += f" (not on {len(failures)} of {len(healthy)} servers: {'; '.join(failures)})"
            log.error("%s; the other servers serve it", line)
        return line

    async def ensure_on(self, server: Server) -> None:
        """Load every current adapter the server lacks (after a restart); failures are recorded."""
        for published in list(self.current.values()):
            if published.name not in server.adapters and published.name not in server.adapter_problems:
                problem = await self._load(server, published)
                if problem is not None and server.healthy:
                    log.error("%s; %s is served by the other servers only", problem, published.persona_id)

    async def _load(self, server: Server, published: PublishedAdapter) -> str | None:
        """Load on one server; None on success, else the one-line reason (also logged)."""
        async with server.lock:
            if published.name in server.adapters:
                return None
            try:
                await server.client.load_lora(published.name, published.server_path)
            except ServerUnavailable as exc:
                self.pool.mark_down(server, str(exc))
                return str(exc)
            except ServerError as exc:
                server.adapter_problems[published.name] = str(exc)
                return str(exc)
            server.adapters.add(published.name)
            server.adapter_problems.pop(published.name, None)
            return None

    def _retire(self, old: PublishedAdapter | None) -> None:
        if old is None:
            return
        if self._holds[old.name] > 0:
            self._retiring[old.name] = old  # unloaded by the last release()
        else:
            self._holds.pop(old.name, None)
            self._spawn(self._unload(old))

    async def _unload(self, old: PublishedAdapter) -> None:
        if any(p.name == old.name for p in self.current.values()):
            return  # published again meanwhile
        for server in self.pool.servers:
            server.adapter_problems.pop(old.name, None)
            if old.name not in server.adapters:
                continue
            async with server.lock:
                try:
                    await server.client.unload_lora(old.name)
                except ServerError as exc:
                    log.warning("could not unload %s: %s", old.name, exc)
                    continue
                server.adapters.discard(old.name)

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait for pending unloads (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _server_path(self, source: AdapterSource) -> str:
        """The adapter folder as the servers see it (``engine.vllm_adapters_dir``), absolute."""
        if not source.is_local:
            return source.path
        path = Path(source.path).resolve()
        mapped = self.settings.engine.vllm_adapters_dir
        if mapped:
            root = Path(self.settings.paths.adapters_dir).resolve()
            if path.is_relative_to(root):
                return str(Path(mapped) / path.relative_to(root))
        return str(path)


def versioned_name(persona_id: str, version: str | None, server_path: str) -> str:
    """``marisa@v20261130-083008+1a2b3c``: the version, and a hash of the folder so that two bots
    (or two test runs) sharing a server never mistake one adapter for another of the same version."""
    digest = hashlib.sha1(server_path.encode()).hexdigest()[:6]
    return f"{persona_id}@{version or 'hub'}+{digest}"


def _parameter_count(folder: Path) -> int:
    """Parameters in an adapter's safetensors file, from its header alone (no weights read)."""
    path = folder / "adapter_model.safetensors"
    try:
        with path.open("rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(size))
    except (OSError, ValueError, struct.error):
        return 0
    total = 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        count = 1
        for dim in entry.get("shape", ()):
            count *= dim
        total += count
    return total
