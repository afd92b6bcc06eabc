"""Replies can never ping: text is defused, and every send path passes AllowedMentions.none()."""

from __future__ import annotations

import pytest

from bot.text.mentions import ZWSP, defuse_mentions, has_live_mention


@pytest.mark.parametrize(
    "text",
    [
        "@everyone 集合だぜ",
        "@here みんな見て",
        "@EVERYONE",
        "<@123456789012345678> やあ",
        "<@!123456789012345678>",
        "<@&987654321> 役職",
        "@@everyone@here",
    ],
)
def test_defused_text_has_no_live_mention(text: str) -> None:
    assert has_live_mention(text)
    defused = defuse_mentions(text)
    assert not has_live_mention(defused)
    assert defused.replace(ZWSP, "") == text  # readable: nothing but an invisible space was added


def test_plain_text_is_untouched() -> None:
    text = "メールは a@example.com だぜ。<#123> はチャンネル"
    assert defuse_mentions(text) == text
