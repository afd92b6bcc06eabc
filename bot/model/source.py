"""Where the base model comes from: a local folder or a hub id, decided and checked before loading.

The hub client, given a name it cannot find, retries for about a minute and then blames the
internet; a mistyped folder (``models/tinny``) or an empty one cost that minute too. Here:

* a name that exists on disk is a folder, and must hold a config, weights and a tokenizer;
* a name that looks like a path (``./x``, ``/x``, ``~/x``, ``a/b/c``, or ``a/b`` where ``a/`` is a
  local folder) but does not exist is reported at once;
* anything else is a hub id; unless the hub client is already offline, one TCP connection with a
  short timeout tells whether the hub is reachable. If not, a cached copy is used offline, or the
  error comes in seconds instead of a minute.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from bot.config import ModelSettings, Settings, origin
from bot.ops.commandline import module_command

log = logging.getLogger(__name__)

HUB_PROBE_TIMEOUT_S = 3.0
DEFAULT_ENDPOINT = "https://huggingface.co"
# At least one of each group must be in a local model folder (transformers' own file names,
# as glob patterns). Lenient on purpose: a false "missing" would block a model that loads.
REQUIRED_MODEL_FILES: dict[str, tuple[str, ...]] = {
    "config": ("config.json",),
    "weights": (
        "model.safetensors",
        "model.safetensors.index.json",
        "pytorch_model.bin",
        "*.safetensors",
        "*.bin",
    ),
    "tokenizer": (
        "tokenizer.json",
        "tokenizer_config.json",
        "*.model",
        "vocab.json",
        "vocab.txt",
        "*.tiktoken",
    ),
}
# "{where}" in a ModelLoadError's message is filled with how the operator set the value.
WHERE = "{where}"


def tiny_model_hint() -> str:
    return (
        f"{module_command('trainer tiny-model models/tiny')} makes a small one for trying the stack offline"
    )


def offline_advice() -> str:
    return f"Without internet, point {WHERE} at a local model folder ({tiny_model_hint()})"


@dataclass(frozen=True)
class ModelSource:
    """What to hand to ``from_pretrained``: ``name`` (an absolute folder or a hub id) and whether
    only local files (a folder, or the hub cache when the hub is unreachable) may be used."""

    name: str
    is_local: bool
    local_files_only: bool


class ModelLoadError(RuntimeError):
    """The base model could not be loaded; the message says what to do about it.

    ``setting`` is the setting at fault ("model.base_model", "model.device"); the message names it
    where it says ``{where}``: ``named(origin)`` with how the operator set it (``--model``, a file's
    key, a variable), ``str()`` with its environment variable.
    """

    def __init__(self, message: str, setting: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting

    def named(self, where: str) -> str:
        return str(self.args[0]).replace(WHERE, where)

    def for_settings(self, settings: Settings) -> str:
        """The message naming the setting as ``settings`` got it (``origin``)."""
        return self.named(origin(settings, self.setting)) if self.setting else str(self.args[0])

    def __str__(self) -> str:
        return self.for_settings(Settings())


def missing_model_files(folder: Path) -> list[str]:
    """The groups (``config.json``, weights, tokenizer) of which ``folder`` has no file, described."""
    missing = []
    for what, names in REQUIRED_MODEL_FILES.items():
        if not any(path.is_file() for pattern in names for path in folder.glob(pattern)):
            missing.append(names[0] if len(names) == 1 else f"{what} ({' or '.join(names)})")
    return missing


def looks_like_path(name: str) -> bool:
    """A value meant as a folder: starts with ``.``, ``/`` or ``~``, has more than one ``/`` (a hub id
    has one), or its first part is an existing local folder (``models/x`` with ``models/`` here)."""
    if name.startswith((".", "/", "~", "\\")) or "\\" in name or name.count("/") > 1:
        return True
    head, sep, _ = name.partition("/")
    return bool(sep) and Path(head).expanduser().is_dir()


def _nearby(path: Path) -> str:
    """``; <parent> holds: a, b`` when the parent folder exists, to spot a typo."""
    parent = path.parent
    if not parent.is_dir():
        return ""
    names = sorted(p.name for p in parent.iterdir() if p.is_dir() and not p.name.startswith("."))[:8]
    return f"; {parent}/ holds: {', '.join(names)}" if names else f"; {parent}/ is empty"


def resolve_model_source(settings: ModelSettings) -> ModelSource:
    """Decide and check where ``settings.base_model`` comes from; fast, before any weight is read.

    Raises ModelLoadError with a one-line remedy for: an empty name, a path-like name that does
    not exist, a folder missing files, a name that is neither folder nor hub id, and a hub id
    that is not cached while the hub cannot be reached (after at most ``HUB_PROBE_TIMEOUT_S``).
    """
    key = "model.base_model"
    name = settings.base_model.strip()
    if not name:
        raise ModelLoadError(f"no base model is set; set {WHERE} to a hub id or a local model folder", key)
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(
                f"model path {name!r} is a file; {WHERE} must name a model folder or a hub id", key
            )
        missing = missing_model_files(path)
        if missing:
            raise ModelLoadError(
                f"model folder {name!r} is missing {', '.join(missing)}; it needs what save_pretrained writes "
                f"(copy the whole model folder, or {tiny_model_hint()})",
                key,
            )
        return ModelSource(str(path), True, True)
    if looks_like_path(name):
        raise ModelLoadError(
            f"model folder {name!r} does not exist (looked in {path.absolute()}){_nearby(path.absolute())}; "
            f"set {WHERE} to a hub id or a local model folder ({tiny_model_hint()})",
            key,
        )
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        raise ModelLoadError(
            f"{name!r} is neither a local model folder nor a hub id (like rinna/japanese-gpt-neox-3.6b); "
            f"check {WHERE}",
            key,
        ) from None
    if settings.local_files_only or _hub_client_offline() or _proxy_configured():
        # Offline the hub client fails fast by itself; behind a proxy a direct probe would lie.
        return ModelSource(name, False, settings.local_files_only)
    endpoint = os.environ.get("HF_ENDPOINT", "").strip() or DEFAULT_ENDPOINT
    log.info("checking that %s is reachable (at most %.0f s)", endpoint, HUB_PROBE_TIMEOUT_S)
    if hub_reachable(endpoint, HUB_PROBE_TIMEOUT_S):
        return ModelSource(name, False, False)
    if _cached(name, settings.revision):
        log.warning("%s cannot be reached; using the cached copy of %s", endpoint, name)
        return ModelSource(name, False, True)
    also = f" (and there is no local folder {name!r} either)" if "/" in name else ""
    raise ModelLoadError(
        f"cannot reach {urlsplit(endpoint).hostname} to download {name!r}, and it is not in the hub cache"
        f"{also}. {offline_advice()}",
        key,
    )


def hub_reachable(endpoint: str, timeout: float) -> bool:
    """Whether a TCP connection to the endpoint's host opens within ``timeout`` seconds.

    Name resolution ignores socket timeouts, so the attempt runs on a daemon thread that is
    abandoned after ``timeout``: a hanging DNS server costs seconds, not minutes.
    """
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    result: list[bool] = []

    def attempt() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=attempt, name="hub-probe", daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(result and result[0])


def _hub_client_offline() -> bool:
    return any(
        os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on")
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _proxy_configured() -> bool:
    return any(os.environ.get(var) for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"))


def _cached(name: str, revision: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(name, "config.json", revision=revision or None)
    return isinstance(found, str)
