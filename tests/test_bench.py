"""`python -m benchmarks.run --quick` runs end to end and writes every top-level key (no timing asserts)."""

import json
import subprocess
import sys
from pathlib import Path

from kvshift_lens.mixers import MIXERS

ROOT = Path(__file__).resolve().parents[1]
KEYS = {"step_ratio_vs_sdpa", "kvshift_vs_vanilla", "sweep_speedup_2_workers", "datagen_vs_consumption",
        "lm_tokens_per_s_vs_sdpa", "lm_datagen_vs_consumption", "lm",
        "seconds_to_90pct_induction", "peak_rss_mb", "git_commit", "machine", "load_average", "details",
        "mixer_vs_vanilla", "mixer_targets", "compile_payback"}


def test_quick_benchmark_writes_json_and_markdown(tmp_path):
    r = subprocess.run([sys.executable, "-m", "benchmarks.run", "--quick", "--compile-mixers", "kv_shift", "--out", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "bench.json").read_text())
    assert KEYS <= set(res)
    assert {"cpu", "cores", "torch", "threads", "device"} <= set(res["machine"])
    assert res["details"] and {"shape", "ms_per_step", "kvshift_vs_vanilla", "datagen_vs_consumption"} <= set(res["details"][0])
    for key in ("step_ratio_vs_sdpa", "kvshift_vs_vanilla", "datagen_vs_consumption", "peak_rss_mb",
                "lm_tokens_per_s_vs_sdpa", "lm_datagen_vs_consumption"):
        assert res[key] > 0
    assert "| step_ratio_vs_sdpa |" in (tmp_path / "bench.md").read_text()
    assert set(res["mixer_vs_vanilla"]) == set(MIXERS.names()) - {"none"}  # every mixer, as a ratio to vanilla
    assert all(r > 0 for r in res["mixer_vs_vanilla"].values())
    assert "| canon |" in (tmp_path / "bench.md").read_text()
    compiled = res["compile_payback"]["mixers"]["kv_shift"]  # train.compile: compile seconds, step times, break-even
    assert compiled["compile_seconds"]["cold"] > 0 and compiled["ms_per_step"]["compiled"] > 0
    for kind in ("cold", "warm"):  # steps to break even, or None when the compiled step is not faster
        steps = compiled["payback_steps"][kind]
        assert steps is None or steps >= 1
        assert compiled["pays_back_in_default_run"][kind] == (steps is not None and steps <= 3000)

