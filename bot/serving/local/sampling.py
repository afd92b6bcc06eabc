"""Logits processing and sampling for a whole batch at once: every row has its own settings,
and the batch costs a fixed number of tensor ops and one device-to-host copy per step.

Order (as transformers applies them): repetition penalty, bans (banned words, no-repeat
n-grams, EOS before ``min_new_tokens``), then temperature, top-k, top-p and the draw.
Rows with temperature 0 take the arg-max of the processed scores.

Why the draw is an inverse-CDF lookup instead of ``torch.multinomial``: ``multinomial``
takes one generator for the whole batch, but a seeded request must draw the same tokens
whatever else shares its batch. Each row gets one uniform number from its own generator
(or the global one) and the lookup is batched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from personas.card import GenerationParams


@dataclass
class RowSampling:
    """What the sampler needs to know about one row, kept up to date by the batch."""

    params: GenerationParams
    generator: torch.Generator | None = None
    # Banned token sequences: the last token of each is banned when the row ends in the rest.
    banned: list[list[int]] = field(default_factory=list)
    # No-repeat n-grams: (n-1)-token prefix -> tokens that would repeat an n-gram.
    ngrams: dict[tuple[int, ...], set[int]] = field(default_factory=dict)
    history: list[int] = field(default_factory=list)  # prompt and generated ids
    generated: int = 0  # tokens generated so far

    def record(self, token: int) -> None:
        """Add a chosen token to the row's history (and its n-gram table)."""
        self.history.append(token)
        self.generated += 1
        n = self.params.no_repeat_ngram_size
        if n > 0 and len(self.history) >= n:
            tail = self.history[-n:]
            self.ngrams.setdefault(tuple(tail[:-1]), set()).add(tail[-1])

    @classmethod
    def start(
        cls, params: GenerationParams, prompt_ids: Sequence[int], banned: list[list[int]], seed: int | None
    ) -> RowSampling:
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        row = cls(params, generator, banned, history=list(prompt_ids))
        n = params.no_repeat_ngram_size
        if n > 0:
            for k in range(len(prompt_ids) - n + 1):
                row.ngrams.setdefault(tuple(prompt_ids[k : k + n - 1]), set()).add(prompt_ids[k + n - 1])
        return row


def banned_positions(rows: Sequence[RowSampling], eos: int | None) -> tuple[list[int], list[int]]:
    """(row index, token id) pairs that must not be chosen this step.

    A Python walk over each row's short lists (banned sequences, one n-gram lookup), never
    over the vocabulary.
    """
    row_idx: list[int] = []
    tok_idx: list[int] = []
    for i, row in enumerate(rows):
        history, p = row.history, row.params
        for seq in row.banned:
            if len(seq) == 1 or history[-(len(seq) - 1) :] == seq[:-1]:
                row_idx.append(i)
                tok_idx.append(seq[-1])
        n = p.no_repeat_ngram_size
        if n > 0 and len(history) >= n - 1:
            for token in row.ngrams.get(tuple(history[len(history) - n + 1 :]), ()):
                row_idx.append(i)
                tok_idx.append(token)
        if eos is not None and row.generated < p.min_new_tokens:
            row_idx.append(i)
            tok_idx.append(eos)
    return row_idx, tok_idx


def choose_tokens(
    logits: torch.Tensor, rows: Sequence[RowSampling], seen: torch.Tensor, eos: int | None
) -> torch.Tensor:
    """Next token per row.

    logits: ``(rows, vocab)`` float scores of the last position. seen: ``(rows, vocab)``
    bool, True for every token in the row's prompt or reply (for the repetition penalty).
    Returns ``(rows,)`` long token ids on the logits' device; the caller makes the one host
    copy. Raises nothing of its own (torch errors propagate).
    """
    device = logits.device
    scores = logits.float()
    penalties = [r.params.repetition_penalty for r in rows]
    if any(p != 1.0 for p in penalties):
        penalty = torch.tensor(penalties, device=device).unsqueeze(1)
        penalized = torch.where(scores < 0, scores * penalty, scores / penalty)
        scores = torch.where(seen, penalized, scores)
    row_idx, tok_idx = banned_positions(rows, eos)
    if row_idx:
        scores = scores.index_put(
            (torch.tensor(row_idx, device=device), torch.tensor(tok_idx, device=device)),
            torch.tensor(-float("inf"), device=device),
        )
    greedy = scores.argmax(-1)
    temperatures = [r.params.temperature for r in rows]
    if all(t <= 0 for t in temperatures):
        return greedy
    return torch.where(
        torch.tensor([t <= 0 for t in temperatures], device=device), greedy, _sample(scores, rows)
    )


def _sample(scores: torch.Tensor, rows: Sequence[RowSampling]) -> torch.Tensor:
    """Temperature, top-k, top-p and one draw per row, all rows at once. ``(rows, vocab)`` -> ``(rows,)``."""
    device = scores.device
    vocab = scores.shape[-1]
    temperature = torch.tensor([max(r.params.temperature, 1e-5) for r in rows], device=device).unsqueeze(1)
    top_k = torch.tensor(
        [r.params.top_k if 0 < r.params.top_k < vocab else vocab for r in rows], device=device
    ).unsqueeze(1)
    top_p = torch.tensor([r.params.top_p for r in rows], device=device).unsqueeze(1)
    sorted_scores, order = torch.sort(scores / temperature, descending=True)
    rank = torch.arange(vocab, device=device).unsqueeze(0)
    sorted_scores = sorted_scores.masked_fill(rank >= top_k, -float("inf"))
    probs = torch.softmax(sorted_scores, -1)
    # Keep the token that crosses top_p: drop only those whose preceding mass already exceeds it.
    drop = (probs.cumsum(-1) - probs > top_p) & (top_p < 1.0)
    probs = probs.masked_fill(drop, 0.0)
    cumulative = probs.cumsum(-1)
    uniform = torch.stack(
        [torch.rand((), generator=r.generator) if r.generator is not None else torch.rand(()) for r in rows]
    ).to(device)
    target = uniform.unsqueeze(1) * cumulative[:, -1:]
    picked = torch.searchsorted(cumulative, target, right=True).clamp(max=vocab - 1)
    return order.gather(1, picked).squeeze(1)
