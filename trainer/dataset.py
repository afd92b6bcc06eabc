"""From normalized dialogue JSONL to token ids and labels.

Every dialogue is rendered by the persona's own :class:`PromptRenderer` (the one the bot
generates with), so the model trains on exactly the text shape it later continues.
The renderer marks which segments are the persona's; those tokens (each persona turn and
its end-of-turn mark) keep their ids as labels, every other token gets -100, so the loss
never teaches the model to write the user's lines. This is what TRL calls assistant-only loss
(``SFTConfig(assistant_only_loss=True)``; completion-only loss in its older
``DataCollatorForCompletionOnlyLM``): see :func:`assistant_only_labels`.

Segments are tokenized one by one and concatenated, so no token ever straddles a
trainable and an untrained span. The first segment goes through ``encode_prompt`` (BOS
exactly as the bot adds it); later ones are encoded as continuations, without the
leading word-boundary piece SentencePiece puts at the start of a text.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bot.model.loading import encode_prompt
from bot.ops.commandline import module_command
from personas.card import PersonaCard
from personas.render import PromptRenderer, Segment, Turn

log = logging.getLogger(__name__)

IGNORE_INDEX = -100  # what torch's cross_entropy (and transformers' and TRL's losses) skip


class DataError(ValueError):
    """A data file that cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class Dialogue:
    """One normalized dialogue, as read from a JSONL line."""

    source: str
    id: str
    turns: tuple[tuple[str, str], ...]  # (speaker, text)
    persona: str | None = None
    file: str = ""

    @property
    def key(self) -> str:
        # Ids are unique within a source only; the split and the bookkeeping use both.
        return f"{self.source}:{self.id}"


@dataclass(frozen=True)
class Example:
    """One training sequence: ``input_ids`` and ``labels`` have the same length (tokens);
    ``labels`` is the assistant-only mask (:func:`assistant_only_labels`)."""

    input_ids: list[int]
    labels: list[int]
    dialogue_key: str

    @property
    def trainable_tokens(self) -> int:
        """How many tokens the loss is computed on (labels other than IGNORE_INDEX)."""
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


@dataclass
class DataFile:
    path: str
    sha256: str
    dialogues: int
    exported_at: str | None = None  # export-reviews' sidecar, for the scheduler's "new since"


@dataclass
class DataStats:
    dialogues: int = 0
    without_persona_turn: int = 0
    examples: int = 0
    windows_split: int = 0  # dialogues cut into several examples to fit max_length
    truncated: int = 0  # examples whose context was cut from the left
    tokens: int = 0
    trainable_tokens: int = 0

    def add(self, examples: Sequence[Example]) -> None:
        self.examples += len(examples)
        self.tokens += sum(len(e.input_ids) for e in examples)
        self.trainable_tokens += sum(e.trainable_tokens for e in examples)


@dataclass
class DataBundle:
    train: list[Example]
    val: list[Example]
    files: list[DataFile]
    train_stats: DataStats = field(default_factory=DataStats)
    val_stats: DataStats = field(default_factory=DataStats)


# -- reading -----------------------------------------------------------------


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of the file's bytes, read in 1 MiB blocks; raises OSError if unreadable."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _prepare_hint() -> str:
    return (
        'training data is dialogue JSONL, one {"turns": [...]} object a line: convert raw files '
        f"with `{module_command('trainer prepare')}` first"
    )


def _parse_line(raw: Any, where: str, file: str) -> Dialogue:
    if not isinstance(raw, dict):
        raise DataError(f"{where}: expected a JSON object; {_prepare_hint()}")
    turns = raw.get("turns")
    if not isinstance(turns, list) or not turns:
        raise DataError(f"{where}: 'turns' must be a non-empty list")
    parsed = []
    for i, turn in enumerate(turns):
        if not (
            isinstance(turn, dict)
            and isinstance(turn.get("speaker"), str)
            and isinstance(turn.get("text"), str)
        ):
            raise DataError(f"{where}: turns[{i}] needs string 'speaker' and 'text'")
        parsed.append((turn["speaker"], turn["text"]))
    persona = raw.get("persona")
    if persona is not None and not isinstance(persona, str):
        raise DataError(f"{where}: 'persona' must be a string")
    return Dialogue(str(raw.get("source", "")), str(raw.get("id", "")), tuple(parsed), persona or None, file)


def read_dialogues(path: str | Path) -> list[Dialogue]:
    """Every dialogue in a JSONL file; a bad line is an error naming file and line, never skipped.

    Raises DataError for a line that is not a dialogue object, OSError if the file is unreadable.
    """
    out = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: not valid JSON: {exc}; {_prepare_hint()}") from None
            dialogue = _parse_line(raw, where, str(path))
            if not dialogue.id:
                dialogue = Dialogue(
                    dialogue.source, f"line{lineno}", dialogue.turns, dialogue.persona, str(path)
                )
            out.append(dialogue)
    return out


def check_dialogue_files(paths: Iterable[Path]) -> None:
    """Read each file as dialogue JSONL, no tokenizer needed: a raw CSV or a broken line fails
    here, in a second, rather than after the base model has loaded. Raises DataError or OSError."""
    for path in paths:
        read_dialogues(path)


def read_export_time(path: str | Path) -> str | None:
    """The export time export-reviews wrote beside its JSONL (``<file>.meta.json``), if any."""
    try:
        meta = json.loads(Path(f"{path}.meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = meta.get("exported_at") if isinstance(meta, dict) else None
    return value if isinstance(value, str) else None


def expand_paths(patterns: Iterable[str], *, data_dir: str, persona: str) -> list[Path]:
    """Fill in {data_dir}/{persona}, expand globs; a plain path that does not exist is an error.

    Returns the files in pattern order, each once. Raises DataError naming a missing plain path.
    """
    paths: list[Path] = []
    for pattern in patterns:
        text = pattern.format(data_dir=data_dir, persona=persona)
        if glob.has_magic(text):
            paths.extend(Path(p) for p in sorted(glob.glob(text)))
        elif Path(text).is_file():
            paths.append(Path(text))
        else:
            raise DataError(
                f"data file {text} does not exist (make it with `{module_command('trainer prepare')}`, "
                "or name other files with --data)"
            )
    return list(dict.fromkeys(paths))


# -- dialogue -> turns -> tokens ---------------------------------------------


def to_turns(dialogue: Dialogue, card: PersonaCard, persona_speakers: Sequence[str]) -> list[Turn]:
    """Mark the persona's turns; they take the card's speaker label, others keep their own names."""
    turns = []
    for speaker, text in dialogue.turns:
        is_persona = speaker == dialogue.persona if dialogue.persona else speaker in persona_speakers
        turns.append(Turn(card.speaker if is_persona else speaker, text, is_persona))
    return turns


def continuation_ids(tokenizer, text: str) -> list[int]:
    """Token ids for text that continues earlier text, without a start-of-text word boundary.

    SentencePiece tokenizers prefix a text with ``▁``; mid-sequence that piece is a space the
    text does not have. Encoding after the EOS token (a special token, so it never merges)
    and dropping it gives the pieces the text has in the middle of a sequence.
    """
    eos_text, eos_id = tokenizer.eos_token, tokenizer.eos_token_id
    if eos_text and eos_id is not None:
        ids = tokenizer(eos_text + text, add_special_tokens=False)["input_ids"]
        if ids and ids[0] == eos_id:
            return ids[1:]
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def assistant_only_labels(pieces: Sequence[Sequence[int]], trainable: Sequence[bool]) -> list[int]:
    """The labels of TRL's assistant-only (completion-only) loss for concatenated ``pieces``.

    ``pieces[i]`` are one segment's token ids; a trainable segment (a persona turn with its
    end-of-turn mark) keeps its ids as labels, any other becomes IGNORE_INDEX, so the loss only
    teaches the persona's lines. Returns one label per token, ``sum(len(p) for p in pieces)`` long.
    Raises ValueError if ``pieces`` and ``trainable`` differ in length.
    """
    labels: list[int] = []
    for piece, keep in zip(pieces, trainable, strict=True):
        labels.extend(piece if keep else [IGNORE_INDEX] * len(piece))
    return labels


class ExampleEncoder:
    """Turns rendered segments into (input_ids, labels), fitting them into ``max_length`` tokens;
    the labels are the assistant-only mask (:func:`assistant_only_labels`)."""

    def __init__(self, renderer: PromptRenderer, tokenizer, max_length: int) -> None:
        self.renderer = renderer
        self.tokenizer = tokenizer
        self.max_length = max_length
        self._warned_empty_turn_end = False

    def encode_segments(self, segments: Sequence[Segment]) -> tuple[list[int], list[int]]:
        """(input_ids, labels) of equal length for ``segments`` in order, with TRL's
        assistant-only loss mask: only the persona's (trainable) segments keep labels."""
        pieces = [
            encode_prompt(self.tokenizer, seg.text) if i == 0 else continuation_ids(self.tokenizer, seg.text)
            for i, seg in enumerate(segments)
        ]
        ids = [token for piece in pieces for token in piece]
        labels = assistant_only_labels(pieces, [seg.trainable for seg in segments])
        if not self._warned_empty_turn_end and self.renderer.turn_end.strip() == "":
            with_end = continuation_ids(self.tokenizer, "a" + self.renderer.turn_end)
            if len(with_end) <= len(continuation_ids(self.tokenizer, "a")):
                # e.g. a T5 tokenizer with speaker-script: a newline encodes to nothing, so the
                # model can never learn where its turn ends; the stop strings must do it.
                log.warning(
                    "this tokenizer cannot spell the %r turn end of template %r; the loss has no "
                    "end-of-turn token (the rinna template suits such tokenizers)",
                    self.renderer.turn_end,
                    self.renderer.card.template,
                )
                self._warned_empty_turn_end = True
        return ids, labels

    def _render_one(self, turns: Sequence[Turn]) -> tuple[list[int], list[int]] | None:
        """The example that ends with the last turn (the persona's), or None if there is none."""
        examples = self.renderer.render_training(turns)
        return self.encode_segments(examples[-1]) if examples else None

    def _fit(self, turns: Sequence[Turn], end: int, stats: DataStats) -> tuple[int, list[int], list[int]]:
        """The longest window ``turns[start:end]`` that fits; left-truncated if even one turn does not.

        Left truncation keeps the reply and the words nearest it, the same choice the
        engine makes for an over-long prompt.
        """
        start = end - 1
        best = self._render_one(turns[start:end])
        assert best is not None  # turns[end - 1] is the persona's
        while start > 0 and len(best[0]) <= self.max_length:
            wider = self._render_one(turns[start - 1 : end])
            assert wider is not None
            if len(wider[0]) > self.max_length:
                break
            start, best = start - 1, wider
        ids, labels = best
        if len(ids) > self.max_length:
            ids, labels = ids[-self.max_length :], labels[-self.max_length :]
            stats.truncated += 1
        return start, ids, labels

    def encode_dialogue(self, turns: Sequence[Turn], key: str, stats: DataStats) -> list[Example]:
        """All examples of a dialogue; every persona turn is trained on exactly once.

        A dialogue that does not fit is cut into windows from the end: the longest window
        ending at the last persona turn, then the same for what precedes it, and so on.
        """
        stats.dialogues += 1
        if not any(t.is_persona for t in turns):
            stats.without_persona_turn += 1
            return []
        if self.renderer.card.template == "alpaca":
            return self._encode_alpaca(turns, key, stats)
        whole = self._render_one(_trim_tail(turns))
        if whole is not None and len(whole[0]) <= self.max_length:
            out = [Example(whole[0], whole[1], key)]
        else:
            out = []
            end = len(_trim_tail(turns))
            while end > 0:
                start, ids, labels = self._fit(turns, end, stats)
                out.append(Example(ids, labels, key))
                end = len(_trim_tail(turns[:start]))
            out.reverse()
            stats.windows_split += len(out) > 1
        stats.add(out)
        return out

    def _encode_alpaca(self, turns: Sequence[Turn], key: str, stats: DataStats) -> list[Example]:
        # alpaca already gives one example per persona turn, each with its whole context.
        out = []
        for end in (i + 1 for i, t in enumerate(turns) if t.is_persona):
            _, ids, labels = self._fit(turns, end, stats)
            out.append(Example(ids, labels, key))
        stats.add(out)
        return out


def _trim_tail(turns: Sequence[Turn]) -> Sequence[Turn]:
    """Drop trailing non-persona turns: they carry no loss and only cost tokens."""
    end = len(turns)
    while end > 0 and not turns[end - 1].is_persona:
        end -= 1
    return turns[:end]


# -- split, batches ----------------------------------------------------------


def split_fraction(key: str, seed: int) -> float:
    """A stable number in [0, 1) per (seed, dialogue): the same split on every machine and run."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_keys(keys: Iterable[str], val_fraction: float, seed: int) -> set[str]:
    """The validation keys. Splitting by dialogue keeps windows of one dialogue on one side."""
    unique = sorted(set(keys))
    if val_fraction <= 0 or len(unique) < 2:
        return set()
    val = {k for k in unique if split_fraction(k, seed) < val_fraction}
    if not val:  # a small data set still gets a validation dialogue
        val = {min(unique, key=lambda k: split_fraction(k, seed))}
    if len(val) == len(unique):
        val.discard(max(val, key=lambda k: split_fraction(k, seed)))
    return val


def build_datasets(
    card: PersonaCard,
    renderer: PromptRenderer,
    tokenizer,
    data_files: Sequence[Path],
    reviewed_file: Path | None,
    *,
    persona_speakers: Sequence[str],
    max_length: int,
    val_fraction: float,
    seed: int,
    reviewed_repeat: int = 1,
) -> DataBundle:
    """Read, split and encode; reviewed dialogues are repeated in the training split only."""
    encoder = ExampleEncoder(renderer, tokenizer, max_length)
    files: list[DataFile] = []
    dialogues: list[tuple[Dialogue, int]] = []
    sources = [(p, 1) for p in data_files]
    if reviewed_file is not None:
        sources.append((reviewed_file, reviewed_repeat))
    for path, repeat in sources:
        read = read_dialogues(path)
        files.append(DataFile(str(path), sha256_file(path), len(read), read_export_time(path)))
        dialogues.extend((d, repeat) for d in read)
    if not dialogues:
        raise DataError("no dialogues to train on: the data files are empty")
    val_keys = split_keys((d.key for d, _ in dialogues), val_fraction, seed)
    bundle = DataBundle([], [], files)
    for dialogue, repeat in dialogues:
        is_val = dialogue.key in val_keys
        stats = bundle.val_stats if is_val else bundle.train_stats
        examples = encoder.encode_dialogue(to_turns(dialogue, card, persona_speakers), dialogue.key, stats)
        if is_val:
            bundle.val.extend(examples)
        else:
            bundle.train.extend(examples * repeat)
    return bundle


def batches(examples: Sequence[Example], batch_size: int, seed: int, epoch: int) -> list[list[Example]]:
    """This epoch's batches: a shuffle fixed by (seed, epoch), so a resumed run sees the same order."""
    order = list(range(len(examples)))
    random.Random(f"{seed}:{epoch}").shuffle(order)
    return [[examples[i] for i in order[k : k + batch_size]] for k in range(0, len(order), batch_size)]


def collate(examples: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded long tensors ``input_ids``, ``attention_mask``, ``labels``, each
    (len(examples), longest example in tokens); padding is masked out of attention and labels.
    Raises ValueError on an empty ``examples``."""
    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        input_ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        attention[i, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}
