"""The adapter pool: every persona's LoRA adapter resident beside one base model.

PEFT's ``adapter_names`` routes each row of a batch through its own adapter in the same
forward pass (``__base__`` rows skip LoRA entirely), so the pool only has to keep the
weights loaded and map a persona to PEFT's internal adapter name.

Only the worker thread may use a pool: nothing here is thread-safe, by design.
"""

from __future__ import annotations

import itertools
import logging
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from bot.model.adapters import AdapterSource, check_adapter_files
from bot.model.loading import LoadedModel
from bot.serving.generation import BASE_ADAPTER, AdapterError, AdapterInfo
from personas.card import CardError, PersonaCard, check_adapter_base

log = logging.getLogger(__name__)


class AdapterPool:
    """Resident adapters by persona; builds the PEFT wrapper with the first one."""

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        self.peft = None  # the PeftModel wrapper, created with the first adapter
        self._resident: dict[str, tuple[str, AdapterInfo]] = {}  # persona -> (internal name, info)
        self._names = itertools.count(1)
        # Called with an internal name once its weights are deleted (the engine's prefix cache
        # forgets what was computed with them). Internal names are never reused.
        self.on_drop: Callable[[str], None] | None = None

    @property
    def model(self) -> torch.nn.Module:
        """The module to call: the PEFT wrapper while any adapter is resident, else the base model."""
        return self.peft if self.peft is not None and self._resident else self.loaded.model

    @property
    def mixed(self) -> bool:
        """True when forwards need ``adapter_names``."""
        return self.peft is not None and bool(self._resident)

    def adapters(self) -> list[AdapterInfo]:
        return [info for _, info in self._resident.values()]

    def has(self, name: str) -> bool:
        return name in self._resident

    def version(self, name: str) -> str | None:
        entry = self._resident.get(name)
        return entry[1].version if entry else None

    def internal_name(self, adapter: str) -> str:
        """PEFT's name for a persona's adapter; raises AdapterError when it is not resident."""
        if adapter == BASE_ADAPTER:
            return BASE_ADAPTER
        entry = self._resident.get(adapter)
        if entry is None:
            raise AdapterError(f"adapter {adapter!r} is not loaded")
        return entry[0]

    def load(self, name: str, source: AdapterSource, card: PersonaCard | None = None) -> AdapterInfo:
        """Load (or replace) a persona's adapter; on any failure the old one keeps serving.

        The new weights are loaded under a fresh internal name first and the old ones
        dropped only after that succeeded, so a corrupt file never leaves the persona
        without its voice, and repeated reloads do not grow memory. Raises AdapterError.
        """
        if source.is_local:
            try:
                check_adapter_files(Path(source.path))
                if card is not None:
                    check_adapter_base(card, Path(source.path), self.loaded.base_model)
            except (FileNotFoundError, CardError) as exc:
                raise AdapterError(f"adapter for {name!r} not loaded: {exc}") from None
        internal = f"{name.replace('-', '_')}_{next(self._names)}"
        try:
            if self.peft is None:
                from peft import PeftModel

                self.peft = PeftModel.from_pretrained(self.loaded.model, source.path, adapter_name=internal)
                self.peft.eval()
            else:
                self.peft.load_adapter(source.path, adapter_name=internal)
        except Exception as exc:  # corrupt safetensors, wrong shapes, hub errors: all mean "keep the old one"
            self._drop_internal(internal)
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise AdapterError(f"adapter for {name!r} at {source.path} failed to load: {reason}") from None
        params = sum(p.numel() for n, p in self.peft.named_parameters() if f".{internal}." in n)
        info = AdapterInfo(name, source.path, source.version, params)
        old = self._resident.get(name)
        self._resident[name] = (internal, info)
        self.peft.set_adapter(internal)
        if old is not None:
            self._drop_internal(old[0])
        log.info("adapter %s loaded from %s (version %s)", name, source.path, source.version)
        return info

    def remove(self, name: str) -> None:
        entry = self._resident.pop(name, None)
        if entry is not None:
            self._drop_internal(entry[0])

    def _drop_internal(self, internal: str) -> None:
        if self.peft is None or internal not in self.peft.peft_config:
            return
        others = [n for n, _ in self._resident.values() if n != internal]
        if internal in self.peft.active_adapters and others:
            # Any other resident adapter may be the active one: adapter_names decides per row.
            self.peft.set_adapter(others[0])
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*was active which is now deleted.*")
            self.peft.delete_adapter(internal)
        if self.on_drop is not None:
            self.on_drop(internal)
