"""The engine: one base model, every persona's LoRA adapter resident beside it, and a
decode loop in which each row of a batch has its own adapter, sampling settings and
stop strings.

Why a hand-written decode loop rather than ``model.generate``: ``generate`` applies
one temperature, one top-p and one set of stop strings to the whole batch, so a batch
mixing 魔理沙 and ずんだもん would have to share them. The loop is plain greedy/sampled
decoding with a KV cache; PEFT's ``adapter_names`` routes each row through its own
adapter in the same forward pass (``__base__`` rows skip LoRA entirely).

Only the worker thread may call an Engine: nothing here is thread-safe, by design.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bot.adapters import AdapterSource, check_adapter_files
from bot.config import ModelSettings
from bot.generation import (
    BASE_ADAPTER,
    AdapterError,
    AdapterInfo,
    GenerationRequest,
    GenerationResult,
)
from bot.model_loading import LoadedModel, encode_prompt, load_base_model
from personas.card import CardError, PersonaCard, check_adapter_base
from personas.render import TokenizerFacts

log = logging.getLogger(__name__)

PieceCallback = Callable[[int, str], None]
CancelCheck = Callable[[int], bool]


@dataclass
class _Row:
    """Decoding state of one request inside a batch."""

    request: GenerationRequest
    prompt_ids: list[int]
    generator: torch.Generator | None
    banned: list[list[int]]
    generated: list[int] = field(default_factory=list)
    text: str = ""
    emitted: int = 0  # characters of text already streamed
    finish_reason: str | None = None
    ngrams: dict[tuple[int, ...], set[int]] = field(default_factory=dict)


class Engine:
    """Base model plus resident adapters; generates mixed-adapter batches."""

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        self.tokenizer = loaded.tokenizer
        self.device = loaded.device
        self.facts = TokenizerFacts.from_tokenizer(loaded.tokenizer)
        self._peft = None  # the PeftModel wrapper, created with the first adapter
        self._resident: dict[str, tuple[str, AdapterInfo]] = {}  # persona -> (internal name, info)
        self._names = itertools.count(1)
        self._banned_cache: dict[str, list[list[int]]] = {}
        self._vocab_texts: list[str] | None = None  # filled on first use of banned words
        self.max_positions = int(getattr(loaded.model.config, "max_position_embeddings", 2048) or 2048)
        # transformers 5.x renamed the forward's KV-cache argument (and output) from
        # past_key_values to cache, and warns on every call that uses the old name.
        forward_args = inspect.signature(loaded.model.forward).parameters
        self._cache_arg = "cache" if "cache" in forward_args else "past_key_values"

    @classmethod
    def from_settings(cls, settings: ModelSettings) -> Engine:
        return cls(load_base_model(settings))

    # -- adapters ----------------------------------------------------------

    def adapters(self) -> list[AdapterInfo]:
        return [info for _, info in self._resident.values()]

    def has_adapter(self, name: str) -> bool:
        return name in self._resident

    def adapter_version(self, name: str) -> str | None:
        entry = self._resident.get(name)
        return entry[1].version if entry else None

    def parameter_count(self) -> int:
        model = self._peft if self._peft is not None else self.loaded.model
        return sum(p.numel() for p in model.parameters())

    def load_adapter(self, name: str, source: AdapterSource, card: PersonaCard | None = None) -> AdapterInfo:
        """Load (or replace) a persona's adapter; on any failure the old one keeps serving.

        The new weights are loaded under a fresh internal name first and the old ones
        dropped only after that succeeded, so a corrupt file never leaves the persona
        without its voice, and repeated reloads do not grow memory.
        """
        if source.is_local:
            try:
                check_adapter_files(Path(source.path))
                if card is not None:
                    check_adapter_base(card, Path(source.path), self.loaded.base_model)
            except (FileNotFoundError, CardError) as exc:
                raise AdapterError(f"adapter for {name!r} not loaded: {exc}") from None
        internal = f"{name.replace('-', '_')}_{next(self._names)}"
        try:
            if self._peft is None:
                from peft import PeftModel

                self._peft = PeftModel.from_pretrained(self.loaded.model, source.path, adapter_name=internal)
                self._peft.eval()
            else:
                self._peft.load_adapter(source.path, adapter_name=internal)
        except Exception as exc:  # corrupt safetensors, wrong shapes, hub errors: all mean "keep the old one"
            self._drop_internal(internal)
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise AdapterError(f"adapter for {name!r} at {source.path} failed to load: {reason}") from None
        params = sum(p.numel() for n, p in self._peft.named_parameters() if f".{internal}." in n)
        info = AdapterInfo(name, source.path, source.version, params)
        old = self._resident.get(name)
        self._resident[name] = (internal, info)
        self._peft.set_adapter(internal)
        if old is not None:
            self._drop_internal(old[0])
        log.info("adapter %s loaded from %s (version %s)", name, source.path, source.version)
        return info

    def remove_adapter(self, name: str) -> None:
        entry = self._resident.pop(name, None)
        if entry is not None:
            self._drop_internal(entry[0])

    def _drop_internal(self, internal: str) -> None:
        if self._peft is None or internal not in self._peft.peft_config:
            return
        others = [n for n, _ in self._resident.values() if n != internal]
        if internal in self._peft.active_adapters and others:
            # Any other resident adapter may be the active one: adapter_names decides per row.
            self._peft.set_adapter(others[0])
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*was active which is now deleted.*")
            self._peft.delete_adapter(internal)

    # -- generation ----------------------------------------------------------

    @torch.inference_mode()
    def generate(
        self,
        requests: Sequence[GenerationRequest],
        on_piece: PieceCallback | None = None,
        is_cancelled: CancelCheck | None = None,
    ) -> list[GenerationResult]:
        """Decode every request in one batch; each row stops on its own."""
        start = time.perf_counter()
        rows = [self._new_row(req) for req in requests]
        adapter_names = [self._internal_name(req.adapter) for req in requests]
        max_steps = max(r.request.params.max_new_tokens for r in rows)

        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        width = max(len(r.prompt_ids) for r in rows)
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, width - len(row.prompt_ids) :] = torch.tensor(row.prompt_ids)
            attention[i, width - len(row.prompt_ids) :] = 1
        input_ids, attention = input_ids.to(self.device), attention.to(self.device)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)

        logits, cache = self._forward(input_ids, attention, positions, None, adapter_names)
        active = list(range(len(rows)))  # batch position -> index into rows
        for _ in range(max_steps):
            next_tokens = self._choose([rows[i] for i in active], logits)
            for pos, i in enumerate(active):
                self._advance(rows[i], int(next_tokens[pos]), on_piece, i)
                if rows[i].finish_reason is None and is_cancelled is not None and is_cancelled(i):
                    rows[i].finish_reason = "cancelled"
            keep = [pos for pos, i in enumerate(active) if rows[i].finish_reason is None]
            if not keep:
                break
            if len(keep) < len(active):
                # Finished rows leave the batch, so short replies stop costing compute.
                index = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(index)
                attention, positions, next_tokens = attention[index], positions[index], next_tokens[index]
                active = [active[pos] for pos in keep]
                adapter_names = [adapter_names[pos] for pos in keep]
            attention = torch.cat([attention, attention.new_ones((len(active), 1))], dim=1)
            positions = positions[:, -1:] + 1
            logits, cache = self._forward(next_tokens.view(-1, 1), attention, positions, cache, adapter_names)

        seconds = time.perf_counter() - start
        results = []
        for i, row in enumerate(rows):
            if row.finish_reason is None:
                row.finish_reason = "length"
            if on_piece is not None and row.emitted < len(row.text):
                on_piece(i, row.text[row.emitted :])
            results.append(
                GenerationResult(
                    text=row.text,
                    new_tokens=len(row.generated),
                    finish_reason=row.finish_reason,
                    adapter=row.request.adapter,
                    adapter_version=self.adapter_version(row.request.adapter),
                    seconds=seconds,
                    batch_size=len(rows),
                )
            )
        return results

    def _internal_name(self, adapter: str) -> str:
        if adapter == BASE_ADAPTER:
            return BASE_ADAPTER
        entry = self._resident.get(adapter)
        if entry is None:
            raise AdapterError(f"adapter {adapter!r} is not loaded")
        return entry[0]

    def _forward(self, input_ids, attention, positions, cache, adapter_names):
        # logits_to_keep=1: only the last position's logits are used, which saves the output
        # head's (prompt length x vocabulary) matmul on the prefill.
        kwargs = dict(
            input_ids=input_ids,
            attention_mask=attention,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
        )
        kwargs[self._cache_arg] = cache
        if self._peft is not None and self._resident:
            out = self._peft(**kwargs, adapter_names=adapter_names)
        else:
            out = self.loaded.model(**kwargs)
        return out.logits[:, -1, :].float(), out[self._cache_arg]

    def _new_row(self, req: GenerationRequest) -> _Row:
        ids = encode_prompt(self.tokenizer, req.prompt)
        # Keep the end of an over-long prompt: the newest turns and the open reply label.
        room = max(1, self.max_positions - req.params.max_new_tokens)
        ids = ids[-room:]
        generator = None
        if req.seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(req.seed)
        row = _Row(req, ids, generator, self._banned_ids(req.banned_words))
        n = req.params.no_repeat_ngram_size
        if n > 0:
            for k in range(len(ids) - n + 1):
                row.ngrams.setdefault(tuple(ids[k : k + n - 1]), set()).add(ids[k + n - 1])
        return row

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
            self._vocab_texts = [_piece_text(p) for p in pieces]
        seqs.extend([i] for i, text in enumerate(self._vocab_texts) if word in text)
        return [s for s in seqs if s]

    def _choose(self, rows: list[_Row], logits: torch.Tensor) -> torch.Tensor:
        """Pick each row's next token with that row's own settings."""
        eos = self.tokenizer.eos_token_id
        chosen = torch.empty(len(rows), dtype=torch.long)
        for i, row in enumerate(rows):
            p = row.request.params
            scores = logits[i].clone()
            if p.repetition_penalty != 1.0:
                seen = torch.tensor(sorted(set(row.prompt_ids + row.generated)), device=scores.device)
                picked = scores[seen]
                scores[seen] = torch.where(
                    picked < 0, picked * p.repetition_penalty, picked / p.repetition_penalty
                )
            if (
                p.no_repeat_ngram_size > 0
                and len(row.prompt_ids) + len(row.generated) >= p.no_repeat_ngram_size
            ):
                history = row.prompt_ids + row.generated
                key = tuple(history[len(history) - p.no_repeat_ngram_size + 1 :])
                for token in row.ngrams.get(key, ()):
                    scores[token] = -float("inf")
            for seq in row.banned:
                if len(seq) == 1 or row.generated[-(len(seq) - 1) :] == seq[:-1]:
                    scores[seq[-1]] = -float("inf")
            if eos is not None and len(row.generated) < p.min_new_tokens:
                scores[eos] = -float("inf")
            chosen[i] = self._sample(scores, p.temperature, p.top_k, p.top_p, row.generator)
        return chosen.to(self.device)

    @staticmethod
    def _sample(scores: torch.Tensor, temperature: float, top_k: int, top_p: float, generator) -> int:
        if temperature <= 0:
            return int(torch.argmax(scores))
        scores = scores / temperature
        if 0 < top_k < scores.numel():
            kth = torch.topk(scores, top_k).values[-1]
            scores = scores.masked_fill(scores < kth, -float("inf"))
        if top_p < 1.0:
            sorted_scores, order = torch.sort(scores, descending=True)
            cumulative = torch.softmax(sorted_scores, -1).cumsum(-1)
            drop = cumulative - torch.softmax(sorted_scores, -1) > top_p  # keep the token that crosses top_p
            scores = scores.scatter(0, order[drop], -float("inf"))
        probs = torch.softmax(scores, -1)
        return int(torch.multinomial(probs, 1, generator=generator))

    def _advance(self, row: _Row, token: int, on_piece: PieceCallback | None, index: int) -> None:
        params = row.request.params
        if token == self.tokenizer.eos_token_id:
            row.finish_reason = "eos"
            return
        row.generated.append(token)
        n = params.no_repeat_ngram_size
        history_len = len(row.prompt_ids) + len(row.generated)
        if n > 0 and history_len >= n:
            tail = (row.prompt_ids + row.generated)[-n:]
            row.ngrams.setdefault(tuple(tail[:-1]), set()).add(tail[-1])
        row.text = self.tokenizer.decode(row.generated, skip_special_tokens=True)
        for stop in row.request.stop:
            at = row.text.find(stop)
            if at != -1 and len(row.generated) >= params.min_new_tokens:
                row.text = row.text[:at]
                row.finish_reason = "stop"
                break
        if row.finish_reason is None and len(row.generated) >= params.max_new_tokens:
            row.finish_reason = "length"
        if on_piece is not None:
            # Hold back a tail that could still turn into a stop string, so it is never streamed.
            safe = (
                len(row.text) if row.finish_reason else len(row.text) - _held_back(row.text, row.request.stop)
            )
            if safe > row.emitted:
                on_piece(index, row.text[row.emitted : safe])
                row.emitted = safe


def _piece_text(piece: str | None) -> str:
    """A vocabulary piece as text: word-start marks as spaces, ASCII byte-fallback pieces as their character."""
    piece = piece or ""
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        value = int(piece[3:5], 16)
        return chr(value) if value < 0x80 else ""
    return piece.replace("▁", " ")


def _held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of text that is a proper prefix of a stop string."""
    longest = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:k]):
                longest = k
                break
    return longest
