"""The load benchmark runs end to end at a tiny shape and writes every key issue 8 names.

Only the script's plumbing is tested; speed is measured by running it, never asserted."""

import itertools
import json

from benchmarks.load import arrival_times, main, percentile, sustained

RATE_KEYS = {
    "rate_per_s",
    "tok_s",
    "ttft_p50_s",
    "ttft_p99_s",
    "latency_p50_s",
    "latency_p99_s",
    "offered_tok_s",
    "sustained_tok_s",
    "sustained_share",
    "queue_wait_p99_s",
    "admitted_to_first_token_p99_s",
    "single_latency_s",
    "p99_over_single",
}


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0 and percentile(values, 99) == 99.0 and percentile([3.0], 99) == 3.0


def test_arrivals_offer_the_nominal_load_with_random_bursts():
    times = arrival_times(400, 4.0, seed=1)
    assert times == sorted(times) and times == arrival_times(400, 4.0, seed=1)
    assert times[0] >= 0 and times[-1] < 100.0  # 400 arrivals at 4/s: within 100 s
    assert 3.9 < 399 / (times[-1] - times[0]) < 4.2  # the nominal rate, not 0.8-1.3 times it
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) < 0.02 and max(gaps) > 0.8  # exponential-like gaps, not a metronome
    assert arrival_times(400, 4.0, seed=2) != times


def test_sustained_share_is_free_of_the_drain_and_sees_a_growing_backlog():
    arrivals = [0.0, 1.0, 2.0, 3.0, 4.0]
    kept_up = sustained(arrivals, [a + 2.5 for a in arrivals], 10)  # every reply 2.5 s later
    assert kept_up == {"offered_tok_s": 10.0, "sustained_tok_s": 10.0, "sustained_share": 1.0}
    behind = sustained(arrivals, [a + 1.0 + a for a in arrivals], 10)  # each waits 1 s longer
    assert behind["sustained_tok_s"] == 5.0 and behind["sustained_share"] == 0.5
    assert sustained([1.0], [2.0], 10)["sustained_share"] == 0.0


def test_load_benchmark_writes_its_figures(tmp_path, capsys):
    scheduler = "both"  # continuous and static, alternating per rate
    out = tmp_path / "load.json"
    args = ["--shape", "tiny", "--requests", "3", "--new-tokens", "3", "--scheduler", scheduler]
    args += ["--dtype", "bfloat16", "--max-batch-size", "2"]
    assert main([*args, "--out", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert {"rates", "device", "shape", "scheduler"} <= set(figures)
    assert figures["scheduler"] == scheduler and figures["shape"] == "tiny"
    assert figures["dtype"] == "bfloat16" and figures["max_batch_size"] == 2
    assert figures["device"].startswith("cpu") and len(figures["rates"]) == 6
    order = [row["scheduler"] for row in figures["rates"]]
    assert order == ["continuous", "static", "static", "continuous", "continuous", "static"]
    for row in figures["rates"]:
        assert set(row) == RATE_KEYS | {"scheduler"}
        assert row["ttft_p50_s"] <= row["latency_p50_s"] and row["tok_s"] > 0
        assert row["sustained_tok_s"] > 0 and row["offered_tok_s"] > 0
        # time to first token splits into the wait for a row and admission → first token
        assert 0 <= row["queue_wait_p99_s"] <= row["ttft_p99_s"] + 1e-9
        assert 0 < row["admitted_to_first_token_p99_s"] <= row["ttft_p99_s"] + 1e-9
        assert abs(row["p99_over_single"] - row["latency_p99_s"] / row["single_latency_s"]) < 1e-9
    rates = [row["rate_per_s"] for row in figures["rates"]][::2]
    assert rates == sorted(rates) and abs(rates[1] / rates[0] - 2) < 0.05
    assert "p99/single" in capsys.readouterr().out


def test_the_vllm_backend_without_a_server_says_how_to_start_one(tmp_path, capsys):
    from tests.vllm_server import free_port

    url = f"http://127.0.0.1:{free_port()}"
    args = ["--backend", "vllm", "--vllm-url", url, "--workdir", str(tmp_path), "--shape", "tiny"]
    assert main(args) == 2
    [line] = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error:")]
    assert url in line and "not reachable" in line and f"--model {tmp_path / 'model'}" in line
    assert main(["--backend", "vllm"]) == 2  # without a URL and a folder: says what it needs
    assert "--vllm-url URL and --workdir DIR" in capsys.readouterr().err
