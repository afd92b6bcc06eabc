"""A persona's adapter versions side by side: which serve now, how moderators judged each, and
whether a canary is clearly worse or better than ``CURRENT``.

``python -m trainer versions`` prints :func:`version_report`; a Discord command can show the same
lines. The counts come from :meth:`bot.store.store.Store.decisions_by_version` (which decisions
count is decided there); the approval rate is kept / decided with a 95% Wilson score interval.

The rule for "clearly": the two versions' 95% intervals do not overlap. That is a conservative
test — non-overlapping 95% intervals mean a difference significant at well under the 5% level
(Schenker & Gentleman, "On judging the significance of differences by examining the overlap
between confidence intervals", The American Statistician 55(3), 2001) — chosen because a
verdict here may move ``CURRENT`` for every channel: a false "worse" only delays a candidate,
a false "better" ships a worse persona. It needs no minimum count: few decisions give wide
intervals, which do not separate until the evidence does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from bot.model.adapters import current_version, list_versions, read_canary
from bot.store.decision_stats import VersionDecisions

Z_95 = 1.959964  # the standard normal's 97.5% quantile: a two-sided 95% interval
Verdict = Literal["clearly worse", "clearly better", "no clear difference"]


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval for a binomial proportion: ``(low, high)``, both in [0, 1].

    With p = successes / trials and n = trials::

        centre = (p + z²/2n) / (1 + z²/n)
        half   = z / (1 + z²/n) * sqrt(p(1 - p)/n + z²/4n²)

    Source: E. B. Wilson, "Probable inference, the law of succession, and statistical
    inference", Journal of the American Statistical Association 22(158):209-212, 1927 (the
    form above is the one in Agresti & Coull, The American Statistician 52(2), 1998). Unlike the
    normal (Wald) interval it stays inside [0, 1] and keeps its coverage for small n and for p
    near 0 or 1, which is where a new canary's figures are. ``trials == 0`` gives (0, 1): no
    information. Raises ValueError when ``successes`` is not within 0..trials.
    """
    if not 0 <= successes <= trials:
        raise ValueError(f"successes must be within 0..{trials}, not {successes}")
    if trials == 0:
        return 0.0, 1.0
    n, p = trials, successes / trials
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class VersionFigures:
    """One version's row: where it stands (on disk, CURRENT, canary share) and its decisions."""

    version: str | None  # None: replies written with no adapter (prompt-only)
    on_disk: bool
    current: bool
    canary_share: float | None
    counts: VersionDecisions

    @property
    def approval(self) -> float | None:
        """kept / decided, None before the first decision."""
        return self.counts.kept / self.counts.decided if self.counts.decided else None

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.counts.kept, self.counts.decided)


def version_figures(
    adapters_dir: str | Path, persona_id: str, counts: list[VersionDecisions]
) -> list[VersionFigures]:
    """Every version on disk (oldest name first), then versions known only from the log (a
    version folder since deleted, a card's own adapter, prompt-only replies)."""
    current = current_version(adapters_dir, persona_id)
    canary = read_canary(adapters_dir, persona_id)
    by_version = {c.adapter_version: c for c in counts}
    on_disk = list_versions(adapters_dir, persona_id)
    rows = [
        VersionFigures(
            v,
            True,
            v == current,
            canary.share if canary is not None and canary.version == v else None,
            by_version.pop(v, None) or VersionDecisions.none(persona_id, v),
        )
        for v in on_disk
    ]
    for version, c in sorted(by_version.items(), key=lambda item: (item[0] is not None, item[0] or "")):
        rows.append(VersionFigures(version, False, version == current, None, c))
    return rows


def canary_verdict(canary: VersionFigures, current: VersionFigures) -> Verdict:
    """Compare a canary with ``CURRENT`` by their 95% Wilson intervals (see the module doc)."""
    c_low, c_high = canary.interval
    low, high = current.interval
    if canary.counts.decided and current.counts.decided:
        if c_high < low:
            return "clearly worse"
        if c_low > high:
            return "clearly better"
    return "no clear difference"


def version_report(adapters_dir: str | Path, persona_id: str, counts: list[VersionDecisions]) -> list[str]:
    """The lines ``trainer versions`` prints: a table of every version, then the canary's verdict."""
    rows = version_figures(adapters_dir, persona_id, counts)
    if not rows:
        return [
            f"{persona_id}: no adapter versions under {Path(adapters_dir) / persona_id} and no replies logged"
        ]
    lines = [
        f"{persona_id}: decisions on live replies per version "
        "(approval = approved or edited, of those decided; 95% Wilson interval)",
        f"{'version':<24} {'serving':<12} {'replies':>7} {'decided':>7} {'approved':>8} {'edited':>6} "
        f"{'rejected':>8} {'blocked':>7} {'approval':>8}  interval",
    ]
    for row in rows:
        c = row.counts
        serving = "CURRENT" if row.current else f"CANARY {row.canary_share:.0%}" if row.canary_share else ""
        if not row.on_disk:
            serving = serving or ("(no adapter)" if row.version is None else "(not on disk)")
        rate = f"{row.approval:.1%}" if row.approval is not None else "-"
        low, high = row.interval
        interval = f"{low:.1%}-{high:.1%}" if c.decided else "-"
        lines.append(
            f"{row.version or 'prompt-only':<24} {serving:<12} {c.replies:>7} {c.decided:>7} {c.approved:>8} "
            f"{c.edited:>6} {c.rejected:>8} {c.blocked:>7} {rate:>8}  {interval}"
        )
    lines.extend(_canary_lines(rows))
    return lines


def _canary_lines(rows: list[VersionFigures]) -> list[str]:
    canary = next((r for r in rows if r.canary_share is not None), None)
    current = next((r for r in rows if r.current), None)
    if canary is None:
        return []
    if current is None:
        return [f"canary {canary.version}: no CURRENT version to compare it with"]
    verdict = canary_verdict(canary, current)
    (c_low, c_high), (low, high) = canary.interval, current.interval
    detail = (
        f"{canary.counts.decided} and {current.counts.decided} decisions; 95% intervals "
        f"{c_low:.1%}-{c_high:.1%} vs {low:.1%}-{high:.1%}"
    )
    if verdict == "no clear difference":
        return [
            f"canary {canary.version} vs CURRENT {current.version}: no clear difference yet ({detail} overlap)"
        ]
    return [f"canary {canary.version} is {verdict} than CURRENT {current.version} ({detail} do not overlap)"]
