"""Tiny random-weight models with real architectures and real SentencePiece tokenizers.

They exist so the whole stack (loading from a local folder, 4-bit, adapters, training)
runs offline and fast: the tests, the console demo and the CPU benchmark all build
their models here. Weights are random, so what they say is noise, but the code paths
are the ones a real model takes.

Two flavours, mirroring real Japanese models:

* ``gpt-neox``: a rinna-style T5 SentencePiece tokenizer (``spiece.model``, no newline
  piece, ``<NL>`` as a user-defined symbol).
* ``llama``: a Llama-style byte-fallback SentencePiece tokenizer (``tokenizer.model``),
  which can spell newlines and any character.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from bot.ops.filemode import respect_umask

ARCHITECTURES = ("gpt-neox", "llama")
_HIRAGANA = "".join(chr(c) for c in range(0x3041, 0x3097))
_KATAKANA = "".join(chr(c) for c in range(0x30A1, 0x30FB))
_ASCII = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!?.,:;()[]#@<>/-_'\"+*=~&%$ "
_PUNCT = "　。、！？：「」『』（）〜ー・…♪★☆"
# Lines written for this project; enough for SentencePiece to learn common pieces.
_CORPUS = [
    "こんにちは、今日はいい天気だぜ。",
    "おう、おはようだぜ！私は魔法の研究をしてたんだぜ。",
    "ボクはずんだもんなのだ。ずんだ餅が大好きなのだ。",
    "わたくしはお嬢様ですわ。紅茶をいただきますわ。",
    "お疲れー。今日の授業どうだった？カレーかな。",
    "ユーザー: 元気？",
    "魔理沙: 元気だぜ！",
    "システム: こんにちはなのだ。",
    "友達: うーん、そうだよね。",
    "以下は、タスクを説明する指示です。要求を適切に満たす応答を書きなさい。",
    "### 指示: ### 入力: ### 応答:",
    "魔法使い霧雨一人称私明強気話森普通研究煮込大変努力上達保証天気朝新",
    "妖精枝豆甘餅元気休疲今日好食物丁寧上品言葉遣返事庭手入香目覚素敵",
    "友達同士雑談気軽短授業眠半分聞昼前食雨映画週末電車駅学校先生会社仕事",
    _HIRAGANA,
    _KATAKANA,
    _ASCII,
    _PUNCT,
]


@dataclass(frozen=True)
class TinyShape:
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 128
    max_positions: int = 2048
    vocab_size: int | None = None  # None: the tokenizer's own size


def _train_sentencepiece(arch: str, extra_lines: list[str]) -> bytes:
    import sentencepiece as spm

    lines = (_CORPUS + extra_lines) * 8
    buf = io.BytesIO()
    common = dict(
        sentence_iterator=iter(lines),
        model_writer=buf,
        vocab_size=1200,
        character_coverage=1.0,
        hard_vocab_limit=False,
        minloglevel=2,
        num_threads=1,
    )
    if arch == "gpt-neox":
        # rinna's layout: T5 ids (pad 0, eos 1, unk 2), no BOS, <NL> standing in for newlines.
        spm.SentencePieceTrainer.train(
            model_type="unigram",
            pad_id=0,
            eos_id=1,
            unk_id=2,
            bos_id=-1,
            user_defined_symbols=["<NL>"],
            **common,
        )
    else:
        spm.SentencePieceTrainer.train(
            model_type="bpe",
            pad_id=0,
            unk_id=1,
            bos_id=2,
            eos_id=3,
            byte_fallback=True,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True,
            split_digits=True,
            **common,
        )
    return buf.getvalue()


def build_tokenizer(out_dir: Path, arch: str = "gpt-neox", extra_lines: list[str] | None = None):
    """Train and save a SentencePiece tokenizer the way the real model folder holds one."""
    from transformers import AutoTokenizer

    out_dir.mkdir(parents=True, exist_ok=True)
    model_bytes = _train_sentencepiece(arch, extra_lines or [])
    if arch == "gpt-neox":
        (out_dir / "spiece.model").write_bytes(model_bytes)
        config = {
            "tokenizer_class": "T5Tokenizer",
            "extra_ids": 0,
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "pad_token": "<pad>",
            "legacy": False,
        }
    else:
        (out_dir / "tokenizer.model").write_bytes(model_bytes)
        config = {
            "tokenizer_class": "LlamaTokenizer",
            "bos_token": "<s>",
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "pad_token": "<pad>",
            "add_bos_token": True,
            "legacy": False,
        }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False, indent=1))
    return AutoTokenizer.from_pretrained(out_dir)


def _config(arch: str, tokenizer, shape: TinyShape):
    from transformers import GPTNeoXConfig, LlamaConfig

    vocab = shape.vocab_size or len(tokenizer)
    common = dict(
        vocab_size=vocab,
        hidden_size=shape.hidden_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        intermediate_size=shape.intermediate_size,
        max_position_embeddings=shape.max_positions,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    if arch == "gpt-neox":
        return GPTNeoXConfig(bos_token_id=tokenizer.eos_token_id, use_parallel_residual=False, **common)
    if arch == "llama":
        return LlamaConfig(bos_token_id=tokenizer.bos_token_id, num_key_value_heads=shape.num_heads, **common)
    raise ValueError(f"unknown architecture {arch!r} (one of: {', '.join(ARCHITECTURES)})")


def build_tiny_model(
    out_dir: str | Path, arch: str = "gpt-neox", seed: int = 0, shape: TinyShape | None = None
) -> Path:
    """Write a random-weight model folder that ``from_pretrained`` loads like a hub download."""
    from transformers import AutoModelForCausalLM

    out = Path(out_dir)
    shape = shape or TinyShape()
    tokenizer = build_tokenizer(out, arch)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_config(arch, tokenizer, shape))
    model.save_pretrained(out)
    respect_umask(out)  # safetensors writes through a 0600 temp file
    return out


def build_random_adapter(
    base_dir: str | Path, out_dir: str | Path, seed: int = 1, r: int = 8, base_model_name: str | None = None
) -> Path:
    """A LoRA adapter with random (non-zero) weights, so it visibly changes the output."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from bot.model.loading import lora_target_modules

    base = AutoModelForCausalLM.from_pretrained(base_dir)
    torch.manual_seed(seed)
    config = LoraConfig(
        r=r,
        lora_alpha=2 * r,
        target_modules=lora_target_modules(base),
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(base, config)
    # Random init is small; scale it so a tiny model's greedy tokens really change.
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    peft_model.save_pretrained(out_dir)
    if base_model_name is not None:
        cfg_path = Path(out_dir) / "adapter_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["base_model_name_or_path"] = base_model_name
        cfg_path.write_text(json.dumps(cfg, indent=2))
    return Path(out_dir)
