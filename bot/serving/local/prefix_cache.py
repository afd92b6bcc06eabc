"""Prefix reuse: the KV cache of recent prompts and replies, per adapter, in a radix tree.

A chat channel sends the same persona card and the same history again with every message, only
longer, so most of each prompt was already read for the previous one. This cache keeps the keys
and values of finished rows (prompt and reply) and lets a new row start its prefill from the
longest cached prefix of its token ids (SGLang's RadixAttention, vLLM's automatic prefix caching).

* **Per adapter identity.** A LoRA on the attention projections changes K and V, so each tree
  belongs to one *key*: the adapter's internal name in the pool, which is new on every load
  (``marisa_3`` then ``marisa_7`` after a reload) and never reused. A prefix computed with one
  version can therefore never be served to a row of another; the old version's tree is dropped
  when the pool drops that adapter (:meth:`PrefixCache.drop`).
* **Radix tree.** An edge holds a run of token ids and their K/V, one tensor per layer of shape
  ``(heads, tokens, head_dim)``. Prompts that share the card's header share its nodes, so ten
  channels of one persona hold its system prompt and examples once.
* **Budget.** Bytes of K/V held, at most ``budget_bytes``; least recently used leaves are
  evicted first (a leaf's ancestors outlive it, so a shared header is the last to go). A budget
  of 0 turns reuse off; a sequence larger than the whole budget stores the prefix that fits.
* **Copies, not references.** A hit copies the prefix into the new row's batch cache, and a
  stored row is copied out of its batch, so nothing here aliases a running batch: evicting or
  dropping a node can never disturb a row.

Only the worker thread may use a cache: nothing here is thread-safe, by design.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

# (keys, values) per layer, each ``(heads, tokens, head_dim)``, for a run of token positions.
KeyValues = tuple[list[torch.Tensor], list[torch.Tensor]]
FetchFn = Callable[[int, int], KeyValues]


@dataclass(eq=False)
class _Node:
    tokens: tuple[int, ...]
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    parent: _Node | None
    children: dict[int, _Node] = field(default_factory=dict)
    last_used: int = 0

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))


@dataclass
class PrefixMatch:
    """The longest cached prefix of a row's ids: ``length`` tokens from ``segments`` (node, count)."""

    length: int = 0
    segments: list[tuple[_Node, int]] = field(default_factory=list)

    def write(self, keys: list[torch.Tensor], values: list[torch.Tensor], row: int, end: int) -> None:
        """Copy the prefix into batch tensors ``(rows, heads, columns, head_dim)`` per layer, at
        ``row``, ending before column ``end`` (columns ``end - length .. end - 1``)."""
        column = end - self.length
        for node, count in self.segments:
            for dst, src in zip(keys, node.keys, strict=True):
                dst[row, :, column : column + count] = src[:, :count]
            for dst, src in zip(values, node.values, strict=True):
                dst[row, :, column : column + count] = src[:, :count]
            column += count


@dataclass(frozen=True)
class PrefixCacheStats:
    budget_bytes: int
    used_bytes: int
    tokens: int  # tokens held (shared prefixes counted once)
    adapters: int  # adapter identities with a tree
    lookups: int
    hits: int  # lookups that reused at least one token
    tokens_reused: int  # prompt tokens whose prefill was skipped
    tokens_computed: int  # prompt tokens prefilled

    @property
    def reuse_rate(self) -> float:
        """Share of prompt tokens taken from the cache (0 before any lookup)."""
        total = self.tokens_reused + self.tokens_computed
        return self.tokens_reused / total if total else 0.0


class PrefixCache:
    """Radix trees of cached K/V, one per adapter identity, under one byte budget (LRU)."""

    def __init__(self, budget_bytes: int = 0) -> None:
        self.budget_bytes = max(0, int(budget_bytes))
        self._roots: dict[str, _Node] = {}
        self._clock = itertools.count(1)
        self.used_bytes = 0
        self.tokens = 0
        self.lookups = 0
        self.hits = 0
        self.tokens_reused = 0
        self.tokens_computed = 0

    @property
    def enabled(self) -> bool:
        return self.budget_bytes > 0

    def set_budget(self, budget_bytes: int) -> None:
        """Change the budget; evicts at once down to it (0 empties the cache and turns it off)."""
        self.budget_bytes = max(0, int(budget_bytes))
        self._evict(0, protect=())

    # -- lookup ------------------------------------------------------------------------

    def match(self, key: str, ids: Sequence[int]) -> PrefixMatch:
        """The longest cached prefix of ``ids`` under adapter identity ``key``; marks it used.

        The caller passes the ids it may skip (a prompt without its last token, whose logits it
        needs) and counts the lookup with :meth:`count`.
        """
        found = PrefixMatch()
        node = self._roots.get(key)
        if node is None or not self.enabled:
            return found
        now = next(self._clock)
        node.last_used = now
        at = 0
        while at < len(ids):
            child = node.children.get(ids[at])
            if child is None:
                break
            count = _common_length(child.tokens, ids, at)
            child.last_used = now
            found.segments.append((child, count))
            found.length += count
            at += count
            if count < len(child.tokens):
                break
            node = child
        return found

    def count(self, reused: int, computed: int) -> None:
        """Record one row's prefill: ``reused`` tokens from the cache, ``computed`` prefilled."""
        self.lookups += 1
        self.hits += reused > 0
        self.tokens_reused += reused
        self.tokens_computed += computed

    # -- insertion -----------------------------------------------------------------------

    def insert(self, key: str, ids: Sequence[int], bytes_per_token: int, fetch: FetchFn) -> int:
        """Store the K/V of ``ids`` under ``key``; returns how many tokens were newly stored.

        Only the part not cached yet is fetched: ``fetch(start, end)`` returns the K/V of
        ``ids[start:end]``, one ``(heads, end - start, head_dim)`` tensor per layer, copied out of
        the batch. Other trees' least recently used leaves are evicted to make room; what still
        does not fit is cut from the end (the start of a prompt is what other prompts share).
        """
        if not self.enabled or not ids or bytes_per_token <= 0:
            return 0
        now = next(self._clock)
        root = self._roots.get(key)
        if root is None:
            root = self._roots[key] = _Node((), [], [], None)
        root.last_used = now
        node, at = root, 0
        path = [root]
        while at < len(ids):
            child = node.children.get(ids[at])
            if child is None:
                break
            count = _common_length(child.tokens, ids, at)
            if count < len(child.tokens):
                child = self._split(child, count)
            child.last_used = now
            path.append(child)
            node, at = child, at + count
        want = len(ids) - at
        if want <= 0:
            return 0
        self._evict(want * bytes_per_token, protect=path)
        room = (self.budget_bytes - self.used_bytes) // bytes_per_token
        end = at + min(want, room)
        if end <= at:
            self._prune_empty(key)
            return 0
        keys, values = fetch(at, end)
        leaf = _Node(tuple(ids[at:end]), keys, values, node, last_used=now)
        node.children[ids[at]] = leaf
        self.used_bytes += leaf.nbytes
        self.tokens += end - at
        return end - at

    def _split(self, node: _Node, count: int) -> _Node:
        """Cut ``node``'s edge after ``count`` tokens; returns the new upper part (its parent's child)."""
        upper = _Node(
            node.tokens[:count],
            [k[:, :count].clone() for k in node.keys],
            [v[:, :count].clone() for v in node.values],
            node.parent,
            last_used=node.last_used,
        )
        before = node.nbytes
        node.tokens = node.tokens[count:]
        node.keys = [k[:, count:].clone() for k in node.keys]
        node.values = [v[:, count:].clone() for v in node.values]
        assert node.parent is not None
        node.parent.children[upper.tokens[0]] = upper
        upper.children[node.tokens[0]] = node
        node.parent = upper
        self.used_bytes += upper.nbytes + node.nbytes - before
        return upper

    # -- eviction and dropping -----------------------------------------------------------

    def drop(self, key: str) -> None:
        """Forget every prefix computed with adapter identity ``key`` (its adapter was unloaded)."""
        root = self._roots.pop(key, None)
        if root is None:
            return
        stack = list(root.children.values())
        while stack:
            node = stack.pop()
            self.used_bytes -= node.nbytes
            self.tokens -= len(node.tokens)
            stack.extend(node.children.values())

    def clear(self) -> None:
        for key in list(self._roots):
            self.drop(key)

    def _evict(self, needed: int, protect: Sequence[_Node]) -> None:
        """Evict least recently used leaves until ``needed`` more bytes fit the budget."""
        keep = set(map(id, protect))
        while self.used_bytes + needed > self.budget_bytes:
            leaves = [n for n in self._nodes() if not n.children and id(n) not in keep]
            if not leaves:
                return
            victim = min(leaves, key=lambda n: n.last_used)
            assert victim.parent is not None
            del victim.parent.children[victim.tokens[0]]
            self.used_bytes -= victim.nbytes
            self.tokens -= len(victim.tokens)
        for key in [k for k, root in self._roots.items() if not root.children and id(root) not in keep]:
            del self._roots[key]

    def _prune_empty(self, key: str) -> None:
        root = self._roots.get(key)
        if root is not None and not root.children:
            del self._roots[key]

    def _nodes(self):
        for root in self._roots.values():
            stack = list(root.children.values())
            while stack:
                node = stack.pop()
                yield node
                stack.extend(node.children.values())

    def stats(self) -> PrefixCacheStats:
        return PrefixCacheStats(
            budget_bytes=self.budget_bytes,
            used_bytes=self.used_bytes,
            tokens=self.tokens,
            adapters=len(self._roots),
            lookups=self.lookups,
            hits=self.hits,
            tokens_reused=self.tokens_reused,
            tokens_computed=self.tokens_computed,
        )

    def adapter_keys(self) -> list[str]:
        """Adapter identities that have cached prefixes."""
        return list(self._roots)


def _common_length(edge: Sequence[int], ids: Sequence[int], at: int) -> int:
    """How many leading tokens of ``edge`` equal ``ids[at:]`` (binary search on slice equality,
    which compares in C: a few list comparisons instead of a Python loop per token)."""
    limit = min(len(edge), len(ids) - at)
    if list(edge[:limit]) == list(ids[at : at + limit]):
        return limit
    lo, hi = 0, limit  # edge[:lo] matches, edge[:hi] does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if list(edge[:mid]) == list(ids[at : at + mid]):
            lo = mid
        else:
            hi = mid
    return lo
