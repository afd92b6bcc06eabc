"""The running batch state of a causal LM with a per-row KV cache: prefill, decode step,
filter and concatenate of left-padded rows (the design of TGI's causal-LM batch).

Layout, for ``rows`` sequences:

* ``attention``: ``(rows, length)`` long, 1 where the cache holds a real token of that row,
  0 for left padding. Every row's newest token sits in the last column.
* the KV cache: a transformers ``DynamicCache`` whose layers hold keys and values of shape
  ``(rows, heads, length, head_dim)``, aligned with ``attention``.
* ``next_tokens``: ``(rows,)`` the token each row chose last, not yet in the cache.
* ``next_positions``: ``(rows,)`` its position id (a row's positions count its real tokens
  only, so padding never shifts rotary embeddings).
* ``seen``: ``(rows, vocab)`` bool, every token of the row so far (repetition penalty).

``filter`` keeps some rows (index select on every tensor); ``concatenate`` joins two
batches by left-padding the shorter cache and mask with zeros. Padded key slots are masked
out, so their values never matter.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from bot.serving.detokenizer import IncrementalDetokenizer, held_back
from bot.serving.generation import FinishReason, GenerationRequest
from bot.serving.local.adapter_pool import ResidentAdapter
from bot.serving.local.kv_cache import MIN_SPARE_COLUMNS, GrowingLayer, joined, new_cache
from bot.serving.local.prefix_cache import PrefixMatch
from bot.serving.local.sampling import RowSampling


class ForwardFn(Protocol):
    def __call__(
        self,
        input_ids: torch.Tensor,
        attention: torch.Tensor,
        positions: torch.Tensor,
        cache: DynamicCache,
        adapters: list[str],
    ) -> torch.Tensor:
        """Logits ``(rows, vocab)`` of each row's last input position; the cache grows in place."""


@dataclass(eq=False)
class SequenceState:
    """One request's decoding state, from admission to its finish.

    ``adapter`` is the adapter instance the row was pinned to at admission (None: the base
    model); every forward of the row uses it, and its version is the one the result names.
    """

    request: GenerationRequest
    prompt_ids: list[int]
    sampling: RowSampling
    detokenizer: IncrementalDetokenizer
    adapter: ResidentAdapter | None = None
    released: bool = False  # the row's pin on ``adapter`` has been given back
    on_piece: Callable[[str], None] | None = None
    on_token: Callable[[float], None] | None = None  # called with time.monotonic() of each token
    is_cancelled: Callable[[], bool] | None = None
    generated: list[int] = field(default_factory=list)
    text: str = ""
    emitted: int = 0  # characters of text already streamed
    finish_reason: FinishReason | None = None
    started_at: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None
    max_rows: int = 1  # the most rows that shared a step with this one
    # The adapter identity its K/V were computed with (set when its prefill starts); the prefix
    # cache stores the row under it only if the row still runs on that identity when it ends.
    cache_key: str | None = None
    reused_tokens: int = 0  # prompt tokens taken from the prefix cache instead of prefilled
    passed_over: int = 0  # prefill groups formed without this row (shortest-first grouping)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def advance(self, token: int, eos: int | None) -> None:
        """Take the chosen token: EOS, stop strings and the length limit end the row here."""
        now = time.monotonic()
        if self.first_token_at is None:
            self.first_token_at = now
        if self.on_token is not None:
            self.on_token(now)
        params = self.request.params
        if token == eos:
            self.finish("eos")
            return
        self.generated.append(token)
        self.sampling.record(token)
        piece = self.detokenizer.push(token)
        if piece:
            before = len(self.text)
            self.text += piece
            if len(self.generated) >= params.min_new_tokens:
                for stop in self.request.stop:
                    # Only the region the new piece can complete needs searching.
                    at = self.text.find(stop, max(0, before - len(stop) + 1))
                    if at != -1:
                        self.text = self.text[:at]
                        self.finish("stop")
                        return
        if len(self.generated) >= params.max_new_tokens:
            self.finish("length")
            return
        if self.on_piece is not None:
            # Hold back a tail that could still turn into a stop string, so it is never streamed.
            safe = len(self.text) - held_back(self.text, self.request.stop)
            if safe > self.emitted:
                self.on_piece(self.text[self.emitted : safe])
                self.emitted = safe

    def finish(self, reason: FinishReason) -> None:
        """End the row: flush whole characters still held (never a partial one) and stream the rest."""
        if self.finish_reason is not None:
            return
        self.finish_reason = reason
        if reason != "stop":
            before = len(self.text)
            self.text += self.detokenizer.flush()
            if len(self.text) > before and len(self.generated) >= self.request.params.min_new_tokens:
                # The flushed tail may complete a stop string (its last character was pending).
                # Only the new region is searched, as in advance(), so nothing streamed is taken back.
                for stop in self.request.stop:
                    at = self.text.find(stop, max(0, before - len(stop) + 1))
                    if at != -1:
                        self.text = self.text[:at]
                        self.finish_reason = "stop"
                        break
        if self.on_piece is not None and reason != "cancelled" and self.emitted < len(self.text):
            self.on_piece(self.text[self.emitted :])
            self.emitted = len(self.text)


def left_pad(
    rows: Sequence[Sequence[int]], pad: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids and mask, both ``(rows, longest)`` long."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row) :] = 1
    return ids.to(device), mask.to(device)


class CausalBatch:
    """Rows ready to decode: the cache holds every token but each row's ``next_tokens``."""

    def __init__(
        self,
        seqs: list[SequenceState],
        cache: DynamicCache,
        attention: torch.Tensor,
        next_tokens: torch.Tensor,
        next_positions: torch.Tensor,
        seen: torch.Tensor,
    ) -> None:
        self.seqs = seqs
        self.cache = cache
        self.attention = attention
        self.next_tokens = next_tokens
        self.next_positions = next_positions
        self.seen = seen

    def __len__(self) -> int:
        return len(self.seqs)

    @property
    def length(self) -> int:
        return self.attention.shape[1]

    def decode(self, forward: ForwardFn, adapters: list[str]) -> torch.Tensor:
        """One decode step: feed ``next_tokens``; logits ``(rows, vocab)`` for the following one."""
        attention = torch.cat([self.attention, self.attention.new_ones((len(self), 1))], dim=1)
        logits = forward(
            self.next_tokens.unsqueeze(1), attention, self.next_positions.unsqueeze(1), self.cache, adapters
        )
        self.attention = attention
        self.next_positions = self.next_positions + 1
        return logits

    def accept(self, tokens: torch.Tensor) -> None:
        """Record the chosen tokens ``(rows,)`` as the next input and as seen."""
        self.next_tokens = tokens
        self.seen[torch.arange(len(self), device=tokens.device), tokens] = True

    def filter(self, keep: list[int]) -> None:
        """Keep only rows ``keep`` (indices into this batch, in order)."""
        if len(keep) == len(self):
            return
        index = torch.tensor(keep, dtype=torch.long, device=self.attention.device)
        self.seqs = [self.seqs[i] for i in keep]
        self.cache.batch_select_indices(index)
        self.attention = self.attention[index]
        self.next_tokens = self.next_tokens[index]
        self.next_positions = self.next_positions[index]
        self.seen = self.seen[index]
        # Columns that are padding in every remaining row are dead weight: drop them.
        live = int(self.attention.any(0).nonzero()[0]) if len(keep) else 0
        if live > 0:
            self.attention = self.attention[:, live:]
            for layer in self.cache.layers:
                layer.keys = layer.keys[:, :, live:]
                layer.values = layer.values[:, :, live:]

    @staticmethod
    def concatenate(a: CausalBatch, b: CausalBatch) -> CausalBatch:
        """One batch of ``a``'s rows then ``b``'s; the shorter one is left-padded to the longer length."""
        length = max(a.length, b.length)
        return CausalBatch(
            a.seqs + b.seqs,
            joined(a.cache, b.cache, length),
            torch.cat(
                [F.pad(a.attention, (length - a.length, 0)), F.pad(b.attention, (length - b.length, 0))]
            ),
            torch.cat([a.next_tokens, b.next_tokens]),
            torch.cat([a.next_positions, b.next_positions]),
            torch.cat([a.seen, b.seen]),
        )


class PrefillBatch:
    """Newcomers whose prompts are being read, a chunk of columns per step (chunked prefill).

    ids and mask: ``(rows, width)``; ``done`` columns are in the cache. Without reused prefixes
    the prompts are simply left-padded. With them (``prefixes[i].length`` tokens of row i come
    from the prefix cache) the columns are two blocks: the reused prefixes, right-aligned in a
    block as wide as the longest of them and copied into the cache at once, then the rest of
    each prompt, right-aligned in a block as wide as the longest rest, which is prefilled. A row
    with a shorter prefix has masked columns between its two parts; positions count real tokens
    only, so they are exactly the positions of the whole prompt.
    """

    def __init__(
        self,
        seqs: list[SequenceState],
        pad: int,
        device: torch.device,
        prefixes: Sequence[PrefixMatch] | None = None,
    ) -> None:
        self.seqs = seqs
        reused = [m.length for m in prefixes] if prefixes else [0] * len(seqs)
        block = max(reused)
        if block == 0:
            self.ids, self.mask = left_pad([s.prompt_ids for s in seqs], pad, device)
            self.cache = new_cache()
        else:
            rests = [s.prompt_ids[r:] for s, r in zip(seqs, reused, strict=True)]
            heads = left_pad(
                [s.prompt_ids[:r] or [pad] for s, r in zip(seqs, reused, strict=True)], pad, device
            )
            tails = left_pad(rests, pad, device)
            head_mask = heads[1] * torch.tensor([[r > 0] for r in reused], device=device)
            self.ids = torch.cat([heads[0], tails[0]], dim=1)
            self.mask = torch.cat([head_mask, tails[1]], dim=1)
            self.cache = _prefix_block(prefixes, block, self.ids.shape[1] + MIN_SPARE_COLUMNS)
        self.positions = (self.mask.cumsum(-1) - 1).clamp(min=0)
        self.done = block

    def __len__(self) -> int:
        return len(self.seqs)

    @property
    def width(self) -> int:
        return self.ids.shape[1]

    def run_chunk(self, forward: ForwardFn, adapters: list[str], budget_tokens: int) -> torch.Tensor | None:
        """Read the next chunk: at most ``budget_tokens`` (rows x columns, at least one column).

        Returns logits ``(rows, vocab)`` once the whole prompt is in the cache, else None.
        """
        columns = max(1, budget_tokens // len(self))
        end = min(self.width, self.done + columns)
        logits = forward(
            self.ids[:, self.done : end],
            self.mask[:, :end],
            self.positions[:, self.done : end],
            self.cache,
            adapters,
        )
        self.done = end
        return logits if end == self.width else None

    def filter(self, keep: list[int]) -> None:
        if len(keep) == len(self):
            return
        index = torch.tensor(keep, dtype=torch.long, device=self.ids.device)
        self.seqs = [self.seqs[i] for i in keep]
        self.ids, self.mask, self.positions = self.ids[index], self.mask[index], self.positions[index]
        if self.cache.layers:
            self.cache.batch_select_indices(index)

    def ready(self, tokens: torch.Tensor, seen: torch.Tensor) -> CausalBatch:
        """The decode batch these rows become once their first tokens ``(rows,)`` are chosen."""
        batch = CausalBatch(self.seqs, self.cache, self.mask, tokens, self.positions[:, -1] + 1, seen)
        batch.accept(tokens)
        return batch

    def seen(self, vocab: int) -> torch.Tensor:
        """``(rows, vocab)`` bool: the prompt's tokens (padding excluded)."""
        # Padding goes to an extra column that is cut off, so a pad id that is also a real
        # token of the row is still marked.
        ids = torch.where(self.mask.bool(), self.ids, vocab)
        seen = torch.zeros((len(self), vocab + 1), dtype=torch.bool, device=self.ids.device)
        return seen.scatter_(1, ids, True)[:, :vocab].contiguous()


def _prefix_block(prefixes: Sequence[PrefixMatch], block: int, capacity: int) -> DynamicCache:
    """A cache of ``block`` columns holding each row's reused prefix right-aligned (zeros before),
    in buffers with room for ``capacity`` columns (the prompts' rest and the first replies)."""
    first = next(m for m in prefixes if m.length).segments[0][0]
    cache = new_cache()
    cache.layers = [
        GrowingLayer.zeros(k, v, len(prefixes), block, capacity)
        for k, v in zip(first.keys, first.values, strict=True)
    ]
    keys = [layer.keys for layer in cache.layers]
    values = [layer.values for layer in cache.layers]
    for row, match in enumerate(prefixes):
        if match.length:
            match.write(keys, values, row, block)
    return cache
