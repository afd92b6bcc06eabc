"""Evaluate adapter versions of one persona, side by side on the same data.

Four measures, each answering a different question:

* validation perplexity (the training split's held-out dialogues, persona tokens only):
  did the adapter learn this persona's data without overfitting it?
* style adherence on the persona's probe set: of the replies, what share uses one of
  the card's ``style_markers``, and what share of *sentences* does. The sentence share
  is the stricter one: a reply that says 「だぜ」 once and then drifts into neutral
  speech passes the reply test but not the sentence test.
* the probe answers themselves, for a human to read (numbers miss tone).
* open2ch response ranking (Recall@1/@5, 1 real reply among 10): did the adapter keep
  the base model's sense of what is a fitting answer? Each candidate is scored by the
  summed log-probability of its tokens after the persona's rendered prompt of the
  context, the score ``eval_ranking.py`` of the corpus ranks by.

Scoring runs on one base model with every version loaded as a named PEFT adapter; then
the LoRA layers are removed again and the same base model serves the bot's own Engine,
which generates the probe answers exactly as the bot would (one mixed batch).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from bot.config import Settings
from bot.model.adapters import AdapterSource, check_adapter_files, current_version, list_versions, persona_dir
from bot.model.loading import LoadedModel, load_base_model
from bot.ops.commandline import module_command
from bot.serving.generation import BASE_ADAPTER, GenerationRequest
from bot.serving.local.engine import Engine
from personas.card import PersonaCard, check_adapter_base
from personas.render import PromptRenderer, TokenizerFacts, Turn
from trainer.config import TrainConfig
from trainer.dataset import DataError, Example, build_datasets
from trainer.ranking import RECALL_AT, RankingContext, ranking_scores, read_ranking, recall_at_k
from trainer.scoring import mean_nll, perplexity

log = logging.getLogger(__name__)

BASE = "base"  # the version label for "no adapter"
_SENTENCE_RE = re.compile(r"[^。．！？!?♪\n]+[。．！？!?♪]*")


@dataclass(frozen=True)
class Target:
    """One column of the report: an adapter version, or the bare base model."""

    label: str
    path: Path | None

    @property
    def metadata(self) -> dict[str, Any]:
        if self.path is None:
            return {}
        try:
            return json.loads((self.path / "metadata.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}


@dataclass
class Report:
    persona: str
    base_model: str
    targets: list[Target]
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    probes: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "persona": self.persona,
            "base_model": self.base_model,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "versions": [
                {
                    "label": t.label,
                    "path": str(t.path) if t.path else None,
                    "trained": t.metadata.get("metrics"),
                }
                for t in self.targets
            ],
            "metrics": self.metrics,
            "probes": self.probes,
            "notes": self.notes,
        }


# -- what to evaluate --------------------------------------------------------


def resolve_target(settings: Settings, persona_id: str, version: str | None) -> Target:
    """``None``: the persona's current version; ``base``; a version name; a path.

    Raises FileNotFoundError for a version that is not there, and for ``None`` when the persona
    has no current version (scoring the base model instead would pass it off as the adapter).
    """
    adapters = settings.paths.adapters_dir
    if version is None:
        version = current_version(adapters, persona_id)
        if version is None:
            raise FileNotFoundError(
                f"{persona_id} has no trained adapter ({persona_dir(adapters, persona_id) / 'CURRENT'} does not "
                f"exist): train one first ({module_command(f'trainer train --persona {persona_id}')}), "
                "or pass --version base to score the base model alone, or --version FOLDER for an adapter folder"
            )
    if version == BASE:
        return Target(BASE, None)
    path = persona_dir(adapters, persona_id) / version
    if not (path / "adapter_config.json").is_file():
        given = Path(version)
        if (given / "adapter_config.json").is_file():
            return Target(given.name, given)
        known = ", ".join(list_versions(adapters, persona_id)) or "none"
        raise FileNotFoundError(
            f"no adapter version {version!r} for {persona_id} in {persona_dir(adapters, persona_id)} "
            f"(known: {known}, or 'base')"
        )
    return Target(version, path)


def read_lines(path: Path) -> list[str]:
    """Non-blank lines that are not ``#`` comments: the format of questions.txt and probes.txt."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def persona_file(card: PersonaCard, name: str) -> Path:
    """A file shipped beside the persona's card (probes.txt, questions.txt)."""
    return Path(card.source).parent / name


# -- style ---------------------------------------------------------------------


def style_scores(replies: Sequence[str], markers: Sequence[str]) -> dict[str, float | int | None]:
    """Marker shares per reply and per sentence; None when the card lists no markers."""
    if not markers:
        return {"replies": len(replies), "reply_marker_rate": None, "sentence_marker_rate": None}
    sentences = [s for r in replies for s in _SENTENCE_RE.findall(r) if s.strip()]
    with_marker = sum(any(m in r for m in markers) for r in replies)
    sentences_with = sum(any(m in s for m in markers) for s in sentences)
    return {
        "replies": len(replies),
        "reply_marker_rate": with_marker / len(replies) if replies else None,
        "sentence_marker_rate": sentences_with / len(sentences) if sentences else None,
        "empty_replies": sum(not r.strip() for r in replies),
    }


# -- the run -------------------------------------------------------------------


def _validation_examples(settings, card, cfg, renderer, tokenizer, notes) -> list[Example]:
    from trainer.train import resolve_data

    try:
        files, reviewed = resolve_data(settings, card.id, cfg)
        bundle = build_datasets(
            card,
            renderer,
            tokenizer,
            files,
            reviewed,
            persona_speakers=cfg.persona_speakers,
            max_length=cfg.max_length,
            val_fraction=cfg.val_fraction,
            seed=cfg.seed,
        )
    except (DataError, OSError) as exc:
        notes.append(f"validation perplexity skipped: {exc}")
        return []
    if not bundle.val:
        notes.append("validation perplexity skipped: the split has no validation dialogue")
    return bundle.val


def evaluate(
    settings: Settings,
    card: PersonaCard,
    cfg: TrainConfig,
    targets: Sequence[Target],
    *,
    ranking_path: Path | None = None,
    ranking_note: str | None = None,
    ranking_limit: int | None = None,
    probes: Sequence[str] = (),
    seed: int = 0,
    loaded: LoadedModel | None = None,
    progress: bool = False,
) -> Report:
    """Score every target on the same data; see the module docstring for the measures.

    ``ranking_note`` goes into the report's notes when there is no ``ranking_path`` (the caller
    knows whether the ranking was left out on purpose or for want of a file). ``progress`` shows a bar on stderr while the ranking set is scored (2,000 contexts x 10
    candidates per version: minutes on a CPU)."""
    loaded = loaded or load_base_model(settings.model)
    tokenizer = loaded.tokenizer
    facts = TokenizerFacts.from_tokenizer(tokenizer)
    renderer = PromptRenderer(card, facts)
    report = Report(card.id, loaded.base_model, list(targets))
    metrics: dict[str, dict[str, Any]] = {t.label: {} for t in targets}
    report.metrics = metrics

    val = _validation_examples(settings, card, cfg, renderer, tokenizer, report.notes)
    contexts: list[RankingContext] = []
    if ranking_path is not None:
        contexts = read_ranking(ranking_path, ranking_limit)
    elif ranking_note:
        report.notes.append(ranking_note)

    # 1. Likelihoods: every version as a named adapter of one PEFT model.
    versions = VersionModel.load(card, loaded, targets)
    model = versions.model
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for target in targets:
        with versions.serving(target):
            if val:
                nll, tokens = mean_nll(
                    model,
                    val,
                    batch_size=cfg.batch_size,
                    pad_id=pad_id,
                    device=loaded.device,
                    dtype=loaded.dtype,
                )
                metrics[target.label].update(
                    val_loss=nll, val_perplexity=perplexity(nll), val_tokens=tokens, val_examples=len(val)
                )
            if contexts:
                label = f"ranking {target.label}" if progress else None
                scores = ranking_scores(
                    model, contexts, renderer, tokenizer, loaded.device, loaded.dtype, progress=label
                )
                labels = np.array([c.labels for c in contexts])
                metrics[target.label]["ranking"] = {
                    "contexts": len(contexts),
                    **{f"recall@{k}": recall_at_k(labels, scores, k) for k in RECALL_AT},
                }

    # 2. Generation: the bot's own engine on the same (now adapter-free) base model.
    if probes:
        base_model = model.unload() if versions.adapters else loaded.model
        engine = Engine(replace(loaded, model=base_model))
        for t in versions.adapters:
            engine.load_adapter(t.label, AdapterSource(str(t.path), t.label, True), card)
        answers = generate_answers(
            engine, renderer, probes, [t.label if t.path else BASE_ADAPTER for t in targets], seed
        )
        for target, replies in zip(targets, answers, strict=True):
            metrics[target.label]["style"] = style_scores(replies, card.style_markers)
        report.probes = [
            {"probe": probe, "replies": {t.label: answers[j][i] for j, t in enumerate(targets)}}
            for i, probe in enumerate(probes)
        ]
    return report


@dataclass
class VersionModel:
    """Several versions of a persona as named adapters of one PEFT model over the base model
    (the bare base for a target without a path), so they are scored on the same weights."""

    model: Any
    adapters: list[Target]

    @classmethod
    def load(cls, card: PersonaCard, loaded: LoadedModel, targets: Sequence[Target]) -> VersionModel:
        """Check every target's folder first, then load them; raises ValueError naming the folder
        of a version whose weights do not load (FileNotFoundError, CardError from the check)."""
        from peft import PeftModel

        adapters = [t for t in targets if t.path is not None]
        for t in adapters:
            check_target_adapter(card, t, loaded.base_model)
        model = loaded.model
        for i, t in enumerate(adapters):
            try:
                if i == 0:
                    model = PeftModel.from_pretrained(loaded.model, str(t.path), adapter_name="t0")
                else:
                    model.load_adapter(str(t.path), adapter_name=f"t{i}")
            except Exception as exc:  # corrupt weights, wrong shapes: say which version's folder
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ValueError(f"adapter {t.path} ({t.label}) failed to load: {reason}") from exc
        model.eval()
        return cls(model, adapters)

    def serving(self, target: Target) -> contextlib.AbstractContextManager[Any]:
        """A context in which the model computes as ``target``: its adapter, or no adapter."""
        if target.path is None:
            return self.model.disable_adapter() if self.adapters else contextlib.nullcontext()
        self.model.set_adapter(f"t{self.adapters.index(target)}")
        return contextlib.nullcontext()


def check_target_adapter(card: PersonaCard, target: Target, base_model: str) -> None:
    """Refuse a version whose folder is incomplete or whose adapter_config.json is unreadable or
    made for another base model; the error names the folder or file (FileNotFoundError, CardError)."""
    assert target.path is not None
    check_adapter_files(target.path)
    check_adapter_base(card, target.path, base_model)


def generate_answers(
    engine: Engine,
    renderer: PromptRenderer,
    questions: Sequence[str],
    adapters: Sequence[str],
    seed: int,
    batch_size: int = 8,
) -> list[list[str]]:
    """Cleaned replies per adapter to each question, sampled with the card's settings.

    The seed depends on the question only, so two versions answering the same question
    draw the same random numbers: differences come from the adapters, not the dice.
    """
    card = renderer.card
    requests = []
    for adapter in adapters:
        for i, question in enumerate(questions):
            prompt = renderer.render_prompt([Turn(card.user_label, question)])
            requests.append(GenerationRequest.for_card(card, prompt, adapter, seed=seed + i))
    texts = []
    for k in range(0, len(requests), batch_size):
        texts.extend(renderer.clean_reply(r.text) for r in engine.generate(requests[k : k + batch_size]))
    n = len(questions)
    return [texts[j * n : (j + 1) * n] for j in range(len(adapters))]


# -- output --------------------------------------------------------------------


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def format_table(report: Report) -> str:
    """A plain-text table: one row per measure, one column per version, then the probe answers."""
    labels = [t.label for t in report.targets]
    m = report.metrics
    rows = [
        ("validation loss", [_fmt(m[x].get("val_loss"), 4) for x in labels]),
        ("validation perplexity", [_fmt(m[x].get("val_perplexity"), 2) for x in labels]),
        (
            "replies with a style marker",
            [_fmt(m[x].get("style", {}).get("reply_marker_rate")) for x in labels],
        ),
        (
            "sentences with a style marker",
            [_fmt(m[x].get("style", {}).get("sentence_marker_rate")) for x in labels],
        ),
        ("empty replies", [_fmt(m[x].get("style", {}).get("empty_replies")) for x in labels]),
    ]
    for k in RECALL_AT:
        rows.append(
            (f"ranking Recall@{k}", [_fmt(m[x].get("ranking", {}).get(f"recall@{k}")) for x in labels])
        )
    contexts = next((m[x]["ranking"]["contexts"] for x in labels if "ranking" in m[x]), None)
    if contexts:
        rows.append(("ranking contexts", [str(contexts)] * len(labels)))
    head = ["measure", *labels]
    widths = [max(len(head[0]), *(len(r[0]) for r in rows))]
    widths += [max(len(lab), *(len(r[1][i]) for r in rows)) for i, lab in enumerate(labels)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()  # noqa: E731
    out = [f"persona {report.persona} on {report.base_model}", line(head), line(["-" * w for w in widths])]
    out += [line([name, *cells]) for name, cells in rows]
    if report.probes:
        out.append("")
        out.append("probe answers")
        for item in report.probes:
            out.append(f"  {item['probe']}")
            for label in labels:
                out.append(f"    [{label}] {item['replies'][label]}")
    for note in report.notes:
        out.append(f"note: {note}")
    return "\n".join(out)
