"""Preference lines → token ids, with the project's renderer and encoder.

A line's prompt is the bot's rendered prompt; its completion is rendered as ``train`` renders a
persona turn (sanitized, then the template's turn end) and both are encoded by the same
:class:`trainer.dataset.ExampleEncoder`: the prompt through the bot's ``encode_prompt`` (BOS as
the bot adds it, never rinna's trailing ``</s>``), the completion as a continuation. So the
model is taught on exactly the tokens it sees when it serves, and TRL is handed token ids
rather than text it would tokenize its own way (TRL adds EOS to each completion and tokenizes
prompt and completion separately, which with rinna's tokenizer puts ``</s>`` before the reply).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from personas.render import Segment
from trainer.dataset import IGNORE_INDEX, DataError, Example, ExampleEncoder

METHODS = ("kto", "dpo")
# TRL's KTO guidance (TRL docs, KTOTrainer "imbalanced data"; KTO paper, Ethayarajh et al. 2024,
# Eq. 8): keep desirable_weight * n_desirable / (undesirable_weight * n_undesirable) within
# [1, 4/3]. We aim at the middle of that range, 7/6, so rounding never leaves it.
KTO_TARGET_RATIO = 7 / 6


@dataclass(frozen=True)
class Encoded:
    """One prompt and one completion as token ids (prompt first, then the completion)."""

    prompt_ids: list[int]
    completion_ids: list[int]

    def example(self, key: str) -> Example:
        """The pair as a training example whose labels are the completion only."""
        ids = self.prompt_ids + self.completion_ids
        return Example(ids, [IGNORE_INDEX] * len(self.prompt_ids) + self.completion_ids, key)


@dataclass(frozen=True)
class PreferenceSet:
    """Encoded rows ready for TRL: ``rows`` in TRL's tokenized column names."""

    method: str
    rows: list[dict[str, Any]]
    desirable: int
    undesirable: int
    pairs: int
    truncated: int


def encode(encoder: ExampleEncoder, prompt: str, completion: str) -> Encoded:
    """The prompt and a completion as the trainer tokenizes a persona turn; left-truncated
    (the prompt's start goes first) to the encoder's ``max_length``, as ``train`` cuts a window."""
    renderer = encoder.renderer
    segments = [Segment(prompt, False), Segment(renderer.sanitize(completion) + renderer.turn_end, True)]
    ids, labels = encoder.encode_segments(segments)
    start = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(ids))
    prompt_ids, completion_ids = ids[:start], ids[start:]
    room = encoder.max_length - len(completion_ids)
    if room < 1:  # a completion longer than the window keeps its start and one prompt token
        return Encoded(prompt_ids[-1:], completion_ids[: encoder.max_length - 1])
    return Encoded(prompt_ids[-room:], completion_ids)


def kto_class_weights(desirable: int, undesirable: int) -> tuple[float, float]:
    """(desirable_weight, undesirable_weight) for KTO, per TRL's guidance (see KTO_TARGET_RATIO):
    the larger class is weighted down so the weighted ratio is 7/6; equal-ish classes keep 1.0."""
    if desirable < 1 or undesirable < 1:
        raise ValueError("both classes are needed to weight them")
    ratio = desirable / undesirable
    if 1.0 <= ratio <= 4 / 3:
        return 1.0, 1.0
    if ratio > 4 / 3:
        return round(KTO_TARGET_RATIO / ratio, 4), 1.0
    return 1.0, round(ratio / KTO_TARGET_RATIO, 4)


def check_trainable(lines: Sequence[dict[str, Any]], method: str) -> None:
    """Raise DataError, in one line, when ``lines`` cannot train ``method``: an unknown method,
    no lines, one class only (KTO), no edit pairs (DPO). Cheap: run it before loading a model."""
    if method not in METHODS:
        raise DataError(f"unknown method {method!r} (kto or dpo)")
    if not lines:
        raise DataError("the preference export has no decisions yet (moderate some replies, then export again)")
    pairs = sum("chosen" in line for line in lines)
    if method == "kto":
        good = pairs + sum(bool(line.get("label")) for line in lines if "chosen" not in line)
        bad = pairs + sum(not line.get("label") for line in lines if "chosen" not in line)
        if not good or not bad:
            raise DataError(
                f"KTO needs approved and rejected replies; the export has {good} desirable and {bad} "
                "undesirable (rejected, blocked or edited) ones: wait for more decisions"
            )
    elif not pairs:
        raise DataError(
            "DPO learns from edits, and the export has no edit pairs; use --method kto for approvals and rejections"
        )


def build_preference_set(
    lines: Sequence[dict[str, Any]], encoder: ExampleEncoder, method: str, seed: int
) -> PreferenceSet:
    """Encode export lines for ``method``: KTO takes every line (an edit pair as one desirable and
    one undesirable completion, as TRL's ``unpair_preference_dataset`` does), DPO only edit pairs.

    Rows are shuffled with ``seed`` (KTO's trainer reads them in order, since its KL estimate
    pairs neighbours). Raises DataError, in one line, when the data cannot train ``method``:
    no lines, one class only (KTO), no edit pairs (DPO).
    """
    check_trainable(lines, method)
    rows: list[dict[str, Any]] = []
    truncated = 0

    def enc(prompt: str, completion: str) -> Encoded:
        nonlocal truncated
        e = encode(encoder, prompt, completion)
        truncated += len(e.prompt_ids) + len(e.completion_ids) >= encoder.max_length
        return e

    if method == "kto":
        for line in lines:
            if "chosen" in line:
                options = [(line["chosen"], True), (line["rejected"], False)]
            else:
                options = [(line["completion"], bool(line["label"]))]
            for completion, label in options:
                e = enc(line["prompt"], completion)
                rows.append({"prompt_ids": e.prompt_ids, "completion_ids": e.completion_ids, "label": label})
        good = sum(r["label"] for r in rows)
        bad = len(rows) - good
        pairs = sum("chosen" in line for line in lines)
    else:
        for line in lines:
            if "chosen" not in line:
                continue
            chosen, rejected = enc(line["prompt"], line["chosen"]), enc(line["prompt"], line["rejected"])
            # Both are ends of the same prompt's ids; the shorter one fits beside either reply.
            prompt_ids = min(chosen.prompt_ids, rejected.prompt_ids, key=len)
            rows.append(
                {
                    "prompt_ids": prompt_ids,
                    "chosen_ids": chosen.completion_ids,
                    "rejected_ids": rejected.completion_ids,
                }
            )
        good = bad = pairs = len(rows)
    random.Random(seed).shuffle(rows)
    return PreferenceSet(method, rows, good, bad, pairs, truncated)
