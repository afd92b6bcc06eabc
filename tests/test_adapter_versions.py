"""Which adapter each persona serves is shown (console, /status text), and a broken adapter
loaded through ``CURRENT`` is reported by its own file, not as a fault of ``persona.toml``."""

from __future__ import annotations

import io
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from bot.console import ConsoleChat
from bot.discord.admin_text import status_lines
from bot.model.adapters import set_current
from bot.runtime import Runtime
from bot.serving.adapter_labels import PROMPT_ONLY, adapter_label, persona_adapter_labels
from bot.serving.generation import AdapterError, AdapterInfo
from tests.test_chat_and_console import settings_for


def test_labels_name_the_version_else_the_folder_else_prompt_only() -> None:
    adapters = [
        AdapterInfo("marisa", "/a/marisa/v20260101-000000", "v20260101-000000", 10),
        AdapterInfo("zundamon", "/cards/zundamon/lora", None, 10),
    ]
    labels = persona_adapter_labels(["zundamon", "ojousama", "marisa"], adapters)
    assert labels == {"marisa": "v20260101-000000", "ojousama": PROMPT_ONLY, "zundamon": "lora"}
    assert adapter_label(AdapterInfo("x", "someone/hub-lora", None, 1)) == "hub-lora"


def test_status_lists_every_persona_with_its_adapter() -> None:
    stats = SimpleNamespace(
        queue_depth=0,
        queue_capacity=8,
        in_flight=0,
        recent_batch_sizes=[],
        batches_run=0,
        tokens_per_s=0.0,
        requests_failed=0,
        device="cpu",
        device_memory_mb=None,
        adapters=[AdapterInfo("marisa", "/a/marisa/v2", "v2", 10)],
    )
    text = "\n".join(status_lines(stats, None, 0, persona_ids=["marisa", "zundamon"]))
    assert "**Personas**: `marisa` v2, `zundamon` prompt-only" in text


def test_a_canary_shows_beside_its_persona_current_version() -> None:
    stats = SimpleNamespace(
        queue_depth=0,
        queue_capacity=8,
        in_flight=0,
        recent_batch_sizes=[],
        batches_run=0,
        tokens_per_s=0.0,
        requests_failed=0,
        device="cpu",
        device_memory_mb=None,
        adapters=[AdapterInfo("marisa", "/a/marisa/v2", "v2", 10)],
        canaries=[AdapterInfo("marisa", "/a/marisa/v3", "v3", 10, share=0.1)],
    )
    text = "\n".join(status_lines(stats, None, 0, persona_ids=["marisa", "zundamon"]))
    assert "**Personas**: `marisa` v2 + canary v3 (10%), `zundamon` prompt-only" in text
    assert "• `marisa` canary: v3 for 10% of requests" in text


@pytest.fixture
async def runtime_with_adapters(tiny_neox, random_adapters, tmp_path, caplog):
    """marisa serves a good adapter through CURRENT; zundamon's CURRENT points at a corrupt one."""
    adapters = tmp_path / "adapters"
    shutil.copytree(random_adapters["gpt-neox"]["marisa"], adapters / "marisa" / "v1")
    set_current(adapters, "marisa", "v1")
    broken = adapters / "zundamon" / "v3"
    shutil.copytree(random_adapters["gpt-neox"]["zundamon"], broken)
    set_current(adapters, "zundamon", "v3")
    (broken / "adapter_config.json").write_text('{"r": 4,, }', encoding="utf-8")  # corrupted after the fact
    with caplog.at_level(logging.ERROR):
        rt = await Runtime.start(settings_for(tiny_neox, adapters))
    yield rt, broken
    await rt.close(drain_timeout=1)


async def test_a_corrupt_adapter_from_current_names_its_file(runtime_with_adapters, caplog) -> None:
    rt, broken = runtime_with_adapters
    [record] = [r for r in caplog.get_records("setup") if "zundamon" in r.getMessage()]
    message = record.getMessage()
    assert str(broken / "adapter_config.json") in message and "line 1 column" in message
    assert "persona.toml" not in message and "prompt-only" in message
    with pytest.raises(AdapterError) as info:
        await rt.reload("zundamon")
    assert str(broken / "adapter_config.json") in str(info.value) and "persona.toml" not in str(info.value)


async def test_the_console_shows_each_personas_adapter(runtime_with_adapters) -> None:
    rt, _ = runtime_with_adapters
    out = io.StringIO()
    chat = ConsoleChat(rt, "marisa", out, io.StringIO(), interactive=True)
    assert await chat.run(io.StringIO("/personas\n")) == 0
    banner, *rest = out.getvalue().splitlines()
    assert "(adapter: v1)" in banner
    listing = "\n".join(rest)
    assert "marisa" in listing and "[v1]" in listing
    assert [line for line in rest if "zundamon" in line and f"[{PROMPT_ONLY}]" in line]


def test_labels_module_does_not_import_discord() -> None:
    source = Path("bot/serving/adapter_labels.py").read_text(encoding="utf-8")
    assert "discord" not in source.split('"""', 2)[2]


def test_a_canary_pointer_round_trips_and_refuses_bad_values(tmp_path: Path) -> None:
    from bot.model.adapters import Canary, clear_canary, read_canary, write_canary

    folder = tmp_path / "marisa" / "v2"
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}", encoding="utf-8")
    (folder / "adapter_model.safetensors").write_bytes(b"x")
    assert read_canary(tmp_path, "marisa") is None
    write_canary(tmp_path, "marisa", "v2", 0.1)
    assert read_canary(tmp_path, "marisa") == Canary("v2", 0.1)
    for version, share in (("v2", 0.0), ("v2", 1.0), ("../x", 0.1)):
        with pytest.raises(ValueError):
            write_canary(tmp_path, "marisa", version, share)
    with pytest.raises(FileNotFoundError):
        write_canary(tmp_path, "marisa", "v3", 0.1)
    assert read_canary(tmp_path, "marisa") == Canary("v2", 0.1)  # refusals left it alone
    (tmp_path / "marisa" / "CANARY").write_text("{not json", encoding="utf-8")
    assert read_canary(tmp_path, "marisa") is None
    clear_canary(tmp_path, "marisa")
    clear_canary(tmp_path, "marisa")  # twice: nothing to clear is fine
    assert read_canary(tmp_path, "marisa") is None


async def test_the_console_names_a_command_it_does_not_know(runtime_with_adapters) -> None:
    rt, _ = runtime_with_adapters
    out = io.StringIO()
    chat = ConsoleChat(rt, "marisa", out, io.StringIO(), interactive=True)
    assert await chat.run(io.StringIO("/foo\n/help\n")) == 0
    text = out.getvalue()  # each answer follows its prompt ("marisa> ") on the same line
    assert "marisa> unknown command /foo; commands: /persona ID, /personas, /reset, /quit\n" in text
    assert "marisa> commands: /persona ID, /personas, /reset, /quit\n" in text  # /help: the list alone
