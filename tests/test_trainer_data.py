"""Training data: the label mask, windows for long dialogues, the split and the config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bot.model.loading import load_tokenizer
from personas.card import load_cards
from personas.render import PromptRenderer, TokenizerFacts
from trainer.config import TrainConfigError, load_train_config
from trainer.dataset import (
    IGNORE_INDEX,
    DataError,
    DataStats,
    Dialogue,
    ExampleEncoder,
    assistant_only_labels,
    build_datasets,
    read_dialogues,
    split_keys,
    to_turns,
)
from trainer.tiny import build_tokenizer

CARDS = load_cards()

# The persona speaks three times; the other speakers say her name, even as a fake label.
MULTI = Dialogue(
    "test",
    "multi",
    (
        ("ユーザー", "魔理沙、元気？"),
        ("persona", "おう、元気だぜ！"),
        ("霊夢", "魔理沙: また森でキノコ？"),
        ("persona", "そうだぜ。今日は大きいのを見つけたんだぜ。"),
        ("ユーザー", "魔理沙はすごいね"),
        ("persona", "当然だぜ！"),
        ("ユーザー", "またね"),
    ),
    "persona",
)


@pytest.fixture(scope="module")
def llama_tok(tmp_path_factory):
    # Byte-fallback tokenizer: spells newlines, so decoding round-trips the rendered text.
    out = tmp_path_factory.mktemp("tok")
    build_tokenizer(out, "llama")
    return load_tokenizer(str(out))


def _runs(labels: list[int]) -> list[tuple[int, int]]:
    """(start, end) of each maximal run of labelled positions."""
    runs, start = [], None
    for i, x in enumerate([*labels, IGNORE_INDEX]):
        if x != IGNORE_INDEX and start is None:
            start = i
        elif x == IGNORE_INDEX and start is not None:
            runs.append((start, i))
            start = None
    return runs


@pytest.mark.parametrize("persona", ["marisa", "zundamon", "nucc"])
def test_label_mask_is_exactly_the_persona_turns_and_their_turn_end(llama_tok, persona):
    card = CARDS.get(persona)
    renderer = PromptRenderer(card, TokenizerFacts.from_tokenizer(llama_tok))
    turns = to_turns(MULTI, card, [])
    [example] = ExampleEncoder(renderer, llama_tok, 4096).encode_dialogue(turns, MULTI.key, DataStats())

    # The token sequence is the rendered text (without the untrainable trailing user turn),
    # nothing added or lost at segment joins.
    [segments] = renderer.render_training(turns[:-1])
    full = "".join(s.text for s in segments)
    assert llama_tok.decode(example.input_ids, skip_special_tokens=True) == full

    # Labels equal the ids where trained, and the trained runs are exactly the persona turns.
    for token, label in zip(example.input_ids, example.labels, strict=True):
        assert label in (IGNORE_INDEX, token)
    runs = _runs(example.labels)
    replies = [t.text for t in turns if t.is_persona]
    assert [llama_tok.decode(example.input_ids[a:b]) for a, b in runs] == [
        r + renderer.turn_end for r in replies
    ]
    # The other speakers' lines (with the persona's name) and the trailing user turn are context.
    context = llama_tok.decode(
        [t for t, lab in zip(example.input_ids, example.labels, strict=True) if lab == IGNORE_INDEX]
    )
    assert "魔理沙、元気？" in context and "魔理沙はすごいね" in context and "またね" not in context


def test_alpaca_gives_one_example_per_persona_turn_ending_in_eos(llama_tok):
    card = CARDS.get("ojousama")
    renderer = PromptRenderer(card, TokenizerFacts.from_tokenizer(llama_tok))
    examples = ExampleEncoder(renderer, llama_tok, 4096).encode_dialogue(
        to_turns(MULTI, card, []), MULTI.key, DataStats()
    )
    assert len(examples) == 3
    for example, reply in zip(
        examples,
        ["おう、元気だぜ！", "そうだぜ。今日は大きいのを見つけたんだぜ。", "当然だぜ！"],
        strict=True,
    ):
        [(a, b)] = _runs(example.labels)
        assert b == len(example.input_ids)  # the reply is the end of its example
        assert example.input_ids[-1] == llama_tok.eos_token_id
        assert llama_tok.decode(example.input_ids[a:b], skip_special_tokens=True) == reply


def test_long_dialogue_is_cut_into_windows_that_train_every_persona_turn_once(llama_tok):
    card = CARDS.get("marisa")
    renderer = PromptRenderer(card, TokenizerFacts.from_tokenizer(llama_tok))
    turns = to_turns(MULTI, card, [])
    whole = ExampleEncoder(renderer, llama_tok, 4096).encode_dialogue(turns, "k", DataStats())[0]
    limit = len(whole.input_ids) - 10
    stats = DataStats()
    examples = ExampleEncoder(renderer, llama_tok, limit).encode_dialogue(turns, "k", stats)
    assert len(examples) >= 2 and stats.windows_split == 1
    assert all(len(e.input_ids) <= limit for e in examples)
    trained = [llama_tok.decode(e.input_ids[a:b]) for e in examples for a, b in _runs(e.labels)]
    assert trained == [t.text + "\n" for t in turns if t.is_persona]


def test_over_long_turn_is_left_truncated_keeping_the_reply(llama_tok):
    card = CARDS.get("marisa")
    renderer = PromptRenderer(card, TokenizerFacts.from_tokenizer(llama_tok))
    turns = to_turns(
        Dialogue("t", "1", (("ユーザー", "やあ"), ("persona", "元気だぜ！")), "persona"), card, []
    )
    stats = DataStats()
    [example] = ExampleEncoder(renderer, llama_tok, 24).encode_dialogue(turns, "k", stats)
    assert len(example.input_ids) == 24 and stats.truncated == 1
    assert llama_tok.decode([x for x in example.labels if x != IGNORE_INDEX]) == "元気だぜ！\n"


def test_persona_turns_from_the_field_or_the_speaker_list():
    card = CARDS.get("marisa")
    by_field = Dialogue("t", "1", (("A", "x"), ("B", "y")), "B")
    assert [t.is_persona for t in to_turns(by_field, card, ["A"])] == [False, True]
    by_list = Dialogue("t", "2", (("ユーザー", "x"), ("魔理沙", "y")), None)
    turns = to_turns(by_list, card, ["魔理沙"])
    assert [(t.speaker, t.is_persona) for t in turns] == [("ユーザー", False), ("魔理沙", True)]


def test_split_is_deterministic_by_dialogue_and_seed():
    keys = [f"src:{i}" for i in range(400)]
    val = split_keys(keys, 0.1, seed=7)
    assert val == split_keys(reversed(keys), 0.1, seed=7)
    assert 20 <= len(val) <= 60
    assert val != split_keys(keys, 0.1, seed=8)
    assert len(split_keys(keys[:3], 0.05, seed=1)) == 1  # tiny data still gets a validation dialogue
    assert split_keys(keys, 0.0, seed=1) == set()


def test_bad_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"source":"s","id":"1","turns":[{"speaker":"a","text":"b"}]}\n{"turns": 3}\n')
    with pytest.raises(DataError, match=r"d\.jsonl:2"):
        read_dialogues(path)


def test_reviewed_dialogues_are_repeated_only_in_training(llama_tok, tmp_path):
    card = CARDS.get("marisa")
    renderer = PromptRenderer(card, TokenizerFacts.from_tokenizer(llama_tok))
    base = tmp_path / "base.jsonl"
    reviewed = tmp_path / "rev.jsonl"
    line = lambda i, src: json.dumps(  # noqa: E731
        {
            "source": src,
            "id": str(i),
            "persona": "p",
            "turns": [{"speaker": "ユーザー", "text": f"質問{i}"}, {"speaker": "p", "text": "答えだぜ"}],
        },
        ensure_ascii=False,
    )
    base.write_text("\n".join(line(i, "base") for i in range(20)) + "\n")
    reviewed.write_text("\n".join(line(i, "reviews") for i in range(5)) + "\n")
    bundle = build_datasets(
        card, renderer, llama_tok, [base], reviewed,
        persona_speakers=[], max_length=512, val_fraction=0.2, seed=3, reviewed_repeat=3,
    )  # fmt: skip
    n_val_reviews = sum(e.dialogue_key.startswith("reviews:") for e in bundle.val)
    n_train_reviews = sum(e.dialogue_key.startswith("reviews:") for e in bundle.train)
    assert n_train_reviews == 3 * (5 - n_val_reviews)
    assert not {e.dialogue_key for e in bundle.train} & {e.dialogue_key for e in bundle.val}
    assert [f.dialogues for f in bundle.files] == [20, 5]


def test_train_config_layers_file_persona_table_and_overrides(tmp_path: Path):
    path = tmp_path / "t.toml"
    path.write_text('r = 4\nepochs = 2\n[personas.marisa]\nr = 8\npersona_speakers = ["魔理沙"]\n')
    cfg = load_train_config(path, "marisa", {"epochs": 5})
    assert (cfg.r, cfg.epochs, cfg.persona_speakers) == (8, 5, ("魔理沙",))
    assert load_train_config(path, "nucc").r == 4
    assert load_train_config(None, "marisa").persona_speakers  # the shipped defaults load
    path.write_text("learning_rat = 1\n")
    with pytest.raises(TrainConfigError, match="learning_rat"):
        load_train_config(path, "marisa")
    with pytest.raises(TrainConfigError, match="dropout"):
        load_train_config(None, "marisa", {"dropout": 1.5})


def test_assistant_only_labels_keep_only_the_persona_segments() -> None:
    """TRL's assistant-only (completion-only) loss: context tokens are IGNORE_INDEX."""
    labels = assistant_only_labels([[1, 2], [3], [4, 5, 6]], [False, True, False])
    assert labels == [IGNORE_INDEX, IGNORE_INDEX, 3, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]
    with pytest.raises(ValueError):
        assistant_only_labels([[1], [2]], [True])
