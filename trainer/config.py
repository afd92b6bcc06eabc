"""Training hyper-parameters: one TOML file (``trainer/default_train.toml`` unless told
otherwise), optional per-persona tables in it, then command-line overrides.

Precedence, lowest first: the dataclass defaults, the file's top-level keys, the file's
``[personas.<id>]`` table, ``--<key>`` flags. Every key is a flag, generated from the
dataclass, so the README, the TOML file and ``--help`` can never disagree about names.
"""

from __future__ import annotations

import argparse
import tomllib
import typing
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from bot.config import ConfigError, apply_overrides

DEFAULT_TRAIN_CONFIG = Path(__file__).resolve().parent / "default_train.toml"


class TrainConfigError(ConfigError):
    """A training setting that cannot be used; the message names the file or flag and the key."""


@dataclass(frozen=True)
class TrainConfig:
    # -- data ---------------------------------------------------------------
    # Normalized dialogue JSONL files (globs allowed); {data_dir} and {persona} are filled in.
    data: tuple[str, ...] = ("{data_dir}/{persona}.jsonl",)
    # Exported review decisions, mixed in when the file exists ("" to leave them out).
    reviewed: str = "{data_dir}/{persona}-reviewed.jsonl"
    # Copies of each reviewed dialogue: moderator-approved text is scarce and on-voice.
    reviewed_repeat: int = 1
    # Speakers that count as the persona in dialogues without a "persona" field.
    persona_speakers: tuple[str, ...] = ()
    val_fraction: float = 0.05
    max_length: int = 512
    # -- LoRA ---------------------------------------------------------------
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ()  # empty: by architecture (bot.model.loading.lora_target_modules)
    # -- optimisation -------------------------------------------------------
    epochs: int = 3
    max_steps: int = 0  # optimizer steps; 0: as many as the epochs take
    learning_rate: float = 2e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    max_grad_norm: float = 1.0
    batch_size: int = 4
    grad_accum: int = 4
    gradient_checkpointing: str = "auto"  # auto (on with CUDA) | on | off
    seed: int = 42
    # -- preference stage (trainer prefer) ----------------------------------
    # export-reviews --preferences output: approvals, rejections, blocks, edit pairs.
    preferences: str = "{data_dir}/{persona}-preferences.jsonl"
    beta: float = 0.1  # KTO/DPO: how far from the reference adapter the policy may move (TRL's beta)
    prefer_learning_rate: float = 5e-5
    prefer_epochs: int = 1  # passes over the preference data (max_steps, when set, wins)
    # -- promotion gate: a candidate may trail the serving version by at most this much ---------
    gate_loglik_tolerance: float = 0.1  # nats per token, mean log-likelihood of approved replies
    gate_margin_tolerance: float = 0.1  # nats per token, approved minus rejected, edit minus original
    gate_style_tolerance: float = 0.1  # share of probe-answer sentences with a style marker
    gate_probes: int = 10  # probes the gate answers with each version (from the top of probes.txt); 0: none
    # -- bookkeeping --------------------------------------------------------
    eval_every: int = 50  # optimizer steps between validation passes
    save_every: int = 100  # optimizer steps between resumable checkpoints
    log_every: int = 10
    runs_dir: str = "runs"

    def as_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


_CHOICES = {"gradient_checkpointing": ("auto", "on", "off")}
# One line of --help per key (the flag's default is the TOML file's value, shown beside it).
HELP: dict[str, str] = {
    "data": "dialogue JSONL files or globs; {data_dir} and {persona} are filled in",
    "reviewed": "exported review decisions, mixed in when the file exists ('' leaves them out)",
    "reviewed_repeat": "copies of each reviewed dialogue in the training split",
    "persona_speakers": "speakers that count as the persona in dialogues without a 'persona' field",
    "val_fraction": "share of dialogues held out for validation",
    "max_length": "tokens per example; longer dialogues are cut into windows",
    "r": "LoRA rank",
    "alpha": "LoRA alpha (the update is scaled by alpha / r)",
    "dropout": "LoRA dropout",
    "target_modules": "module names LoRA adapts (empty: chosen by the architecture)",
    "epochs": "passes over the training split",
    "max_steps": "stop after this many optimizer steps (0: as many as the epochs take)",
    "learning_rate": "peak learning rate (linear warm-up, then cosine decay)",
    "weight_decay": "AdamW weight decay",
    "warmup_ratio": "share of the steps spent warming up the learning rate",
    "max_grad_norm": "gradient clipping norm",
    "batch_size": "examples per forward pass",
    "grad_accum": "forward passes per optimizer step (effective batch: batch_size x grad_accum)",
    "gradient_checkpointing": "recompute activations to save memory (auto: on with CUDA)",
    "seed": "seed for the split, the shuffling and the LoRA initialisation",
    "preferences": "the preference export prefer trains on; {data_dir} and {persona} are filled in",
    "beta": "KTO/DPO beta: how far the policy may move from the reference adapter",
    "prefer_learning_rate": "peak learning rate of the preference stage",
    "prefer_epochs": "passes over the preference data (max_steps, when set, wins)",
    "gate_loglik_tolerance": "gate: how far (nats per token) a candidate may trail on approved replies' log-likelihood",
    "gate_margin_tolerance": "gate: how far (nats per token) a candidate may trail on each preference margin",
    "gate_style_tolerance": "gate: how far a candidate may trail on the probes' style-marker rate",
    "gate_probes": "probes the gate answers with each version (0: none)",
    "eval_every": "optimizer steps between validation passes",
    "save_every": "optimizer steps between resumable checkpoints",
    "log_every": "optimizer steps between log lines",
    "runs_dir": "where TensorBoard logs and checkpoints go: <runs_dir>/<persona>/<version>/",
}
_METAVARS = {int: "N", float: "X", str: "TEXT"}


def _hints() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def _apply(config: TrainConfig, values: dict[str, Any], where: str) -> TrainConfig:
    try:
        return apply_overrides(config, values, where)
    except ConfigError as exc:
        raise TrainConfigError(str(exc)) from None


def validate(config: TrainConfig) -> TrainConfig:
    checks = {
        "r": config.r >= 1,
        "alpha": config.alpha >= 1,
        "dropout": 0 <= config.dropout < 1,
        "epochs": config.epochs >= 1,
        "max_steps": config.max_steps >= 0,
        "learning_rate": config.learning_rate > 0,
        "warmup_ratio": 0 <= config.warmup_ratio < 1,
        "batch_size": config.batch_size >= 1,
        "grad_accum": config.grad_accum >= 1,
        "max_length": config.max_length >= 16,
        "val_fraction": 0 <= config.val_fraction < 1,
        "eval_every": config.eval_every >= 1,
        "save_every": config.save_every >= 1,
        "log_every": config.log_every >= 1,
        "reviewed_repeat": config.reviewed_repeat >= 0,
        "beta": config.beta > 0,
        "prefer_learning_rate": config.prefer_learning_rate > 0,
        "prefer_epochs": config.prefer_epochs >= 1,
        "gate_loglik_tolerance": config.gate_loglik_tolerance >= 0,
        "gate_margin_tolerance": config.gate_margin_tolerance >= 0,
        "gate_style_tolerance": 0 <= config.gate_style_tolerance <= 1,
        "gate_probes": config.gate_probes >= 0,
    }
    for key, ok in checks.items():
        if not ok:
            raise TrainConfigError(f"{key} = {getattr(config, key)!r} is out of range")
    for key, choices in _CHOICES.items():
        if getattr(config, key) not in choices:
            raise TrainConfigError(f"{key} must be one of {', '.join(choices)}")
    return config


def load_train_config(
    path: str | Path | None, persona_id: str, overrides: dict[str, Any] | None = None
) -> TrainConfig:
    """The effective config for one persona: file, then its persona table, then overrides."""
    config_path = Path(path) if path else DEFAULT_TRAIN_CONFIG
    try:
        raw = tomllib.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TrainConfigError(f"train config {config_path} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise TrainConfigError(f"{config_path}: not valid TOML: {exc}") from None
    per_persona = raw.pop("personas", {})
    if not isinstance(per_persona, dict):
        raise TrainConfigError(f"{config_path}: [personas] must hold one table per persona id")
    config = _apply(TrainConfig(), raw, str(config_path))
    table = per_persona.get(persona_id, {})
    if not isinstance(table, dict):
        raise TrainConfigError(f"{config_path}: [personas.{persona_id}] must be a table")
    config = _apply(config, table, f"{config_path} [personas.{persona_id}]")
    config = _apply(config, overrides or {}, "command line")
    return validate(config)


def add_override_arguments(parser: argparse.ArgumentParser, only: tuple[str, ...] | None = None) -> None:
    """One ``--key`` flag per config field (or per field in ``only``), all defaulting to "not given",
    each with its ``HELP`` line and the built-in default (what trainer/default_train.toml sets)."""
    group = parser.add_argument_group(
        "training config overrides (default: the --train-config file's value; the values shown "
        "are trainer/default_train.toml's, before its [personas.<id>] tables)"
    )
    hints = _hints()
    defaults = TrainConfig()
    for f in fields(TrainConfig):
        if only is not None and f.name not in only:
            continue
        flag = "--" + f.name.replace("_", "-")
        hint = hints[f.name]
        default = getattr(defaults, f.name)
        shown = (" ".join(map(str, default)) or "none") if isinstance(default, tuple) else default
        text = f"{HELP[f.name]} (default: {shown})".replace("%", "%%")
        if typing.get_origin(hint) is tuple:
            group.add_argument(
                flag, dest=f"cfg_{f.name}", nargs="+", metavar="VALUE", default=None, help=text
            )
        else:
            group.add_argument(
                flag,
                dest=f"cfg_{f.name}",
                type=hint,
                choices=_CHOICES.get(f.name),
                default=None,
                metavar=None if f.name in _CHOICES else _METAVARS[hint],
                help=text,
            )


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    return {
        key[4:]: value for key, value in vars(args).items() if key.startswith("cfg_") and value is not None
    }
