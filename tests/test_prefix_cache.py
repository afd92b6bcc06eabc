"""The prefix cache on its own: longest-prefix match, shared prefixes held once, the byte budget
(LRU eviction, a budget smaller than one sequence, 0 = off) and separate adapter identities."""

import torch

from bot.serving.local.prefix_cache import PrefixCache

LAYERS, HEADS, DIM = 2, 2, 4
PER_TOKEN = LAYERS * 2 * HEADS * DIM * 4  # float32 keys and values of every layer


def fake_states(ids):
    """K/V whose every entry names its token, so a wrong copy shows."""

    def fetch(start, end):
        run = torch.tensor(ids[start:end], dtype=torch.float32)
        keys = [run.view(1, -1, 1).expand(HEADS, -1, DIM).clone() + layer for layer in range(LAYERS)]
        values = [k + 0.5 for k in keys]
        return keys, values

    return fetch


def insert(cache, key, ids):
    return cache.insert(key, ids, PER_TOKEN, fake_states(ids))


def copied(cache, key, ids):
    """What a hit writes into a batch row: the token ids read back from the copied keys."""
    match = cache.match(key, ids)
    keys = [torch.zeros((1, HEADS, match.length, DIM)) for _ in range(LAYERS)]
    values = [torch.zeros((1, HEADS, match.length, DIM)) for _ in range(LAYERS)]
    match.write(keys, values, 0, match.length)
    for layer in range(LAYERS):
        assert torch.equal(values[layer], keys[layer] + 0.5)
    return [int(t) for t in keys[0][0, 0, :, 0].tolist()]


def test_the_longest_cached_prefix_is_found_and_copied_token_for_token():
    cache = PrefixCache(1 << 20)
    insert(cache, "a_1", [1, 2, 3, 4, 5, 6])
    insert(cache, "a_1", [1, 2, 3, 9, 9])  # splits the first edge after 3 tokens
    assert copied(cache, "a_1", [1, 2, 3, 4, 5, 6, 7]) == [1, 2, 3, 4, 5, 6]
    assert copied(cache, "a_1", [1, 2, 3, 9, 8]) == [1, 2, 3, 9]
    assert copied(cache, "a_1", [1, 2, 7]) == [1, 2]
    assert cache.match("a_1", [5, 1, 2]).length == 0
    # The shared start is held once: 6 + 2 tokens, not 6 + 5.
    assert cache.tokens == 8 and cache.used_bytes == 8 * PER_TOKEN


def test_inserting_what_is_cached_stores_nothing_and_fetches_nothing():
    cache = PrefixCache(1 << 20)
    insert(cache, "a_1", [1, 2, 3, 4])

    def never(start, end):
        raise AssertionError("fetched a cached run again")

    assert cache.insert("a_1", [1, 2, 3], PER_TOKEN, never) == 0
    assert cache.insert("a_1", [1, 2, 3, 4], PER_TOKEN, never) == 0
    assert cache.tokens == 4


def test_adapter_identities_never_share_prefixes():
    cache = PrefixCache(1 << 20)
    insert(cache, "marisa_1", [1, 2, 3, 4])
    assert cache.match("marisa_2", [1, 2, 3, 4, 5]).length == 0
    assert cache.match("__base__", [1, 2, 3, 4, 5]).length == 0
    insert(cache, "marisa_2", [1, 2, 3])
    cache.drop("marisa_1")  # the pool deleted that version's weights
    assert cache.match("marisa_1", [1, 2, 3, 4]).length == 0
    assert cache.adapter_keys() == ["marisa_2"] and cache.tokens == 3 and cache.used_bytes == 3 * PER_TOKEN


def test_least_recently_used_prefixes_are_evicted_to_stay_within_the_budget():
    cache = PrefixCache(10 * PER_TOKEN)
    insert(cache, "a_1", [1, 1, 1, 1])
    insert(cache, "b_1", [2, 2, 2, 2])
    cache.match("a_1", [1, 1, 1, 1, 0])  # a is now more recent than b
    insert(cache, "a_1", [3, 3, 3, 3])  # needs room: b goes, not a
    assert cache.used_bytes <= cache.budget_bytes
    assert cache.match("b_1", [2, 2, 2, 2]).length == 0
    assert cache.match("a_1", [1, 1, 1, 1]).length == 4 and cache.match("a_1", [3, 3, 3, 3]).length == 4
    for n in range(40):  # a long run never exceeds the budget
        insert(cache, f"k_{n % 3}", [n, n + 1, n + 2])
        assert cache.used_bytes <= cache.budget_bytes
        assert cache.used_bytes == cache.tokens * PER_TOKEN


def test_a_shared_start_outlives_the_branches_that_use_it():
    cache = PrefixCache(9 * PER_TOKEN)
    insert(cache, "a_1", [7, 7, 7, 7, 1, 1])
    insert(cache, "a_1", [7, 7, 7, 7, 2, 2])
    insert(cache, "a_1", [7, 7, 7, 7, 3, 3, 3])  # evicts the oldest branch, keeps the header
    assert cache.match("a_1", [7, 7, 7, 7, 9]).length == 4
    assert cache.match("a_1", [7, 7, 7, 7, 1, 1]).length == 4
    assert cache.used_bytes <= cache.budget_bytes


def test_a_budget_smaller_than_one_sequence_keeps_the_start_that_fits():
    cache = PrefixCache(3 * PER_TOKEN + PER_TOKEN // 2)
    assert insert(cache, "a_1", [1, 2, 3, 4, 5, 6]) == 3
    assert copied(cache, "a_1", [1, 2, 3, 4, 5, 6]) == [1, 2, 3]
    assert cache.used_bytes == 3 * PER_TOKEN <= cache.budget_bytes
    assert PrefixCache(PER_TOKEN - 1).insert("a_1", [1, 2], PER_TOKEN, fake_states([1, 2])) == 0


def test_a_budget_of_zero_is_off_and_lowering_the_budget_evicts_at_once():
    off = PrefixCache(0)
    assert not off.enabled and insert(off, "a_1", [1, 2, 3]) == 0
    assert off.match("a_1", [1, 2, 3]).length == 0 and off.used_bytes == 0
    cache = PrefixCache(1 << 20)
    insert(cache, "a_1", [1, 2, 3])
    insert(cache, "b_1", [4, 5, 6])
    cache.set_budget(3 * PER_TOKEN)
    assert cache.used_bytes <= 3 * PER_TOKEN
    cache.set_budget(0)
    assert cache.used_bytes == 0 and cache.tokens == 0 and cache.adapter_keys() == []


def test_the_figures_count_reused_and_computed_tokens():
    cache = PrefixCache(1 << 20)
    cache.count(0, 10)
    cache.count(30, 5)
    stats = cache.stats()
    assert (stats.lookups, stats.hits, stats.tokens_reused, stats.tokens_computed) == (2, 1, 30, 15)
    assert abs(stats.reuse_rate - 30 / 45) < 1e-12
