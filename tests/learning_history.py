"""A synthetic review history for the learning loop's tests: moderators approve replies in one
style (魔理沙's 「…だぜ！」) and reject or correct replies in another (polite 「…です。」).

Rows are logged with the prompt the bot's renderer makes, the version that "wrote" them, and
decided the way a moderator would; ids are consecutive from 1, so the held-out split
(``bot.store.heldout``: ids 13, 20, 25, 26, 27, 40, 54, 60, ... of the first 60) always holds
approvals, rejections and edits.
"""

from __future__ import annotations

from pathlib import Path

from bot.store.store import LogEntry, Store
from personas.card import load_cards
from personas.render import PromptRenderer, Turn

CARD = load_cards().get("marisa")
QUESTIONS = ["元気？", "おはよう", "今日は何してた？", "魔法って難しい？", "疲れたよ", "好きな食べ物は？"]
GOOD = ["元気だぜ！", "おはようだぜ！", "研究してたんだぜ！", "努力次第だぜ！", "休むといいぜ！", "キノコだぜ！"]
BAD = ["元気です。", "おはようございます。", "研究していました。", "難しいです。", "休んでください。", "キノコです。"]


def kind_of(log_id: int) -> str:
    """approved, rejected or edited, by id: every third row rejected, every fifth edited."""
    if log_id % 5 == 0:
        return "edited"
    return "rejected" if log_id % 3 == 0 else "approved"


async def write_history(database: str | Path, rows: int = 60, version: str | None = "v1") -> None:
    renderer = PromptRenderer(CARD)
    store = await Store.open(database)
    try:
        for i in range(rows):
            q = QUESTIONS[i % len(QUESTIONS)]
            prompt = renderer.render_prompt([Turn(CARD.user_label, q)]).text
            log_id = i + 1
            kind = kind_of(log_id)
            reply = GOOD[i % len(GOOD)] if kind == "approved" else BAD[i % len(BAD)]
            got = await store.log_reply(
                LogEntry(1, 2, 100 + i, 10, CARD.id, version, prompt, q, reply, participants=(10,))
            )
            assert got == log_id
            if kind == "edited":
                await store.decide(log_id, 9, "edited", GOOD[i % len(GOOD)])
            else:
                await store.decide(log_id, 9, kind)
    finally:
        await store.close()


def write_train_config(path: Path, **keys) -> Path:
    """A small training TOML for tiny models: short windows, few steps, the gate's probes off."""
    values = {
        "max_length": 64,
        "batch_size": 4,
        "grad_accum": 1,
        "max_steps": 6,
        "warmup_ratio": 0.0,
        "prefer_learning_rate": 2e-2,
        "val_fraction": 0.0,
        "log_every": 2,
        "gate_probes": 0,
        **keys,
    }
    import json

    lines = [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_bot_config(path: Path, model: Path, root: Path, extra: str = "") -> Path:
    path.write_text(
        f'[model]\nbase_model = "{model}"\ndevice = "cpu"\n'
        f'[paths]\nadapters_dir = "{root / "adapters"}"\ndatabase = "{root / "bot.sqlite3"}"\n'
        f'data_dir = "{root}"\n'
        # The history's replies are in server 1: listed, so its approvals may train.
        f"[discord]\nallowed_servers = [1]\n{extra}",
        encoding="utf-8",
    )
    return path
