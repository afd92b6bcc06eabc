"""Scheduled retraining: on a cron schedule, retrain each persona that gained enough newly
approved replies, in separate processes, and let the promotion gate decide what serves.

One tick, per persona with at least ``schedule.min_new_approved`` new approvals:

1. **SFT**: ``python -m trainer train --export-reviews --no-activate`` exports the approved
   replies and trains a candidate from them (CURRENT untouched);
2. **preference stage**, when the persona has ``schedule.min_preference_decisions`` contrasting
   decisions (rejections, blocks, edits) and ``schedule.preference_method`` is not ``off``:
   ``python -m trainer prefer --export --from <SFT candidate> --no-activate`` refines it;
3. **gate**: ``python -m trainer promote --version <candidate> [--canary SHARE]`` judges it on
   the held-out reviews and makes it CURRENT (or a canary, with ``schedule.canary_share``);
4. the bot reloads the persona. A refused or failed candidate posts one line to the review
   channel (through ``on_failure``) and leaves the serving version alone.

This is the bot-side half: it counts decisions, starts the trainer's commands as child
processes and reloads the result; only the children load the training code.

Why a subprocess: training takes minutes to hours and holds the GIL and the GPU's compute;
in another process the bot's event loop and generation worker keep serving, and a crash
(out of memory, a bad data file) kills only the training run. The child is the ordinary
``python -m trainer train`` command, so a scheduled run is exactly a manual one, and
``train`` itself guarantees that a failed run never moves the persona's CURRENT pointer.

"New approvals" are counted after the newest review export any version of the persona
was trained on (``reviews_exported_at`` in the versions' metadata), so a run that failed
leaves them counted and the next tick tries again.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bot.config import Settings
from bot.model.adapters import current_version, last_export_time, list_versions, new_version_name, read_canary
from bot.model.rollout import gate_record
from bot.ops.cron import cron_trigger
from bot.store.store import Store
from personas.card import load_cards

log = logging.getLogger(__name__)

NewVersionHook = Callable[[str, str], Awaitable[None]]
FailureHook = Callable[[str, str], Awaitable[None]]
LOG_TAIL_CHARS = 1500


@dataclass(frozen=True)
class Outcome:
    persona: str
    status: str  # skipped | promoted | canary | refused | failed
    new_approved: int
    version: str | None = None
    message: str = ""


# The trainer's default ``runs_dir`` (trainer/default_train.toml), where a run's checkpoints and
# TensorBoard logs go; the schedule log goes beside them. ``python -m trainer schedule`` passes
# the folder its train config names instead.
DEFAULT_RUNS_DIR = Path("runs")


async def _log_hook_errors(what: str, coro: Awaitable[None]) -> str | None:
    """Run a callback; its failure is logged and returned, never allowed to stop the scheduler."""
    try:
        await coro
    except Exception as exc:
        log.exception("schedule: %s failed", what)
        return f"{type(exc).__name__}: {exc}"
    return None


class RetrainingSchedule:
    """The retraining job, runnable on a cron schedule (:meth:`start`) or once (:meth:`run_once`).

    ``on_new_version(persona, version)`` runs after a successful run (the bot passes a
    function calling ``Runtime.reload``); ``on_failure(persona, message)`` runs when training
    or the reload failed (the bot posts it to the review channel).
    """

    def __init__(
        self,
        settings: Settings,
        on_new_version: NewVersionHook | None = None,
        on_failure: FailureHook | None = None,
        *,
        train_config: str | Path | None = None,
        runs_dir: str | Path | None = None,
        default_runs_dir: Callable[[str], Path] | None = None,
        extra_train_args: Sequence[str] = (),
        python: str = sys.executable,
    ) -> None:
        self.settings = settings
        self.on_new_version = on_new_version
        self.on_failure = on_failure
        self.train_config = Path(train_config) if train_config else None
        # Given to every train run, so its TensorBoard logs and this job's log share one folder.
        self.runs_dir = Path(runs_dir) if runs_dir else None
        # Without runs_dir the child uses its train config's folder; this says which it is,
        # per persona, so the schedule log lands beside that run's checkpoints.
        self.default_runs_dir = default_runs_dir or (lambda persona: DEFAULT_RUNS_DIR)
        self.extra_train_args = list(extra_train_args)
        self.python = python
        self._lock = asyncio.Lock()
        self._scheduler = None

    # -- scheduling ------------------------------------------------------------------------

    def start(self) -> None:
        """Start the cron job on the running event loop (``schedule.cron``, local time)."""
        from apscheduler.schedulers.asyncio import AsyncIOScheduler

        trigger = cron_trigger(self.settings.schedule.cron)
        self._scheduler = AsyncIOScheduler()
        # One run at a time; runs missed while the machine slept collapse into one.
        self._scheduler.add_job(
            self.run_once, trigger, id="retrain", max_instances=1, coalesce=True, misfire_grace_time=3600
        )
        self._scheduler.start()
        log.info("schedule: retraining check on cron %r", self.settings.schedule.cron)

    def next_run_time(self):
        job = self._scheduler.get_job("retrain") if self._scheduler else None
        return job.next_run_time if job else None

    def shutdown(self) -> None:
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
            self._scheduler = None

    # -- the job ---------------------------------------------------------------------------

    def personas(self) -> list[str]:
        if self.settings.schedule.personas:
            return list(self.settings.schedule.personas)
        personas_dir = Path(self.settings.paths.personas_dir) if self.settings.paths.personas_dir else None
        return sorted(load_cards(personas_dir).cards)

    async def run_once(self) -> list[Outcome]:
        """Check every scheduled persona now; personas are trained one after another."""
        async with self._lock:
            outcomes = []
            for persona in self.personas():
                try:
                    outcome = await self._check(persona)
                except Exception as exc:  # one persona's trouble never stops the others
                    log.exception("schedule: %s failed", persona)
                    outcome = Outcome(persona, "failed", 0, message=f"{type(exc).__name__}: {exc}")
                    await self._report_failure(persona, outcome.message)
                outcomes.append(outcome)
            return outcomes

    async def _count_new(self, persona: str) -> int:
        since = last_export_time(self.settings.paths.adapters_dir, persona)
        store = await Store.open(self.settings.paths.database)
        try:
            # The same rule as the export the child runs: only servers that allow training count.
            listed = self.settings.discord.allowed_servers
            return await store.count_approved_since(persona, since, listed_servers=listed)
        finally:
            await store.close()

    async def _count_decisions(self, persona: str) -> int:
        store = await Store.open(self.settings.paths.database)
        try:
            return await store.count_preference_decisions(
                persona, listed_servers=self.settings.discord.allowed_servers
            )
        finally:
            await store.close()

    async def _check(self, persona: str) -> Outcome:
        new = await self._count_new(persona)
        needed = self.settings.schedule.min_new_approved
        if new < needed:
            log.info("schedule: %s has %d new approved replies (needs %d)", persona, new, needed)
            return Outcome(persona, "skipped", new, message=f"{new} of {needed} new approved replies")

        adapters = self.settings.paths.adapters_dir
        serving = current_version(adapters, persona) or "the prompt-only persona"
        version = new_version_name()
        log_path = (self.runs_dir or self.default_runs_dir(persona)) / persona / version / "schedule.log"
        log.info("schedule: %s has %d new approved replies; training %s", persona, new, version)

        stages = [("SFT", version, self.train_command(persona, version))]
        method = self.settings.schedule.preference_method
        if method != "off":
            decisions = await self._count_decisions(persona)
            if decisions >= self.settings.schedule.min_preference_decisions:
                stages.append(("the preference stage", f"{version}-{method}", []))
            else:
                log.info("schedule: %s has %d contrasting decisions: no preference stage", persona, decisions)
        candidate = version
        for stage, name, command in stages:
            command = command or self.prefer_command(persona, method, candidate, name)
            code, tail = await self._run(command, log_path)
            if code != 0 or name not in list_versions(adapters, persona):
                return await self._failed(
                    persona, new, name, f"{stage} failed (exit {code})", tail, serving, log_path
                )
            candidate = name

        code, tail = await self._run(self.promote_command(persona, candidate), log_path)
        canary = read_canary(adapters, persona)
        if current_version(adapters, persona) == candidate or (canary and canary.version == candidate):
            status = "canary" if canary and canary.version == candidate else "promoted"
            if self.on_new_version is not None:
                error = await _log_hook_errors(
                    f"reloading {persona}", self.on_new_version(persona, candidate)
                )
                if error:
                    message = f"{candidate} passed the promotion gate, but the bot could not load it: {error}"
                    await self._report_failure(persona, message)
                    return Outcome(persona, "failed", new, candidate, message)
            share = f" on {canary.share:.0%} of requests" if status == "canary" and canary else ""
            return Outcome(persona, status, new, candidate, f"{candidate} {status}{share}")
        record = gate_record(adapters, persona, candidate) or {}
        if record.get("verdict") == "refuse":
            worse = ", ".join(f["name"] for f in record.get("figures", []) if f.get("ok") is False)
            message = (
                f"candidate {candidate} was refused by the promotion gate (worse on {worse}); "
                f"{serving} keeps serving. Details: python -m trainer promote --persona {persona} --version {candidate}"
            )
            await self._report_failure(persona, message)
            return Outcome(persona, "refused", new, candidate, message)
        return await self._failed(
            persona, new, candidate, f"the promotion gate failed (exit {code})", tail, serving, log_path
        )

    async def _failed(
        self, persona: str, new: int, version: str, what: str, tail: str, serving: str, log_path: Path
    ) -> Outcome:
        """Report a failed stage in one line: what failed, the child's last line, the log."""
        last = next((line.strip() for line in reversed(tail.splitlines()) if line.strip()), "")
        message = f"training {version}: {what}: {last[:300]}; {serving} keeps serving. Log: {log_path}"
        await self._report_failure(persona, message)
        return Outcome(persona, "failed", new, version, message)

    def _trainer(self) -> list[str]:
        cmd = [self.python, "-m", "trainer"]
        return cmd + (["--config", self.settings.source] if self.settings.source else [])

    def _train_config_args(self) -> list[str]:
        return ["--train-config", str(self.train_config)] if self.train_config is not None else []

    def train_command(self, persona: str, version: str) -> list[str]:
        """The SFT child: ``train`` exports the persona's approved replies first, and publishes a
        candidate the gate judges later (``--no-activate``)."""
        cmd = [*self._trainer(), "train", "--persona", persona, "--version", version, "--export-reviews"]
        cmd += ["--no-activate", "--no-progress", *self._train_config_args()]
        if self.runs_dir is not None:
            cmd += ["--runs-dir", str(self.runs_dir)]
        return cmd + self.extra_train_args

    def prefer_command(self, persona: str, method: str, start: str, version: str) -> list[str]:
        """The preference child: export every decision, refine ``start`` (its reference) into ``version``."""
        cmd = [*self._trainer(), "prefer", "--persona", persona, "--method", method, "--export"]
        cmd += ["--from", start, "--version", version, "--no-activate", *self._train_config_args()]
        if self.runs_dir is not None:
            cmd += ["--runs-dir", str(self.runs_dir)]
        return cmd + self.extra_train_args

    def promote_command(self, persona: str, version: str) -> list[str]:
        """The gate's child: judge ``version`` and promote it (or start its canary)."""
        cmd = [
            *self._trainer(),
            "promote",
            "--persona",
            persona,
            "--version",
            version,
            *self._train_config_args(),
        ]
        share = self.settings.schedule.canary_share
        return cmd + (["--canary", str(share)] if share > 0 else [])

    async def _run(self, command: list[str], log_path: Path) -> tuple[int, str]:
        """Run one trainer command as a child; its output is appended to ``log_path``.

        Returns the exit code and the log's last LOG_TAIL_CHARS characters."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as fh:
            fh.write(("$ " + " ".join(command[1:]) + "\n").encode())
            fh.flush()
            proc = await asyncio.create_subprocess_exec(
                *command, stdout=fh, stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL
            )
            try:
                code = await proc.wait()
            except asyncio.CancelledError:
                # The bot is shutting down: no orphan. SIGINT lets train save a checkpoint to resume.
                proc.send_signal(signal.SIGINT)
                try:
                    await asyncio.wait_for(proc.wait(), 60)
                except TimeoutError:
                    proc.kill()
                raise
        tail = log_path.read_text(encoding="utf-8", errors="replace")[-LOG_TAIL_CHARS:]
        return code, tail

    async def _report_failure(self, persona: str, message: str) -> None:
        log.error("schedule: %s: %s", persona, message)
        if self.on_failure is not None:
            await _log_hook_errors(f"reporting {persona}'s failure", self.on_failure(persona, message))
