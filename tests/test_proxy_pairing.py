"""Pairing a proxy bot's repost with the member message it replaces (bot/chatflow/proxy_pairing.py):
by channel, by text with the proxy tags removed, newest first, within the window, once."""

from __future__ import annotations

import asyncio

from bot.chatflow.proxy_pairing import KEEP_S, WINDOW_S, ProxyPairing


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_repost_pairs_with_the_original_whose_text_holds_it() -> None:
    clock = Clock()
    pairing = ProxyPairing(clock=clock)
    pairing.remember(1, channel_id=7, author_id=10, text="[やあ、元気？]")
    pairing.remember(2, channel_id=7, author_id=11, text="関係ない話")
    found = pairing.pair(100, channel_id=7, text="やあ、元気？")
    assert found is not None and found.original.message_id == 1 and found.author_id == 10
    assert pairing.repost_of(1) is found and pairing.reposted() == {1}


def test_only_the_same_channel_and_the_newest_unpaired_original_count() -> None:
    clock = Clock()
    pairing = ProxyPairing(clock=clock)
    pairing.remember(1, 7, 10, "k: おはよう")
    pairing.remember(2, 8, 11, "k: おはよう")  # another channel
    pairing.remember(3, 7, 12, "k:おはよう ")  # newer, same words (whitespace aside)
    assert pairing.pair(100, 7, "おはよう").original.message_id == 3  # type: ignore[union-attr]
    assert pairing.pair(101, 7, "おはよう").original.message_id == 1  # type: ignore[union-attr]
    assert pairing.pair(102, 7, "おはよう") is None  # each original is paired once
    assert pairing.pair(103, 9, "おはよう") is None


def test_an_original_outside_the_window_is_not_paired_and_empty_pairs_with_empty() -> None:
    clock = Clock()
    pairing = ProxyPairing(clock=clock)
    pairing.remember(1, 7, 10, "古い")
    pairing.remember(2, 7, 10, "")  # an attachment only
    clock.now += WINDOW_S + 1
    assert pairing.pair(100, 7, "古い") is None and not pairing.is_recent(1)
    pairing.remember(3, 7, 10, "")
    assert pairing.pair(101, 7, "").original.message_id == 3  # type: ignore[union-attr]
    assert pairing.pair(102, 7, "何か") is None  # text never pairs with an empty original


async def test_a_deletion_seen_first_waits_for_its_repost() -> None:
    pairing = ProxyPairing()
    pairing.remember(1, 7, 10, "[遅れて]")
    waiting = asyncio.ensure_future(pairing.wait_for_repost(1, 2.0))
    await asyncio.sleep(0.05)
    pairing.pair(100, 7, "遅れて")
    found = await asyncio.wait_for(waiting, 1.0)
    assert found is not None and found.repost_id == 100
    assert await pairing.wait_for_repost(2, 0.05) is None


def test_old_pairs_and_candidates_are_dropped() -> None:
    clock = Clock()
    pairing = ProxyPairing(clock=clock)
    pairing.remember(1, 7, 10, "[一]")
    assert pairing.pair(100, 7, "一") is not None
    clock.now += KEEP_S + 1
    pairing.remember(2, 7, 10, "[二]")
    assert pairing.pair(101, 7, "二") is not None  # pairing drops what is older than KEEP_S
    assert pairing.reposted() == {2}
