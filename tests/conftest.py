"""Shared fixtures: tiny random-weight models with real architectures and tokenizers,
built once per test session by the same builder users run (`python -m trainer tiny-model`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# No test may reach the network: the hub client must fail fast instead of retrying.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DIR = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """One tiny model folder per architecture."""
    from trainer.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("models")
    return {arch: build_tiny_model(root / arch, arch) for arch in ("gpt-neox", "llama")}


@pytest.fixture(scope="session")
def tiny_neox(tiny_models) -> Path:
    return tiny_models["gpt-neox"]


@pytest.fixture(scope="session")
def tiny_llama(tiny_models) -> Path:
    return tiny_models["llama"]


@pytest.fixture(scope="session")
def random_adapters(tiny_models, tmp_path_factory) -> dict[str, dict[str, Path]]:
    """Three random LoRA adapters per architecture (init_lora_weights=False, scaled up)."""
    from trainer.tiny import build_random_adapter

    root = tmp_path_factory.mktemp("adapters")
    out: dict[str, dict[str, Path]] = {}
    for arch, base in tiny_models.items():
        out[arch] = {
            name: build_random_adapter(base, root / arch / name, seed=seed, r=4)
            for seed, name in enumerate(("marisa", "zundamon", "ojousama"), start=1)
        }
    return out


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED_DIR.is_dir():
        pytest.skip(f"optional integration data not found at {SHARED_DIR}")
    return SHARED_DIR


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "shared_dir" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.shared)
