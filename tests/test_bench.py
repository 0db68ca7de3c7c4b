"""`python -m benchmarks.run --quick` runs end to end and writes every top-level key (no timing asserts)."""

import json
import subprocess
import sys
from pathlib import Path

from kvshift_lens.models.mixers.base import MIXERS

ROOT = Path(__file__).resolve().parents[1]
KEYS = {"step_ratio_vs_sdpa", "kvshift_vs_vanilla", "sweep_speedup_2_workers", "datagen_vs_consumption",
        "lm_tokens_per_s_vs_sdpa", "lm_datagen_vs_consumption", "lm",
        "seconds_to_90pct_induction", "peak_rss_mb", "git_commit", "machine", "load_average", "details",
        "mixer_vs_vanilla", "mixer_targets", "compile_payback", "intervention_step_ratio", "interventions",
        "development_vs_training", "development"}


def test_quick_benchmark_writes_json_and_markdown(tmp_path):
    r = subprocess.run([sys.executable, "-m", "benchmarks.run", "--quick", "--out", str(tmp_path)],
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
    assert res["compile_payback"]["mixers"] == {}  # --quick compiles nothing (the compiled path: test_train.py)


def test_every_benchmark_family_is_one_module_the_driver_lists_once():
    from benchmarks import run
    from benchmarks.report import targets

    assert len(set(run.FAMILIES)) == len(run.FAMILIES)
    assert all(callable(f.measure) and callable(f.markdown) for f in run.FAMILIES)
    assert set(targets(run.FAMILIES)) == {"step_ratio_vs_sdpa", "kvshift_vs_vanilla", "sweep_speedup_2_workers",
                                          "datagen_vs_consumption", "lm_tokens_per_s_vs_sdpa", "lm_datagen_vs_consumption",
                                          "intervention_step_ratio", "development_vs_training"}


def probe(first_step: float, eager: float, compiled: float) -> dict:
    """A `compile_probe` result in seconds (vanilla as fast as eager)."""
    return {"first_step": first_step, "eager": eager, "compiled": compiled, "vanilla": eager,
            "compiled_vs_eager": compiled / eager, "compiled_vs_vanilla": compiled / eager}


def test_compile_payback_counts_the_steps_the_saved_time_needs_to_repay_the_compile():
    from benchmarks.compile_payback import payback_summary

    faster = payback_summary({"cold": probe(750.25, 0.5, 0.25), "warm": probe(125.25, 0.5, 0.25)})
    assert faster["compile_seconds"] == {"cold": 750.0, "warm": 125.0}
    assert faster["payback_steps"] == {"cold": 3000, "warm": 500}  # 750 s / 0.25 s saved per step
    assert faster["pays_back_in_default_run"] == {"cold": True, "warm": True}
    slower = payback_summary({"cold": probe(750.75, 0.5, 0.75), "warm": probe(125.75, 0.5, 0.75)})
    assert slower["payback_steps"] == {"cold": None, "warm": None}
    assert slower["pays_back_in_default_run"] == {"cold": False, "warm": False}
