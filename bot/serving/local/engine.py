"""The engine: one base model, every persona's LoRA adapter resident beside it, and a
step loop in which each row has its own adapter, sampling settings and stop strings.

Why a hand-written loop rather than ``model.generate``: ``generate`` applies one
temperature, one top-p and one set of stop strings to the whole batch, and cannot admit
a request while others are decoding. Here the jobs are split:

* :mod:`bot.serving.local.adapter_pool`: resident adapters; PEFT's ``adapter_names`` routes each row
  through its own adapter in one forward (``__base__`` rows skip LoRA).
* :mod:`bot.serving.local.batch`: the running batch state (chunked prefill, decode step, filter,
  concatenate of left-padded rows with a per-row KV cache).
* :mod:`bot.serving.local.sampling`: logits processing and sampling for the whole batch at once.
* :mod:`bot.serving.detokenizer`: incremental detokenization that never emits a partial character.

:class:`RunningBatch` ties them together: newcomers wait, are prefilled a chunk per step,
and join the decoding rows; finished rows leave at the step they finish. The worker drives
one RunningBatch (continuous batching); :meth:`Engine.generate` runs one to completion for
a fixed list of requests (static batching, used by the trainer and the benchmarks).

Only the worker thread may call an Engine: nothing here is thread-safe, by design.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import torch
from transformers import DynamicCache

from bot.config import ModelSettings
from bot.model.adapters import AdapterSource
from bot.model.loading import LoadedModel, encode_prompt, load_base_model
from bot.serving.detokenizer import IncrementalDetokenizer, piece_text
from bot.serving.generation import (
    BASE_ADAPTER,
    AdapterInfo,
    GenerationRequest,
    GenerationResult,
    PromptTooLongError,
)
from bot.serving.local.adapter_pool import AdapterPool
from bot.serving.local.batch import CausalBatch, PrefillBatch, SequenceState
from bot.serving.local.prefix_cache import PrefixCache
from bot.serving.local.prefix_reuse import keep_rows, start_prefill
from bot.serving.local.sampling import RowSampling, choose_tokens
from personas.card import PersonaCard
from personas.render import TokenizerFacts

log = logging.getLogger(__name__)

PieceCallback = Callable[[int, str], None]
CancelCheck = Callable[[int], bool]
DEFAULT_PREFILL_CHUNK_TOKENS = 512


class Engine:
    """Base model plus resident adapters: turns requests into sequences and runs forwards."""

    def __init__(self, loaded: LoadedModel, prefill_chunk_tokens: int = DEFAULT_PREFILL_CHUNK_TOKENS) -> None:
        self.loaded = loaded
        self.tokenizer = loaded.tokenizer
        self.device = loaded.device
        self.facts = TokenizerFacts.from_tokenizer(loaded.tokenizer)
        self.pool = AdapterPool(loaded)
        # Off until the worker sets its budget (worker.prefix_cache_mb); keyed by the pool's
        # internal adapter names, which change on every load, and emptied per adapter as the
        # pool drops one, so a reloaded persona never reuses its old version's prefixes.
        self.prefix_cache = PrefixCache(0)
        self.pool.on_drop = self.prefix_cache.drop
        self.prefill_chunk_tokens = prefill_chunk_tokens
        self.eos = self.tokenizer.eos_token_id
        self.pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self._banned_cache: dict[str, list[list[int]]] = {}
        self._vocab_texts: list[str] | None = None  # filled on first use of banned words
        self.max_positions = int(getattr(loaded.model.config, "max_position_embeddings", 2048) or 2048)

    @classmethod
    def from_settings(
        cls, settings: ModelSettings, prefill_chunk_tokens: int = DEFAULT_PREFILL_CHUNK_TOKENS
    ) -> Engine:
        return cls(load_base_model(settings), prefill_chunk_tokens)

    # -- adapters (the pool's surface, kept here for callers) -------------------

    @property
    def _peft(self):
        return self.pool.peft

    def adapters(self) -> list[AdapterInfo]:
        return self.pool.adapters()

    def has_adapter(self, name: str) -> bool:
        return self.pool.has(name)

    def adapter_version(self, name: str) -> str | None:
        return self.pool.version(name)

    def load_adapter(self, name: str, source: AdapterSource, card: PersonaCard | None = None) -> AdapterInfo:
        """See :meth:`AdapterPool.load`; raises AdapterError and keeps the old adapter."""
        return self.pool.load(name, source, card)

    def load_canary(
        self, name: str, source: AdapterSource, share: float, card: PersonaCard | None = None
    ) -> AdapterInfo:
        """See :meth:`AdapterPool.load_canary`; raises AdapterError and keeps the old canary."""
        return self.pool.load_canary(name, source, share, card)

    def clear_canary(self, name: str) -> None:
        self.pool.clear_canary(name)

    def canaries(self) -> list[AdapterInfo]:
        return self.pool.canaries()

    def remove_adapter(self, name: str) -> None:
        self.pool.remove(name)

    def _internal_name(self, adapter: str) -> str:
        return self.pool.internal_name(adapter)

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.pool.model.parameters())

    # -- sequences and forwards ------------------------------------------------

    def sequence(
        self,
        request: GenerationRequest,
        on_piece: Callable[[str], None] | None = None,
        on_token: Callable[[float], None] | None = None,
        is_cancelled: Callable[[], bool] | None = None,
    ) -> SequenceState:
        """Tokenize a request into a sequence ready for prefill.

        The sequence is pinned to the adapter version it is admitted with (the persona's
        canary or ``CURRENT``, see :meth:`AdapterPool.acquire`) until :meth:`release`; a
        :class:`RunningBatch` releases the rows that leave it. Raises PromptTooLongError when
        prompt plus ``max_new_tokens`` exceed the model's context, AdapterError when the
        request's adapter is not resident.
        """
        self.pool.internal_name(request.adapter)
        ids = encode_prompt(self.tokenizer, request.prompt)
        if not ids:
            ids = [self.eos if self.eos is not None else self.pad]
        if len(ids) + request.params.max_new_tokens > self.max_positions:
            raise PromptTooLongError(len(ids), request.params.max_new_tokens, self.max_positions)
        sampling = RowSampling.start(
            request.params, ids, self._banned_ids(request.banned_words), request.seed
        )
        return SequenceState(
            request,
            ids,
            sampling,
            IncrementalDetokenizer(self.tokenizer),
            adapter=self.pool.acquire(request.adapter),  # last: nothing after it can raise
            on_piece=on_piece,
            on_token=on_token,
            is_cancelled=is_cancelled,
        )

    def release(self, seq: SequenceState) -> None:
        """Give back ``seq``'s pin on its adapter instance (once; later calls do nothing)."""
        if not seq.released:
            seq.released = True
            self.pool.release(seq.adapter)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention: torch.Tensor,
        positions: torch.Tensor,
        cache: DynamicCache,
        adapters: list[str],
    ) -> torch.Tensor:
        """input_ids and positions ``(rows, n)``, attention ``(rows, cached + n)``; returns the
        last position's logits ``(rows, vocab)`` float32. The cache grows in place."""
        # Only the last position's logits are used, which saves the output head's (prompt length
        # x vocabulary) matmul on the prefill. The index is a tensor, not the int 1: with an int the
        # model slices hidden[:, -1:, :], a strided view, and on CPU in bfloat16 torch then runs the
        # head as a bmm over a (rows, hidden, vocab) copy of its weight (1.4 s for a 16 x 48-token
        # prefill at the benchmark shape, 0.2 s with the index); indexing by a tensor gathers a
        # contiguous (rows, 1, hidden) block instead. Same logits either way (tested).
        last = torch.tensor([input_ids.shape[1] - 1], device=input_ids.device)
        kwargs = dict(
            input_ids=input_ids,
            attention_mask=attention,
            position_ids=positions,
            cache=cache,
            use_cache=True,
            logits_to_keep=last,
        )
        if self.pool.mixed:
            out = self.pool.model(**kwargs, adapter_names=adapters)
        else:
            out = self.pool.model(**kwargs)
        return out.logits[:, -1, :].float()

    def result(self, seq: SequenceState) -> GenerationResult:
        """The finished sequence as a result (finish_reason never None)."""
        end = time.monotonic()
        first = seq.first_token_at - seq.started_at if seq.first_token_at is not None else None
        return GenerationResult(
            text=seq.text,
            new_tokens=len(seq.generated),
            finish_reason=seq.finish_reason or "length",
            adapter=seq.request.adapter,
            adapter_version=seq.adapter.version if seq.adapter is not None else None,
            seconds=end - seq.started_at,
            batch_size=seq.max_rows,
            first_token_s=first,
            token_ids=tuple(seq.generated),
        )

    @torch.inference_mode()
    def generate(
        self,
        requests: Sequence[GenerationRequest],
        on_piece: PieceCallback | None = None,
        is_cancelled: CancelCheck | None = None,
    ) -> list[GenerationResult]:
        """Decode a fixed list of requests together (static batching); each row stops on its own.

        ``on_piece(i, text)`` streams row i; ``is_cancelled(i)`` is polled every step.
        Raises AdapterError / PromptTooLongError before any compute if a request is unfit.
        """
        seqs = [
            self.sequence(
                r,
                on_piece=(lambda text, i=i: on_piece(i, text)) if on_piece else None,
                is_cancelled=(lambda i=i: is_cancelled(i)) if is_cancelled else None,
            )
            for i, r in enumerate(requests)
        ]
        batch = RunningBatch(self, prefill_chunk_tokens=1 << 30)  # static: read every prompt at once
        batch.add(seqs)
        try:
            while batch.rows:
                batch.step()
        except BaseException:
            batch.abort()  # gives the rows' adapter pins back
            raise
        return [self.result(s) for s in seqs]

    # -- banned words ------------------------------------------------------------

    def _banned_ids(self, words: Sequence[str]) -> list[list[int]]:
        out = []
        for word in words:
            if word not in self._banned_cache:
                self._banned_cache[word] = self._spellings(word)
            out.extend(self._banned_cache[word])
        return out

    def _spellings(self, word: str) -> list[list[int]]:
        """Token sequences that spell ``word``: its own tokenization, the same without the
        SentencePiece word-start piece (mid-sentence it has none), and every single token
        that contains the whole word."""
        ids = self.tokenizer(word, add_special_tokens=False)["input_ids"]
        seqs = [ids]
        if len(ids) > 1 and not self.tokenizer.decode(ids[:1]).strip():
            seqs.append(ids[1:])
        if self._vocab_texts is None:
            pieces = self.tokenizer.convert_ids_to_tokens(list(range(len(self.tokenizer))))
            self._vocab_texts = [piece_text(p) for p in pieces]
        seqs.extend([i] for i, text in enumerate(self._vocab_texts) if word in text)
        return [s for s in seqs if s]


class RunningBatch:
    """Every admitted row: waiting for prefill, being prefilled, or decoding.

    One :meth:`step` = drop cancelled rows, read one prefill chunk of the newcomers (at most
    ``prefill_chunk_tokens`` prompt tokens), one decode step of the running rows, one batched
    sampling over both, one host copy of the chosen tokens; rows that finish leave, and
    newcomers whose prompt is read join the running rows (concatenate).
    """

    def __init__(self, engine: Engine, prefill_chunk_tokens: int | None = None) -> None:
        self.engine = engine
        self.prefill_chunk_tokens = prefill_chunk_tokens or engine.prefill_chunk_tokens
        self.waiting: list[SequenceState] = []
        self.prefilling: PrefillBatch | None = None
        self.decoding: CausalBatch | None = None
        self.steps = 0

    @property
    def rows(self) -> int:
        """Rows admitted and not finished (waiting, prefilling, decoding)."""
        return (
            len(self.waiting)
            + (len(self.prefilling) if self.prefilling else 0)
            + (len(self.decoding) if self.decoding else 0)
        )

    def add(self, seqs: Sequence[SequenceState]) -> None:
        """Admit sequences; they are prefilled together from the next step on."""
        self.waiting.extend(seqs)

    def sequences(self) -> list[SequenceState]:
        out = list(self.waiting)
        if self.prefilling:
            out += self.prefilling.seqs
        if self.decoding:
            out += self.decoding.seqs
        return out

    def abort(self) -> list[SequenceState]:
        """Drop every row and its cache (after a failed step); returns the dropped sequences."""
        dropped = self.sequences()
        self.waiting, self.prefilling, self.decoding = [], None, None
        for seq in dropped:
            self.engine.release(seq)
        return dropped

    @torch.inference_mode()
    def step(self) -> list[SequenceState]:
        """Run one step; returns the sequences that finished in it (cancelled ones included).

        Finished rows have given back their adapter pin. Torch errors (out of memory, a broken
        forward) propagate; the caller then :meth:`abort`.
        """
        engine = self.engine
        finished = self._drop_cancelled()
        if self.prefilling is None and self.waiting:
            self.prefilling, self.waiting = start_prefill(
                self.waiting, engine.prefix_cache, self._adapter_name, engine.pad, engine.device
            )
        rows = self.rows
        logits_parts: list[torch.Tensor] = []
        seen_parts: list[torch.Tensor] = []
        seqs: list[SequenceState] = []
        if self.decoding is not None:
            logits = self.decoding.decode(engine.forward, self._adapters(self.decoding.seqs))
            logits_parts.append(logits)
            seen_parts.append(self.decoding.seen)
            seqs += self.decoding.seqs
        prefilled = None
        if self.prefilling is not None:
            logits = self.prefilling.run_chunk(
                engine.forward, self._adapters(self.prefilling.seqs), self.prefill_chunk_tokens
            )
            if logits is not None:
                prefilled = self.prefilling
                self.prefilling = None
                logits_parts.append(logits)
                seen_parts.append(prefilled.seen(logits.shape[-1]))
                seqs += prefilled.seqs
        self.steps += 1
        if not seqs:
            return self._released(finished)
        logits = torch.cat(logits_parts) if len(logits_parts) > 1 else logits_parts[0]
        seen = torch.cat(seen_parts) if len(seen_parts) > 1 else seen_parts[0]
        tokens = choose_tokens(logits, [s.sampling for s in seqs], seen, engine.eos)
        chosen = tokens.tolist()  # the step's one host copy
        for seq, token in zip(seqs, chosen, strict=True):
            seq.max_rows = max(seq.max_rows, rows)
            seq.advance(token, engine.eos)
        split = len(self.decoding) if self.decoding is not None else 0
        if self.decoding is not None:
            self.decoding.accept(tokens[:split])
        if prefilled is not None:
            joined = prefilled.ready(tokens[split:], seen[split:])
            self.decoding = (
                joined if self.decoding is None else CausalBatch.concatenate(self.decoding, joined)
            )
        return self._released(finished + self._filter_finished())

    def _released(self, seqs: list[SequenceState]) -> list[SequenceState]:
        for seq in seqs:
            self.engine.release(seq)
        return seqs

    def _adapters(self, seqs: list[SequenceState]) -> list[str]:
        return [self._adapter_name(s) for s in seqs]

    @staticmethod
    def _adapter_name(seq: SequenceState) -> str:
        """The instance a row is pinned to, by PEFT name (never looked up again by persona; new
        for every loaded version, never reused): also the identity its prefixes are cached under."""
        return seq.adapter.key if seq.adapter is not None else BASE_ADAPTER

    def _drop_cancelled(self) -> list[SequenceState]:
        """Cancelled (or timed-out) rows leave before the step's forwards."""
        gone: list[SequenceState] = []
        for seq in self.sequences():
            if seq.is_cancelled is not None and seq.is_cancelled():
                seq.finish("cancelled")
            if seq.finished:
                gone.append(seq)
        if gone:
            self.waiting = [s for s in self.waiting if not s.finished]
            if self.prefilling is not None:
                keep = [i for i, s in enumerate(self.prefilling.seqs) if not s.finished]
                self.prefilling = self.prefilling if keep else None
                if self.prefilling is not None:
                    self.prefilling.filter(keep)
            self._filter_finished()
        return gone

    def _filter_finished(self) -> list[SequenceState]:
        if self.decoding is None:
            return []
        done = [s for s in self.decoding.seqs if s.finished]
        if done:
            # Cancelled rows too: their K/V are right as far as they went (failed rows are skipped).
            leaving = [i for i, s in enumerate(self.decoding.seqs) if s.finished]
            keep_rows(self.engine.prefix_cache, self.decoding, leaving, self._adapter_name)
            keep = [i for i, s in enumerate(self.decoding.seqs) if not s.finished]
            if keep:
                self.decoding.filter(keep)
            else:
                self.decoding = None  # the cache is released with the batch
        return done
