"""A channel with a cast, end to end: the real bot against the loopback Discord emulator (fake
runtime). Who answers (a name, a reply, the lead), what each persona sees of the others,
threads and forum posts, personas answering each other, and the bad inputs of issue 17."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.serving.generation import GenerationError
from tests.discord_emulator import DiscordEmulator, StoredMessage
from tests.e2e.inprocess import TOKEN, EmulatedBot, emulated_bot
from tests.e2e.world import wait_until
from tests.fake_runtime import Script

CHANNEL_FORUM = 15


def with_forum(emu: DiscordEmulator) -> None:
    emu.state.add_channel("forum", None, "persona-forum", position=3, channel_type=CHANNEL_FORUM)


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[EmulatedBot]:
    async with emulated_bot(
        tmp_path,
        discord_settings={"use_webhooks": True},
        chat_settings={"rate_limit_per_minute": 0},  # many messages in a row
        world=with_forum,
    ) as harness:
        yield harness


def speaker(message: StoredMessage) -> str:
    """Who a persona message is from: the webhook's name (the persona's display name)."""
    assert message.source == "webhook", message.payload
    return str(message.payload["author"]["username"])


def button_ids(message: StoredMessage) -> list[str]:
    return [c["custom_id"] for row in message.payload.get("components") or [] for c in row["components"]]


async def logs(h: EmulatedBot):
    rows = await h.store._fetchall("SELECT id FROM logs ORDER BY id")
    return [await h.store.get_review(int(r["id"])) for r in rows]


def last_prompt(h: EmulatedBot) -> tuple[str, list[tuple[str, str, bool]]]:
    persona, turns = h.fake_chat.submitted[-1]
    return persona, [(t.speaker, t.text, t.is_persona) for t in turns]


# -- who answers -----------------------------------------------------------------------------------


async def test_a_cast_answers_by_name_by_reply_and_by_lead(h: EmulatedBot) -> None:
    added = await h.command("cast add", persona="marisa")
    assert "霧雨魔理沙" in added.text and "now answers every message here" in added.text
    added = await h.command("cast add", persona="zundamon")
    assert "joined the cast here: 霧雨魔理沙 (lead), ずんだもん" in added.text
    listed = await h.command("cast list")
    assert listed.ephemeral and "霧雨魔理沙 (lead), ずんだもん" in listed.text
    h.sent()
    h.fake_chat.scripts.extend(
        [
            Script("おう、みんな元気だぜ！"),
            Script("ずんだ餅は枝豆のお餅なのだ。"),
            Script("それは美味そうだぜ。"),
        ]
    )

    # an unaddressed message: the lead
    await h.say("こんにちは、みんな")
    [hello] = h.sent()
    assert speaker(hello) == "霧雨魔理沙" and hello.content == "おう、みんな元気だぜ！"

    # a message that names ずんだもん: her webhook answers, and she sees 魔理沙's line as another speaker's
    await h.say("ずんだもん、ずんだ餅って何？")
    [zunda] = h.sent()
    assert speaker(zunda) == "ずんだもん" and zunda.content == "ずんだ餅は枝豆のお餅なのだ。"
    persona, turns = last_prompt(h)
    assert persona == "zundamon"
    assert turns == [
        ("ユーザー", "こんにちは、みんな", False),
        ("霧雨魔理沙", "おう、みんな元気だぜ！", False),
        ("ユーザー", "ずんだもん、ずんだ餅って何？", False),
    ]

    # a reply to 魔理沙's message: 魔理沙 answers, seeing ずんだもん's line under her name
    await h.say("そういえば元気の秘訣は？", message_reference=hello.id)
    [back] = h.sent()
    assert speaker(back) == "霧雨魔理沙"
    persona, turns = last_prompt(h)
    assert persona == "marisa"
    assert ("ずんだもん", "ずんだ餅は枝豆のお餅なのだ。", False) in turns
    assert ("魔理沙", "おう、みんな元気だぜ！", True) in turns  # her own line is her own turn

    # a reply to ずんだもん's message: ずんだもん, though 魔理沙 leads
    await h.say("もう少し詳しく", message_reference=zunda.id)
    [again] = h.sent()
    assert speaker(again) == "ずんだもん"

    # every reply is logged under the persona that spoke, and gets its card
    rows = await logs(h)
    assert [r.persona_id for r in rows] == ["marisa", "zundamon", "marisa", "zundamon"]
    assert all(r.review_message_id is not None and r.turn == 0 for r in rows)


async def test_when_the_lead_leaves_the_next_leads_and_replies_still_reach_their_persona(
    h: EmulatedBot,
) -> None:
    await h.command("persona", persona="marisa")
    await h.command("cast add", persona="zundamon")
    await h.say("やあ")
    [hello] = h.sent()
    assert speaker(hello) == "霧雨魔理沙"
    removed = await h.command("cast remove", persona="marisa")
    assert "**霧雨魔理沙** left the cast here, which is now: ずんだもん (lead)" in removed.text
    await h.command("cast add", persona="marisa")  # back, behind the new lead
    await h.say("元気？")
    [lead] = h.sent()
    assert speaker(lead) == "ずんだもん"
    await h.say("さっきの続きを", message_reference=hello.id)
    [reply] = h.sent()
    assert speaker(reply) == "霧雨魔理沙"
    not_in = await h.command("cast remove", persona="ojousama")
    assert "**お嬢様** is not in the cast here" in not_in.text
    choices = await h.autocomplete("cast remove", "persona", "")
    assert [c["value"] for c in choices] == ["zundamon", "marisa"]
    off = await h.command("persona", persona="off")
    assert "No persona answers every message" in off.text
    await h.say("誰かいる？")
    assert h.sent() == []
    assert "No cast here" in (await h.command("cast list")).text


async def test_a_persona_no_longer_loaded_is_skipped_and_can_be_removed(h: EmulatedBot) -> None:
    await h.store.set_cast(h.chat, ["retired", "zundamon"])  # a card taken off disk since
    listed = await h.command("cast list")
    assert "`retired` (not loaded) (lead), ずんだもん" in listed.text
    await h.say("こんにちは")
    [reply] = h.sent()
    assert speaker(reply) == "ずんだもん"  # the first loaded one leads
    removed = await h.command("cast remove", persona="retired")
    assert "`retired` left the cast here, which is now: ずんだもん (lead)" in removed.text
    odd = await h.command("cast remove", persona="`x` @everyone")
    assert "is not in the cast here" in odd.text and "@everyone" not in odd.text  # defused
    assert await h.store.channel_cast(h.chat) == ("zundamon",)


async def test_cast_commands_are_checked_like_persona(tmp_path: Path) -> None:
    async with emulated_bot(tmp_path, world=with_forum) as h:
        h.set_discord(allowed_channels=(h.other,))
        refused = await h.command("cast add", persona="marisa")
        assert refused.ephemeral and "does not talk in this channel" in refused.text
        # where the command runs is checked first, whatever channel it names
        refused = await h.command("cast add", persona="marisa", options={"channel": "general"})
        assert refused.ephemeral and "does not talk in this channel" in refused.text
        h.set_discord(allowed_channels=(h.chat,))
        elsewhere = await h.command("cast add", persona="marisa", options={"channel": "general"})
        assert elsewhere.ephemeral and "does not talk in that channel" in elsewhere.text
        h.set_discord(allowed_channels=())
        unknown = await h.command("cast add", persona="nobody")
        assert unknown.ephemeral and "Unknown persona" in unknown.text
        not_a_place = await h.command(
            "cast add", persona="marisa", options={"channel": "review"}, user="member"
        )
        assert not not_a_place.ephemeral  # a text channel: fine
        h.set_discord(allowed_roles=(h.emu.state.role_keys["moderator"],))
        no_role = await h.command("cast remove", persona="marisa", user="member")
        assert no_role.ephemeral and "role" in no_role.text
        assert await h.store.channel_cast(h.other) is None and await h.store.channel_cast(h.chat) is None


# -- threads and forum posts ---------------------------------------------------------------------


async def test_a_thread_follows_its_channel_until_it_has_its_own_persona(h: EmulatedBot) -> None:
    await h.command("persona", persona="marisa")
    h.fake_chat.scripts.extend([Script("チャンネルでの返事だぜ"), Script("スレッドでの返事だぜ")])
    starter = await h.say("この話はスレッドでしよう")
    h.sent()
    thread_id = await h.start_thread("thread", "魔理沙と話す", from_message=starter)
    await h.say("魔理沙、どう思う？", channel="thread")  # no mention: the parent's persona answers
    [reply] = h.sent("thread")
    assert speaker(reply) == "霧雨魔理沙" and int(reply.channel_id) == thread_id
    persona, turns = last_prompt(h)
    # the thread's history is its own: the channel's conversation is not in it
    assert persona == "marisa" and turns == [("ユーザー", "魔理沙、どう思う？", False)]

    changed = await h.command("persona", channel="thread", persona="zundamon")
    assert "ずんだもん" in changed.text
    await h.say("こんにちは", channel="thread")
    assert speaker(h.sent("thread")[0]) == "ずんだもん"
    await h.say("こっちは？")  # the channel keeps its own
    assert speaker(h.sent("chat")[0]) == "霧雨魔理沙"
    listed = await h.command("cast list", channel="thread")
    assert "ずんだもん (lead)" in listed.text and "Taken from" not in listed.text

    # ``off`` in the thread is the thread's own choice: nobody answers there unasked
    await h.command("persona", channel="thread", persona="off")
    await h.say("独り言", channel="thread")
    assert h.sent("thread") == []


async def test_a_thread_the_bot_has_not_cached_is_looked_up_once(h: EmulatedBot) -> None:
    await h.command("persona", persona="marisa")
    thread_id = await h.start_thread("lost", "キャッシュにないスレッド")
    guild = h.bot.get_guild(int(h.emu.guild_id))
    guild._remove_thread(guild.get_thread(thread_id))  # as after a cache miss: a PartialMessageable
    mark = h.emu.mark()
    await h.say("魔理沙、聞こえる？", channel="lost")
    [reply] = h.sent("lost")
    assert "霧雨魔理沙" in reply.content  # the parent's persona answered
    lookups = [c for c in h.calls(mark) if c.method == "GET" and c.path == f"/channels/{thread_id}"]
    await h.say("もう一回", channel="lost")
    assert len(h.sent("lost")) == 1
    again = [c for c in h.calls(mark) if c.method == "GET" and c.path == f"/channels/{thread_id}"]
    assert len(lookups) == len(again) == 1  # remembered


async def test_a_thread_started_on_its_own_takes_the_cast_and_lists_where_from(h: EmulatedBot) -> None:
    await h.command("cast add", persona="marisa")
    await h.command("cast add", persona="zundamon")
    await h.start_thread("side", "雑談スレ")
    listed = await h.command("cast list", channel="side")
    assert "霧雨魔理沙 (lead), ずんだもん" in listed.text and f"Taken from <#{h.chat}>" in listed.text
    await h.say("ずんだもん、スレッドでもよろしく", channel="side")
    assert speaker(h.sent("side")[0]) == "ずんだもん"
    # adding in the thread gives it its own cast, starting from the inherited one
    added = await h.command("cast add", channel="side", persona="ojousama")
    assert "霧雨魔理沙 (lead), ずんだもん, お嬢様" in added.text
    assert await h.store.channel_cast(h.chat) == ("marisa", "zundamon")


async def test_a_forum_post_follows_its_forums_cast(h: EmulatedBot) -> None:
    forum = h.channel("forum")
    # nobody can type in a forum itself: its cast is set from elsewhere, naming it
    set_it = await h.command("cast add", persona="zundamon", options={"channel": "forum"})
    assert f"in <#{forum}>" in set_it.text and "ずんだもん" in set_it.text
    assert await h.store.channel_cast(forum) == ("zundamon",)
    h.fake_chat.scripts.append(Script("ずんだ餅は枝豆を潰して作るのだ！"))
    post_id = await h.forum_post("post", "ずんだ餅の作り方", "作り方を教えて！")
    [reply] = h.sent("post")
    assert speaker(reply) == "ずんだもん" and int(reply.channel_id) == post_id
    assert reply.content == "ずんだ餅は枝豆を潰して作るのだ！"
    [row] = await logs(h)
    assert (row.persona_id, row.channel_id, row.message_id) == ("zundamon", post_id, post_id)
    # a post's own /persona overrides its forum's
    await h.command("persona", channel="post", persona="marisa")
    await h.say("続きは？", channel="post")
    assert speaker(h.sent("post")[0]) == "霧雨魔理沙"


# -- personas answering each other -----------------------------------------------------------------


async def test_personas_answer_each_other_at_most_n_times(tmp_path: Path) -> None:
    async with DiscordEmulator(token=TOKEN) as emu:
        async with emulated_bot(
            tmp_path, emu=emu, discord_settings={"use_webhooks": True}, chat_settings={"cast_followups": 2}
        ) as h:
            await h.command("cast add", persona="marisa")
            await h.command("cast add", persona="zundamon")
            h.fake_chat.scripts.extend(
                [
                    Script("私は魔法の研究だぜ。"),
                    Script("ずんだ餅を作ったのだ。"),
                    Script("今度食わせてくれよ。"),
                ]
            )
            asked = await h.say("二人とも、今日は何してた？")
            said = h.sent()
            assert [(speaker(m), m.content) for m in said] == [
                ("霧雨魔理沙", "私は魔法の研究だぜ。"),
                ("ずんだもん", "ずんだ餅を作ったのだ。"),
                ("霧雨魔理沙", "今度食わせてくれよ。"),
            ]
            # ずんだもん answered 魔理沙's line: it was the turn she was given
            assert [p for p, _ in h.fake_chat.submitted] == ["marisa", "zundamon", "marisa"]
            zunda_turns = h.fake_chat.submitted[1][1]
            assert (zunda_turns[-1].speaker, zunda_turns[-1].text) == ("霧雨魔理沙", "私は魔法の研究だぜ。")
            rows = await logs(h)
            assert [(r.persona_id, r.turn, r.message_id, r.user_id) for r in rows] == [
                ("marisa", 0, asked, h.alice),
                ("zundamon", 1, asked, h.alice),
                ("marisa", 2, asked, h.alice),
            ]
            # each is the member's reply: the asker's buttons
            assert all(f":{h.alice}:" in button_ids(m)[0] for m in said)
        # a restart resumes nothing: the chain is not in memory, and nothing new is said
        async with emulated_bot(
            tmp_path, emu=emu, discord_settings={"use_webhooks": True}, chat_settings={"cast_followups": 2}
        ) as again:
            await again.settle()
            assert [m for m in again.sent() if not m.deleted][3:] == []
            assert len(again.fake_chat.submitted) == 0
            # the member deleting the message withdraws the whole chain's rows
            await again.delete(asked)
            assert await logs(again) == []


async def test_personas_do_not_answer_each_other_by_default(h: EmulatedBot) -> None:
    await h.command("cast add", persona="marisa")
    await h.command("cast add", persona="zundamon")
    await h.say("ずんだもん、魔理沙に何か言って")
    assert [speaker(m) for m in h.sent()] == ["ずんだもん"]


# -- bad input -------------------------------------------------------------------------------------


async def test_a_name_two_personas_share_gets_a_question_not_a_guess(h: EmulatedBot) -> None:
    cards = h.runtime.cards.cards
    cards["marisa2"] = dataclasses.replace(cards["marisa"], id="marisa2")  # same names, another id
    await h.command("cast add", persona="marisa")
    await h.command("cast add", persona="marisa2")
    await h.say("魔理沙、元気？")
    [notice] = h.sent()
    assert notice.source == "bot" and "could mean" in notice.content
    assert "`marisa`" in notice.content and "`marisa2`" in notice.content
    assert h.fake_chat.submitted == [] and await logs(h) == []
    await h.say("marisa2、元気？")  # the id is unambiguous
    [reply] = h.sent()
    assert h.fake_chat.submitted[-1][0] == "marisa2" and reply.source == "webhook"


async def test_a_cast_member_whose_adapter_fails_is_named_and_the_others_still_answer(h: EmulatedBot) -> None:
    adapters = Path(h.bot.settings.paths.adapters_dir) / "zundamon"
    adapters.mkdir(parents=True)
    (adapters / "CURRENT").write_text("v20250101-000000\n", encoding="utf-8")
    await h.command("cast add", persona="marisa")
    added = await h.command("cast add", persona="zundamon")
    assert "did not load" in added.text and "prompt-only" in added.text and "/reload zundamon" in added.text
    h.fake_chat.failing["zundamon"] = GenerationError("adapter for 'zundamon' not loaded: no server has it")
    await h.say("ずんだもん、いる？")
    [notice] = h.sent()
    assert notice.source == "bot" and "ずんだもん could not answer that" in notice.content
    assert "not loaded" in notice.content
    await h.say("魔理沙は？")
    [reply] = h.sent()
    assert speaker(reply) == "霧雨魔理沙"
    assert [r.persona_id for r in await logs(h)] == ["marisa"]


async def test_a_persona_removed_while_writing_finishes_once_and_then_is_gone(h: EmulatedBot) -> None:
    await h.command("cast add", persona="marisa")
    await h.command("cast add", persona="zundamon")
    gate = asyncio.Event()
    h.fake_chat.scripts.append(Script("ちょっと待つのだ、今書いてるのだ。", gate=gate))
    payload = await h.emu.send_message("chat", "member", "ずんだもん、長い話をして")
    chat = h.bot.chat
    await wait_until(lambda: chat.replies.all(), 5, interval=0.01, what="the reply to start")
    # /cast remove while she writes: answered at once, and says the reply in progress still comes
    record = await h.emu.slash_command("chat", "moderator", "cast remove", {"persona": "zundamon"})
    await h.received("interaction", lambda i: i.id == int(record.id))
    await h.answered(record)
    removal = await wait_until(
        lambda: [
            c.json["content"]
            for c in h.calls()
            if isinstance(c.json, dict) and "it answers nothing here after that" in str(c.json.get("content"))
        ],
        5,
        what="the removal notice",
    )
    assert "**ずんだもん** finishes the reply it is writing now" in removal[0]
    assert await h.store.channel_cast(h.chat) == ("marisa",)
    gate.set()
    await h.settle()
    said = [m for m in h.sent() if m.source == "webhook"]
    assert [(speaker(m), m.content) for m in said] == [("ずんだもん", "ちょっと待つのだ、今書いてるのだ。")]
    rows = await logs(h)
    assert [(r.persona_id, r.message_id) for r in rows] == [("zundamon", int(payload["id"]))]
    # afterwards her name no longer reaches her: the lead answers
    await h.say("ずんだもん、まだいる？")
    assert [speaker(m) for m in h.sent() if m.source == "webhook"] == ["霧雨魔理沙"]


async def test_personas_and_help_show_the_cast_here_and_in_a_thread(h: EmulatedBot) -> None:
    await h.command("cast add", persona="marisa")
    await h.command("cast add", persona="zundamon")
    await h.start_thread("thread", "スレッド")
    for where in ("chat", "thread"):
        shown = await h.command("personas", channel=where)
        names = [f["name"] for f in shown.callback["data"]["embeds"][0]["fields"]]
        marks = {n.split(" — ")[0]: n for n in names}
        assert "leads the cast here" in marks["霧雨魔理沙"] and "in the cast here" in marks["ずんだもん"]
        assert "cast" not in marks["お嬢様"]
        helped = await h.command("help", channel=where)
        assert "leads the cast here" in helped.text and "ずんだもん" in helped.text


async def test_every_cast_member_passes_the_same_filters_and_privacy_rules(tmp_path: Path) -> None:
    async with emulated_bot(
        tmp_path,
        discord_settings={"use_webhooks": True},
        chat_settings={"cast_followups": 1, "rate_limit_per_minute": 0},
    ) as h:
        await h.command("cast add", persona="marisa")
        await h.command("cast add", persona="zundamon")
        # the word filter and mention defusing, on the persona answering another too
        h.fake_chat.scripts.extend([Script("@everyone 集まれだぜ！"), Script("死ね、なのだ")])
        asked = await h.say("みんな集まって")
        said = h.sent()
        assert speaker(said[0]) == "霧雨魔理沙" and "@\u200beveryone" in said[0].content
        assert said[0].allowed_mentions == {"parse": []}
        assert [m.source for m in said[1:]] == ["bot"] and "held back" in said[1].content
        rows = await logs(h)
        assert [(r.persona_id, r.status, r.turn) for r in rows] == [
            ("marisa", "pending", 0),
            ("zundamon", "blocked", 1),
        ]
        assert all(r.message_id == asked for r in rows)
        # an opted-out member is answered by the cast, and nothing of it is logged
        await h.command("optout")
        h.fake_chat.scripts.extend([Script("こんにちはだぜ"), Script("こんにちはなのだ")])
        await h.say("こんにちは")
        assert [speaker(m) for m in h.sent()] == ["霧雨魔理沙", "ずんだもん"]
        assert len(await logs(h)) == 2


async def test_a_persona_removed_during_a_chain_does_not_speak_again(tmp_path: Path) -> None:
    async with emulated_bot(
        tmp_path,
        discord_settings={"use_webhooks": True},
        chat_settings={"cast_followups": 3, "rate_limit_per_minute": 0},
    ) as h:
        await h.command("cast add", persona="marisa")
        await h.command("cast add", persona="zundamon")
        gate = asyncio.Event()
        h.fake_chat.scripts.extend([Script("最初だぜ"), Script("次なのだ", gate=gate), Script("また私だぜ")])
        await h.emu.send_message("chat", "member", "話して")
        await wait_until(lambda: len(h.fake_chat.submitted) == 2, 5, interval=0.01, what="the second turn")
        await h.store.remove_from_cast(h.chat, "zundamon")
        gate.set()
        await h.settle()
        # ずんだもん's turn in progress is posted; then the cast has one member: the chain ends
        assert [speaker(m) for m in h.sent()] == ["霧雨魔理沙", "ずんだもん"]
        assert len(h.fake_chat.submitted) == 2
