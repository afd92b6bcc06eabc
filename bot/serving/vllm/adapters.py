"""Persona adapters on vLLM servers, under versioned names (``marisa@v20261130-083008+1a2b3c``).

Publishing a new version loads it on every healthy server first; only then do new requests
use the new name, and the old name is unloaded once no request holds it any more. A request
is given its version once, when it is admitted (:meth:`AdapterRegistry.admit`: the persona's
canary with its share's probability, else its ``CURRENT``), and keeps it through retries on
other servers until :meth:`AdapterRegistry.release`. A server that restarted (its listing
lacks a name in use) gets those versions loaded again by :meth:`AdapterRegistry.ensure_on`,
which the pool calls after each passing health check.

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
from bot.model.adapters import AdapterSource, check_adapter_files, resolve_adapter, resolve_canary
from bot.serving.canary import CanarySplit
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

    def info(self, share: float | None = None) -> AdapterInfo:
        return AdapterInfo(self.persona_id, self.server_path, self.version, self.parameters, share)


class AdapterRegistry:
    """Which versioned adapters each persona serves now (``CURRENT`` and an optional canary),
    and where they are loaded. ``split`` draws which requests get a canary."""

    def __init__(self, pool: ServerPool, settings: Settings, cards: CardSet) -> None:
        self.pool = pool
        self.settings = settings
        self.cards = cards
        self.split = CanarySplit()
        self.current: dict[str, PublishedAdapter] = {}
        self.canary: dict[str, tuple[PublishedAdapter, float]] = {}
        self._holds: collections.Counter[str] = collections.Counter()
        self._retiring: dict[str, PublishedAdapter] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        pool.on_ready = self.ensure_on

    # -- the request path ------------------------------------------------------

    def has(self, persona_id: str) -> bool:
        return persona_id in self.current

    def admit(self, adapter: str) -> PublishedAdapter | None:
        """The version a newly admitted request is served with, held until :meth:`release`:
        the persona's canary with its share's probability, else its ``CURRENT``. None for
        the base model (``__base__``, or a persona without an adapter)."""
        if adapter == BASE_ADAPTER or adapter not in self.current:
            return None
        chosen = self.current[adapter]
        canary = self.canary.get(adapter)
        if canary is not None and self.split.takes(canary[1]):
            chosen = canary[0]
        self._holds[chosen.name] += 1
        return chosen

    def release(self, published: PublishedAdapter | None) -> None:
        """The request admitted with ``published`` is done; a replaced version is unloaded
        with its last request."""
        if published is None:
            return
        name = published.name
        self._holds[name] -= 1
        if self._holds[name] <= 0:
            del self._holds[name]
            old = self._retiring.pop(name, None)
            if old is not None:
                self._spawn(self._unload(old))

    def infos(self) -> list[AdapterInfo]:
        """Each persona's ``CURRENT`` adapter."""
        return [self.current[pid].info() for pid in sorted(self.current)]

    def canary_infos(self) -> list[AdapterInfo]:
        """Each persona's canary, with its share."""
        return [self.canary[pid][0].info(self.canary[pid][1]) for pid in sorted(self.canary)]

    def _in_use(self, name: str) -> bool:
        """Whether ``name`` is some persona's ``CURRENT`` or canary (so must stay loaded)."""
        return any(p.name == name for p in self.current.values()) or any(
            p.name == name for p, _ in self.canary.values()
        )

    # -- publishing ----------------------------------------------------------------

    async def publish_all(self) -> list[str]:
        """Publish every persona's current adapter and canary; a failing one keeps what it had (logged)."""
        lines = []
        for pid in sorted(self.cards.cards):
            try:
                line, canary_error = await self.publish_persona(pid)
            except AdapterError as exc:
                had = self.current.get(pid)
                keeps = f"keeps {had.name}" if had else "answers prompt-only"
                log.error("%s; %s %s", exc, pid, keeps)
                line = f"{pid}: kept the previous adapter ({exc})" if had else f"{pid}: prompt-only ({exc})"
            else:
                if canary_error is not None:
                    log.error("%s", line)
            lines.append(line)
        return lines

    async def publish(self, persona_id: str) -> str:
        """Publish the persona's current version and its canary (see :meth:`publish_persona`).

        Returns one status line; raises AdapterError when either cannot be served (whatever
        served before keeps serving, and the message says what serves now).
        """
        line, canary_error = await self.publish_persona(persona_id)
        if canary_error is not None:
            raise AdapterError(line)
        return line

    async def publish_persona(self, persona_id: str) -> tuple[str, AdapterError | None]:
        """Load the persona's current version on every healthy server, then switch to it; then
        the same for the canary ``adapters/<persona>/CANARY`` names (or end it when there is none).

        Returns the status line and, when only the canary failed, its error (the previous
        canary, if any, keeps its share). Raises AdapterError (the previous version keeps
        serving) when the current version's files are unusable or no server could load it;
        servers that refused while others accepted are named in the line and in /status.
        """
        card = self.cards.get(persona_id)
        adapters_dir = self.settings.paths.adapters_dir
        source = resolve_adapter(card, adapters_dir)
        if source is None:
            self._retire(self.current.pop(persona_id, None))
            self._end_canary(persona_id)
            return f"{persona_id}: prompt-only (no adapter)", None
        self._check(card, source)
        line = await self.publish_source(persona_id, source)
        found = resolve_canary(card, adapters_dir)
        if found is None:
            self._end_canary(persona_id)
            return line, None
        try:
            self._check(card, found[0])
            canary_line = await self._publish_canary(persona_id, *found)
        except AdapterError as exc:
            kept = self.canary.get(persona_id)
            if kept is not None:
                line += f", canary {kept[0].version} for {kept[1]:.0%} of requests"
            return f"{line}; the canary on disk was not loaded ({exc})", exc
        return line + canary_line, None

    def _check(self, card, source: AdapterSource) -> None:
        if source.is_local:
            try:
                check_adapter_files(Path(source.path))
                check_adapter_base(card, Path(source.path), self.settings.model.base_model)
            except (FileNotFoundError, CardError) as exc:
                raise AdapterError(f"adapter for {card.id!r} not loaded: {exc}") from None

    async def _publish_canary(self, persona_id: str, source: AdapterSource, share: float) -> str:
        published, failures = await self._load_everywhere(persona_id, source)
        old = self.canary.get(persona_id)
        self.canary[persona_id] = (published, share)
        if old is not None and old[0].name != published.name:
            self._retire(old[0])
        line = f", canary {source.version} for {share:.0%} of requests"
        return line + (f" (not on {failures})" if failures else "")

    def _end_canary(self, persona_id: str) -> None:
        old = self.canary.pop(persona_id, None)
        if old is not None:
            self._retire(old[0])

    async def publish_source(self, persona_id: str, source: AdapterSource) -> str:
        """Publish an adapter folder (or hub id) as ``persona_id``'s current one, cards aside
        (benchmarks use this directly). Same line and errors as :meth:`publish`."""
        published, failures = await self._load_everywhere(persona_id, source)
        old = self.current.get(persona_id)
        self.current[persona_id] = published
        canary = self.canary.get(persona_id)
        if canary is not None and canary[0].name == published.name:
            del self.canary[persona_id]  # promoted: no split between a version and itself
        if old is not None and old.name != published.name:
            self._retire(old)
        line = f"{persona_id}: adapter {source.version or source.path}"
        if failures:
            line += f" (not on {failures})"
            log.error("%s; the other servers serve it", line)
        return line

    async def _load_everywhere(self, persona_id: str, source: AdapterSource) -> tuple[PublishedAdapter, str]:
        """Load on every healthy server: the published adapter, and "N of M servers: reasons"
        for those that refused ("" when none did). Raises AdapterError when none took it."""
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
        if failures:
            return published, f"{len(failures)} of {len(healthy)} servers: {'; '.join(failures)}"
        return published, ""

    async def ensure_on(self, server: Server) -> None:
        """Load every adapter in use that the server lacks (after a restart): each persona's
        current and canary versions, and replaced ones that requests still hold (a request
        keeps its version when it is retried on this server). Failures are recorded."""
        in_use = [*self.current.values(), *(p for p, _ in self.canary.values()), *self._retiring.values()]
        for published in in_use:
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
        if old is None or self._in_use(old.name):
            return
        if self._holds[old.name] > 0:
            self._retiring[old.name] = old  # unloaded by the last release()
        else:
            self._holds.pop(old.name, None)
            self._spawn(self._unload(old))

    async def _unload(self, old: PublishedAdapter) -> None:
        if self._in_use(old.name):
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
