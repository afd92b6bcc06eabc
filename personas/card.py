"""Persona cards: one TOML file per persona, validated on load.

A card is everything the bot and the trainer need to speak as a character:
how to render its prompt, how to sample, what to stop at and never say, and
which LoRA adapter (if any) carries its voice. Cards are plain data; nothing
here touches a model, so the trainer and the tests load them cheaply.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

PERSONAS_DIR = Path(__file__).resolve().parent
CARD_FILENAME = "persona.toml"
TEMPLATES = ("speaker-script", "rinna", "alpaca")
DEFAULT_USER_LABEL = "ユーザー"


class CardError(ValueError):
    """A card that cannot be used; the message names the file and the field."""

    def __init__(self, path: Path | str, field_name: str | None, problem: str) -> None:
        where = f"{path}" + (f": field '{field_name}'" if field_name else "")
        super().__init__(f"{where}: {problem}")
        self.path = str(path)
        self.field = field_name
        self.problem = problem


class AdapterFileError(CardError):
    """An adapter folder that cannot serve this card; the message names the adapter's file.

    A CardError so callers that refuse a bad card's adapter also refuse this; but the fault is
    in the adapter (which may come from ``adapters/<id>/CURRENT``), not in ``persona.toml``.
    """


@dataclass(frozen=True)
class GenerationParams:
    """Sampling settings for one persona; temperature 0 means greedy decoding."""

    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 50
    repetition_penalty: float = 1.1
    no_repeat_ngram_size: int = 0
    max_new_tokens: int = 128
    # Forces a minimum length; the benchmark uses it to generate a fixed number of tokens.
    min_new_tokens: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class Example:
    """One written-for-this-project exchange that shows the persona's voice."""

    user: str
    reply: str


@dataclass(frozen=True)
class PersonaCard:
    id: str
    display_name: str
    speaker: str
    description: str
    template: str
    system_prompt: str
    examples: tuple[Example, ...] = ()
    generation: GenerationParams = field(default_factory=GenerationParams)
    stop: tuple[str, ...] = ()
    banned_words: tuple[str, ...] = ()
    history_budget_tokens: int = 512
    user_label: str = DEFAULT_USER_LABEL
    avatar_url: str | None = None
    adapter: str | None = None
    # Style markers (e.g. 「だぜ」) used by the trainer's style-adherence metric.
    style_markers: tuple[str, ...] = ()
    source: str = ""


_REQUIRED = ("id", "display_name", "speaker", "description", "template", "system_prompt")
_OPTIONAL = (
    "examples",
    "generation",
    "stop",
    "banned_words",
    "history_budget_tokens",
    "user_label",
    "avatar_url",
    "adapter",
    "style_markers",
)
_ID_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789_-")


def _str_list(path: Path, name: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise CardError(path, name, "must be a list of non-empty strings")
    return tuple(value)


def _nonempty_str(path: Path, name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise CardError(path, name, "must be a non-empty string")
    return value


def _generation(path: Path, raw: Any) -> GenerationParams:
    if not isinstance(raw, dict):
        raise CardError(path, "generation", "must be a table")
    known = {f.name: f for f in fields(GenerationParams)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in known:
            raise CardError(path, f"generation.{key}", f"unknown key (known: {', '.join(sorted(known))})")
        want = float if known[key].type == "float" else int
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or (want is int and not isinstance(value, int))
        ):
            raise CardError(path, f"generation.{key}", f"must be a {want.__name__}")
        values[key] = want(value)
    params = GenerationParams(**values)
    checks = {
        "temperature": params.temperature >= 0,
        "top_p": 0 < params.top_p <= 1,
        "top_k": params.top_k >= 0,
        "repetition_penalty": params.repetition_penalty > 0,
        "no_repeat_ngram_size": params.no_repeat_ngram_size >= 0,
        "max_new_tokens": 1 <= params.max_new_tokens <= 4096,
        "min_new_tokens": 0 <= params.min_new_tokens <= params.max_new_tokens,
    }
    for key, ok in checks.items():
        if not ok:
            raise CardError(path, f"generation.{key}", f"value {getattr(params, key)!r} is out of range")
    return params


def _examples(path: Path, raw: Any) -> tuple[Example, ...]:
    if not isinstance(raw, list):
        raise CardError(path, "examples", "must be an array of tables with 'user' and 'reply'")
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or set(item) != {"user", "reply"}:
            raise CardError(path, f"examples[{i}]", "must have exactly the keys 'user' and 'reply'")
        out.append(
            Example(
                _nonempty_str(path, f"examples[{i}].user", item["user"]),
                _nonempty_str(path, f"examples[{i}].reply", item["reply"]),
            )
        )
    return tuple(out)


def parse_card(raw: dict[str, Any], path: Path) -> PersonaCard:
    """Validate one card's TOML table; raises CardError naming the field at fault."""
    unknown = sorted(set(raw) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise CardError(path, unknown[0], "unknown key")
    for name in _REQUIRED:
        if name not in raw:
            raise CardError(path, name, "missing required field")
        _nonempty_str(path, name, raw[name])
    card_id = raw["id"]
    if not set(card_id) <= _ID_CHARS or len(card_id) > 32:
        raise CardError(path, "id", "use 1-32 characters of a-z, 0-9, '-' and '_'")
    if raw["template"] not in TEMPLATES:
        raise CardError(
            path, "template", f"unknown template {raw['template']!r} (one of: {', '.join(TEMPLATES)})"
        )
    budget = raw.get("history_budget_tokens", 512)
    if isinstance(budget, bool) or not isinstance(budget, int) or not 16 <= budget <= 32768:
        raise CardError(path, "history_budget_tokens", "must be an integer between 16 and 32768")
    avatar = raw.get("avatar_url")
    if avatar is not None and not (isinstance(avatar, str) and avatar.startswith("https://")):
        raise CardError(path, "avatar_url", "must be an https:// URL")
    adapter = raw.get("adapter")
    if adapter is not None:
        _nonempty_str(path, "adapter", adapter)
    speaker = raw["speaker"]
    user_label = _nonempty_str(path, "user_label", raw.get("user_label", DEFAULT_USER_LABEL))
    if speaker == user_label:
        raise CardError(path, "speaker", "must differ from user_label, or turns could not be told apart")
    return PersonaCard(
        id=card_id,
        display_name=raw["display_name"],
        speaker=speaker,
        description=raw["description"],
        template=raw["template"],
        system_prompt=raw["system_prompt"],
        examples=_examples(path, raw.get("examples", [])),
        generation=_generation(path, raw.get("generation", {})),
        stop=_str_list(path, "stop", raw.get("stop", [])),
        banned_words=_str_list(path, "banned_words", raw.get("banned_words", [])),
        history_budget_tokens=budget,
        user_label=user_label,
        avatar_url=avatar,
        adapter=adapter,
        style_markers=_str_list(path, "style_markers", raw.get("style_markers", [])),
        source=str(path),
    )


def load_card(path: Path) -> PersonaCard:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CardError(path, None, "file not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise CardError(path, None, f"not valid TOML: {exc}") from None
    card = parse_card(raw, path)
    if path.parent.name != card.id and path.name == CARD_FILENAME:
        raise CardError(path, "id", f"must match its folder name {path.parent.name!r}")
    return card


def check_adapter_base(card: PersonaCard, adapter_dir: Path, base_model: str) -> None:
    """Refuse an adapter trained for another base model: its weights would load but talk nonsense.

    Names are compared by their last path part, so a hub id and a local copy of
    the same model (``rinna/x`` and ``/models/x``) agree. Raises AdapterFileError naming the
    adapter's ``adapter_config.json`` when it is unreadable or made for another model.
    """
    config_path = adapter_dir / "adapter_config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise AdapterFileError(
            config_path, None, f"not valid JSON (line {exc.lineno} column {exc.colno}: {exc.msg})"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AdapterFileError(config_path, None, f"cannot be read: {exc}") from None
    made_for = config.get("base_model_name_or_path") if isinstance(config, dict) else None
    if made_for and Path(str(made_for)).name != Path(base_model).name:
        raise AdapterFileError(
            config_path,
            None,
            f"adapter {adapter_dir} was made for base model {made_for!r}, but the bot runs {base_model!r}",
        )


@dataclass
class CardSet:
    """The cards that loaded, and one error per card that did not."""

    cards: dict[str, PersonaCard]
    errors: list[CardError]

    def get(self, persona_id: str) -> PersonaCard:
        try:
            return self.cards[persona_id]
        except KeyError:
            known = ", ".join(sorted(self.cards)) or "none"
            raise UnknownPersonaError(f"unknown persona {persona_id!r} (known: {known})") from None


class UnknownPersonaError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def load_cards(directory: Path | None = None) -> CardSet:
    """Load every ``<id>/persona.toml`` below ``directory``; one bad card never hides the others."""
    directory = directory or PERSONAS_DIR
    cards: dict[str, PersonaCard] = {}
    errors: list[CardError] = []
    for path in sorted(directory.glob(f"*/{CARD_FILENAME}")):
        try:
            card = load_card(path)
        except CardError as exc:
            errors.append(exc)
            continue
        if card.id in cards:
            errors.append(CardError(path, "id", f"duplicate persona id {card.id!r}"))
            continue
        cards[card.id] = card
    return CardSet(cards, errors)
