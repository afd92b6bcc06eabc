"""User-facing commands stay free of harmless library notices; -v shows them again."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from bot.ops.quiet import quiet_libraries

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def restore_logging_and_warnings():
    loggers = [logging.getLogger(name) for name in ("bitsandbytes", "discord.client")]
    saved = [(lg.level, list(lg.filters)) for lg in loggers]
    for lg in loggers:  # start clean: an in-process entry point run earlier may have quieted them
        lg.setLevel(logging.NOTSET)
        lg.filters[:] = []
    with warnings.catch_warnings():
        # Start from "show everything" (pytest's own config ignores FutureWarning for the suite).
        warnings.resetwarnings()
        warnings.simplefilter("always")
        yield
    for lg, (level, filters) in zip(loggers, saved, strict=True):
        lg.setLevel(level)
        lg.filters[:] = filters


def _warn_from(module: str) -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as caught:  # keeps the filters installed by the test
        warnings.warn_explicit("`x` is deprecated", FutureWarning, "lib.py", 1, module=module)
    return caught


def test_library_notices_are_dropped_and_ours_are_kept(restore_logging_and_warnings, caplog):
    quiet_libraries(verbose=False)
    assert _warn_from("transformers.modeling_utils") == []
    assert _warn_from("peft.peft_model") == []
    assert len(_warn_from("bot.serving.local.engine")) == 1  # the project's own warnings still show

    discord_log = logging.getLogger("discord.client")
    with caplog.at_level(logging.WARNING):
        discord_log.warning("PyNaCl is not installed, voice will NOT be supported")
        discord_log.warning("davey is not installed, voice will NOT be supported")
        discord_log.warning("Shard ID None has connected to Gateway")
        logging.getLogger("bitsandbytes").warning(
            "Failed to load CPU gemm_4bit_forward from kernels-community"
        )
        logging.getLogger("bitsandbytes").error("a real bitsandbytes error")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["Shard ID None has connected to Gateway", "a real bitsandbytes error"]


def test_verbose_keeps_everything(restore_logging_and_warnings):
    quiet_libraries(verbose=True)
    assert len(_warn_from("transformers.modeling_utils")) == 1
    assert logging.getLogger("discord.client").filters == []


def test_the_console_on_the_tiny_model_prints_no_library_warnings(tiny_neox, tmp_path):
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "OSHABERI_CONFIG": "",
        "DISCORD_TOKEN": "",
        "PYTHONPATH": str(ROOT),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "bot", "chat", "--model", str(tiny_neox), "--persona", "marisa"],
        input="こんにちは\n",
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    noisy = [line for line in proc.stderr.splitlines() if "Warning" in line or "deprecated" in line]
    assert noisy == [], proc.stderr
