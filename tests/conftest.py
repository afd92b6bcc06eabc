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


@pytest.fixture(autouse=True)
def _no_developer_env_file(monkeypatch, tmp_path_factory):
    """The entry points read .env of the working directory; in-process tests run them from the
    checkout, where a developer may keep a real .env. Point them at a file that is not there."""
    import bot.ops.startup

    monkeypatch.setattr(bot.ops.startup, "ENV_FILE", tmp_path_factory.getbasetemp() / "no-such-dir" / ".env")


@pytest.fixture(autouse=True)
def _environment_restored():
    """The entry points put .env's variables into os.environ, as Compose would for a process;
    a test that runs them in-process must not hand those variables to the tests after it."""
    saved = dict(os.environ)
    yield
    if dict(os.environ) != saved:
        os.environ.clear()
        os.environ.update(saved)


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
def tiny_neox_512(tmp_path_factory) -> Path:
    """A tiny GPT-NeoX whose context (max_position_embeddings) is 512 tokens: smaller than a
    card's history budget plus its system prompt and reply room, as small GPUs' models are."""
    from trainer.tiny import TinyShape, build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models-512") / "gpt-neox", shape=TinyShape(max_positions=512))


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


# -- a real vLLM server (the CPU build) for the vLLM backend's tests: see tests/vllm_server.py --


@pytest.fixture(scope="session")
def vllm_models(tmp_path_factory) -> dict[str, Path]:
    """Tiny models with head size 64 (vLLM's CPU attention needs it), one per architecture."""
    from tests.vllm_server import build_vllm_model, require_vllm

    require_vllm()
    root = tmp_path_factory.mktemp("vllm-models")
    return {arch: build_vllm_model(root, arch) for arch in ("gpt-neox", "llama")}


@pytest.fixture(scope="session")
def vllm_adapters(vllm_models, tmp_path_factory) -> dict[str, dict[str, Path]]:
    """Random adapters per architecture: two personas, a second marisa version, and one of
    rank 16 (above the test servers' --max-lora-rank 8)."""
    from trainer.tiny import build_random_adapter

    root = tmp_path_factory.mktemp("vllm-adapters")
    plan = {"marisa": (1, 4), "zundamon": (2, 4), "marisa-v2": (3, 4), "wide": (4, 16)}
    return {
        arch: {
            name: build_random_adapter(base, root / arch / name, seed=seed, r=r)
            for name, (seed, r) in plan.items()
        }
        for arch, base in vllm_models.items()
    }


@pytest.fixture(scope="session")
def vllm_server(vllm_models, tmp_path_factory):
    """One GPT-NeoX vLLM server with runtime LoRA loading, shared by the whole session."""
    from tests.vllm_server import VllmServer

    server = VllmServer(vllm_models["gpt-neox"], tmp_path_factory.mktemp("vllm-a") / "server.log").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED_DIR.is_dir():
        pytest.skip(f"optional integration data not found at {SHARED_DIR}")
    return SHARED_DIR


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "shared_dir" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.shared)
