"""What moderators see and what export-reviews writes never carries invisible or
direction-changing characters, while the database keeps the raw text for audit."""

from __future__ import annotations

import json
import sys
import unicodedata
from pathlib import Path

import pytest

from bot.discord.review_views import EditModal, review_embed
from bot.store.store import LogEntry, Store
from personas.render import clean_text
from trainer.export_reviews import export_reviews

# Every format character Python knows (bidi embeddings/overrides/isolates, zero-width space,
# joiners, word joiner, BOM, soft hyphen, tag characters, interlinear annotation …).
FORMAT_CHARS = "".join(c for c in map(chr, range(sys.maxunicode + 1)) if unicodedata.category(c) == "Cf")
BIDI = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c"
ZERO_WIDTH = "\u200b\u200c\u200d\u2060\ufeff"
REVERSED = "こんにちは\u202eおはよう"
# The cases, and a line of visible text with every kind of invisible character between.
SAMPLES = {
    "rlo": (REVERSED, "こんにちはおはよう"),
    "isolates": ("\u2067abc\u2069と\u2066def\u2069", "abcとdef"),
    "zero width": ("魔\u200b理\u200c沙\u200d だ\ufeffぜ\u2060", "魔理沙 だぜ"),
    "all Cf": ("前" + FORMAT_CHARS + "後", "前後"),
    "controls": ("a\x00b\x07c\x1b[31md\x7f\x85e", "abc[31mde"),
    "private use": ("\ue000x\U000f0000y", "xy"),
    "separators": ("一行目\u2028二行目\u2029三行目\r\n四行目", "一行目\n二行目\n三行目\n四行目"),
}
VISIBLE = "ふつうの文章😀👍🏽、emoji ❤️ と 1️⃣ と漢字\tタブ\n改行"


def test_format_characters_are_all_listed() -> None:
    assert set(BIDI + ZERO_WIDTH + "\u00ad") <= set(FORMAT_CHARS)


@pytest.mark.parametrize("raw,clean", SAMPLES.values(), ids=list(SAMPLES))
def test_clean_text_removes_every_invisible_and_direction_changing_character(raw: str, clean: str) -> None:
    assert clean_text(raw) == clean


def test_clean_text_keeps_visible_text_as_it_is() -> None:
    # Variation selectors and skin-tone modifiers are not format characters: emoji stay whole.
    assert clean_text(VISIBLE) == VISIBLE


def undefused(text: str) -> str:
    """The card's own zero-width space after '@' (it keeps a mention inert) taken out."""
    return text.replace("@\u200b", "@")


def assert_nothing_hidden(text: str) -> None:
    rest = undefused(text)
    hidden = sorted(
        {f"U+{ord(c):04X}" for c in rest if unicodedata.category(c) in ("Cf", "Cc", "Co", "Cs")} - {"U+000A"}
    )
    assert not hidden, f"hidden characters shown: {hidden} in {text!r}"


async def test_review_card_and_edit_form_show_no_hidden_characters(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "card.sqlite3")
    try:
        raw_user = "<@123> " + REVERSED + ZERO_WIDTH
        raw_reply = "おはよう\u2067だぜ\u2069" + BIDI + "！"
        log_id = await store.log_reply(
            LogEntry(
                guild_id=1,
                channel_id=2,
                message_id=3,
                user_id=10,
                persona_id="marisa",
                adapter_version=None,
                prompt="ユーザー: " + raw_user + "\n魔理沙: ",
                user_text=raw_user,
                reply=raw_reply,
            )
        )
        assert log_id is not None
        await store.decide(log_id, 1, "edited", "直した\u202e返事" + FORMAT_CHARS)
        item = await store.get_review(log_id)
        assert item is not None
        # The row keeps exactly what was written: moderators auditing abuse need the original.
        assert (item.user_text, item.reply) == (raw_user, raw_reply)
        assert item.edited_text == "直した\u202e返事" + FORMAT_CHARS.strip()
    finally:
        await store.close()
    embed = review_embed(item, "霧雨魔理沙")
    fields = {f.name: f.value or "" for f in embed.fields}
    assert embed.description == "おはようだぜ！"
    assert undefused(fields["Message"]) == "<@123> こんにちはおはよう"
    assert fields["Approved text (edited)"] == "直した返事"
    for text in (embed.title or "", embed.description or "", *fields.values(), embed.footer.text or ""):
        assert_nothing_hidden(text)
    modal = EditModal(log_id, clean_text(item.reply))
    assert modal.text.default == "おはようだぜ！"


async def test_export_reviews_writes_no_hidden_characters(tmp_path: Path) -> None:
    db = tmp_path / "export.sqlite3"
    store = await Store.open(db)
    try:
        shown = await store.add_candidate("marisa", REVERSED, "返事\u200bだ\u202eぜ", "p", "v1", {})
        edited = await store.add_candidate("marisa", "元気\u2066？\u2069", "元気です", "p", "v1", {})
        invisible = await store.add_candidate("marisa", ZERO_WIDTH + BIDI, "何も見えないぜ", "p", "v1", {})
        await store.decide(shown, 1, "approved")
        await store.decide(edited, 1, "edited", "\ufeff元気だぜ\u200f！")
        await store.decide(invisible, 1, "approved")
    finally:
        await store.close()
    result = await export_reviews(db, "marisa", tmp_path / "reviews.jsonl")
    lines = [json.loads(line) for line in (tmp_path / "reviews.jsonl").read_text("utf-8").splitlines()]
    assert [[t["text"] for t in line["turns"]] for line in lines] == [
        ["こんにちはおはよう", "返事だぜ"],
        ["元気？", "元気だぜ！"],
    ]
    assert (result.rows, result.skipped) == (2, 1)  # a question of only invisible characters is none
    text = (tmp_path / "reviews.jsonl").read_text("utf-8")
    assert not set(text) & set(FORMAT_CHARS)
