"""A persona's current adapter, loaded into an engine: the one place the bot (at start-up and
on ``/reload``) and the trainer (``augment``) turn "persona X" into resident LoRA weights."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from bot.model.adapters import resolve_adapter
from bot.serving.generation import AdapterInfo
from personas.card import PersonaCard

if TYPE_CHECKING:  # the engine imports torch; this module is imported by code that may not
    from bot.serving.local.engine import Engine


def load_persona_adapter(engine: Engine, card: PersonaCard, adapters_dir: str | Path) -> AdapterInfo | None:
    """Make ``card``'s current adapter (see ``resolve_adapter``) resident under the persona's id.

    Returns its AdapterInfo, or None for a prompt-only persona (any adapter it had is removed).
    Raises AdapterError when the files cannot be loaded; the previous adapter keeps serving.
    Call it where the engine lives (the worker thread, for the bot's engine).
    """
    source = resolve_adapter(card, adapters_dir)
    if source is None:
        engine.remove_adapter(card.id)
        return None
    return engine.load_adapter(card.id, source, card)


def describe(persona_id: str, info: AdapterInfo | None) -> str:
    """The one-line status ``/reload`` and the start-up log show for a persona."""
    if info is None:
        return f"{persona_id}: prompt-only (no adapter)"
    return f"{persona_id}: adapter {info.version or info.path}"
