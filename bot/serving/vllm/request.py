"""From a :class:`~bot.serving.generation.GenerationRequest` to a vLLM completion, and the streamed
token ids back to text the way the local engine makes it.

The prompt is sent as token ids (encoded here with the bot's tokenizer, over-long prompts cut
from the front like the engine does), and the reply's text is decoded here from the token ids
the server streams, with the engine's incremental detokenizer and the same stop-string cut and
hold-back. So both backends give identical text for identical tokens, whatever the server's own
detokenizer does, and neither ever shows part of a character.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bot.model.loading import encode_prompt
from bot.serving.detokenizer import IncrementalDetokenizer, held_back
from bot.serving.generation import GenerationRequest, GenerationResult

# no_repeat_ngram_size has no per-request equivalent in vLLM: not applied (docs/vllm.md).
MAX_SERVER_STOPS = 4


def prompt_ids(tokenizer: Any, request: GenerationRequest, max_positions: int) -> list[int]:
    """The prompt's token ids, keeping the end when it is too long (as the local engine does)."""
    ids = encode_prompt(tokenizer, request.prompt)
    room = max(1, max_positions - request.params.max_new_tokens)
    return ids[-room:]


def completion_payload(model: str, ids: Sequence[int], request: GenerationRequest) -> dict[str, Any]:
    """The /v1/completions body: the persona's sampling settings in vLLM's names."""
    p = request.params
    payload: dict[str, Any] = {
        "model": model,
        "prompt": list(ids),
        "max_tokens": p.max_new_tokens,
        "min_tokens": p.min_new_tokens,
        "temperature": max(p.temperature, 0.0),
        "top_p": p.top_p if 0 < p.top_p <= 1 else 1.0,
        "top_k": p.top_k if p.top_k > 0 else -1,
        "repetition_penalty": p.repetition_penalty,
        # vLLM accepts at most 4 stop strings; the decoder here applies all of them and closes
        # the stream at the first, so the rest only cost a few tokens of lookahead.
        "stop": list(request.stop[:MAX_SERVER_STOPS]),
        "bad_words": list(request.banned_words),
        "return_token_ids": True,
        "skip_special_tokens": True,
    }
    if request.seed is not None:
        payload["seed"] = request.seed
    return payload


class StreamDecoder:
    """Turns streamed token ids into the engine's text: incremental detokenization (whole
    characters only, :class:`~bot.serving.detokenizer.IncrementalDetokenizer`), the cut at a stop
    string, and a held-back tail that could still become one. ``feed`` returns the new text
    safe to show; the pieces concatenate to :attr:`text`."""

    def __init__(self, tokenizer: Any, request: GenerationRequest) -> None:
        self.request = request
        self.detokenizer = IncrementalDetokenizer(tokenizer)
        self.generated: list[int] = []
        self.text = ""
        self.emitted = 0
        self.finish_reason: str | None = None
        self._eos = tokenizer.eos_token_id

    def feed(self, token_ids: Sequence[int]) -> str:
        """Add tokens; returns the text newly safe to stream (may be empty)."""
        for token in token_ids:
            if self.finish_reason is not None:
                break
            if token == self._eos:
                self._end("eos")
                break
            self.generated.append(token)
            piece = self.detokenizer.push(token)
            if piece:
                before = len(self.text)
                self.text += piece
                self._cut_at_stop(before)
        return self._safe_piece()

    def finish(self, server_reason: str | None) -> str:
        """The server ended the stream: settle the reason; returns any text still held back."""
        if self.finish_reason is None:
            # The server stops on the same rules; what it calls "stop" without a stop string
            # found here was the end-of-sequence token.
            self._end("length" if server_reason == "length" else "eos")
        return self._safe_piece()

    def _end(self, reason: str) -> None:
        """End without a stop string: the last whole characters are flushed (a partial one is
        dropped), and may themselves complete a stop string."""
        self.finish_reason = reason
        before = len(self.text)
        self.text += self.detokenizer.flush()
        self._cut_at_stop(before)

    def _cut_at_stop(self, before: int) -> None:
        """Search only the region the new text can complete, so nothing streamed is taken back."""
        if len(self.generated) < self.request.params.min_new_tokens:
            return
        for stop in self.request.stop:
            at = self.text.find(stop, max(0, before - len(stop) + 1))
            if at != -1:
                self.text = self.text[:at]
                self.finish_reason = "stop"
                return

    def _safe_piece(self) -> str:
        stops = self.request.stop
        safe = len(self.text) if self.finish_reason else len(self.text) - held_back(self.text, stops)
        if safe <= self.emitted:
            return ""
        piece, self.emitted = self.text[self.emitted : safe], safe
        return piece

    def result(self, adapter: str, version: str | None, seconds: float) -> GenerationResult:
        return GenerationResult(
            text=self.text,
            new_tokens=len(self.generated),
            finish_reason=self.finish_reason or "length",
            adapter=adapter,
            adapter_version=version,
            seconds=seconds,
            batch_size=1,
        )
