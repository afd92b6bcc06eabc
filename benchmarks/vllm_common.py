"""What the benchmarks share for ``--backend vllm``: the same requests, sent to a vLLM server.

The server must already run on the benchmark's model folder (the benchmark cannot start a GPU
server for you); :func:`server_command` prints the command. Usage from a benchmark::

    backend = await connect_vllm(url, model_dir, {"marisa": adapter_dir, ...})
    ticket = backend.submit(GenerationRequest(..., adapter="marisa"))   # same as worker.submit
    await backend.stop()
"""

from __future__ import annotations

import shlex
import time
import urllib.parse
from pathlib import Path

from bot.config import EngineSettings, ModelSettings, Settings, WorkerSettings
from bot.model.adapters import AdapterSource
from bot.serving.vllm.backend import VllmBackend
from personas.card import CardSet


class BenchmarkSetupError(RuntimeError):
    """The vLLM server cannot be used for this run; the message says what to do."""


def server_command(model_dir: Path, port: int = 8000, max_lora_rank: int = 8) -> str:
    """The command that starts a vLLM server able to run the benchmark on ``model_dir``."""
    return (
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True "
        + shlex.join(
            [
                "python",
                "-m",
                "vllm.entrypoints.openai.api_server",
                "--model",
                str(model_dir.resolve()),
                "--port",
                str(port),
                "--enable-lora",
                "--max-loras",
                "8",
                "--max-lora-rank",
                str(max_lora_rank),
                "--enable-prefix-caching",
            ]
        )
        + "   # add --enforce-eager --dtype float32 with VLLM_CPU_KVCACHE_SPACE=4 for the CPU build"
    )


async def connect_vllm(
    url: str, model_dir: Path, adapters: dict[str, Path], queue_size: int = 256
) -> VllmBackend:
    """A VllmBackend on ``url`` with ``adapters`` (persona -> folder) registered.

    Raises BenchmarkSetupError naming the server when it is unreachable or serves another model.
    """
    settings = Settings(
        model=ModelSettings(base_model=str(model_dir), device="cpu"),
        engine=EngineSettings(backend="vllm", vllm_urls=(url,)),
        worker=WorkerSettings(queue_size=queue_size, request_timeout_s=3600.0),
    )
    backend = await VllmBackend.start(settings, CardSet({}, []))
    problem = next((s.problem for s in backend.stats().servers if not s.healthy), None)
    if problem is not None:
        await backend.stop(drain_timeout=0)
        port = urllib.parse.urlsplit(url).port or 8000
        raise BenchmarkSetupError(f"{problem}. Start it with: {server_command(model_dir, port)}")
    for persona, folder in adapters.items():
        await backend.registry.publish_source(persona, AdapterSource(str(folder.resolve()), "bench", True))
    return backend


async def time_adapter_load(backend: VllmBackend, persona: str, folder: Path, loads: int = 3) -> float:
    """Median milliseconds to register an adapter on the server under a new version name."""
    times = []
    for i in range(loads):
        start = time.perf_counter()
        await backend.registry.publish_source(persona, AdapterSource(str(folder.resolve()), f"load{i}", True))
        times.append(time.perf_counter() - start)
    await backend.registry.drain()
    return sorted(times)[len(times) // 2] * 1000
