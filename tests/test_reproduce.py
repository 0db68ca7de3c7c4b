"""The figure pipeline end to end on the tiny profile, and the verdict rules on synthetic tables."""

import json

import numpy as np
import pandas as pd
import pytest

from experiments import reproduce
from experiments.report import splice_section
from kvshift_lens import figures as F
from kvshift_lens.stats import bootstrap_ci

TINY_FIGURES = ["fig1a_depth", "fig2_landscape", "table4_alpha_beta"]
PROVENANCE_KEYS = {"git_commit", "experiment_config", "overrides", "seeds", "wall_seconds", "load_average", "profile"}


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory):
    root = tmp_path_factory.mktemp("repro")
    out, runs = root / "results", root / "runs"
    code = reproduce.main(["--profile", "tiny", "--only", ",".join(TINY_FIGURES), "--out", str(out), "--runs", str(runs)])
    return code, out, runs


def test_tiny_profile_writes_every_file(tiny_results):
    code, out, _ = tiny_results
    assert code == 0
    for name in TINY_FIGURES:
        for suffix in (".png", ".csv", ".provenance.json"):
            path = out / f"{name}{suffix}"
            assert path.exists() and path.stat().st_size > 0, path
    assert (out / "REPORT.md").exists()


@pytest.mark.parametrize("name", TINY_FIGURES)
def test_tables_are_tidy_with_seeds_and_provenance_is_complete(tiny_results, name):
    _, out, _ = tiny_results
    table = pd.read_csv(out / f"{name}.csv")
    assert {"seed", "step", "run"} <= set(table.columns)
    assert sorted(table["seed"].unique()) == [0, 1]
    assert not table.duplicated([c for c in ("run", "step", "layer", "head") if c in table.columns]).any()
    prov = json.loads((out / f"{name}.provenance.json").read_text())
    assert PROVENANCE_KEYS <= set(prov)
    assert prov["seeds"] == [0, 1] and "fig1a_depth" in prov["experiment_config"]


def test_report_has_a_verdict_per_figure(tiny_results):
    _, out, _ = tiny_results
    report = (out / "REPORT.md").read_text()
    for name in TINY_FIGURES:
        assert f"## {name}" in report
    assert report.count("**Verdict:") == len(TINY_FIGURES)


def test_draw_only_redraws_the_same_table_without_training(tiny_results):
    _, out, runs = tiny_results
    before = (out / "fig1a_depth.csv").read_text()
    metrics = {p: p.read_text() for p in runs.rglob("metrics.csv")}
    assert reproduce.main(["--profile", "tiny", "--only", "fig1a_depth", "--draw-only", "--out", str(out),
                           "--runs", str(runs)]) == 0
    assert (out / "fig1a_depth.csv").read_text() == before
    assert {p: p.read_text() for p in runs.rglob("metrics.csv")} == metrics


def _curves(final: dict[str, float], steps: int = 4, seeds: int = 5) -> pd.DataFrame:
    rows = [{"run": f"{lab}/{s}", "seed": s, "label": lab, "step": t,
             "induction_acc": acc * t / (steps - 1)}
            for lab, acc in final.items() for s in range(seeds) for t in range(steps)]
    return pd.DataFrame(rows).assign(**{"model.d_model": 64, "n_params": 1, "task.name": "induction",
                                         "task.d_vocab": 64, "task.seq_len": 64})


def test_fig1a_verdict_follows_the_numbers():
    good = _curves({"kvshift 1L": 1.0, "vanilla 1L": 0.05, "vanilla 2L": 0.0})
    bad = _curves({"kvshift 1L": 0.05, "vanilla 1L": 0.9, "vanilla 2L": 1.0})
    assert F.find_fig1a(good).verdict == "reproduced"
    assert F.find_fig1a(bad).verdict == "not reproduced at this scale"


def test_bootstrap_interval_covers_the_mean_and_shrinks_with_agreement():
    lo, hi = bootstrap_ci([0.1, 0.5, 0.9, 0.3, 0.7])
    assert lo < 0.5 < hi
    assert bootstrap_ci([0.4] * 5) == (0.4, 0.4)
    assert np.isnan(bootstrap_ci([np.nan])[0])


def test_phase_diagram_section_is_replaced_not_duplicated_in_the_report(tmp_path):
    report = tmp_path / "REPORT.md"
    report.write_text("# Report\n\nfigures\n")
    splice_section(report, "phase_diagram", "## Phase diagram\nold verdict")
    splice_section(report, "phase_diagram", "## Phase diagram\nnew verdict")
    text = report.read_text()
    assert text.startswith("# Report\n\nfigures\n") and text.count("## Phase diagram") == 1
    assert "new verdict" in text and "old verdict" not in text


def _hopk(acc: dict[str, float], noise: float) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = [{"run": f"{lab}/{h}/{s}", "seed": s, "label": lab, "step": 100, "task.hops": h,
             "induction_acc": a + noise * rng.standard_normal()}
            for lab, a in acc.items() for h in (1, 2) for s in range(3)]
    return pd.DataFrame(rows).assign(**{"model.d_model": 64, "n_params": 1, "task.name": "hop_k",
                                         "task.d_vocab": 64, "task.seq_len": 32, "train.steps": 100})


def test_hopk_verdict_needs_separated_intervals_not_a_better_mean():
    clear = _hopk({"kvshift 1L": 0.9, "vanilla 1L": 0.3}, noise=0.01)
    tie = _hopk({"kvshift 1L": 0.52, "vanilla 1L": 0.5}, noise=0.1)  # KV shift's mean error may be lower by chance
    assert F.find_hopk(clear).verdict == "reproduced"
    assert F.find_hopk(tie).verdict == "not reproduced at this scale"
    assert "overlapping: 2/2" in F.find_hopk(tie).notes[0]
