"""How the running batch uses the prefix cache: which newcomers are prefilled together and from
which cached prefix, and which leaving rows' keys and values are kept for later prompts.

* **Grouping newcomers.** A prefill forward is rectangular: every row pays for the longest rest
  (prompt minus reused prefix) in the group. Once prefixes are reused, rests differ a lot (a
  follow-up in an active channel: tens of tokens; a channel's first message after its history
  was trimmed: hundreds), so newcomers are taken shortest rest first while padding stays at most
  half of the group's columns; the others form the next group. A row passed over
  ``MAX_PASSED_OVER`` times goes first, so a long prompt is never starved by short ones.
* **Keeping rows.** A row that leaves after its prompt was read (finished or cancelled) has its
  prompt and reply so far copied into the cache under the adapter instance it is pinned to (a
  row keeps its admission version to its last token: bot/serving/local/adapter_pool.py), so a
  prefix is only ever stored under the weights that computed its K/V.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from bot.serving.local.batch import CausalBatch, PrefillBatch, SequenceState
from bot.serving.local.kv_cache import bytes_per_token, row_states
from bot.serving.local.prefix_cache import PrefixCache, PrefixMatch

MAX_PASSED_OVER = 3
KeyOf = Callable[[SequenceState], str]  # the adapter instance a row is pinned to, by PEFT name


def start_prefill(
    waiting: Sequence[SequenceState],
    cache: PrefixCache,
    key_of: KeyOf,
    pad: int,
    device: torch.device,
) -> tuple[PrefillBatch, list[SequenceState]]:
    """The next prefill group from ``waiting`` (non-empty) and the rows left waiting.

    Each row is matched against the cache (its prompt without the last token: that token's
    logits are needed), its ``cache_key`` and ``reused_tokens`` are set, and the group's
    prompt tokens are counted in the cache's figures.
    """
    matches: dict[int, PrefixMatch] = {}
    for seq in waiting:
        seq.cache_key = key_of(seq)
        matches[id(seq)] = cache.match(seq.cache_key, seq.prompt_ids[:-1]) if cache.enabled else PrefixMatch()

    def rest(seq: SequenceState) -> int:
        return len(seq.prompt_ids) - matches[id(seq)].length

    order = sorted(waiting, key=lambda s: (s.passed_over < MAX_PASSED_OVER, rest(s)))
    group = [order[0]]
    widest, total = rest(order[0]), rest(order[0])
    for seq in order[1:]:
        width = max(widest, rest(seq))
        if (len(group) + 1) * width <= 2 * (total + rest(seq)):  # padding at most half
            group.append(seq)
            widest, total = width, total + rest(seq)
    chosen = set(map(id, group))
    left = [s for s in waiting if id(s) not in chosen]
    for seq in left:
        seq.passed_over += 1
    group.sort(key=lambda s: waiting.index(s))  # admission order within the group
    prefixes = [matches[id(s)] for s in group]
    for seq, match in zip(group, prefixes, strict=True):
        seq.reused_tokens = match.length
        cache.count(match.length, len(seq.prompt_ids) - match.length)
    return PrefillBatch(group, pad, device, prefixes), left


def keep_rows(cache: PrefixCache, batch: CausalBatch, rows: Sequence[int], key_of: KeyOf) -> None:
    """Copy the K/V of ``batch``'s rows ``rows`` (about to leave it) into the cache."""
    if not cache.enabled or not rows:
        return
    per_token = bytes_per_token(batch.cache)
    for i in rows:
        seq = batch.seqs[i]
        if seq.cache_key is None or key_of(seq) != seq.cache_key:
            continue  # never prefilled, or (a broken invariant) not computed by its pinned instance
        columns = batch.attention[i].nonzero().squeeze(1)  # its real tokens, oldest first
        ids = (seq.prompt_ids + seq.generated)[: len(columns)]
        # The cache holds every token but the one chosen last (not fed yet), so len(columns)
        # is the prompt plus the reply minus that token.

        def fetch(start: int, end: int, i: int = i, columns: torch.Tensor = columns):
            return row_states(batch.cache, i, columns[start:end])

        cache.insert(seq.cache_key, ids, per_token, fetch)
