"""Which adapter each persona serves, as a short label for /personas, /status and the console.

Without this, only ``-v`` logs told an operator whether a retrained adapter was picked up.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from bot.serving.generation import AdapterInfo

PROMPT_ONLY = "prompt-only"


def adapter_label(info: AdapterInfo | None) -> str:
    """``v20250101-120000`` (the version), else the folder name or hub id, else ``prompt-only``."""
    if info is None:
        return PROMPT_ONLY
    return info.version or Path(info.path).name or info.path


def persona_adapter_labels(
    persona_ids: Iterable[str], adapters: Iterable[AdapterInfo], canaries: Iterable[AdapterInfo] = ()
) -> dict[str, str]:
    """persona id → label, for every persona in ``persona_ids`` (sorted), loaded adapter or not.

    ``adapters`` and ``canaries`` are what the backend reports (``WorkerStats.adapters`` and
    ``.canaries``): one entry per persona, named by persona id. A canary adds
    `` + canary v3 (10%)`` to its persona's label.
    """
    by_name = {info.name: info for info in adapters}
    canary_of = {info.name: info for info in canaries}
    labels = {}
    for pid in sorted(persona_ids):
        label = adapter_label(by_name.get(pid))
        canary = canary_of.get(pid)
        if canary is not None and canary.share is not None:
            label += f" + canary {adapter_label(canary)} ({canary.share:.0%})"
        labels[pid] = label
    return labels
