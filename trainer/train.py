"""The training run: LoRA (QLoRA on CUDA) on one persona's dialogues, in one readable loop.

Why a plain torch loop rather than ``transformers.Trainer``: the job is small (one
adapter, one loss, one schedule) and its rules are ours: the loss is computed from the
same function validation and ranking use, a checkpoint is exactly what resuming needs,
and a finished run is published by rename-then-pointer. Trainer would own the loop, its
checkpoint layout and its logging callbacks, and each of those rules would become an
override of its internals. The loop below reads top to bottom in one sitting.

Publishing (``bot.model.adapters.publish_version``, which owns the on-disk layout): the adapter
is written under ``adapters/.staging/``, renamed into
``adapters/<persona>/<version>/`` when complete, and only then is the persona's
CURRENT pointer moved. Any failure or interrupt before that leaves the adapter in use
untouched (an interrupt also leaves a checkpoint to ``--resume`` from).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from bot.config import ModelSettings, Settings
from bot.model.adapters import is_version_name, new_version_name, publish_version, version_dir
from bot.model.loading import (
    LoadedModel,
    load_base_model,
    lora_target_modules,
    resolve_device,
    resolve_precision,
)
from bot.ops.commandline import module_command
from personas.card import PersonaCard
from personas.render import PromptRenderer, TokenizerFacts
from trainer.checkpoints import (
    CHECKPOINT_DIR,
    TrainState,
    load_checkpoint,
    run_dir_for,
    save_checkpoint,
)
from trainer.config import TrainConfig
from trainer.dataset import (
    DataBundle,
    DataError,
    batches,
    build_datasets,
    check_dialogue_files,
    collate,
    expand_paths,
    sha256_file,
)
from trainer.scoring import batch_nll, mean_nll, perplexity

log = logging.getLogger(__name__)


class TrainingInterrupted(RuntimeError):
    """Stopped by the user; a checkpoint was saved and the adapter in use is untouched."""


@dataclass
class TrainResult:
    persona: str
    version: str
    path: Path
    metrics: dict[str, Any]
    activated: bool


# -- data -------------------------------------------------------------------


def resolve_data(settings: Settings, persona_id: str, cfg: TrainConfig) -> tuple[list[Path], Path | None]:
    """The data files and the reviewed file (None when absent or disabled)."""
    data_dir = settings.paths.data_dir
    files = expand_paths(cfg.data, data_dir=data_dir, persona=persona_id) if cfg.data else []
    reviewed = None
    if cfg.reviewed:
        candidate = Path(cfg.reviewed.format(data_dir=data_dir, persona=persona_id))
        if candidate.is_file() and candidate not in files:
            reviewed = candidate
    if not files and reviewed is None:
        raise DataError(f"no training data for {persona_id!r}: give files with --data")
    return files, reviewed


# -- model ------------------------------------------------------------------


def _wants_checkpointing(cfg: TrainConfig, device: torch.device) -> bool:
    return cfg.gradient_checkpointing == "on" or (
        cfg.gradient_checkpointing == "auto" and device.type == "cuda"
    )


def prepare_lora_model(loaded: LoadedModel, cfg: TrainConfig):
    """Wrap the base model with a fresh LoRA adapter; QLoRA's k-bit preparation when quantized."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    model = loaded.model
    checkpointing = _wants_checkpointing(cfg, loaded.device)
    if loaded.quantization != "none":
        # Casts norms to fp32, freezes the quantized weights and enables input grads so
        # checkpointed blocks still backpropagate into the adapters.
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    elif checkpointing:
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x's name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        model.enable_input_require_grads()
    model.config.use_cache = False  # the cache is useless in training and clashes with checkpointing
    targets = list(cfg.target_modules) or lora_target_modules(model)
    lora = LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora), targets


def training_model_settings(model: ModelSettings) -> ModelSettings:
    """The bot's model settings, but full precision on CPU.

    bitsandbytes' CPU 4-bit kernels have no backward pass: the loss would never reach the
    adapter. A LoRA trained on the full-precision base serves the 4-bit base just as well.
    """
    device = resolve_device(model.device)
    quant, _ = resolve_precision(model, device)
    if device.type == "cpu" and quant != "none":
        log.info("training on CPU: plain LoRA on the full-precision base (4-bit has no CPU backward)")
        return replace(model, quantization="none")
    return model


def _check_gradients(model) -> None:
    """Fail fast if the first backward pass left every adapter weight without a gradient."""
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    if not any(g is not None and bool(g.abs().sum() > 0) for g in grads):
        raise RuntimeError(
            "no gradient reached the LoRA weights; this model/quantization/device combination cannot "
            "be trained (try model.quantization = 'none')"
        )


def _lr_lambda(total_steps: int, warmup_ratio: float) -> Callable[[int], float]:
    warmup = int(total_steps * warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


# -- checkpoints ------------------------------------------------------------


def _package_versions() -> dict[str, str]:
    import peft
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}


# -- the run ----------------------------------------------------------------


def train(
    settings: Settings,
    card: PersonaCard,
    cfg: TrainConfig,
    *,
    resume: Path | None = None,
    version: str | None = None,
    activate: bool = False,
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train one adapter version for ``card``; see the module docstring for the guarantees.

    The version is published as a candidate; ``activate`` moves CURRENT to it without the
    promotion gate (the CLI never does: it runs :func:`trainer.promotion.gate_and_promote`).

    ``on_step(step)`` runs after every optimizer step (tests use it to interrupt a run).
    """
    from torch.utils.tensorboard import SummaryWriter
    from tqdm.auto import tqdm

    started = datetime.now(UTC)
    if resume is not None:
        version = resume.name
    elif version is None:
        version = new_version_name(started)
    elif not is_version_name(version):
        raise ValueError(f"bad version name {version!r} (letters, digits, '.', '_', '-')")
    run_dir = resume if resume is not None else run_dir_for(cfg, card.id, version)
    if version_dir(settings.paths.adapters_dir, card.id, version).exists():
        raise FileExistsError(f"adapter version {version} of {card.id} already exists")

    data_files, reviewed = resolve_data(settings, card.id, cfg)
    check_dialogue_files([*data_files, *([reviewed] if reviewed else [])])  # before minutes of loading
    torch.manual_seed(cfg.seed)
    loaded = load_base_model(training_model_settings(settings.model))
    tokenizer = loaded.tokenizer
    renderer = PromptRenderer(card, TokenizerFacts.from_tokenizer(tokenizer))
    data: DataBundle = build_datasets(
        card,
        renderer,
        tokenizer,
        data_files,
        reviewed,
        persona_speakers=cfg.persona_speakers,
        max_length=cfg.max_length,
        val_fraction=cfg.val_fraction,
        seed=cfg.seed,
        reviewed_repeat=cfg.reviewed_repeat,
    )
    if not data.train:
        raise DataError("no training examples: no dialogue has a persona turn (check persona_speakers)")
    log.info(
        "%s: %d train / %d validation examples (%d trainable tokens) from %d files",
        card.id,
        len(data.train),
        len(data.val),
        data.train_stats.trainable_tokens,
        len(data.files),
    )

    model, targets = prepare_lora_model(loaded, cfg)
    model.train()
    device, dtype = loaded.device, loaded.dtype
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    windows_per_epoch = math.ceil(math.ceil(len(data.train) / cfg.batch_size) / cfg.grad_accum)
    total_steps = cfg.max_steps or windows_per_epoch * cfg.epochs  # max_steps wins, as in transformers
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(total_steps, cfg.warmup_ratio))

    state = TrainState()
    if resume is not None:
        state = load_checkpoint(run_dir, model, optimizer, scheduler, data.files)
        log.info("resumed %s at step %d of %d", version, state.step, total_steps)
    run_dir.mkdir(parents=True, exist_ok=True)
    writer = SummaryWriter(log_dir=str(run_dir), purge_step=state.step or None)
    if state.step == 0:
        writer.add_text("config", "```\n" + json.dumps(cfg.as_dict(), ensure_ascii=False, indent=1) + "\n```")

    def validate_now() -> float | None:
        if not data.val:
            return None
        loss, _ = mean_nll(
            model, data.val, batch_size=cfg.batch_size, pad_id=pad_id, device=device, dtype=dtype
        )
        writer.add_scalar("val/loss", loss, state.step)
        writer.add_scalar("val/perplexity", perplexity(loss), state.step)
        state.last_val_loss = loss
        return loss

    if state.initial_val_loss is None:
        state.initial_val_loss = validate_now()
    bar = tqdm(
        total=total_steps, initial=state.step, desc=f"train {card.id}", disable=not progress, unit="step"
    )
    t0 = time.perf_counter()
    recent: list[float] = []
    try:
        # An epoch may end mid-window (fewer batches than grad_accum): that window still steps.
        while state.step < total_steps:
            epoch_batches = batches(data.train, cfg.batch_size, cfg.seed, state.epoch)
            windows = [
                epoch_batches[k : k + cfg.grad_accum] for k in range(0, len(epoch_batches), cfg.grad_accum)
            ]
            for window in windows[state.window :]:
                n_tokens = sum(e.trainable_tokens for b in window for e in b)
                window_loss = 0.0
                for micro in window:
                    sums, _ = batch_nll(model, collate(micro, pad_id), device, dtype)
                    # Sum over the whole window's tokens, then one division: every token weighs
                    # the same however the window was cut into micro-batches.
                    loss = sums.sum() / max(1, n_tokens)
                    loss.backward()
                    window_loss += float(loss.detach())
                if state.step == (state.resumed_from_step or 0):
                    _check_gradients(model)
                if cfg.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                state.step += 1
                state.window += 1
                state.tokens_seen += n_tokens
                recent.append(window_loss)
                bar.update(1)
                if state.step % cfg.log_every == 0 or state.step == total_steps:
                    avg = sum(recent) / len(recent)
                    writer.add_scalar("train/loss", avg, state.step)
                    writer.add_scalar("train/lr", scheduler.get_last_lr()[0], state.step)
                    bar.set_postfix(loss=f"{avg:.3f}", val=f"{state.last_val_loss or float('nan'):.3f}")
                    recent.clear()
                if state.step % cfg.eval_every == 0 and state.step < total_steps:
                    validate_now()
                if state.step % cfg.save_every == 0 and state.step < total_steps:
                    save_checkpoint(run_dir, model, optimizer, scheduler, state, cfg, data.files)
                if on_step is not None:
                    on_step(state.step)
                if state.step >= total_steps:
                    break
            else:
                state.epoch += 1
                state.window = 0
    except KeyboardInterrupt:
        save_checkpoint(run_dir, model, optimizer, scheduler, state, cfg, data.files)
        writer.close()
        bar.close()
        raise TrainingInterrupted(
            f"interrupted at step {state.step}; the adapter in use is unchanged. "
            f"Resume with: {module_command(f'trainer train --persona {card.id} --resume {version}')}"
        ) from None
    bar.close()

    final_val = validate_now()
    seconds = time.perf_counter() - t0
    writer.close()
    exported = [f.exported_at for f in data.files if f.exported_at]
    metrics = {
        "steps": state.step,
        "epochs": round(state.step / windows_per_epoch, 3),
        "tokens_seen": state.tokens_seen,
        "initial_val_loss": state.initial_val_loss,
        "val_loss": final_val,
        "val_perplexity": perplexity(final_val) if final_val is not None else None,
        "train_seconds": round(seconds, 2),
    }
    metadata = {
        "persona": card.id,
        "version": version,
        "base_model": loaded.base_model,
        "architecture": loaded.architecture,
        "device": str(device),
        "quantization": loaded.quantization,
        "dtype": str(dtype).removeprefix("torch."),
        "method": "qlora" if loaded.quantization != "none" else "lora",
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "resumed_from_step": state.resumed_from_step,
        "data_files": [asdict(f) for f in data.files],
        # The newest review export this version learned from: the scheduler counts approvals after it.
        "reviews_exported_at": max(exported) if exported else None,
        "data": {"train": asdict(data.train_stats), "validation": asdict(data.val_stats)},
        "hyperparameters": {**cfg.as_dict(), "target_modules": targets},
        "metrics": metrics,
        "card_sha256": sha256_file(card.source) if card.source else None,
        "packages": _package_versions(),
    }
    path = publish_version(
        settings.paths.adapters_dir, card.id, version, model.save_pretrained, metadata, activate=activate
    )
    (run_dir / "metadata.json").write_text(
        json.dumps(metadata, ensure_ascii=False, indent=1), encoding="utf-8"
    )
    with contextlib.suppress(OSError):
        shutil.rmtree(run_dir / CHECKPOINT_DIR)  # published: the checkpoint has done its job
    log.info("%s: saved adapter %s (%s)", card.id, version, "now current" if activate else "not activated")
    return TrainResult(card.id, version, path, metrics, activate)
