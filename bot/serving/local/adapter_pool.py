"""The adapter pool: every persona's LoRA adapter resident beside one base model.

PEFT's ``adapter_names`` routes each row of a batch through its own adapter in the same
forward pass (``__base__`` rows skip LoRA entirely), so the pool only has to keep the
weights loaded and say which loaded instance each row uses.

Version-true serving: a row is *pinned* to one :class:`ResidentAdapter` when it is admitted
(:meth:`AdapterPool.acquire`) and keeps it to its last token, whatever reloads happen
meanwhile. A reload makes a new instance the persona's ``CURRENT`` (or canary); the one it
replaces is *retired*: new rows no longer get it, and its weights are freed when its last
row leaves (:meth:`AdapterPool.release`). So a reply is never finished with weights other
than those its KV cache was computed with, and its result names the version that wrote it.

Only the worker thread may change a pool: nothing here is thread-safe, by design (the two
listings :meth:`AdapterPool.adapters` and :meth:`AdapterPool.canaries` excepted).
"""

from __future__ import annotations

import itertools
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from bot.model.adapters import AdapterSource, check_adapter_files
from bot.model.loading import LoadedModel
from bot.serving.canary import CanarySplit
from bot.serving.generation import BASE_ADAPTER, AdapterError, AdapterInfo
from personas.card import CardError, PersonaCard, check_adapter_base

log = logging.getLogger(__name__)


@dataclass(eq=False)
class ResidentAdapter:
    """One loaded instance of a persona's adapter version.

    ``key`` is PEFT's adapter name for it (``marisa_3``): unique for the pool's lifetime and
    never reused, so it names exactly these weights. A cache of model states (a prefix KV
    cache) keys on it and can never serve one version's states to another. The same instance
    (same key) stays in use when a reload finds its version already resident: a canary that
    is promoted, or ``/reload`` with nothing changed.
    """

    key: str
    info: AdapterInfo  # name: the persona id; version: what results and log rows name
    immutable: bool  # a published layout version (see AdapterSource.immutable)
    rows: int = 0  # admitted rows pinned to this instance

    @property
    def version(self) -> str | None:
        return self.info.version

    def same_files(self, source: AdapterSource) -> bool:
        """Whether ``source`` is this instance's published version (so need not be read again)."""
        same = (self.info.path, self.version) == (source.path, source.version)
        return self.immutable and source.immutable and same


class AdapterPool:
    """Resident adapters by persona (``CURRENT`` and an optional canary); builds the PEFT
    wrapper with the first one. ``split`` draws which requests get a canary."""

    def __init__(self, loaded: LoadedModel, split: CanarySplit | None = None) -> None:
        self.loaded = loaded
        self.peft = None  # the PeftModel wrapper, created with the first adapter
        self.split = split or CanarySplit()
        self._current: dict[str, ResidentAdapter] = {}
        self._canary: dict[str, tuple[ResidentAdapter, float]] = {}
        self._retired: dict[str, ResidentAdapter] = {}  # by key: replaced, still pinned by rows
        self._names = itertools.count(1)
        # Called with an internal name once its weights are deleted (the engine's prefix cache
        # forgets what was computed with them). Internal names are never reused.
        self.on_drop: Callable[[str], None] | None = None

    # -- what is resident ---------------------------------------------------------------------

    def _live(self) -> list[ResidentAdapter]:
        """Every loaded instance: current, canary, retired (distinct objects)."""
        seen: dict[str, ResidentAdapter] = {}
        for res in [*self._current.values(), *(c for c, _ in self._canary.values()), *self._retired.values()]:
            seen.setdefault(res.key, res)
        return list(seen.values())

    @property
    def model(self) -> torch.nn.Module:
        """The module to call: the PEFT wrapper while any adapter is resident, else the base model."""
        return self.peft if self.mixed else self.loaded.model

    @property
    def mixed(self) -> bool:
        """True when forwards need ``adapter_names``."""
        return self.peft is not None and bool(self._live())

    # adapters() and canaries() are also read by WorkerStats from the event loop's thread: list()
    # copies a dict's values in one step under the GIL, so a reload on the worker thread cannot
    # change the dict while it is being iterated.

    def adapters(self) -> list[AdapterInfo]:
        """Each persona's ``CURRENT`` adapter."""
        return [res.info for res in list(self._current.values())]

    def canaries(self) -> list[AdapterInfo]:
        """Each persona's canary, with its share."""
        return [replace(res.info, share=share) for res, share in list(self._canary.values())]

    def resident_keys(self) -> list[str]:
        """The keys of every loaded instance, retired ones still pinned by rows included."""
        return [res.key for res in self._live()]

    def has(self, name: str) -> bool:
        return name in self._current

    def version(self, name: str) -> str | None:
        """The version of the persona's ``CURRENT`` adapter (None: none, or unversioned)."""
        res = self._current.get(name)
        return res.version if res else None

    def internal_name(self, adapter: str) -> str:
        """PEFT's name for a persona's ``CURRENT`` adapter; raises AdapterError when none is resident."""
        if adapter == BASE_ADAPTER:
            return BASE_ADAPTER
        res = self._current.get(adapter)
        if res is None:
            raise AdapterError(f"adapter {adapter!r} is not loaded")
        return res.key

    # -- rows -----------------------------------------------------------------------------------

    def acquire(self, adapter: str) -> ResidentAdapter | None:
        """Pin a newly admitted row to one instance: the persona's canary with its share's
        probability, else its ``CURRENT``. None for ``__base__``. Pair with :meth:`release`.

        Raises AdapterError when the persona has no adapter resident.
        """
        if adapter == BASE_ADAPTER:
            return None
        chosen = self._current.get(adapter)
        if chosen is None:
            raise AdapterError(f"adapter {adapter!r} is not loaded")
        canary = self._canary.get(adapter)
        if canary is not None and self.split.takes(canary[1]):
            chosen = canary[0]
        chosen.rows += 1
        return chosen

    def release(self, res: ResidentAdapter | None) -> None:
        """A row pinned to ``res`` has left; a retired instance is freed with its last row."""
        if res is None:
            return
        res.rows -= 1
        if res.rows <= 0 and self._retired.get(res.key) is res:
            del self._retired[res.key]
            self._free(res)

    # -- loading ------------------------------------------------------------------------------

    def load(self, name: str, source: AdapterSource, card: PersonaCard | None = None) -> AdapterInfo:
        """Make ``source`` the persona's ``CURRENT`` adapter; on any failure the old one keeps serving.

        The new weights are loaded under a fresh key first and the old instance retired only
        after that succeeded, so a corrupt file never leaves the persona without its voice.
        Rows already running keep the old instance; it is freed when the last of them leaves,
        so repeated reloads do not grow memory. A published version that is already resident
        for this persona (its canary, or one still finishing rows) is reused, not read again.
        Raises AdapterError.
        """
        res = self._find(name, source) or self._read(name, source, card)
        old = self._current.get(name)
        self._current[name] = res
        self._retired.pop(res.key, None)
        canary = self._canary.get(name)
        if canary is not None and canary[0] is res:
            del self._canary[name]  # promoted: no split between a version and itself
        if old is not res:
            self._retire(old)
        log.info("adapter %s loaded from %s (version %s)", name, source.path, source.version)
        return res.info

    def load_canary(
        self, name: str, source: AdapterSource, share: float, card: PersonaCard | None = None
    ) -> AdapterInfo:
        """Serve ``source`` to ``share`` (0 < share < 1) of the persona's requests beside its
        ``CURRENT``. Raises AdapterError (the previous canary, if any, keeps its share) when
        the files cannot be loaded or the persona has no ``CURRENT`` adapter to split with.
        """
        if not 0.0 < share < 1.0:
            raise AdapterError(f"canary share for {name!r} must be between 0 and 1, not {share}")
        current = self._current.get(name)
        if current is None:
            raise AdapterError(f"canary for {name!r} not loaded: the persona has no adapter to split with")
        res = self._find(name, source) or self._read(name, source, card)
        if res is current:
            self.clear_canary(name)  # a canary of the current version is no split
            return res.info
        old = self._canary.get(name)
        self._canary[name] = (res, share)
        self._retired.pop(res.key, None)
        if old is not None and old[0] is not res:
            self._retire(old[0])
        log.info(
            "canary %s loaded from %s (version %s, share %.3g)", name, source.path, source.version, share
        )
        return replace(res.info, share=share)

    def clear_canary(self, name: str) -> None:
        """End the persona's canary: every new request gets ``CURRENT`` (running rows finish)."""
        old = self._canary.pop(name, None)
        if old is not None:
            self._retire(old[0])

    def remove(self, name: str) -> None:
        """The persona goes prompt-only; rows already running finish on the adapter they had."""
        self.clear_canary(name)
        self._retire(self._current.pop(name, None))

    def _find(self, name: str, source: AdapterSource) -> ResidentAdapter | None:
        for res in self._live():
            if res.info.name == name and res.same_files(source):
                return res
        return None

    def _read(self, name: str, source: AdapterSource, card: PersonaCard | None) -> ResidentAdapter:
        """Load ``source``'s files under a fresh key. Raises AdapterError; nothing changes then."""
        if source.is_local:
            try:
                check_adapter_files(Path(source.path))
                if card is not None:
                    check_adapter_base(card, Path(source.path), self.loaded.base_model)
            except (FileNotFoundError, CardError) as exc:
                raise AdapterError(f"adapter for {name!r} not loaded: {exc}") from None
        key = f"{name.replace('-', '_')}_{next(self._names)}"
        try:
            if self.peft is None:
                from peft import PeftModel

                self.peft = PeftModel.from_pretrained(self.loaded.model, source.path, adapter_name=key)
                self.peft.eval()
            else:
                self.peft.load_adapter(source.path, adapter_name=key)
        except Exception as exc:  # corrupt safetensors, wrong shapes, hub errors: all mean "keep the old one"
            self._drop_internal(key)
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise AdapterError(f"adapter for {name!r} at {source.path} failed to load: {reason}") from None
        params = sum(p.numel() for n, p in self.peft.named_parameters() if f".{key}." in n)
        self.peft.set_adapter(key)
        return ResidentAdapter(key, AdapterInfo(name, source.path, source.version, params), source.immutable)

    def _retire(self, res: ResidentAdapter | None) -> None:
        """``res`` is no longer current nor canary: free it now, or when its last row leaves."""
        if res is None or any(r is res for r in self._current.values()):
            return
        if any(r is res for r, _ in self._canary.values()):
            return
        if res.rows > 0:
            self._retired[res.key] = res
        else:
            self._free(res)

    def _free(self, res: ResidentAdapter) -> None:
        self._drop_internal(res.key)
        log.info("adapter %s version %s freed", res.info.name, res.version)

    def _drop_internal(self, key: str) -> None:
        if self.peft is None or key not in self.peft.peft_config:
            return
        others = [k for k in self.resident_keys() if k != key]
        if key in self.peft.active_adapters and others:
            # Any other resident adapter may be the active one: adapter_names decides per row.
            self.peft.set_adapter(others[0])
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*was active which is now deleted.*")
            self.peft.delete_adapter(key)
        if self.on_drop is not None:
            self.on_drop(key)
