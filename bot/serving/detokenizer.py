"""Incremental detokenization: text for each new token without decoding the whole reply again,
and never a partial character.

Why a window rather than ``decode(generated)`` every step: that costs O(reply length) per
token. The window trick (as in TGI and vLLM) decodes only the last few tokens twice, with
and without the newest one, and emits the difference. SentencePiece word-start spaces and
byte-level merges only depend on a token's neighbours, so a short window decodes the same
text as the full sequence.

Why pieces wait while the decoded tail ends in U+FFFD: with byte-fallback tokenizers (the
project's ``tiny-model --arch llama`` and many Llama-family Japanese models) a character
such as 😀 is four byte tokens, and the first three decode to U+FFFD. The piece is held
until the character is complete. Whatever is still incomplete when the reply ends (length,
stop, EOS, cancel) is dropped, so no cut ever shows "��". A U+FFFD left inside the text
(an invalid byte sequence a model can produce) is dropped as well: it is never a character
the model meant, only a decoding artefact.
"""

from __future__ import annotations

from collections.abc import Sequence

REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    """Turns a stream of token ids into text pieces that are always whole characters.

    ``push(token) -> str`` returns the new text (possibly ``""``); ``flush() -> str`` returns
    what is left when the reply ends, without an incomplete trailing character. The pieces
    concatenate to the reply's text. Cost per token: two decodes of a few tokens.
    """

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self._prefix = 0  # start of the decode window
        self._read = 0  # ids before this index have been emitted as text
        self._prefix_text = ""  # decode(ids[_prefix:_read]), cached

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, token: int) -> str:
        """Add one generated token; the text it completes (``""`` while a character is incomplete)."""
        self.ids.append(token)
        text = self._decode(self.ids[self._prefix :])
        if len(text) <= len(self._prefix_text) or text.endswith(REPLACEMENT):
            return ""  # nothing visible yet (special token), or a character still needs its bytes
        piece = text[len(self._prefix_text) :]
        self._prefix, self._read = self._read, len(self.ids)
        self._prefix_text = self._decode(self.ids[self._prefix : self._read])
        return piece.replace(REPLACEMENT, "")

    def flush(self) -> str:
        """Text of the tokens not yet emitted, dropping an incomplete trailing character."""
        text = self._decode(self.ids[self._prefix :])
        piece = text[len(self._prefix_text) :] if len(text) > len(self._prefix_text) else ""
        self._prefix = self._read = len(self.ids)
        self._prefix_text = ""
        return piece.replace(REPLACEMENT, "")


def held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of a stop string.

    That many characters are not streamed yet: they may still become a stop string, which
    is never shown, not even partly.
    """
    longest = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:k]):
                longest = k
                break
    return longest


def piece_text(piece: str | None) -> str:
    """A vocabulary piece as text: word-start marks as spaces, ASCII byte-fallback pieces as their character."""
    piece = piece or ""
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        value = int(piece[3:5], 16)
        return chr(value) if value < 0x80 else ""
    return piece.replace("▁", " ")
