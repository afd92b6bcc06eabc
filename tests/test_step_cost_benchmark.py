"""The step-cost benchmark runs end to end at a tiny shape and writes its figures per dtype.

Only the script's plumbing is tested; speed is measured by running it, never asserted."""

import json

from benchmarks.step_cost import main


def test_step_cost_writes_prefill_and_decode_times_per_dtype_and_rows(tmp_path, capsys):
    out = tmp_path / "step.json"
    args = ["--shape", "tiny", "--rows", "1", "3", "--repeats", "1", "--dtype", "float32", "bfloat16"]
    assert main([*args, "--out", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert figures["shape"] == "tiny" and figures["device"].startswith("cpu")
    assert set(figures["dtypes"]) == {"float32", "bfloat16"}
    for rows in figures["dtypes"].values():
        assert [r["rows"] for r in rows] == [1, 3]
        assert all(r["prefill_ms"] > 0 and r["decode_ms"] > 0 for r in rows)
    assert "decode step" in capsys.readouterr().out


def test_step_cost_refuses_zero_rows(capsys):
    try:
        main(["--rows", "0"])
    except SystemExit as exc:
        assert exc.code == 2
    else:
        raise AssertionError("--rows 0 was accepted")
    assert "--rows and --repeats must be at least 1" in capsys.readouterr().err
