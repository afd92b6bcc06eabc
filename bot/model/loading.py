"""Load the base model and tokenizer: the one loading path the bot, the trainer and the
benchmarks share, so a model that works in one works in all three.

Device policy: on CUDA, 4-bit NF4 with double quantization and bf16 compute unless told
otherwise (a 3.6B model then fits in about 3 GB); on CPU full precision, with 4-bit
available for trying the quantized path.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import torch

from bot.config import ModelSettings
from bot.model.source import WHERE, ModelLoadError, offline_advice, resolve_model_source

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    device: torch.device
    quantization: str  # 4bit | 8bit | none
    dtype: torch.dtype
    base_model: str

    @property
    def architecture(self) -> str:
        return self.model.config.model_type


def resolve_device(name: str) -> torch.device:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (checked by bot/config.py) as a device this host has.

    Raises ModelLoadError when CUDA is asked for without a GPU, or for a GPU number the host lacks.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(
            f"device {name!r} was asked for, but no CUDA GPU is available; set {WHERE} to cpu or auto",
            "model.device",
        )
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise ModelLoadError(
            f"device {name!r} was asked for, but this host has {count} CUDA GPU{'s' if count > 1 else ''} "
            f"(cuda:0{f' to cuda:{count - 1}' if count > 1 else ''}); set {WHERE} to one of them, or to cuda",
            "model.device",
        )
    return device


def resolve_precision(settings: ModelSettings, device: torch.device) -> tuple[str, torch.dtype]:
    """The (quantization, compute dtype) pair for a device, filling in ``auto``."""
    quant = settings.quantization
    if quant == "auto":
        quant = "4bit" if device.type == "cuda" else "none"
    if settings.dtype != "auto":
        dtype = DTYPES[settings.dtype]
    elif device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        dtype = torch.float32
    if quant == "8bit" and device.type != "cuda":
        raise ModelLoadError(
            f"8-bit quantization needs a CUDA GPU; on CPU set {WHERE} to none or 4bit", "model.quantization"
        )
    return quant, dtype


def _quantization_config(quant: str, dtype: torch.dtype):
    from transformers import BitsAndBytesConfig

    if quant == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
    if quant == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return None


def load_tokenizer(name: str, settings: ModelSettings | None = None):
    from transformers import AutoTokenizer

    kwargs = {}
    if settings is not None:
        kwargs = {"revision": settings.revision or None, "local_files_only": settings.local_files_only}
    tokenizer = AutoTokenizer.from_pretrained(name, **kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # Decoder-only batches pad on the left so every row's last token is its real last token.
    tokenizer.padding_side = "left"
    return tokenizer


def load_base_model(settings: ModelSettings) -> LoadedModel:
    """Load the configured base model once; raise ModelLoadError with a one-line remedy."""
    from transformers import AutoModelForCausalLM

    device = resolve_device(settings.device)
    quant, dtype = resolve_precision(settings, device)
    # Folder checks and the hub probe (bot/model/source.py): a typo or no network fails in seconds.
    source = resolve_model_source(settings)
    name = source.name
    settings = replace(settings, local_files_only=source.local_files_only)
    try:
        log.info("loading the tokenizer of %s", name)
        tokenizer = load_tokenizer(name, settings)
        # The slow step (minutes for a large model, longer when it is downloaded first): say so.
        log.info("loading the weights of %s on %s (quantization=%s, dtype=%s)", name, device, quant, dtype)
        model = AutoModelForCausalLM.from_pretrained(
            name,
            revision=settings.revision or None,
            local_files_only=settings.local_files_only,
            quantization_config=_quantization_config(quant, dtype),
            dtype=dtype if quant == "none" else None,
            device_map={"": device.index or 0} if device.type == "cuda" else {"": "cpu"},
        )
    except (OSError, ValueError, ImportError) as exc:
        reason = str(exc).strip().splitlines()[0].rstrip(".") if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(
            f"could not load base model {name!r}: {reason}. {offline_advice()}", "model.base_model"
        ) from exc
    model.eval()
    log.info("loaded %s on %s (quantization=%s, dtype=%s)", name, device, quant, dtype)
    if hint := bfloat16_hint(settings, device, quant):
        log.info("%s", hint)
    return LoadedModel(model, tokenizer, device, quant, dtype, name)


def cpu_has_amx() -> bool:
    """True when this CPU multiplies bfloat16 matrices in hardware (Intel AMX tiles)."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)  # private; absent in other builds
    try:
        return bool(probe and probe())
    except RuntimeError:
        return False


def bfloat16_hint(settings: ModelSettings, device: torch.device, quant: str) -> str | None:
    """One line for an operator whose CPU would serve bfloat16 faster than the float32 that
    ``auto`` picks there; ``None`` when it does not apply.

    ``auto`` stays float32 on a CPU on purpose: it is the dtype every CPU computes alike, and the
    one the tests' token-for-token comparisons are made in. The figure is from docs/serving.md
    (benchmarks.load at the 12 x 768 CPU shape on a 2-core Xeon with AMX: a capacity of 6.5-7.7
    requests/s in bfloat16 against 3.5-3.8 in float32).
    """
    if device.type != "cpu" or settings.dtype != "auto" or quant != "none" or not cpu_has_amx():
        return None
    return (
        'this CPU computes bfloat16 in hardware (AMX): model.dtype = "bfloat16" serves about twice '
        "as fast here (docs/serving.md, bfloat16 on a CPU)"
    )


def lora_target_modules(model: torch.nn.Module) -> list[str]:
    """LoRA target modules for this architecture, from PEFT's own per-architecture table.

    Falls back to every linear layer's name (but the output head) for architectures PEFT
    does not list, so a new model family still trains.
    """
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as MAPPING

    model_type = model.config.model_type
    if model_type in MAPPING:
        return list(MAPPING[model_type])
    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and not name.endswith("lm_head")
    }
    if not names:
        raise ModelLoadError(f"no linear layers found to adapt in a {model_type!r} model")
    return sorted(names)


def encode_prompt(tokenizer, text: str) -> list[int]:
    """Token ids for a prompt: with the tokenizer's BOS if it uses one, never with a trailing EOS.

    T5-style SentencePiece tokenizers (rinna's) append ``</s>`` to every encoding, which
    would tell the model the conversation is over before the reply starts.
    """
    ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    eos = tokenizer.eos_token_id
    if ids and eos is not None and ids[-1] == eos and not text.endswith(tokenizer.eos_token or "\0"):
        ids = ids[:-1]
    return ids
