"""Response ranking (open2ch's test set): Recall@k of the real reply among 10 candidates.

The file format and Recall@k follow the corpus's own ``eval_ranking.py`` (1never/open2ch-dialogue-corpus):
each context has 10 candidate replies, one of them real; a model ranks them by the summed
log-probability of each candidate given the rendered context.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from bot.model.loading import encode_prompt
from personas.card import PersonaCard
from personas.render import PromptRenderer, Turn
from trainer.dataset import IGNORE_INDEX, DataError, Example, collate, continuation_ids
from trainer.scoring import batch_nll

RANKING_CANDIDATES = 10
RECALL_AT = (1, 5)
BR_MARK = "__BR__"  # how the corpus writes a line break inside a post


@dataclass(frozen=True)
class RankingContext:
    context: tuple[str, ...]
    candidates: tuple[str, ...]
    labels: tuple[int, ...]


def read_ranking(path: Path, limit: int | None = None) -> list[RankingContext]:
    """Groups of 10 rows (label, context posts..., candidate) sharing one context."""
    rows = []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    # Universal newlines and \n-only splitting, as iterating the open file did.
    for lineno, line in enumerate(io.StringIO(text, newline=None), 1):
        parts = line.rstrip("\n").split("\t")
        if len(parts) < 3 or parts[0] not in ("0", "1"):
            if line.strip():
                raise DataError(f"{path}:{lineno}: expected 'label<TAB>context...<TAB>candidate'")
            continue
        rows.append((int(parts[0]), tuple(parts[1:-1]), parts[-1]))
    if len(rows) % RANKING_CANDIDATES:
        raise DataError(f"{path}: {len(rows)} rows is not a multiple of {RANKING_CANDIDATES}")
    contexts = []
    for k in range(0, len(rows), RANKING_CANDIDATES):
        group = rows[k : k + RANKING_CANDIDATES]
        if len({r[1] for r in group}) != 1 or sum(r[0] for r in group) != 1:
            raise DataError(f"{path}: rows {k + 1}-{k + 10} do not share one context with one real reply")
        contexts.append(RankingContext(group[0][1], tuple(r[2] for r in group), tuple(r[0] for r in group)))
        if limit and len(contexts) >= limit:
            break
    return contexts


def ranking_history(context: Sequence[str], card: PersonaCard) -> list[Turn]:
    """The posts as a conversation the persona answers: the last post is the user's, and
    posts alternate between two people, so every other post before it is the persona's."""
    turns = []
    for i, post in enumerate(context):
        persona_side = (len(context) - 1 - i) % 2 == 1
        text = post.replace(BR_MARK, "\n")
        turns.append(Turn(card.speaker, text, True) if persona_side else Turn(card.user_label, text))
    return turns


def ranking_examples(ctx: RankingContext, renderer: PromptRenderer, tokenizer) -> list[Example]:
    """One example per candidate: the rendered context, then the candidate as the persona's reply."""
    prompt = renderer.render_prompt(ranking_history(ctx.context, renderer.card)).text
    prompt_ids = encode_prompt(tokenizer, prompt)
    out = []
    for candidate in ctx.candidates:
        ids = continuation_ids(tokenizer, renderer.sanitize(candidate.replace(BR_MARK, "\n")))
        out.append(Example(prompt_ids + ids, [IGNORE_INDEX] * len(prompt_ids) + ids, "ranking"))
    return out


def recall_at_k(labels: np.ndarray, scores: np.ndarray, k: int) -> float:
    """eval_ranking.py's Recall@k: the real reply is among the k highest scores."""
    hits = 0
    for yt, yp in zip(labels, scores, strict=True):
        hits += int(any(yt[i] == 1 for i in yp.argsort()[::-1][:k]))
    return hits / len(labels) if len(labels) else float("nan")


@torch.no_grad()
def ranking_scores(
    model, contexts, renderer, tokenizer, device, dtype, progress: str | None = None
) -> np.ndarray:
    """Summed log-probability of each candidate given its context, shape (contexts, 10).

    ``progress``: the label of a tqdm bar on stderr (one tick per context), or None for none.
    """
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    scores = np.zeros((len(contexts), RANKING_CANDIDATES))
    ticks = tqdm(contexts, desc=progress, unit="context", file=sys.stderr, disable=progress is None)
    for i, ctx in enumerate(ticks):
        sums, _ = batch_nll(model, collate(ranking_examples(ctx, renderer, tokenizer), pad_id), device, dtype)
        scores[i] = -sums.double().cpu().numpy()
    return scores
