"""Moderators' decisions counted per adapter version: what ``python -m trainer versions`` compares.

Which rows count, and as what:

* **live replies only** (``origin = 'live'``). A canary is served to a random share of live
  requests, so live replies of two versions are comparable samples; the trainer's ``augment``
  candidates are answers to a fixed question set by whatever version was current then, a
  different population, and would bias the comparison.
* **kept** = ``approved`` + ``edited``: the moderator judged the reply worth keeping (an edit
  is kept, corrected, and becomes training data). **rejected** = ``rejected``. Nothing else
  is a decision here: an undecided row counts in ``replies`` only, and any other label (issue
  17 may add a "regenerated" one: a member asking for another answer is not a moderator's
  verdict) is never counted as a rejection, nor as a decision at all.
* **word-filter blocks** are reviewed like any other reply, so a blocked reply counts through
  the moderator's decision on it; ``blocked`` is reported beside, not folded into the rate
  (that would count a blocked-and-rejected reply twice).
* the privacy rule of the export applies: rows in which an opted-out or forgotten user took
  part are not counted (their decisions feed training choices, so they stay out of them).
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.store.privacy import _PRIVACY_EXCLUSION
from bot.store.sqlite_db import SqliteDatabase


@dataclass(frozen=True)
class VersionDecisions:
    """Counts of one persona's live replies written by one adapter version (None: no adapter)."""

    persona_id: str
    adapter_version: str | None
    replies: int  # logged, decided or not
    approved: int
    edited: int
    rejected: int
    blocked: int  # held back by the word filter (also counted in their decision, if any)

    @property
    def kept(self) -> int:
        """Approved or edited: the replies a moderator kept."""
        return self.approved + self.edited

    @property
    def decided(self) -> int:
        """Kept or rejected: the trials of the approval rate."""
        return self.kept + self.rejected

    @classmethod
    def none(cls, persona_id: str, adapter_version: str | None) -> VersionDecisions:
        """A version no reply was logged for yet."""
        return cls(persona_id, adapter_version, 0, 0, 0, 0, 0)


class DecisionStats(SqliteDatabase):
    """The per-version counts half of :class:`bot.store.store.Store` (same database, same connections)."""

    async def decisions_by_version(self, persona_id: str) -> list[VersionDecisions]:
        """One row per adapter version that wrote a live reply of ``persona_id`` (see the module
        doc for what counts), ordered by version name (None, prompt-only, first)."""
        rows = await self._fetchall(
            f"""
            SELECT l.adapter_version AS adapter_version,
                   COUNT(*) AS replies,
                   SUM(l.decision = 'approved') AS approved,
                   SUM(l.decision = 'edited') AS edited,
                   SUM(l.decision = 'rejected') AS rejected,
                   SUM(l.status = 'blocked') AS blocked
            FROM logs l
            WHERE l.persona_id = ? AND l.origin = 'live' AND {_PRIVACY_EXCLUSION}
            GROUP BY l.adapter_version
            ORDER BY l.adapter_version
            """,
            (persona_id,),
        )
        return [
            VersionDecisions(
                persona_id,
                row["adapter_version"],
                *(int(row[name] or 0) for name in ("replies", "approved", "edited", "rejected", "blocked")),
            )
            for row in rows
        ]
