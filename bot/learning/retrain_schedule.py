"""Scheduled retraining: on a cron schedule, retrain each persona that gained enough newly
approved replies, in a separate process, then tell the running bot to hot-reload it.

This is the bot-side half: it counts approvals, starts the training command as a child
process and reloads the result. Only the child (``python -m trainer train --export-reviews``)
loads the training code: it exports the approved replies, then trains.

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
from bot.model.adapters import current_version, last_export_time, new_version_name, version_metadata
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
    status: str  # skipped | trained | failed
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

    async def _check(self, persona: str) -> Outcome:
        new = await self._count_new(persona)
        needed = self.settings.schedule.min_new_approved
        if new < needed:
            log.info("schedule: %s has %d new approved replies (needs %d)", persona, new, needed)
            return Outcome(persona, "skipped", new, message=f"{new} of {needed} new approved replies")

        version = new_version_name()
        run_dir = (self.runs_dir or self.default_runs_dir(persona)) / persona / version
        log.info("schedule: %s has %d new approved replies; training %s", persona, new, version)
        code, tail = await self._train(persona, version, run_dir / "schedule.log")

        if code != 0 or current_version(self.settings.paths.adapters_dir, persona) != version:
            message = f"training {version} failed (exit {code}); the previous adapter stays in use.\n{tail}"
            await self._report_failure(persona, message.strip())
            return Outcome(persona, "failed", new, version, message)
        meta = version_metadata(self.settings.paths.adapters_dir, persona, version) or {}
        reviewed = sum(
            f.get("dialogues", 0)
            for f in meta.get("data_files", [])
            if isinstance(f, dict) and f.get("exported_at")
        )
        log.info("schedule: %s trained %s on %d reviewed dialogues", persona, version, reviewed)
        if self.on_new_version is not None:
            error = await _log_hook_errors(f"reloading {persona}", self.on_new_version(persona, version))
            if error:
                message = f"trained {version}, but the bot could not load it: {error}"
                await self._report_failure(persona, message)
                return Outcome(persona, "failed", new, version, message)
        return Outcome(persona, "trained", new, version, f"{reviewed} reviewed dialogues")

    def train_command(self, persona: str, version: str) -> list[str]:
        """The child's command line: ``train`` exports the persona's approved replies first."""
        cmd = [self.python, "-m", "trainer"]
        if self.settings.source:
            cmd += ["--config", self.settings.source]
        cmd += ["train", "--persona", persona, "--version", version, "--export-reviews", "--no-progress"]
        if self.train_config is not None:
            cmd += ["--train-config", str(self.train_config)]
        if self.runs_dir is not None:
            cmd += ["--runs-dir", str(self.runs_dir)]
        return cmd + self.extra_train_args

    async def _train(self, persona: str, version: str, log_path: Path) -> tuple[int, str]:
        """Run ``train`` in a child process; its output goes to ``log_path``.

        Returns the exit code and the log's last LOG_TAIL_CHARS characters."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "wb") as fh:
            proc = await asyncio.create_subprocess_exec(
                *self.train_command(persona, version),
                stdout=fh,
                stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.DEVNULL,
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
