"""Training checkpoints: where a run's folder is, how a checkpoint is written and read back.

A checkpoint (``<runs_dir>/<persona>/<version>/checkpoint/``) holds the adapter weights, the
optimizer, scheduler and RNG states, the loop position (:class:`TrainState`) and the config the
run started with, so ``train --resume`` continues exactly where it stopped.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from bot.ops.filemode import respect_umask
from trainer.config import TrainConfig, validate
from trainer.jsonfile import JsonFileError, read_json

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"


@dataclass
class TrainState:
    """Where the loop is; saved with every checkpoint."""

    step: int = 0  # optimizer steps done
    epoch: int = 0
    window: int = 0  # accumulation windows done in this epoch
    tokens_seen: int = 0
    initial_val_loss: float | None = None
    last_val_loss: float | None = None
    resumed_from_step: int | None = None


def run_dir_for(cfg: TrainConfig, persona_id: str, version: str) -> Path:
    return Path(cfg.runs_dir) / persona_id / version


def find_resumable(cfg: TrainConfig, persona_id: str, resume: str) -> Path:
    """The run folder to resume: ``last`` (newest with a checkpoint), a version name or a path."""
    if resume == "last":
        root = Path(cfg.runs_dir) / persona_id
        runs = sorted(p for p in root.glob("*") if (p / CHECKPOINT_DIR / "state.json").is_file())
        if not runs:
            raise FileNotFoundError(f"no checkpoint to resume under {root}")
        return runs[-1]
    path = Path(resume)
    if not (path / CHECKPOINT_DIR).is_dir():
        path = run_dir_for(cfg, persona_id, resume)
    if not (path / CHECKPOINT_DIR / "state.json").is_file():
        raise FileNotFoundError(f"no checkpoint at {path / CHECKPOINT_DIR}")
    return path


def checkpoint_config(run_dir: Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The config a checkpointed run was started with, plus explicit command-line overrides."""
    state_path = run_dir / CHECKPOINT_DIR / "state.json"
    saved = read_json(state_path).get("config")
    if not isinstance(saved, dict):
        raise JsonFileError(f"{state_path}: no 'config' object; the checkpoint is incomplete")
    cfg = TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()})
    return validate(replace(cfg, **(overrides or {})))


def save_checkpoint(
    run_dir: Path, model, optimizer, scheduler, state: TrainState, cfg: TrainConfig, files
) -> None:
    """Write the checkpoint beside the old one, then swap: a crash mid-write keeps the old one."""
    tmp = run_dir / (CHECKPOINT_DIR + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        },
        tmp / "trainer_state.pt",
    )
    (tmp / "state.json").write_text(
        json.dumps(
            {"state": asdict(state), "config": cfg.as_dict(), "data_files": [asdict(f) for f in files]},
            ensure_ascii=False,
            indent=1,
        ),
        encoding="utf-8",
    )
    respect_umask(tmp)  # safetensors writes through a 0600 temp file
    final = run_dir / CHECKPOINT_DIR
    old = run_dir / (CHECKPOINT_DIR + ".old")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(run_dir: Path, model, optimizer, scheduler, files) -> TrainState:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    ckpt = run_dir / CHECKPOINT_DIR
    saved = read_json(ckpt / "state.json")
    was = {f["path"]: f["sha256"] for f in saved.get("data_files", [])}
    now = {f.path: f.sha256 for f in files}
    if was != now:
        log.warning("the data files changed since the checkpoint; the rest of the run sees the new data")
    set_peft_model_state_dict(model, load_file(ckpt / "adapter_model.safetensors"))
    blob = torch.load(ckpt / "trainer_state.pt", weights_only=False)
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    torch.set_rng_state(blob["rng"])
    if blob.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(blob["cuda_rng"])
    state = TrainState(**saved["state"])
    state.resumed_from_step = state.step
    return state
