"""Files the trainer writes get the mode the umask asks for, not mkstemp's 0600."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bot.model.adapters import set_current
from bot.ops.filemode import current_umask, default_file_mode, respect_umask

ROOT = Path(__file__).resolve().parents[1]
PAIRS = ROOT / "tests" / "fixtures" / "convert" / "pairs"


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_umask_is_read_without_changing_it():
    before = os.umask(0o027)
    try:
        assert current_umask() == 0o027 and default_file_mode() == 0o640
        assert current_umask() == 0o027  # reading did not reset it
    finally:
        os.umask(before)


def test_respect_umask_sets_every_file_below_a_folder_and_leaves_folders(tmp_path):
    (tmp_path / "sub").mkdir(mode=0o750)
    for name in ("a", "sub/b"):
        (tmp_path / name).write_text("x")
        os.chmod(tmp_path / name, 0o600)
    respect_umask(tmp_path)
    assert mode(tmp_path / "a") == mode(tmp_path / "sub" / "b") == default_file_mode()
    assert mode(tmp_path / "sub") == 0o750


def test_the_current_pointer_follows_the_umask(tmp_path):
    version = tmp_path / "marisa" / "v1"
    version.mkdir(parents=True)
    (version / "adapter_config.json").write_text("{}")
    (version / "adapter_model.safetensors").write_bytes(b"")
    before = os.umask(0o002)
    try:
        set_current(tmp_path, "marisa", "v1")
    finally:
        os.umask(before)
    assert mode(tmp_path / "marisa" / "CURRENT") == 0o664


def test_fetch_and_prepare_follow_the_umask(tmp_path):
    source = next(p for p in sorted(PAIRS.iterdir()) if p.suffix == ".csv")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    commands = [
        ["fetch", "ojousama", "--url", source.as_uri(), "--dest", "raw"],
        ["prepare", "--format", "pairs", "raw/ojousama", "-o", "out.jsonl"],
    ]
    for args in commands:
        done = subprocess.run(
            [sys.executable, "-m", "trainer", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            preexec_fn=lambda: os.umask(0o027),
        )
        assert done.returncode == 0, done.stderr
    (fetched,) = (tmp_path / "raw" / "ojousama").iterdir()
    assert mode(fetched) == 0o640
    assert mode(tmp_path / "out.jsonl") == 0o640
