"""The preference stage: KTO (approve/reject labels) or DPO (edit pairs) with TRL and PEFT,
refining a persona's adapter from moderators' decisions.

It starts from an existing adapter version (the persona's CURRENT unless told otherwise) and
trains that adapter further; TRL's trainers, given a PEFT model that already carries an adapter,
copy it into a frozen ``ref`` adapter and compute the reference log-probabilities with it, so
the reference is the starting adapter, not the bare base model (TRL 1.16, ``KTOTrainer`` /
``DPOTrainer.__init__``: "a PEFT model with a pretrained adapter").

The tokens are the project's (:mod:`trainer.preference_data`): TRL 1.16 has no public way to
take a tokenized dataset, so the two subclasses below override ``_prepare_dataset``, the one
private method that tokenizes text, to pass the project's token ids through. That is why TRL is
pinned to 1.16.x in pyproject.toml; ``tests/test_prefer.py`` checks that the batches TRL forms
hold exactly the project's ids and that its KTO KL pairing is TRL's. Everything else (the loss,
the reference, the optimizer and schedule) is TRL's own.

The result is published like ``train``'s, as a candidate (``adapters/.staging`` → rename), with
the method, beta, class weights, counts and the data file's SHA-256 in ``metadata.json``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bot.config import Settings
from bot.model.adapters import (
    current_version,
    is_version_name,
    new_version_name,
    publish_version,
    version_dir,
)
from bot.model.loading import load_base_model
from bot.model.rollout import RolloutError, check_version_usable
from bot.ops.commandline import module_command
from personas.card import PersonaCard, check_adapter_base
from personas.render import PromptRenderer, TokenizerFacts
from trainer.config import TrainConfig
from trainer.dataset import DataError, ExampleEncoder, read_export_time, sha256_file
from trainer.preference_data import build_preference_set, check_trainable, kto_class_weights
from trainer.preferences import read_preferences
from trainer.train import _package_versions, training_model_settings

log = logging.getLogger(__name__)


@dataclass
class PreferResult:
    persona: str
    version: str
    path: Path
    start_version: str
    method: str
    metrics: dict[str, Any]


def _kto_kl_rotation(batch: dict[str, list]) -> dict[str, list]:
    """TRL's KL completions for KTO: within each batch, completion i is paired with prompt i+1
    ((x_1, y_n), (x_2, y_1), ...), as ``KTOTrainer._prepare_dataset`` builds them in TRL 1.16."""
    ids = batch["completion_ids"]
    batch["KL_completion_ids"] = [ids[-1], *ids[:-1]]
    return batch


def _trainer_classes():
    """KTO and DPO trainers that take the project's token ids (see the module docstring)."""
    from trl import DPOTrainer, KTOTrainer

    class ProjectTokensKTOTrainer(KTOTrainer):
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            if self.calculate_KL:
                dataset = dataset.map(
                    _kto_kl_rotation, batched=True, batch_size=args.per_device_train_batch_size
                )
            return dataset

    class ProjectTokensDPOTrainer(DPOTrainer):
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

    return ProjectTokensKTOTrainer, ProjectTokensDPOTrainer


def resolve_start(settings: Settings, persona_id: str, start: str | None) -> tuple[str, Path]:
    """The version to start from (``start``, else CURRENT) and its folder.

    Raises DataError for a persona with no adapter yet or a version that cannot be served.
    """
    version = start or current_version(settings.paths.adapters_dir, persona_id)
    if version is None:
        raise DataError(
            f"{persona_id} has no adapter yet: train one first "
            f"({module_command(f'trainer train --persona {persona_id}')}); "
            "the preference stage refines an adapter and keeps it as its reference"
        )
    try:
        return version, check_version_usable(settings.paths.adapters_dir, persona_id, version)
    except RolloutError as exc:
        raise DataError(str(exc)) from None


def load_lines(path: Path) -> list[dict[str, Any]]:
    """The export's lines; DataError when it is missing or malformed."""
    if not path.is_file():
        raise DataError(
            f"no preference export at {path}: run "
            + module_command("trainer export-reviews --persona ID --preferences")
        )
    try:
        return read_preferences(path)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(str(exc)) from None


def training_arguments(cfg: TrainConfig, method: str, out_dir: Path, device, dtype=None, **extra):
    """TRL's KTOConfig / DPOConfig from the project's training config; on CUDA, mixed precision
    in the loaded model's compute dtype (bf16 or fp16, as QLoRA computes)."""
    import torch
    from trl import DPOConfig, KTOConfig

    common = dict(
        output_dir=str(out_dir),
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.prefer_learning_rate,
        num_train_epochs=cfg.prefer_epochs,
        max_steps=cfg.max_steps or -1,
        warmup_steps=cfg.warmup_ratio,  # transformers 5: a float in [0, 1) is a share of the steps
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm if cfg.max_grad_norm > 0 else 0.0,
        lr_scheduler_type="cosine",
        beta=cfg.beta,
        max_length=cfg.max_length,
        seed=cfg.seed,
        logging_steps=cfg.log_every,
        save_strategy="no",
        report_to=[],
        use_cpu=device.type == "cpu",
        bf16=device.type == "cuda" and dtype == torch.bfloat16,
        fp16=device.type == "cuda" and dtype == torch.float16,
        gradient_checkpointing=cfg.gradient_checkpointing == "on"
        or (cfg.gradient_checkpointing == "auto" and device.type == "cuda"),
        gradient_checkpointing_kwargs={"use_reentrant": False},
        disable_tqdm=True,
        **extra,
    )
    if method == "kto":
        return KTOConfig(train_sampling_strategy="sequential", **common)
    return DPOConfig(**common)


def prefer(
    settings: Settings,
    card: PersonaCard,
    cfg: TrainConfig,
    *,
    method: str,
    data_path: Path,
    start: str | None = None,
    version: str | None = None,
) -> PreferResult:
    """Train ``card``'s adapter (``start``, default CURRENT) on a preference export and publish it
    as a candidate (CURRENT untouched). Raises DataError for data or a start version that cannot
    be used (one line each), FileExistsError when ``version`` exists, CardError for an adapter
    made for another base model.
    """
    from datasets import Dataset
    from peft import PeftModel, prepare_model_for_kbit_training

    started = datetime.now(UTC)
    version = version or new_version_name(started)
    if not is_version_name(version):
        raise ValueError(f"bad version name {version!r} (letters, digits, '.', '_', '-')")
    if version_dir(settings.paths.adapters_dir, card.id, version).exists():
        raise FileExistsError(f"adapter version {version} of {card.id} already exists")
    start_version, start_path = resolve_start(settings, card.id, start)
    lines = load_lines(data_path)
    check_trainable(lines, method)  # before the model loads: bad data is told at once

    loaded = load_base_model(training_model_settings(settings.model))
    check_adapter_base(card, start_path, loaded.base_model)
    tokenizer = loaded.tokenizer
    if tokenizer.pad_token_id is None:  # TRL's collators pad with it; padding is masked out anyway
        tokenizer.pad_token = tokenizer.eos_token
    encoder = ExampleEncoder(
        PromptRenderer(card, TokenizerFacts.from_tokenizer(tokenizer)), tokenizer, cfg.max_length
    )
    data = build_preference_set(lines, encoder, method, cfg.seed)
    weights: dict[str, float] = {}
    if method == "kto":
        desirable_weight, undesirable_weight = kto_class_weights(data.desirable, data.undesirable)
        weights = {"desirable_weight": desirable_weight, "undesirable_weight": undesirable_weight}
    log.info(
        "%s: %s from %s on %d rows (%d desirable, %d undesirable, %d pairs)",
        card.id, method, start_version, len(data.rows), data.desirable, data.undesirable, data.pairs,
    )  # fmt: skip

    model = loaded.model
    if loaded.quantization != "none":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    model = PeftModel.from_pretrained(model, str(start_path), is_trainable=True)
    run_dir = Path(cfg.runs_dir) / card.id / version
    args = training_arguments(cfg, method, run_dir, loaded.device, loaded.dtype, **weights)
    kto_cls, dpo_cls = _trainer_classes()
    trainer = (kto_cls if method == "kto" else dpo_cls)(
        model=model, args=args, train_dataset=Dataset.from_list(data.rows), processing_class=tokenizer
    )
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # its dicts on stdout: the command prints its own summary
    t0 = time.perf_counter()
    output = trainer.train()
    seconds = time.perf_counter() - t0
    history = [h for h in trainer.state.log_history if "loss" in h]

    exported_at = read_export_time(data_path)
    metrics = {
        "steps": output.global_step,
        "train_loss": output.training_loss if math.isfinite(output.training_loss) else None,
        "first_logged": history[0] if history else None,
        "last_logged": history[-1] if history else None,
        "train_seconds": round(seconds, 2),
    }
    metadata = {
        "persona": card.id,
        "version": version,
        "stage": "preference",
        "method": method,
        "beta": cfg.beta,
        "reference": start_version,  # the starting adapter, frozen: TRL's "ref" copy of it
        "start_version": start_version,
        "base_model": loaded.base_model,
        "architecture": loaded.architecture,
        "device": str(loaded.device),
        "quantization": loaded.quantization,
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "data_files": [
            {
                "path": str(data_path),
                "sha256": sha256_file(data_path),
                "lines": len(lines),
                "exported_at": exported_at,
            }
        ],
        "reviews_exported_at": exported_at,
        "counts": {
            "rows": len(data.rows),
            "desirable": data.desirable,
            "undesirable": data.undesirable,
            "pairs": data.pairs,
            "truncated": data.truncated,
        },
        # TRL's KTO guidance: weighted desirable / undesirable within [1, 4/3] (KTO paper, Eq. 8).
        "class_weights": weights or None,
        "hyperparameters": {
            **cfg.as_dict(),
            "learning_rate": cfg.prefer_learning_rate,
            "epochs": cfg.prefer_epochs,
        },
        "metrics": metrics,
        "card_sha256": sha256_file(card.source) if card.source else None,
        "packages": {**_package_versions(), "trl": _trl_version()},
    }
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    path = publish_version(
        settings.paths.adapters_dir,
        card.id,
        version,
        lambda folder: unwrapped.save_pretrained(folder, selected_adapters=["default"]),
        metadata,
        activate=False,
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "prefer.json").write_text(
        json.dumps({"metadata": metadata, "log": trainer.state.log_history}, ensure_ascii=False, indent=1),
        encoding="utf-8",
    )
    return PreferResult(card.id, version, path, start_version, method, metrics)


def _trl_version() -> str:
    import trl

    return trl.__version__
