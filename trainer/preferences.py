"""Moderators' decisions → preference data: what the preference stage (``trainer prefer``) and
the promotion gate learn and measure from.

Every decided reply says something about what the persona should write:

* **approved** → a desirable completion (``"label": true``);
* **rejected**, and **blocked** by the word filter with no moderator's approval, → an
  undesirable one (``"label": false``);
* **edited** → a pair: the moderator's edit chosen over what the model wrote
  (``"chosen"`` / ``"rejected"``, TRL's preference format). KTO, which needs no pairs, reads a
  pair as one desirable and one undesirable completion of the same prompt.

A moderator's decision wins over the word filter: a blocked reply a moderator approved or
edited counts as that decision. Anything else a row may carry (a "regenerated" mark, a
reaction) is a weak signal and never makes a completion undesirable.

Each line carries the prompt **as the bot rendered it** (``logs.prompt``: the persona card,
history and template of that moment, what the model really continued), the version that wrote
the reply and its log id. Privacy is the store's rule, enforced where data leaves it:
:meth:`~bot.store.privacy.PrivacyStore.decisions_for_export` goes through the same query as the
approved-reply export and never returns a row in which an opted-out or forgotten user took part.
Like that export, this one is always complete, never appended to, and leaves out the held-out
rows (:mod:`bot.store.heldout`) the gate judges on.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.store.heldout import is_heldout
from bot.store.store import ExportRow, Store, utc_now
from personas.render import clean_text
from trainer.export_reviews import write_atomic

SOURCE = "reviews"


@dataclass
class PreferenceCounts:
    """How many lines of each kind an export (or the held-out split) has."""

    desirable: int = 0  # approvals
    undesirable: int = 0  # rejections and word-filter blocks
    pairs: int = 0  # edits
    skipped: int = 0  # rows whose prompt or completion is empty once cleaned

    def add(self, line: dict[str, Any]) -> None:
        if "chosen" in line:
            self.pairs += 1
        elif line["label"]:
            self.desirable += 1
        else:
            self.undesirable += 1

    def as_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in ("desirable", "undesirable", "pairs", "skipped")}


@dataclass
class PreferenceExport:
    path: Path
    exported_at: str
    train: PreferenceCounts = field(default_factory=PreferenceCounts)
    heldout: PreferenceCounts = field(default_factory=PreferenceCounts)


def preferences_file(data_dir: str | Path, persona_id: str) -> Path:
    """Where ``export-reviews --preferences`` writes and ``prefer`` reads by default."""
    return Path(data_dir) / f"{persona_id}-preferences.jsonl"


def preference_line(row: ExportRow) -> dict[str, Any] | None:
    """One decided (or blocked) row as a preference line; None when it teaches nothing
    (undecided and not blocked) or its texts are empty once cleaned."""
    base: dict[str, Any] = {
        "source": SOURCE,
        "id": f"review:{row.log_id}",
        "log_id": row.log_id,
        "persona_id": row.persona_id,
        "prompt": row.prompt,
        "decision": row.decision,
        "blocked": row.status == "blocked",
        "origin": row.origin,
        "adapter_version": row.adapter_version,
        "decided_at": row.decided_at,
    }
    original = clean_text(row.original_reply)
    if row.decision == "edited":
        chosen = clean_text(row.reply)
        if not chosen.strip():
            return None
        # An "edit" that changed nothing visible approves the reply as it was.
        line = (
            {**base, "chosen": chosen, "rejected": original}
            if original.strip() and chosen != original
            else {**base, "completion": chosen, "label": True}
        )
    elif row.decision == "approved":
        line = {**base, "completion": original, "label": True}
    elif row.decision == "rejected" or row.status == "blocked":
        line = {**base, "completion": original, "label": False}
    else:
        return None
    if not row.prompt.strip() or not line.get("completion", "x").strip():
        return None
    return line


def split_lines(
    rows: Iterable[ExportRow],
) -> tuple[list[dict], list[dict], PreferenceCounts, PreferenceCounts]:
    """(training lines, held-out lines, their counts) for ``rows`` in order."""
    train: list[dict] = []
    heldout: list[dict] = []
    counts = (PreferenceCounts(), PreferenceCounts())
    for row in rows:
        side = 1 if is_heldout(row.log_id) else 0
        line = preference_line(row)
        if line is None:
            counts[side].skipped += row.decision is not None or row.status == "blocked"
            continue
        (heldout if side else train).append(line)
        counts[side].add(line)
    return train, heldout, *counts


async def read_decisions(
    database: str | Path, persona_id: str, *, listed_servers: Collection[int] = ()
) -> list[ExportRow]:
    """The persona's exportable decided and blocked rows, straight from the store
    (``listed_servers``: ``discord.allowed_servers``, which decides the servers that train)."""
    store = await Store.open(database)
    try:
        return await store.decisions_for_export(persona_id, listed_servers=listed_servers)
    finally:
        await store.close()


async def heldout_lines(
    database: str | Path, persona_id: str, *, listed_servers: Collection[int] = ()
) -> list[dict]:
    """The held-out split's preference lines, read now under today's privacy rules."""
    _, heldout, _, _ = split_lines(await read_decisions(database, persona_id, listed_servers=listed_servers))
    return heldout


async def export_preferences(
    database: str | Path, persona_id: str, out: str | Path, *, listed_servers: Collection[int] = ()
) -> PreferenceExport:
    """Write every exportable decision of ``persona_id`` outside the held-out split to ``out``
    (replacing it), with ``<out>.meta.json`` beside it (export time and counts).

    Raises StoreError / sqlite3.Error when the database cannot be read, OSError when ``out``
    cannot be written (the old file then stays as it was).
    """
    out = Path(out)
    exported_at = utc_now()  # before reading, as export-reviews does
    train, _, counts, held = split_lines(
        await read_decisions(database, persona_id, listed_servers=listed_servers)
    )
    write_atomic(out, "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in train))
    meta = {
        "exported_at": exported_at,
        "persona": persona_id,
        "kind": "preferences",
        "counts": counts.as_dict(),
        "heldout": held.as_dict(),
        "database": str(database),
    }
    write_atomic(Path(f"{out}.meta.json"), json.dumps(meta, ensure_ascii=False, indent=1) + "\n")
    return PreferenceExport(out, exported_at, counts, held)


def read_preferences(path: str | Path) -> list[dict[str, Any]]:
    """The lines of a preference export; raises ValueError naming the file and line of a bad one."""
    lines = []
    with open(path, encoding="utf-8") as fh:
        for lineno, text in enumerate(fh, 1):
            if not text.strip():
                continue
            try:
                line = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not valid JSON: {exc.msg}") from None
            ok = isinstance(line, dict) and isinstance(line.get("prompt"), str)
            ok = ok and (
                (isinstance(line.get("chosen"), str) and isinstance(line.get("rejected"), str))
                or (isinstance(line.get("completion"), str) and isinstance(line.get("label"), bool))
            )
            if not ok:
                raise ValueError(
                    f"{path}:{lineno}: a preference line needs 'prompt' and either 'completion' + 'label' "
                    "or 'chosen' + 'rejected'"
                )
            lines.append(line)
    return lines
