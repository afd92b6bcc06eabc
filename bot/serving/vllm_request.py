"""From a :class:`~bot.generation.GenerationRequest` to a vLLM completion, and the streamed
token ids back to text the way the local engine makes it.

The prompt is sent as token ids (encoded here with the bot's tokenizer, over-long prompts cut
from the front like the engine does), and the reply's text is decoded here from the token ids
the server streams, with the same stop-string cut and hold-back as the engine. So both
backends give identical text for identical tokens, whatever the server's own detokenizer does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bot.generation import GenerationRequest, GenerationResult
from bot.model_loading import encode_prompt

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
    """Turns streamed token ids into the engine's text: decode, cut at a stop string, hold back
    a tail that could still become one. ``feed`` returns the new text safe to show."""

    def __init__(self, tokenizer: Any, request: GenerationRequest) -> None:
        self.tokenizer = tokenizer
        self.request = request
        self.generated: list[int] = []
        self.text = ""
        self.emitted = 0
        self.finish_reason: str | None = None
        self._eos = tokenizer.eos_token_id

    def feed(self, token_ids: Sequence[int]) -> str:
        """Add tokens; returns the text newly safe to stream (may be empty)."""
        stops = self.request.stop
        for token in token_ids:
            if self.finish_reason is not None:
                break
            if token == self._eos:
                self.finish_reason = "eos"
                break
            self.generated.append(token)
            self.text = self.tokenizer.decode(self.generated, skip_special_tokens=True)
            if len(self.generated) >= self.request.params.min_new_tokens:
                for stop in stops:
                    at = self.text.find(stop)
                    if at != -1:
                        self.text = self.text[:at]
                        self.finish_reason = "stop"
                        break
        safe = len(self.text) if self.finish_reason else len(self.text) - _held_back(self.text, stops)
        if safe <= self.emitted:
            return ""
        piece, self.emitted = self.text[self.emitted : safe], safe
        return piece

    def finish(self, server_reason: str | None) -> str:
        """The server ended the stream: settle the reason; returns any text still held back."""
        if self.finish_reason is None:
            # The server stops on the same rules; what it calls "stop" without a stop string
            # found here was the end-of-sequence token.
            self.finish_reason = "length" if server_reason == "length" else "eos"
        piece, self.emitted = self.text[self.emitted :], len(self.text)
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


def _held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of text that is a proper prefix of a stop string."""
    longest = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:k]):
                longest = k
                break
    return longest
