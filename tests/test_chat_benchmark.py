"""The chat benchmark runs end to end at a tiny shape and writes every key issue 20 names.

Only the script's plumbing and the workload's shape are tested; speed is measured by running it,
never asserted."""

import json

from benchmarks.chat import main

RUN_KEYS = {
    "ttft_first_p50_s",
    "ttft_first_p99_s",
    "ttft_followup_p50_s",
    "ttft_followup_p99_s",
    "latency_p50_s",
    "latency_p99_s",
    "tok_s",
    "prompt_tokens_computed",
    "prompt_tokens_reused",
    "cache_mb",
    "solo_ttft_followup_s",
}


def test_chat_benchmark_writes_its_figures_with_the_cache_on_and_off(tmp_path, capsys):
    out = tmp_path / "chat.json"
    args = ["--shape", "tiny", "--channels", "3", "--turns", "2", "--history-turns", "4", "--solo-turns", "2"]
    args += ["--think-s", "0", "--channel-rate", "50", "--new-tokens", "4", "--cache-mb", "64", "0"]
    assert main([*args, "--out", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert {"device", "shape", "backend", "workload", "runs", "summary"} <= set(figures)
    assert (
        figures["backend"] == "local" and figures["shape"] == "tiny" and figures["device"].startswith("cpu")
    )
    assert figures["workload"]["dtype"] == "auto" and figures["workload"]["channels"] == 3
    on, off = figures["runs"]
    assert set(on) >= RUN_KEYS and (on["cache_mb"], off["cache_mb"]) == (64, 0)
    assert on["messages"] == off["messages"] == 3 * 2
    # The same requests either way (greedy): the same prompt tokens in all, split differently.
    assert on["prompt_tokens_mean"] == off["prompt_tokens_mean"] > 200  # the card's header and history
    total = on["prompt_tokens_reused"] + on["prompt_tokens_computed"]
    assert total == off["prompt_tokens_computed"] and off["prompt_tokens_reused"] == 0
    # Of 8 messages, 4 are follow-ups that reuse their channel's previous prompt and reply.
    assert on["prompt_tokens_reused"] > 0.4 * total
    assert set(figures["summary"]) == {"64", "0"}
    assert "prompt tokens reused" in capsys.readouterr().out


def test_the_vllm_backend_without_a_server_says_how_to_start_one(tmp_path, capsys):
    from tests.vllm_server import free_port

    url = f"http://127.0.0.1:{free_port()}"
    args = ["--backend", "vllm", "--vllm-url", url, "--workdir", str(tmp_path), "--shape", "tiny"]
    assert main(args) == 2
    [line] = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error:")]
    assert url in line and "not reachable" in line and "--enable-prefix-caching" in line
    assert main(["--cache-mb", "-1"]) == 2
