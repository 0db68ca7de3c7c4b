"""`python -m benchmarks.run --quick` runs end to end and writes every top-level key (no timing asserts)."""

import json
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
KEYS = {"step_ratio_vs_sdpa", "kvshift_vs_vanilla", "sweep_speedup_2_workers", "datagen_vs_consumption",
        "seconds_to_90pct_induction", "peak_rss_mb", "git_commit", "machine", "load_average", "details",
        "mixer_vs_vanilla", "mixer_targets", "compile_payback"}


def test_quick_benchmark_writes_json_and_markdown(tmp_path):
    r = subprocess.run([sys.executable, "-m", "benchmarks.run", "--quick", "--out", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "bench.json").read_text())
    assert KEYS <= set(res)
    assert {"cpu", "cores", "torch", "threads", "device"} <= set(res["machine"])
    assert res["details"] and {"shape", "ms_per_step", "kvshift_vs_vanilla", "datagen_vs_consumption"} <= set(res["details"][0])
    for key in ("step_ratio_vs_sdpa", "kvshift_vs_vanilla", "datagen_vs_consumption", "peak_rss_mb"):
        assert res[key] > 0
    assert "| step_ratio_vs_sdpa |" in (tmp_path / "bench.md").read_text()
    from kvshift_lens.mixers import MIXERS
    assert set(res["mixer_vs_vanilla"]) == set(MIXERS.names()) - {"none"}  # every mixer, as a ratio to vanilla
    assert all(r > 0 for r in res["mixer_vs_vanilla"].values())
    assert "| canon |" in (tmp_path / "bench.md").read_text()


def test_compile_payback_reports_compile_seconds_step_times_and_break_even(tmp_path):
    from benchmarks.run import QUICK_SHAPES, bench_compile

    res = bench_compile(QUICK_SHAPES[0], torch.device("cpu"), ["kv_shift"], rounds=1, cache_dir=tmp_path)
    d = res["mixers"]["kv_shift"]
    assert d["compile_seconds"]["cold"] > 0 and d["ms_per_step"]["compiled"] > 0
    for kind in ("cold", "warm"):  # steps to break even, or None when the compiled step is not faster
        steps = d["payback_steps"][kind]
        assert steps is None or steps >= 1
        assert d["pays_back_in_default_run"][kind] == (steps is not None and steps <= res["default_run_steps"])
