"""A persona's adapters, loaded into an engine: the one place the bot (at start-up and on
``/reload``) and the trainer (``augment``) turn "persona X" into resident LoRA weights."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from bot.model.adapters import resolve_adapter, resolve_canary
from bot.serving.generation import AdapterError, AdapterInfo
from personas.card import PersonaCard

if TYPE_CHECKING:  # the engine imports torch; this module is imported by code that may not
    from bot.serving.local.engine import Engine


def load_persona_adapter(engine: Engine, card: PersonaCard, adapters_dir: str | Path) -> AdapterInfo | None:
    """Make ``card``'s current adapter (see ``resolve_adapter``) resident under the persona's id.

    Returns its AdapterInfo, or None for a prompt-only persona (any adapter it had is retired).
    Raises AdapterError when the files cannot be loaded; the previous adapter keeps serving.
    Call it where the engine lives (the worker thread, for the bot's engine).
    """
    source = resolve_adapter(card, adapters_dir)
    if source is None:
        engine.remove_adapter(card.id)
        return None
    return engine.load_adapter(card.id, source, card)


def load_persona_canary(engine: Engine, card: PersonaCard, adapters_dir: str | Path) -> AdapterInfo | None:
    """Make ``card``'s canary (``adapters/<persona>/CANARY``) resident beside its current adapter,
    or end the canary when the file is gone. Call after :func:`load_persona_adapter`.

    Returns the canary's AdapterInfo (``share`` set), or None when there is none. Raises
    AdapterError when it cannot be loaded, or the persona has no adapter to split with; the
    previous canary, if any, keeps its share.
    """
    found = resolve_canary(card, adapters_dir)
    if found is None:
        engine.clear_canary(card.id)
        return None
    source, share = found
    return engine.load_canary(card.id, source, share, card)


def load_persona(
    engine: Engine, card: PersonaCard, adapters_dir: str | Path
) -> tuple[str, AdapterError | None]:
    """Both of the above: the status line and, when only the canary failed, its error.

    Raises AdapterError when the current adapter fails (the canary is then left as it was).
    """
    info = load_persona_adapter(engine, card, adapters_dir)
    try:
        canary = load_persona_canary(engine, card, adapters_dir)
    except AdapterError as exc:
        kept = next((c for c in engine.canaries() if c.name == card.id), None)
        return describe_canary_failure(describe(card.id, info, kept), exc), exc
    return describe(card.id, info, canary), None


def describe(persona_id: str, info: AdapterInfo | None, canary: AdapterInfo | None = None) -> str:
    """The one-line status ``/reload`` and the start-up log show for a persona."""
    if info is None:
        return f"{persona_id}: prompt-only (no adapter)"
    line = f"{persona_id}: adapter {info.version or info.path}"
    if canary is not None and canary.share is not None:
        line += f", canary {canary.version or canary.path} for {canary.share:.0%} of requests"
    return line


def describe_canary_failure(line: str, exc: Exception) -> str:
    """``line`` (what serves now) with why the canary on disk is not served."""
    return f"{line}; the canary on disk was not loaded ({exc})"
