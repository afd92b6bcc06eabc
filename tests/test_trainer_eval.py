"""Evaluation: ranking scores by the corpus' definition, style shares, and a side-by-side report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from bot.config import ModelSettings, PathSettings, Settings
from bot.model.adapters import set_current
from bot.model.loading import encode_prompt, load_base_model
from personas.card import load_cards
from personas.render import PromptRenderer, TokenizerFacts
from trainer.config import TrainConfig
from trainer.dataset import continuation_ids
from trainer.evaluate import evaluate, format_table, resolve_target, style_scores
from trainer.ranking import RankingContext, ranking_history, ranking_scores, read_ranking, recall_at_k

CARD = load_cards().get("marisa")
# Invented rows in the open2ch ranking layout: label, context posts, candidate.
CONTEXTS = [
    (["今日は寒いね", "ほんとに寒い__BR__手が冷たい"], ["こたつに入ろう", "野球の話", "カレーが食べたい"]),
    (["明日は雨らしいよ"], ["傘を持っていこう", "映画を見た", "電車が遅れた"]),
    (["新しいゲーム買った", "どんなやつ？", "冒険するやつ"], ["面白そうだね", "寝坊した", "駅前の店"]),
]


def write_ranking(path: Path) -> Path:
    rows = []
    for context, (real, *others) in CONTEXTS:
        fillers = [*others, *(f"関係ない話{i}" for i in range(7))]
        for label, cand in [(1, real), *((0, c) for c in fillers)]:
            rows.append("\t".join([str(label), *context, cand]))
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def setup(tiny_llama, random_adapters, tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    adapters = root / "adapters"
    for version, name in (("v1", "marisa"), ("v2", "zundamon")):
        shutil.copytree(random_adapters["llama"][name], adapters / "marisa" / version)
    set_current(adapters, "marisa", "v1")
    data = root / "marisa.jsonl"
    data.write_text(
        "\n".join(
            json.dumps(
                {
                    "source": "t",
                    "id": str(i),
                    "persona": "p",
                    "turns": [
                        {"speaker": "ユーザー", "text": "元気？"},
                        {"speaker": "p", "text": f"元気だぜ{i}！"},
                    ],
                },
                ensure_ascii=False,
            )
            for i in range(10)
        )
        + "\n",
        encoding="utf-8",
    )
    settings = Settings(
        model=ModelSettings(base_model=str(tiny_llama), device="cpu"),
        paths=PathSettings(adapters_dir=str(adapters), data_dir=str(root)),
    )
    return root, settings, write_ranking(root / "rank.tsv")


def test_ranking_file_is_read_in_groups_of_ten(setup):
    _, _, tsv = setup
    contexts = read_ranking(tsv)
    assert len(contexts) == 3 and contexts[0].labels[0] == 1 and sum(contexts[2].labels) == 1
    assert contexts[0].context == ("今日は寒いね", "ほんとに寒い__BR__手が冷たい")
    assert len(read_ranking(tsv, limit=2)) == 2


def test_ranking_history_makes_the_persona_answer_the_last_post():
    turns = ranking_history(["a", "b", "c"], CARD)
    assert [(t.speaker, t.is_persona) for t in turns] == [
        ("ユーザー", False),
        ("魔理沙", True),
        ("ユーザー", False),
    ]
    assert ranking_history(["x__BR__y"], CARD)[0].text == "x\ny"


def test_recall_at_k_matches_eval_ranking_definition():
    labels = np.array([[1, 0, 0], [0, 0, 1], [0, 1, 0]])
    scores = np.array([[0.9, 0.1, 0.0], [0.5, 0.9, 0.1], [0.3, 0.2, 0.1]])
    assert recall_at_k(labels, scores, 1) == pytest.approx(1 / 3)
    assert recall_at_k(labels, scores, 2) == pytest.approx(2 / 3)
    assert recall_at_k(labels, scores, 3) == 1.0


def test_candidate_score_is_the_summed_log_probability_of_its_tokens(setup):
    _, settings, _ = setup
    loaded = load_base_model(settings.model)
    tok = loaded.tokenizer
    renderer = PromptRenderer(CARD, TokenizerFacts.from_tokenizer(tok))
    ctx = RankingContext(("今日は寒いね",), tuple(f"候補{i}です" for i in range(10)), (1, *[0] * 9))
    scores = ranking_scores(loaded.model, [ctx], renderer, tok, loaded.device, loaded.dtype)

    # Independently: one sequence at a time, log-softmax, sum over the candidate's positions.
    prompt = renderer.render_prompt(ranking_history(ctx.context, CARD)).text
    for i, cand in enumerate(ctx.candidates):
        context_ids = encode_prompt(tok, prompt)
        cand_ids = continuation_ids(tok, cand)
        ids = torch.tensor([context_ids + cand_ids])
        with torch.no_grad():
            logp = torch.log_softmax(loaded.model(input_ids=ids).logits[0].float(), -1)
        expected = sum(float(logp[len(context_ids) + j - 1, t]) for j, t in enumerate(cand_ids))
        assert scores[0, i] == pytest.approx(expected, rel=1e-4, abs=1e-3)


def test_style_scores_per_reply_and_per_sentence():
    replies = ["元気だぜ！今日は晴れだ。", "そうだな。", "研究してたんだぜ。"]
    s = style_scores(replies, ("だぜ",))
    assert s["reply_marker_rate"] == pytest.approx(2 / 3)
    assert s["sentence_marker_rate"] == pytest.approx(2 / 4)
    assert style_scores(replies, ())["reply_marker_rate"] is None


def test_side_by_side_report_with_the_engine_generating_probe_answers(setup):
    root, settings, tsv = setup
    targets = [resolve_target(settings, "marisa", None), resolve_target(settings, "marisa", "base")]
    assert [t.label for t in targets] == ["v1", "base"]
    cfg = TrainConfig(data=(str(root / "marisa.jsonl"),), val_fraction=0.3)
    report = evaluate(settings, CARD, cfg, targets, ranking_path=tsv, probes=["おはよう", "元気？"], seed=1)
    for label in ("v1", "base"):
        m = report.metrics[label]
        assert m["val_perplexity"] > 1 and m["val_tokens"] > 0
        assert m["ranking"]["contexts"] == 3
        assert 0 <= m["ranking"]["recall@1"] <= m["ranking"]["recall@5"] <= 1
        assert m["style"]["replies"] == 2
    # The random adapter changes both the likelihoods and the answers.
    assert report.metrics["v1"]["val_loss"] != report.metrics["base"]["val_loss"]
    assert [p["replies"]["v1"] for p in report.probes] != [p["replies"]["base"] for p in report.probes]
    table = format_table(report)
    assert "ranking Recall@5" in table and "v1" in table and "おはよう" in table


def test_eval_cli_writes_json_and_table(setup, tmp_path, monkeypatch, capsys):
    from trainer.__main__ import main

    root, settings, tsv = setup
    for var in ("OSHABERI_MODEL", "OSHABERI_DEVICE", "OSHABERI_ADAPTERS_DIR", "OSHABERI_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    config = tmp_path / "oshaberi.toml"
    config.write_text(
        f'[model]\nbase_model = "{settings.model.base_model}"\ndevice = "cpu"\n'
        f'[paths]\nadapters_dir = "{settings.paths.adapters_dir}"\ndata_dir = "{root}"\n',
        encoding="utf-8",
    )
    out = tmp_path / "report.json"
    code = main(
        ["--config", str(config), "eval", "--persona", "marisa", "--version", "v1", "--against", "v2",
         "--ranking", str(tsv), "--limit", "2", "--no-probes", "-o", str(out)]
    )  # fmt: skip
    assert code == 0
    report = json.loads(out.read_text(encoding="utf-8"))
    assert [v["label"] for v in report["versions"]] == ["v1", "v2"]
    assert report["metrics"]["v2"]["ranking"]["contexts"] == 2
    assert "validation perplexity" in out.with_suffix(".txt").read_text(encoding="utf-8")
    # The ranking set gets a progress bar per version on stderr, counting contexts to the end.
    err = capsys.readouterr().err
    assert "ranking v1" in err and "ranking v2" in err and "2/2" in err
    assert main(["--config", str(config), "eval", "--persona", "marisa", "--version", "v9"]) == 1


def test_the_shared_ranking_test_set_parses(shared_dir):
    contexts = read_ranking(shared_dir / "data" / "open2ch" / "ranking" / "test.tsv")
    assert len(contexts) == 2000
    assert all(len(c.candidates) == 10 and sum(c.labels) == 1 for c in contexts)
