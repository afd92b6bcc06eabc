"""Approved and edited review decisions → normalized dialogue JSONL for ``train``.

Privacy is the store's rule, enforced where data leaves it: ``approved_for_export`` never
returns a row in which an opted-out or forgotten user took part, nor one from a Discord server
that does not allow training (its ``/settings training``; by default on only for the servers in
``discord.allowed_servers``). The export is always
complete (never appended to), so a user who opts out or asks to be forgotten drops out of
the file at the next export, and the scheduler exports afresh before every training run.

Rows of the held-out split (:mod:`bot.store.heldout`) are left out: the promotion gate judges
candidates on them, so no adapter may learn them.

Beside the JSONL, ``<file>.meta.json`` records when the export was taken; ``train`` copies
it into the adapter's metadata, and the scheduler counts approvals newer than it.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from bot.ops.filemode import respect_umask
from bot.store.heldout import is_heldout
from bot.store.store import ExportRow, Store, utc_now
from personas.render import clean_text
from trainer.convert.common import PERSONA_SPEAKER, USER_SPEAKER

SOURCE = "reviews"


@dataclass(frozen=True)
class ExportResult:
    path: Path
    rows: int
    skipped: int  # rows without a question or a reply
    exported_at: str
    held_back: int = 0  # approvals left out because their server does not allow training
    heldout: int = 0  # rows kept back for the promotion gate


def dialogue_line(row: ExportRow) -> dict:
    """One decided reply as a two-turn dialogue; the extra fields are for people auditing the file.

    The texts are cleaned by the renderer's one rule (:func:`personas.render.clean_text`): the
    database keeps what was really written, for audit, but nothing invisible or
    direction-changing reaches the file people read and the adapter learns from.
    """
    return {
        "source": SOURCE,
        "id": f"review:{row.log_id}",
        "persona": PERSONA_SPEAKER,
        "turns": [
            {"speaker": USER_SPEAKER, "text": clean_text(row.question)},
            {"speaker": PERSONA_SPEAKER, "text": clean_text(row.reply)},
        ],
        "decision": row.decision,
        "origin": row.origin,
        "adapter_version": row.adapter_version,
        "decided_at": row.decided_at,
    }


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8) through a temp file and a rename: never half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        respect_umask(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


async def export_reviews(
    database: str | Path, persona_id: str, out: str | Path, *, listed_servers: Collection[int] = ()
) -> ExportResult:
    """Write every exportable approved/edited reply of a persona to ``out`` (replacing it).

    ``listed_servers`` is ``discord.allowed_servers``: it decides which servers train by default.
    """
    out = Path(out)
    # Taken before reading: an approval landing mid-export is then counted as new next time
    # (at worst one extra retrain), never silently missed.
    exported_at = utc_now()
    store = await Store.open(database)
    try:
        rows = await store.approved_for_export(persona_id, listed_servers=listed_servers)
        held_back = await store.count_held_back_by_servers(persona_id, listed_servers=listed_servers)
    finally:
        await store.close()
    lines, skipped, heldout = [], 0, 0
    for row in rows:
        if is_heldout(row.log_id):
            heldout += 1
            continue
        line = dialogue_line(row)
        if not all(turn["text"].strip() for turn in line["turns"]):  # e.g. only invisible characters
            skipped += 1
            continue
        lines.append(json.dumps(line, ensure_ascii=False))
    write_atomic(out, "".join(line + "\n" for line in lines))
    meta = {
        "exported_at": exported_at,
        "persona": persona_id,
        "rows": len(lines),
        "heldout": heldout,
        "database": str(database),
    }
    write_atomic(Path(f"{out}.meta.json"), json.dumps(meta, ensure_ascii=False, indent=1) + "\n")
    return ExportResult(out, len(lines), skipped, exported_at, held_back, heldout)
