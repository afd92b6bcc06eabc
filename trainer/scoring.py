"""Token log-likelihoods: the one loss definition training, validation and ranking share.

The loss is computed here from the logits rather than by the model's own ``labels=``
path, so "sum of the log-probabilities of the labelled tokens" means exactly the same
in the training loss, the validation perplexity and the response-ranking score.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F

from trainer.dataset import IGNORE_INDEX, Example, collate


def autocast_for(device: torch.device, dtype: torch.dtype):
    """bf16/fp16 autocast on CUDA (what QLoRA's compute dtype expects); nothing on CPU."""
    if device.type == "cuda" and dtype in (torch.bfloat16, torch.float16):
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


def row_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (sum of negative log-likelihood in nats, labelled token count), each of shape (batch,).

    ``logits`` is (batch, seq, vocab), ``labels`` (batch, seq). Position t predicts token t+1, so
    logits and labels are shifted by one; labels of IGNORE_INDEX (context, padding: the
    assistant-only loss mask) contribute nothing.
    """
    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:]
    losses = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)),
        shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view(shift_labels.shape)
    counts = (shift_labels != IGNORE_INDEX).sum(dim=1)
    return losses.sum(dim=1), counts


def batch_nll(model, batch: dict[str, torch.Tensor], device: torch.device, dtype: torch.dtype):
    """Forward one collated batch; returns per-row (nll sum, token count) on the device."""
    batch = {k: v.to(device) for k, v in batch.items()}
    with autocast_for(device, dtype):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return row_nll(logits, batch["labels"])


@torch.no_grad()
def mean_nll(
    model,
    examples: Sequence[Example],
    *,
    batch_size: int,
    pad_id: int,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[float, int]:
    """Token-weighted mean NLL over examples and the token count (perplexity = exp of the mean)."""
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    try:
        for k in range(0, len(examples), batch_size):
            sums, counts = batch_nll(model, collate(examples[k : k + batch_size], pad_id), device, dtype)
            total += float(sums.sum())
            tokens += int(counts.sum())
    finally:
        model.train(was_training)
    return (total / tokens if tokens else float("nan")), tokens


def perplexity(nll: float) -> float:
    return math.exp(nll) if nll == nll and nll < 700 else float("inf")  # nll == nll: not NaN


def chunks(items: Sequence, size: int) -> Iterable[Sequence]:
    for k in range(0, len(items), size):
        yield items[k : k + size]
