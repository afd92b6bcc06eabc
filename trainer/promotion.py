"""A published candidate → the promotion gate → CURRENT (or a canary), or refused.

``train``, ``prefer``, ``promote`` and the scheduled loop all end here, so a version reaches
users only through the gate (or ``--force``, which the gate's record and the history both
keep). The gate's record goes into the candidate's ``metadata.json`` whatever the verdict; a
refused candidate stays on disk, never served, and the serving version is untouched.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from bot.config import Settings
from bot.model.rollout import Move, promote, record_gate, start_canary
from bot.ops.commandline import module_command
from personas.card import PersonaCard
from trainer.config import TrainConfig
from trainer.gate import GateReport, judge
from trainer.preferences import heldout_lines


@dataclass
class Promotion:
    report: GateReport
    move: Move | None  # None: refused
    forced: bool

    @property
    def status(self) -> str:
        if self.move is None:
            return "refused"
        return "canary" if self.move.action == "canary-start" else "promoted"

    def summary(self) -> str:
        """One line for the operator (and the review channel)."""
        c = self.report.candidate
        if self.move is None:
            worse = ", ".join(f.name for f in self.report.figures if f.ok is False)
            return (
                f"{self.report.persona}: candidate {c} refused by the promotion gate (worse on {worse}); "
                f"{self.report.serving} keeps serving. Promote it anyway with: "
                + module_command(f"trainer promote --persona {self.report.persona} --version {c} --force")
            )
        forced = " (forced past a refusing gate)" if self.forced else ""
        if self.move.action == "canary-start":
            return f"{self.move.describe()}{forced}"
        return f"{self.report.persona}: {c} is now current{forced}"


def read_heldout(settings: Settings, persona_id: str, notes: list[str]) -> list[dict]:
    """The held-out preference lines from the bot's database (none, with a note, without one)."""
    database = Path(settings.paths.database)
    if not database.is_file():
        notes.append(f"no database at {database}: no held-out reviewed rows")
        return []
    return asyncio.run(heldout_lines(database, persona_id, listed_servers=settings.discord.allowed_servers))


def gate_and_promote(
    settings: Settings,
    card: PersonaCard,
    cfg: TrainConfig,
    candidate: str,
    *,
    by: str,
    force: bool = False,
    canary_share: float = 0.0,
    loaded=None,
) -> Promotion:
    """Judge ``candidate`` against the serving version; on ``pass`` (or ``force``) make it CURRENT,
    or the canary when ``canary_share`` > 0. Raises RolloutError (corrupt candidate, a move
    that cannot be made) and what :func:`trainer.gate.judge` raises; CURRENT is then untouched.
    """
    notes: list[str] = []
    heldout = read_heldout(settings, card.id, notes)
    report = judge(settings, card, cfg, candidate, heldout, loaded=loaded)
    report.notes[:0] = notes
    forced = force and report.verdict == "refuse"
    record_gate(settings.paths.adapters_dir, card.id, candidate, report.as_dict(forced=forced))
    if report.verdict == "refuse" and not force:
        return Promotion(report, None, False)
    reason = f"gate {report.verdict} against {report.serving}" + (" (forced)" if forced else "")
    if canary_share > 0:
        move = start_canary(
            settings.paths.adapters_dir, card.id, candidate, canary_share, by=by, reason=reason
        )
    else:
        move = promote(settings.paths.adapters_dir, card.id, candidate, by=by, reason=reason, forced=forced)
    return Promotion(report, move, forced)
