"""Routing among several vLLM servers, without servers: a conversation (a channel) sticks to the
server that answered it last, so that server's prefix cache hits, and falls back to the least
loaded one when that server is down, lacks the adapter, is excluded or is overloaded (issue 20).
Also how the servers' prefix-cache counters are read and shown in /status."""

from types import SimpleNamespace

from bot.discord.admin_text import status_lines
from bot.serving.generation import WorkerStats
from bot.serving.vllm.http import _PREFIX_COUNTER, PrefixCacheCounters
from bot.serving.vllm.pool import AFFINITY_ENTRIES, AFFINITY_SLACK, ServerPool


def pool(n: int = 3) -> ServerPool:
    clients = [SimpleNamespace(url=f"http://gpu{i}:8000") for i in range(n)]
    p = ServerPool(clients, [1, 2, 3], "base")
    for server in p.servers:
        server.healthy, server.problem, server.adapters = True, None, {"marisa@v1"}
    return p


def test_a_conversation_stays_on_its_server_while_others_get_the_least_loaded():
    p = pool()
    a, b, c = p.servers
    first = p.pick("marisa@v1", conversation="channel:1")
    first.outstanding += 1
    assert p.pick("marisa@v1") is not first  # no conversation: least loaded
    for _ in range(AFFINITY_SLACK):
        assert p.pick("marisa@v1", conversation="channel:1") is first
        first.outstanding += 1
    # Now AFFINITY_SLACK + 1 more than the idle servers: overloaded, the channel moves, and stays moved.
    moved = p.pick("marisa@v1", conversation="channel:1")
    assert moved is not first and moved.outstanding == 0
    assert p.pick("marisa@v1", conversation="channel:1") is moved
    assert {a, b, c} >= {first, moved}


def test_a_conversation_leaves_a_server_that_is_down_excluded_or_lacks_the_adapter():
    p = pool()
    home = p.pick("marisa@v1", conversation="channel:7")
    home.healthy = False
    other = p.pick("marisa@v1", conversation="channel:7")
    assert other is not home
    home.healthy = True
    assert p.pick("marisa@v1", conversation="channel:7") is other  # the new home is kept
    assert p.pick("marisa@v1", {other}, conversation="channel:7") is not other  # a retry elsewhere
    last = p.pick("marisa@v1", conversation="channel:7")
    last.adapters = set()  # reloading there, say
    assert p.pick("marisa@v1", conversation="channel:7") not in (None, last)
    assert pool(1).pick("zundamon@v1", conversation="channel:7") is None  # nobody has it


def test_remembered_conversations_are_bounded():
    p = pool(2)
    for i in range(AFFINITY_ENTRIES + 50):
        p.pick(None, conversation=f"channel:{i}")
    assert len(p._affinity) == AFFINITY_ENTRIES and "channel:0" not in p._affinity


def test_the_prefix_cache_counters_are_read_from_prometheus_text():
    text = "\n".join(
        [
            "# HELP vllm:prefix_cache_queries Prefix cache queries, in terms of number of queried tokens.",
            "# TYPE vllm:prefix_cache_queries counter",
            'vllm:prefix_cache_queries_total{engine="0",model_name="m"} 1200.0',
            'vllm:prefix_cache_queries_created{engine="0",model_name="m"} 1.7e+09',
            'vllm:prefix_cache_queries_total{engine="1",model_name="m"} 800.0',
            'vllm:prefix_cache_hits_total{engine="0",model_name="m"} 900.0',
            'vllm:external_prefix_cache_hits_total{engine="0",model_name="m"} 5.0',
        ]
    )
    totals: dict[str, float] = {}
    for match in _PREFIX_COUNTER.finditer(text):
        totals[match[1]] = totals.get(match[1], 0.0) + float(match[2])
    assert totals == {"queries": 2000.0, "hits": 900.0}


def test_status_shows_the_prefix_cache():
    local = WorkerStats(
        queue_depth=0,
        queue_capacity=64,
        in_flight=1,
        prompt_tokens_reused=7_500,
        prompt_tokens_computed=2_500,
        prefix_cache_hit_rate=0.75,
        prefix_cache_used_mb=412.4,
        prefix_cache_budget_mb=1024.0,
    )
    text = "\n".join(status_lines(local, None, 0))
    assert (
        "**Prefix cache**: 75% of prompt tokens reused (7,500 reused, 2,500 computed); 412 of 1,024 MiB in use"
        in text
    )
    off = WorkerStats(queue_depth=0, queue_capacity=64, in_flight=0, prefix_cache_budget_mb=0.0)
    assert "**Prefix cache**: off" in "\n".join(status_lines(off, None, 0))
    p = pool(2)
    p.servers[0].prefix_cache = PrefixCacheCounters(queries=1000, hits=640)
    p.servers[1].prefix_cache = None  # does not report it
    remote = WorkerStats(
        queue_depth=0, queue_capacity=64, in_flight=0, servers=[s.status() for s in p.servers]
    )
    lines = status_lines(remote, None, 0)
    assert lines[-3].endswith("1 adapters, prefix cache hit rate 64%") and "hit rate" not in lines[-2]
