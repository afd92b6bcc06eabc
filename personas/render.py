"""The one prompt renderer: the bot renders generation prompts and the trainer renders
training examples with the same code, so a persona is trained on exactly the text
shape it later sees.

Three templates, all from the seeds:

* ``speaker-script``: ``ユーザー: …`` / ``魔理沙: …``, one turn per line; a newline ends a turn
  (written ``<NL>`` for tokenizers that cannot spell a newline, as rinna's cannot).
* ``rinna``: ``ユーザー: …<NL>システム: …``; ``<NL>`` ends a turn (rinna's tokenizer has no newline).
* ``alpaca``: the alpaca-ja instruction layout; the tokenizer's EOS text ends the response.

User text is untrusted: :func:`sanitize` makes sure it can neither start a turn nor end one.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from cachetools import LRUCache

from personas.card import PersonaCard

MAX_INPUT_CHARS = 4000  # Discord's own ceiling for a message (with Nitro)
# History is trimmed in steps: when it must lose turns it drops to this share of its budget (and of
# the turns it was given), then grows back, so consecutive prompts share their start (see
# PromptRenderer._history_start).
HISTORY_LOW_MARK = 0.5
# Lines remembered per renderer (16-byte digests): starts of recent prompts, and lines recently shown.
REMEMBERED_STARTS = 1024
REMEMBERED_LINES = 16384
NL_MARK = "<NL>"
ALPACA_PREAMBLE = "以下は、タスクを説明する指示です。要求を適切に満たす応答を書きなさい。"
# Labels users might type to impersonate a speaker, beside the card's own two.
COMMON_LABELS = ("ユーザー", "システム", "User", "Assistant", "USER", "ASSISTANT", "user", "assistant")
# Markers of other prompt formats; none of them may reach the model from user text.
FORMAT_MARKERS = (
    "[SEP]",
    "[CLS]",
    "[MASK]",
    "[PAD]",
    "[UNK]",
    "<s>",
    "</s>",
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    NL_MARK,
)
_BIDI_AND_ZERO_WIDTH = dict.fromkeys(
    [*range(0x200B, 0x2010), *range(0x202A, 0x202F), *range(0x2060, 0x2070), 0xFEFF, 0x00AD], None
)


def _partial_tail(text: str, literals: Iterable[str]) -> int:
    """Length of the longest end of ``text`` that is a proper start of one of ``literals``."""
    best = 0
    for literal in literals:
        for size in range(min(len(literal) - 1, len(text)), best, -1):
            if literal.startswith(text[-size:]):
                best = size
                break
    return best


class InputError(ValueError):
    """User text that cannot be answered; the message is safe to show the user."""


@dataclass(frozen=True)
class Turn:
    """One line of a conversation. ``speaker`` is the label printed in the prompt."""

    speaker: str
    text: str
    is_persona: bool = False


@dataclass(frozen=True)
class TokenizerFacts:
    """What the renderer needs to know about a tokenizer, without importing one."""

    eos_text: str = "</s>"
    special_texts: tuple[str, ...] = ()
    count_tokens: Callable[[str], int] = len
    # How a line break is written in prompts: "\n", or rinna's "<NL>" for tokenizers that
    # cannot spell a newline (they would silently turn it into a space).
    newline: str = "\n"
    # Tokens the tokenizer adds around any prompt (BOS, a trailing EOS): room they take in the context.
    prompt_special_tokens: int = 0

    @classmethod
    def from_tokenizer(cls, tokenizer) -> TokenizerFacts:
        specials = tuple(t for t in getattr(tokenizer, "all_special_tokens", []) if t)
        probe = tokenizer.decode(tokenizer("あ\nい", add_special_tokens=False)["input_ids"])
        return cls(
            eos_text=tokenizer.eos_token or "</s>",
            special_texts=specials,
            count_tokens=lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"]),
            newline="\n" if "\n" in probe else NL_MARK,
            prompt_special_tokens=len(tokenizer("", add_special_tokens=True)["input_ids"]),
        )


@dataclass(frozen=True)
class RenderedPrompt:
    text: str
    stop: tuple[str, ...]
    dropped_turns: int


@dataclass(frozen=True)
class Segment:
    """A piece of a training example; only ``trainable`` pieces carry loss."""

    text: str
    trainable: bool


# Removed wherever text is shown or used: controls (Cc) but line breaks and tabs, every format
# character (Cf: bidi embeddings, overrides and isolates, zero-width spaces and joiners, the BOM,
# soft hyphens, tag characters, …), surrogates (Cs) and private-use characters (Co).
_UNSHOWN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co"})


def clean_text(text: str) -> str:
    """Strip what no renderer, moderator or training file should ever see.

    The one cleaning rule for user and model text: lone surrogates go, CR, CRLF and the line and
    paragraph separators U+2028/U+2029 become a line break, and every invisible or
    direction-changing character (categories Cc except line break and tab, Cf, Cs, Co) is
    removed, so what remains reads the same as it displays. Visible text is never changed.
    """
    text = text.encode("utf-8", "ignore").decode("utf-8")  # drops lone surrogates
    text = text.translate(_BIDI_AND_ZERO_WIDTH)
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\u2028", "\n").replace("\u2029", "\n")
    return "".join(ch for ch in text if ch in "\n\t" or unicodedata.category(ch) not in _UNSHOWN_CATEGORIES)


def validate_user_message(text: str) -> str:
    """Reject what cannot be answered, with a message fit for the user."""
    if len(text) > MAX_INPUT_CHARS:
        raise InputError(
            f"That message is too long ({len(text)} characters; the limit is {MAX_INPUT_CHARS})."
        )
    cleaned = clean_text(text)
    if not cleaned.strip():
        raise InputError("That message is empty: there is nothing to answer.")
    return cleaned


class PromptRenderer:
    """Renders one persona's prompts for generation and its dialogues for training."""

    def __init__(self, card: PersonaCard, facts: TokenizerFacts | None = None) -> None:
        self.card = card
        self.facts = facts or TokenizerFacts()
        nl = self.nl = self.facts.newline
        self.turn_end = {"speaker-script": nl, "rinna": NL_MARK, "alpaca": self.facts.eos_text}[card.template]
        labels = {card.speaker, card.user_label, *COMMON_LABELS}
        # Longest first, so "ユーザー" is matched before a shorter label inside it.
        label_alt = "|".join(re.escape(label) for label in sorted(labels, key=len, reverse=True))
        self._label_re = re.compile(rf"({label_alt})\s*[:：]")
        markers = {*FORMAT_MARKERS, *self.facts.special_texts, self.facts.eos_text}
        self._marker_re = re.compile("|".join(re.escape(m) for m in sorted(markers, key=len, reverse=True)))
        self._alpaca_header_re = re.compile(
            r"#{2,}\s*(指示|入力|応答|Instruction|Input|Response)\s*[:：]?", re.I
        )
        # Digests of history lines that began a recent prompt, and of lines recently in one
        # (see _history_start); least recently used forgotten first.
        self._starts: LRUCache[bytes, None] = LRUCache(maxsize=REMEMBERED_STARTS)
        self._shown: LRUCache[bytes, None] = LRUCache(maxsize=REMEMBERED_LINES)

    # -- sanitizing -------------------------------------------------------

    def sanitize(self, text: str) -> str:
        """Make text inert inside a prompt: it can neither forge a turn nor end one.

        Newlines become spaces (a newline ends a turn in speaker-script), template and
        tokenizer markers are removed, and a speaker label's colon is dropped, so
        ``魔理沙: …`` stays words said by the user. Removal repeats until nothing changes,
        because removing one marker can join the halves of another (``<N<NL>L>``).
        """
        text = clean_text(text)
        previous = None
        while previous != text:
            previous = text
            text = self._marker_re.sub("", text)
            text = self._alpaca_header_re.sub("", text)
            text = self._label_re.sub(r"\1 ", text)
            text = re.sub(r"[\n\t]+", " ", text)
        return re.sub(r" {2,}", " ", text).strip()

    # -- the template, turn by turn ----------------------------------------

    def _header(self) -> str:
        card = self.card
        if card.template == "alpaca":
            nl = self.nl
            return f"{ALPACA_PREAMBLE}{nl}{nl}### 指示:{nl}{card.system_prompt}{nl}{nl}### 入力:{nl}"
        lines = [card.system_prompt]
        for ex in card.examples:
            lines.append(f"{card.user_label}: {ex.user}")
            lines.append(f"{card.speaker}: {ex.reply}")
        return self.turn_end.join(lines) + self.turn_end

    def _line(self, turn: Turn) -> str:
        """A finished context turn, sanitized, with its end-of-turn mark."""
        sep = self.nl if self.card.template == "alpaca" else self.turn_end
        return f"{turn.speaker}: {self.sanitize(turn.text)}{sep}"

    def _open(self) -> str:
        """What the prompt ends with: the persona's label, waiting for its words."""
        if self.card.template == "alpaca":
            return f"{self.nl}### 応答:{self.nl}"
        return f"{self.card.speaker}: "

    def _examples_as_context(self) -> str:
        # alpaca has no turn-by-turn header, so the card's examples sit in the input section.
        if self.card.template != "alpaca":
            return ""
        return "".join(
            f"{self.card.user_label}: {ex.user}{self.nl}{self.card.speaker}: {ex.reply}{self.nl}"
            for ex in self.card.examples
        )

    @property
    def stop_strings(self) -> tuple[str, ...]:
        card = self.card
        stops = [self.turn_end, f"{card.user_label}:", f"{card.user_label}：", "###", *card.stop]
        return tuple(dict.fromkeys(s for s in stops if s))

    # -- generation --------------------------------------------------------

    def render_prompt(self, history: Sequence[Turn], budget_tokens: int | None = None) -> RenderedPrompt:
        """Render ``history`` (oldest first, newest user message last) for generation.

        History is fitted into the card's token budget (or ``budget_tokens``, when the model's
        context leaves less: personas/context_fit.py) by dropping the oldest turns, in steps
        (see :meth:`_history_start`); the newest turn is never dropped, and one longer than the
        budget keeps its end (the words nearest the reply) and loses its start.
        """
        if not history:
            raise InputError("There is no message to answer.")
        budget = self.card.history_budget_tokens if budget_tokens is None else budget_tokens
        count = self.facts.count_tokens
        newest = history[-1]
        newest_line = self._line(newest)
        if count(newest_line) > budget:
            newest_line = self._fit_from_end(newest, budget)
        # Turns with nothing left after sanitizing (only markers or invisible characters) are
        # left out: an empty "ユーザー: " line says nothing.
        lines = [self._line(turn) for turn in history[:-1] if self.sanitize(turn.text)]
        start = self._history_start(lines, count(newest_line), budget)
        kept = [*lines[start:], newest_line]
        text = self._header() + self._examples_as_context() + "".join(kept) + self._open()
        return RenderedPrompt(text, self.stop_strings, len(history) - len(kept))

    def _history_start(self, lines: Sequence[str], newest_cost: int, budget: int) -> int:
        """Index of the first of ``lines`` (earlier turns, oldest first) to keep.

        Dropping only the oldest turn whenever the history overflows would change the prompt
        right after the card's header at every message once a channel is long, so no prefix
        cache (the local engine's or vLLM's) could reuse anything. Instead the history is cut
        in steps, and a cut point once chosen is kept while it still fits:

        1. a line that began a recent prompt and still fits the budget begins this one too
           (the oldest such line), so the prompt only grows at its end;
        2. otherwise, a conversation never seen before (a new channel, or the first message
           after a restart) keeps every turn that fits, as before;
        3. otherwise (the history outgrew the budget, or the channel's message window slid past
           the last start) it drops to ``HISTORY_LOW_MARK``: at most half the budget's tokens
           and half the turns it was given, and grows back from there.

        The trade-off: right after a cut a prompt holds about half the history it could, and
        on average about three quarters; in exchange consecutive prompts share everything up to
        their new turns except once per half a budget of growth. Lines are remembered by
        digest, per renderer (one per persona), in bounded least-recently-used sets.
        """
        costs = [self.facts.count_tokens(line) for line in lines]
        room = budget - newest_cost
        fit, used = len(lines), 0  # today's cut: every turn that fits, newest first
        while fit > 0 and used + costs[fit - 1] <= room:
            fit -= 1
            used += costs[fit]
        digests = [hashlib.blake2b(line.encode(), digest_size=16).digest() for line in lines]
        start = next((k for k in range(fit, len(lines)) if digests[k] in self._starts), None)
        if start is None:
            if fit == 0 and (not lines or digests[0] not in self._shown):
                start = 0
            else:
                low = int(budget * HISTORY_LOW_MARK) - newest_cost
                start, used = len(lines), 0
                while start > 0 and used + costs[start - 1] <= low:
                    start -= 1
                    used += costs[start]
                start = max(start, fit, len(lines) - int(len(lines) * HISTORY_LOW_MARK))
        if start < len(lines):
            self._starts[digests[start]] = None  # (re)set: the most recently used
        for digest in digests[start:]:
            self._shown[digest] = None
        return start

    def fixed_tokens(self) -> int:
        """Tokens every prompt of this persona spends outside the history: the system prompt and
        examples before it, the persona's open label after it (special tokens not included)."""
        return self.facts.count_tokens(self._header() + self._examples_as_context() + self._open())

    def _fit_from_end(self, turn: Turn, budget: int) -> str:
        text = self.sanitize(turn.text)
        lo, hi = 0, len(text)  # binary search for the longest suffix that fits
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.facts.count_tokens(self._line(Turn(turn.speaker, text[-mid:]))) <= budget:
                lo = mid
            else:
                hi = mid - 1
        return self._line(Turn(turn.speaker, text[-lo:] if lo else ""))

    def clean_reply(self, text: str) -> str:
        """Cut generated text at the end of its turn and remove template artefacts."""
        cut = len(text)
        for stop in self.stop_strings:
            idx = text.find(stop)
            if idx != -1:
                cut = min(cut, idx)
        text = text[:cut]
        text = self._marker_re.sub("", text)
        text = re.sub(rf"^\s*{re.escape(self.card.speaker)}\s*[:：]\s*", "", text)
        for word in self.card.banned_words:
            text = text.replace(word, "")
        return clean_text(text).strip()

    def draft_reply(self, text: str) -> str:
        """What of a reply still being generated may be shown now, cleaned as :meth:`clean_reply`.

        ``text`` is the raw generated text so far. A tail that could still grow into a stop
        string, a template marker or a banned word is held back, and nothing is shown while the
        start could still become the persona's own ``name:`` label, so each draft is a prefix
        of the final ``clean_reply`` (bar whitespace where the draft ends): nobody sees a piece
        of ``</s>`` or ``ユーザー:`` appear and vanish again.
        """
        text = text[: len(text) - _partial_tail(text, self._held_literals)]
        start = text.lstrip()
        name = self.card.speaker
        if name.startswith(start) or (start.startswith(name) and not start[len(name) :].strip()):
            return ""  # still possibly "name:", which clean_reply removes
        return self.clean_reply(text)

    @property
    def _held_literals(self) -> tuple[str, ...]:
        markers = {*FORMAT_MARKERS, *self.facts.special_texts, self.facts.eos_text}
        return (*self.stop_strings, *markers, *self.card.banned_words)

    # -- training ----------------------------------------------------------

    def render_training(self, turns: Sequence[Turn]) -> list[list[Segment]]:
        """Render a dialogue as training examples whose persona turns are the trainable parts.

        speaker-script and rinna give one example per dialogue, every persona turn (and
        its end-of-turn mark) trainable. alpaca answers once per prompt, so it gives one
        example per persona turn, the turns before it as input.
        """
        if not any(t.is_persona for t in turns):
            return []
        if self.card.template == "alpaca":
            return self._alpaca_examples(turns)
        segments = [Segment(self._header(), False)]
        for turn in turns:
            if turn.is_persona:
                segments.append(Segment(self._open(), False))
                segments.append(Segment(self.sanitize(turn.text) + self.turn_end, True))
            else:
                segments.append(Segment(self._line(turn), False))
        return [_merge(segments)]

    def _alpaca_examples(self, turns: Sequence[Turn]) -> list[list[Segment]]:
        examples = []
        for i, turn in enumerate(turns):
            if not turn.is_persona:
                continue
            context = "".join(self._line(t) for t in turns[:i])
            prompt = self._header() + self._examples_as_context() + context + self._open()
            examples.append([Segment(prompt, False), Segment(self.sanitize(turn.text) + self.turn_end, True)])
        return examples


def _merge(segments: Iterable[Segment]) -> list[Segment]:
    out: list[Segment] = []
    for seg in segments:
        if out and out[-1].trainable == seg.trainable:
            out[-1] = Segment(out[-1].text + seg.text, seg.trainable)
        else:
            out.append(seg)
    return out
