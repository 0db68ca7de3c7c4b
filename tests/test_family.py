"""The family study (kvshift_lens.report.family, experiments.mixers): every verdict rule on synthetic frames for
every outcome it can return, the tables, and the tiny profile end to end."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from kvshift_lens.report import family as F
from kvshift_lens.report.verdicts import INCONCLUSIVE, NOT_REPRODUCED, PARTLY, REPRODUCED

ROOT = Path(__file__).resolve().parents[1]
INF = math.inf


def row(task, arm, key=1, value=1, layers=1, learns=REPRODUCED, cannot=NOT_REPRODUCED, lo=8.0, hi=8.0, text="8"):
    """One `families()` row: rule inputs only (the rest as a real row would carry them)."""
    mixer = "none" if arm.startswith("vanilla") else arm.split("[")[0]
    return {"task": task, "model/mixer": mixer, "model.mixer.sides": "v" if "[v]" in arm else "",
            "model.n_layers": str(layers), "arm": arm, "key_reach": key, "value_reach": value, "chance": 0.02,
            "frontier": hi if hi < INF else float("nan"), "frontier_status": "found", "lo": lo, "hi": hi, "text": text,
            "widths": "64", "widest": 64, "widest_outcomes": "0/3", "widest_best_acc": 0.2, "learns": learns,
            "cannot_learn": cannot}


def vanilla(task, learns=NOT_REPRODUCED, cannot=REPRODUCED, layers=1, lo=64.0001, hi=INF, text="> 64"):
    return row(task, f"vanilla {layers}L", 0, 0, layers, learns, cannot, lo, hi, text)


def frame(*rows):
    return pd.DataFrame(list(rows))


# --------------------------------------------------------------------------- one vanilla layer vs key mixing

@pytest.mark.parametrize("rows,outcome,reason", [
    ([row("mqar", "kv_shift"), row("mqar", "canon", key=6), vanilla("mqar")], REPRODUCED, ""),
    ([row("mqar", "kv_shift"), row("mqar", "canon", key=6, learns=NOT_REPRODUCED), vanilla("mqar")], PARTLY, ""),
    ([row("mqar", "kv_shift", learns=NOT_REPRODUCED), vanilla("mqar")], NOT_REPRODUCED, ""),
    ([row("mqar", "kv_shift"), vanilla("mqar", learns=REPRODUCED, cannot=NOT_REPRODUCED)], NOT_REPRODUCED,
     "one vanilla layer learns it too"),
    ([row("mqar", "kv_shift"), vanilla("mqar", learns=INCONCLUSIVE, cannot=INCONCLUSIVE)], INCONCLUSIVE, "baseline censored"),
    ([row("mqar", "kv_shift", learns=INCONCLUSIVE), vanilla("mqar")], INCONCLUSIVE, ""),
    ([row("mqar", "kv_shift")], INCONCLUSIVE, "not tested"),
])
def test_key_mixing_rule_needs_every_key_mixer_to_learn_and_one_vanilla_layer_to_fail(rows, outcome, reason):
    v = F.key_mixing_verdict(frame(*rows), "mqar")
    assert (v.outcome, v.reason) == (outcome, reason)


def test_value_only_and_two_layer_models_are_not_key_mixers_of_the_rule():
    rows = [row("mqar", "kv_shift"), row("mqar", "kv_shift[v]", key=0, learns=NOT_REPRODUCED),
            vanilla("mqar", layers=2, learns=REPRODUCED), vanilla("mqar")]
    assert F.key_mixing_verdict(frame(*rows), "mqar").outcome == REPRODUCED


# --------------------------------------------------------------------------- value-side mixing only

@pytest.mark.parametrize("v_only,control,outcome,reason", [
    (dict(cannot=REPRODUCED), REPRODUCED, REPRODUCED, ""),
    (dict(cannot=NOT_REPRODUCED), REPRODUCED, NOT_REPRODUCED, ""),
    (dict(cannot=INCONCLUSIVE), REPRODUCED, INCONCLUSIVE, ""),
    (dict(cannot=REPRODUCED), NOT_REPRODUCED, INCONCLUSIVE, "no positive control"),
    (None, REPRODUCED, INCONCLUSIVE, "not tested"),
])
def test_value_only_rule_needs_every_seed_to_fail_while_kv_shift_learns(v_only, control, outcome, reason):
    rows = [row("induction", "kv_shift", learns=control)]
    if v_only is not None:
        rows.append(row("induction", "kv_shift[v]", key=0, value=1, learns=NOT_REPRODUCED, **v_only))
    v = F.value_only_verdict(frame(*rows), "induction")
    assert (v.outcome, v.reason) == (outcome, reason)


# --------------------------------------------------------------------------- stacked MQAR control

@pytest.mark.parametrize("stacked,mqar,outcome", [
    (REPRODUCED, REPRODUCED, REPRODUCED), (NOT_REPRODUCED, REPRODUCED, NOT_REPRODUCED),
    (REPRODUCED, NOT_REPRODUCED, NOT_REPRODUCED), (INCONCLUSIVE, REPRODUCED, INCONCLUSIVE),
    (REPRODUCED, INCONCLUSIVE, INCONCLUSIVE),
])
def test_control_rule_needs_vanilla_to_learn_stacked_and_fail_mqar(stacked, mqar, outcome):
    rows = [vanilla("stacked_mqar", learns=stacked, cannot=NOT_REPRODUCED), vanilla("mqar", cannot=mqar)]
    assert F.control_verdict(frame(*rows)).outcome == outcome
    assert F.control_verdict(frame(rows[0])).reason == "not tested"


# --------------------------------------------------------------------------- is KV shift special?

@pytest.mark.parametrize("kv,others,outcome", [
    ((8, 8), [(16, 16), (32, 32)], REPRODUCED),
    ((8, 8), [(16, 16), (8, 8)], NOT_REPRODUCED),  # another mixer needs no more width
    ((16, 16), [(4, 8)], NOT_REPRODUCED),
    ((8, 8), [(4, 16)], INCONCLUSIVE),  # an upper bound overlapping KV shift's frontier
    ((8, INF), [(16, 16)], INCONCLUSIVE),  # KV shift's frontier censored
    ((64.0001, INF), [(16, 16)], NOT_REPRODUCED),  # KV shift never learns, another does
])
def test_special_rule_compares_frontier_intervals(kv, others, outcome):
    rows = [row("induction", "kv_shift", lo=kv[0], hi=kv[1])]
    rows += [row("induction", f"m{i}", lo=lo, hi=hi) for i, (lo, hi) in enumerate(others)]
    assert F.special_verdict(frame(*rows), "induction").outcome == outcome
    assert F.special_verdict(frame(rows[0]), "induction").reason == "not tested"


# --------------------------------------------------------------------------- one mixing layer vs two vanilla layers

@pytest.mark.parametrize("arms,van2,outcome", [
    ([(8, 8)], (16, 16), REPRODUCED), ([(16, 16)], (16, 16), REPRODUCED), ([(32, 32)], (16, 16), NOT_REPRODUCED),
    ([(8, 32)], (16, 16), INCONCLUSIVE), ([(8, 8), (32, 32)], (16, 16), PARTLY),
    ([(8, 8)], (4, INF), INCONCLUSIVE),
])
def test_depth_rule_compares_each_mixer_with_two_vanilla_layers(arms, van2, outcome):
    rows = [row("mqar", f"m{i}", lo=lo, hi=hi) for i, (lo, hi) in enumerate(arms)]
    rows.append(vanilla("mqar", layers=2, learns=REPRODUCED, lo=van2[0], hi=van2[1]))
    assert F.depth_verdict(frame(*rows), "mqar").outcome == outcome
    assert F.depth_verdict(frame(*rows[:-1]), "mqar").reason == "not tested"


# --------------------------------------------------------------------------- mechanism of the solving heads

def heads(*runs):
    """(arm, run, mechanism) triples as `head_table` rows of one-layer key mixers on induction."""
    return pd.DataFrame([{"task": "induction", "arm": a, "run": r, "mechanism": m, "key_reach": 1, "model.n_layers": "1"}
                         for a, r, m in runs])


@pytest.mark.parametrize("table,outcome", [
    (heads(("kv", "r1", "mixer-mediated"), ("canon", "r2", "mixer-mediated")), REPRODUCED),
    (heads(("kv", "r1", "mixer-mediated"), ("canon", "r2", "direct")), PARTLY),
    (heads(("kv", "r1", "none"), ("kv", "r1", "mixer-mediated"), ("kv", "r2", "direct")), NOT_REPRODUCED),
    (heads(("kv", "r1", "mixer-mediated"), ("kv", "r1", "none")), REPRODUCED),  # one head per run suffices
    (heads(), INCONCLUSIVE),
])
def test_mechanism_rule_needs_a_mixer_mediated_head_in_every_solving_run(table, outcome):
    table = table if len(table) else pd.DataFrame(columns=["task", "arm", "run", "mechanism", "key_reach", "model.n_layers"])
    assert F.mechanism_verdict(table, "induction").outcome == outcome


# --------------------------------------------------------------------------- tables


def cell_rows(arm_outcomes):
    """`family.cells`-shaped rows from {(task, arm, width): [seed outcomes]}."""
    rows = []
    for (task, arm, width), outs in arm_outcomes.items():
        mixer, sides = ("none", "") if arm == "vanilla 1L" else (arm.split("[")[0], "v" if "[v]" in arm else "")
        for seed, o in enumerate(outs):
            rows.append({"task": task, "model/mixer": mixer, "model.mixer.sides": sides, "model.n_layers": "1",
                         F.WIDTH: width, "seed": seed, "outcome": o, "best": 0.95 if o == "success" else 0.3,
                         "arm": arm, "chance": 0.02, "key_reach": 0 if mixer == "none" or sides else 1,
                         "value_reach": 0 if mixer == "none" else 1})
    return pd.DataFrame(rows)


def test_families_judge_learning_at_the_frontier_and_failure_at_the_widest_width():
    cells = cell_rows({("induction", "kv_shift", 64): ["success"] * 3, ("induction", "kv_shift", 8): ["success", "success", "failure"],
                       ("induction", "kv_shift", 4): ["failure"] * 3, ("induction", "vanilla 1L", 64): ["failure"] * 3,
                       ("induction", "kv_shift[v]", 64): ["failure", "failure", "censored"]})
    fam = F.families(cells, [4, 8, 16, 32, 64]).set_index("arm")
    assert fam.loc["kv_shift", "text"] == "8" and fam.loc["kv_shift", "learns"] == REPRODUCED
    assert fam.loc["kv_shift", "widths"] == "4,8,64" and fam.loc["kv_shift", "widest_outcomes"] == "3/3"
    # trained only at 64: nothing is inferred about the narrower widths from a failure there
    assert fam.loc["vanilla 1L", "cannot_learn"] == REPRODUCED and fam.loc["vanilla 1L", "text"] == "≥ 4 (not reached)"
    assert fam.loc["kv_shift[v]", "cannot_learn"] == INCONCLUSIVE  # a censored seed, though the cell fails on quorum
    assert fam.loc["kv_shift[v]", "text"] == "≥ 4 (not reached)"
    grid = F.outcome_grid(cells).set_index("arm")
    assert grid.loc["kv_shift", 8] == "2/3" and grid.loc["vanilla 1L", 8] == ""


def test_mechanism_summary_averages_path_fractions_only_over_heads_that_attend_the_target():
    # per run its most target-attending head; a head that misses the target has a ~0 logit margin, so its
    # fractions (e.g. 14.8) say nothing and must not move the mean
    heads = pd.DataFrame([
        {"task": "mqar", "arm": "kv_shift", "run": "a", "mechanism": "mixer-mediated", "target_attention": 0.9,
         "prev_key_fraction": 1.0, "own_value_fraction": 0.9, "induction_score": 0.2},
        {"task": "mqar", "arm": "kv_shift", "run": "b", "mechanism": "none", "target_attention": 0.05,
         "prev_key_fraction": 14.8, "own_value_fraction": -1.7, "induction_score": 0.0},
        {"task": "mqar", "arm": "canon", "run": "c", "mechanism": "none", "target_attention": 0.1,
         "prev_key_fraction": 3.0, "own_value_fraction": 0.2, "induction_score": 0.0},
    ])
    s = F.mechanism_summary(heads).set_index("arm")
    assert s.loc["kv_shift", "mechanisms"] == "mixer-mediated 1/2, none 1/2"
    assert s.loc["kv_shift", "target_attention"] == pytest.approx(0.475)  # over every analysed run
    assert s.loc["kv_shift", ["prev_key_fraction", "own_value_fraction"]].tolist() == pytest.approx([1.0, 0.9])
    assert s.loc["canon", ["prev_key_fraction", "own_value_fraction"]].isna().all()


def test_arm_labels_name_the_mixer_its_sides_and_depth():
    assert [F.arm_label("none", "", "1"), F.arm_label("none", "", "2"), F.arm_label("kv_shift", "v", "1"),
            F.arm_label("canon", "", "1")] == ["vanilla 1L", "vanilla 2L", "kv_shift[v]", "canon"]


# --------------------------------------------------------------------------- end to end


def test_tiny_profile_trains_in_rounds_writes_every_output_and_resumes_without_training(tmp_path):
    cmd = [sys.executable, "-m", "experiments.mixers", "--profile", "tiny", "--out-dir", str(tmp_path / "runs"),
           "--results-dir", str(tmp_path / "results")]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "round 1:" in r.stdout and "round 2:" in r.stdout
    res = tmp_path / "results"
    runs = pd.read_csv(res / "mixers_tiny.csv")
    rounds = sorted((tmp_path / "runs" / "sweeps" / "mixers_tiny" / "rounds").glob("*.yaml"))
    assert len(runs) == sum(len(__import__("yaml").safe_load(p.read_text())) for p in rounds)  # one row per trained run
    assert len(runs) < 32 and set(runs.outcome) <= {"success", "failure", "censored"}  # fewer than the full grid
    assert {"arm", "model.d_model", "train.lr", "seed", "censored", "key_reach"} <= set(runs.columns)
    prov = json.loads((res / "mixers_tiny_provenance.json").read_text())
    assert prov["full_grid_runs"] == 32 and prov["n_runs"] == len(runs) and prov["git_commit"]
    report = (res / "REPORT.md").read_text()
    assert "<!-- mixers_tiny -->" in report and report.count("**Verdict:") == 11
    assert (res / "mixers_tiny.png").stat().st_size > 0
    heads = pd.read_csv(res / "mixers_tiny_heads.csv")
    assert set(heads.mechanism) <= {"mixer-mediated", "direct", "none"}
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0 and "round" not in again.stdout  # nothing left to train
    pd.testing.assert_frame_equal(pd.read_csv(res / "mixers_tiny.csv"), runs)


def test_protocol_checks_name_short_lr_grids_and_non_monotone_widths():
    cells = cell_rows({("mqar", "canon", 8): ["success"] * 3, ("mqar", "canon", 16): ["failure"] * 3,
                       ("mqar", "canon", 64): ["success"] * 3})
    cells = cells.assign(n_lrs=3, lr_span=10.0)
    cells.loc[(cells[F.WIDTH] == 16) & (cells.seed == 1), "n_lrs"] = 2
    first, second = F.protocol_checks(cells)
    assert first.startswith("**Protocol check:** 2 of 3 cell-seeds") and "mqar canon d16 seed 1" in first
    assert second.startswith("**Not monotone in width**") and "mqar canon d_model 16" in second
    ok = cells[cells[F.WIDTH] != 16]
    assert F.protocol_checks(ok) == ["**Protocol check:** 0 of 0 cell-seeds without a success tried ≥ 3 learning rates "
                                     "spanning ≥ 10×.", "Success was monotone in width wherever the search looked "
                                     "(the width scan does not assume it)."]
