"""The benchmark script runs end to end at a tiny shape and writes every figure the README quotes.

Only the script's plumbing is tested here; speed is measured by running it, never asserted."""

import json

from benchmarks.hotswap import PROMPT_TOKENS, main, prompt_of, stage_count
from bot.model.loading import load_tokenizer

KEYS = {
    "serial_tok_s",
    "mixed_tok_s",
    "single_adapter_tok_s",
    "mixed_over_serial",
    "mixed_over_single",
    "switch_ms",
    "load_ms",
    "peak_rss_mb",
    "device",
    "adapters_memory_pct",
}


def test_prompts_have_exactly_the_asked_length(tiny_neox):
    from bot.model.loading import encode_prompt

    tok = load_tokenizer(str(tiny_neox))
    prompts = {prompt_of(tok, 7 * i) for i in range(8)}
    assert len(prompts) == 8
    assert {len(encode_prompt(tok, p)) for p in prompts} == {PROMPT_TOKENS}


def test_benchmark_writes_its_figures(tmp_path, capsys):
    out = tmp_path / "results.json"
    assert main(["--shape", "tiny", "--repeats", "1", "--out", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert set(figures) >= KEYS
    assert figures["device"] == "cpu" and figures["requests"] == 8
    assert all(figures[k] > 0 for k in ("serial_tok_s", "mixed_tok_s", "single_adapter_tok_s", "load_ms"))
    assert abs(figures["mixed_over_serial"] - figures["mixed_tok_s"] / figures["serial_tok_s"]) < 1e-9
    # Interleaved repeats: each figure's spread and B/A per repeat.
    assert set(figures["spread_tok_s"]) == {"serial", "mixed", "single", "engine_single"}
    lo, hi = figures["spread_tok_s"]["mixed"]
    assert lo <= figures["mixed_tok_s"] <= hi
    assert len(figures["mixed_over_serial_runs"]) == 1
    # Progress goes to stderr, stage by stage, to the last unit; stdout keeps only the figures.
    captured = capsys.readouterr()
    for stage in ("building the model", "warm-up", "A/B/C interleaved", "D adapter switching"):
        assert stage in captured.err
    assert f"{stage_count(1)}/{stage_count(1)}" in captured.err
    assert "run/s" not in captured.out and "B/A" in captured.out


def test_the_vllm_backend_without_a_server_says_how_to_start_one(tmp_path, capsys):
    from tests.vllm_server import free_port

    url = f"http://127.0.0.1:{free_port()}"
    code = main(["--backend", "vllm", "--vllm-url", url, "--workdir", str(tmp_path), "--shape", "tiny"])
    assert code == 2
    [line] = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error:")]
    assert url in line and "not reachable" in line
    assert f"--model {tmp_path / 'model'}" in line and f"--port {url.rsplit(':', 1)[1]}" in line
    assert (tmp_path / "model" / "config.json").is_file()  # the model the server is to run is there
