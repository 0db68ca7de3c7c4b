"""Phase-diagram analysis (kvshift_lens.phase) on synthetic runs, and the one-command pipeline end to end."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kvshift_lens import phase
from kvshift_lens.analysis import load_summaries

ROOT = Path(__file__).resolve().parents[1]


def runs(family: dict, acc_by_seed: dict[int, dict[int, float]]) -> list[dict]:
    """Synthetic tidy rows: {seed: {d_model: final accuracy}} for one family."""
    return [{**family, "seed": s, "d_model": d, "induction_acc": a, "n_params": 10 * d, "n_params_non_embedding": 5 * d, "steps_to_90": None}
            for s, accs in acc_by_seed.items() for d, a in accs.items()]


KV = {"arch": "kvshift", "n_layers": 1, "n_heads": 1, "seq_len": 32}
VA = {"arch": "vanilla", "n_layers": 1, "n_heads": 1, "seq_len": 32}
V2 = {"arch": "vanilla", "n_layers": 2, "n_heads": 1, "seq_len": 32}


@pytest.fixture
def synthetic() -> pd.DataFrame:
    rows = runs(KV, {0: {4: 0.1, 8: 0.95, 16: 0.99, 32: 0.99},
                     1: {4: 0.1, 8: 0.5, 16: 0.97, 32: 0.99},
                     2: {4: 0.2, 8: 0.91, 16: 0.85, 32: 0.99}})  # seed 2 dips at 16: "all seeds" is 32
    rows += runs(VA, {s: {4: 0.05, 8: 0.1, 16: 0.1, 32: 0.2} for s in range(3)})
    rows += runs(V2, {0: {4: 0.1, 8: 0.2, 16: 0.3, 32: 0.95}, 1: {4: 0.1, 8: 0.2, 16: 0.3, 32: 0.4},
                      2: {4: 0.1, 8: 0.2, 16: 0.92, 32: 0.96}})
    return pd.DataFrame(rows)


def row(table: pd.DataFrame, family: dict) -> pd.Series:
    hit = table[np.logical_and.reduce([table[k] == v for k, v in family.items()])]
    assert len(hit) == 1
    return hit.iloc[0]


def test_frontier_takes_the_smallest_succeeding_width_per_seed_and_its_spread(synthetic):
    fr = phase.frontier(synthetic)
    kv = row(fr, KV)
    assert (kv.n_seeds, kv.n_reached, kv["median"], kv["min"], kv["max"]) == (3, 3, 8, 8, 16)
    assert kv.all_seeds == 32 and kv.frontier == "8 [8, 16]"


def test_frontier_reports_censored_families(synthetic):
    fr = phase.frontier(synthetic)
    va, v2 = row(fr, VA), row(fr, V2)
    assert va.n_reached == 0 and math.isnan(va["median"]) and math.isnan(va.all_seeds)
    assert va.frontier == "> 32 (0/3)"
    assert v2.n_reached == 2 and (v2["min"], v2["max"]) == (16, 32) and math.isnan(v2.all_seeds)
    assert v2["median"] == 32 and v2.frontier == "32 [16, > 32] (2/3)"  # censored seed counts as +inf


def test_threshold_moves_the_frontier(synthetic):
    assert row(phase.frontier(synthetic, threshold=0.96), KV)["median"] == 16


def test_success_table_and_grid_table(synthetic):
    ok = phase.success_table(synthetic)
    assert ok.loc[("kvshift", 1), 8] == "2/3" and ok.loc[("vanilla", 1), 32] == "0/3"
    acc = phase.grid_table(synthetic, "induction_acc")
    assert acc.loc[("kvshift", 1), 8] == pytest.approx((0.95 + 0.5 + 0.91) / 3)


def test_wilson_interval_properties():
    lo, hi = phase.wilson(0, 3)
    assert lo == 0 and 0 < hi < 1
    lo2, hi2 = phase.wilson(3, 3)
    assert hi2 == 1 and lo2 == pytest.approx(1 - hi)
    assert phase.wilson(30, 30)[0] > phase.wilson(3, 3)[0]  # more seeds, tighter interval
    assert all(math.isnan(x) for x in phase.wilson(0, 0))


def test_length_scaling_slope_is_log_log_growth():
    rows = []
    for seq, need in [(16, 4), (32, 8), (64, 16)]:  # width ∝ length
        rows += runs({**KV, "seq_len": seq}, {s: {d: (0.95 if d >= need else 0.1) for d in (4, 8, 16, 32)}
                                              for s in range(3)})
    for seq in (16, 32, 64):  # flat frontier
        rows += runs({**V2, "seq_len": seq}, {s: {d: (0.95 if d >= 8 else 0.1) for d in (4, 8, 16, 32)}
                                              for s in range(3)})
    rows += runs(VA, {0: {4: 0.1}})  # one length only: not a length family
    table = phase.length_scaling(pd.DataFrame(rows))
    assert set(zip(table.arch, table.n_layers)) == {("kvshift", 1), ("vanilla", 2)}
    assert row(table, {**KV, "seq_len": 64}).slope == pytest.approx(1.0)
    assert row(table, {**V2, "seq_len": 16}).slope == pytest.approx(0.0)
    assert list(table[table.arch == "kvshift"].sort_values("seq_len")["median"]) == [4, 8, 16]


def expected_params(arch: str, n_layers: int, d: int, heads: int, d_head: int, vocab: int, ctx: int) -> tuple[int, int]:
    """Attention-only, layernorm, learned positions, biased Q/K/V/O, bias-free unembedding."""
    embed = vocab * d + ctx * d + vocab * d
    attn = 3 * (d * heads * d_head + heads * d_head) + heads * d_head * d + d
    shift = 2 * 2 * heads if arch == "kvshift" else 0  # (α1, α2) and (β1, β2) per head
    body = n_layers * (2 * d + attn + shift) + 2 * d
    return embed + body, body


@pytest.mark.parametrize("arch,n_layers,d,heads,d_head", [("kvshift", 1, 8, 1, 8), ("vanilla", 2, 8, 2, 4),
                                                          ("kvshift", 3, 16, 4, 2)])
def test_param_counts_match_the_architecture(arch, n_layers, d, heads, d_head):
    model = {"mixer": {"name": {"kvshift": "kv_shift", "vanilla": "none"}[arch]}, "n_layers": n_layers, "d_model": d,
             "n_heads": heads, "d_head": d_head, "d_vocab": 16, "n_ctx": 12}
    assert phase.param_counts(model) == expected_params(arch, n_layers, d, heads, d_head, 16, 12)


def test_param_matched_pairs_kvshift_1l_with_vanilla_2l(synthetic):
    pm = phase.param_matched(synthetic)
    assert set(pm.model) == {"kvshift 1L", "vanilla 2L"}
    assert list(pm.n_params) == sorted(pm.n_params)
    pf = phase.param_frontier(pm).set_index("model")
    assert pf.loc["kvshift 1L", "d_model_all_seeds"] == 32  # seed 2 fails at 16
    assert pf.loc["kvshift 1L", "params_any_seed"] == 80
    assert math.isnan(pf.loc["vanilla 2L", "params_all_seeds"]) and pf.loc["vanilla 2L", "params_any_seed"] == 160


def test_plots_are_functions_of_tables(synthetic):
    synthetic = synthetic.assign(steps_to_90=[100 if a >= 0.9 else None for a in synthetic.induction_acc])
    lengths = pd.concat([synthetic, synthetic.assign(seq_len=64, induction_acc=synthetic.induction_acc * 0.9)])
    for fig in (phase.plot_heatmaps(synthetic), phase.plot_param_matched(phase.param_matched(synthetic)),
                phase.plot_length_scaling(phase.length_scaling(lengths))):
        assert len(fig.axes) >= 1


def test_one_command_runs_the_tiny_profile_end_to_end(tmp_path):
    cmd = [sys.executable, "-m", "experiments.phase_diagram", "--profile", "tiny", "--out-dir", str(tmp_path / "runs"),
           "--results-dir", str(tmp_path / "results")]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    res = tmp_path / "results"
    df = pd.read_csv(res / "phase_diagram_tiny.csv")
    assert {"arch", "n_layers", "d_model", "n_heads", "d_head", "seed", "seq_len", "induction_acc",
            "steps_to_90", "n_params"} <= set(df.columns)
    assert len(df) == len(load_summaries(tmp_path / "runs" / "sweeps" / "phase_diagram_tiny")) == 4
    for suffix in ("_frontier.csv", "_length.csv", "_params.csv", "_heatmaps.png", "_params.png", "_length.png"):
        assert (res / f"phase_diagram_tiny{suffix}").stat().st_size > 0
    prov = json.loads((res / "phase_diagram_tiny_provenance.json").read_text())
    assert prov["n_runs"] == 4 and prov["seeds"] == [0] and prov["sweep_history"][0]["wall_seconds"] > 0
    assert "### Verdicts" in (res / "phase_diagram_tiny.md").read_text()
    # outputs regenerate from the finished runs alone
    (res / "phase_diagram_tiny.csv").unlink()
    r = subprocess.run(cmd + ["--skip-train"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert pd.read_csv(res / "phase_diagram_tiny.csv").equals(df)


def test_paired_sign_test_counts_wins(synthetic):
    k, n, p = phase.paired_sign_test(synthetic, ("kvshift", 1), ("vanilla", 1))
    assert (k, n) == (12, 12) and p == pytest.approx(0.5 ** 12)
    k, n, p = phase.paired_sign_test(synthetic, ("vanilla", 1), ("kvshift", 1))
    assert k == 0 and p == pytest.approx(1.0)


def test_in_grid_keeps_only_declared_sweep_points():
    raw = pd.DataFrame({"model.mixer.name": ["none", "kv_shift", "kv_shift"], "model.d_model": [4, 8, 64],
                        "seed": [0, 1, 0]})
    keep = phase.in_grid(raw, [{"model/mixer": "none,kv_shift", "model.d_model": "4,8", "seed": "0,1"}])
    assert list(keep) == [True, True, False]
    assert list(phase.in_grid(raw, [{"model.d_model": 64}, {"seed": 1}])) == [False, True, True]


def _length_row(seq_len: int, n_reached: int, all_seeds: float, max_width: float = 64.0) -> dict:
    return {"arch": "kvshift", "n_layers": 1, "n_heads": 1, "seq_len": seq_len, "n_seeds": 3,
            "n_reached": n_reached, "all_seeds": all_seeds, "max_width": max_width}


def test_width_trend_calls_a_censored_short_length_a_shrinking_frontier():
    grows = pd.DataFrame([_length_row(16, 3, 8.0), _length_row(32, 3, 16.0), _length_row(64, 3, 32.0)])
    shrinks = pd.DataFrame([_length_row(16, 1, float("nan")), _length_row(32, 3, 8.0), _length_row(64, 3, 16.0)])
    flat = pd.DataFrame([_length_row(16, 3, 8.0), _length_row(32, 3, 8.0)])
    assert phase.width_trend(grows) == {("kvshift", 1, 1): "grows"}
    assert phase.width_trend(shrinks) == {("kvshift", 1, 1): "shrinks"}
    assert phase.width_trend(flat) == {("kvshift", 1, 1): "flat"}


def test_non_monotone_seeds_lists_a_seed_that_fails_above_a_width_where_it_succeeded():
    df = pd.DataFrame({"arch": "vanilla", "n_layers": 2, "n_heads": 1, "seq_len": 32, "seed": [0, 0, 0, 1, 1, 1],
                       "d_model": [16, 32, 64] * 2, "induction_acc": [0.1, 0.95, 0.3, 0.1, 0.95, 0.96]})
    out = phase.non_monotone_seeds(df)
    assert out.to_dict("records") == [{"arch": "vanilla", "n_layers": 2, "seed": 0, "fails_at": 64}]
