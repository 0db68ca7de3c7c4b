"""The figure pipeline end to end on the tiny profile (one multirun, runs read back by their overrides)."""

import json

import pandas as pd
import pytest

from experiments import reproduce
from kvshift_lens.training import sweeps
from kvshift_lens.report.markdown import splice_section

TINY_FIGURES = ["fig1a_depth", "fig2_landscape", "table4_alpha_beta", "fig1b_width"]
PROVENANCE_KEYS = {"git_commit", "git_dirty", "experiment", "grids", "seeds", "training_time", "load_average",
                   "profile", "command"}


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory):
    root = tmp_path_factory.mktemp("repro")
    out, runs = root / "results", root / "runs"
    code = reproduce.main(["--profile", "tiny", "--out", str(out), "--runs", str(runs)])
    return code, out, runs


def test_tiny_profile_writes_every_file(tiny_results):
    code, out, _ = tiny_results
    assert code == 0
    for name in TINY_FIGURES:
        for suffix in (".png", ".csv", ".provenance.json"):
            path = out / f"{name}{suffix}"
            assert path.exists() and path.stat().st_size > 0, path
    for name in ("REPORT.md", "theorem1_error.csv", "theorem1_constant.csv", "theorem2_gaps.csv"):
        assert (out / name).exists()


@pytest.mark.parametrize("name", TINY_FIGURES)
def test_tables_are_tidy_with_seeds_and_provenance_is_complete(tiny_results, name):
    _, out, _ = tiny_results
    table = pd.read_csv(out / f"{name}.csv")
    assert {"seed", "step", "run"} <= set(table.columns)
    assert sorted(table["seed"].unique()) == [0, 1]
    assert not table.duplicated([c for c in ("run", "step", "layer", "head") if c in table.columns]).any()
    prov = json.loads((out / f"{name}.provenance.json").read_text())
    assert PROVENANCE_KEYS <= set(prov) and prov["seeds"] == [0, 1]
    assert prov["experiment"]["experiment"] == "reproduce_tiny"


def test_each_figure_reads_only_its_own_grids(tiny_results):
    _, out, _ = tiny_results
    assert set(pd.read_csv(out / "fig1a_depth.csv").label) == {"kvshift 1L", "vanilla 1L"}
    fig1b = pd.read_csv(out / "fig1b_width.csv")
    assert set(fig1b["model.d_model"]) == {8} and fig1b["train.lr"].nunique() == 3


def test_report_names_a_rule_and_baseline_beside_every_verdict(tiny_results):
    _, out, _ = tiny_results
    report = (out / "REPORT.md").read_text()
    for name in TINY_FIGURES:
        assert f"## {name}" in report
    assert report.count("**Verdict:") == len(TINY_FIGURES)
    for line in (x for x in report.splitlines() if x.startswith("**Verdict:")):
        assert "Rule:" in line and "Baseline:" in line
    assert "Student-t" in report and "Wilson" in report and "## Theorem constructions" in report


def test_draw_only_redraws_the_same_table_without_training(tiny_results):
    _, out, runs = tiny_results
    before = (out / "fig1a_depth.csv").read_text()
    metrics = {p: p.read_text() for p in runs.rglob("metrics.csv")}
    assert reproduce.main(["--profile", "tiny", "--only", "fig1a_depth", "--draw-only", "--out", str(out),
                           "--runs", str(runs)]) == 0
    assert (out / "fig1a_depth.csv").read_text() == before
    assert {p: p.read_text() for p in runs.rglob("metrics.csv")} == metrics


def test_every_reproduce_profile_composes_and_names_a_grid_for_each_figure():
    for experiment in ("reproduce", "reproduce_full"):
        spec = sweeps.experiment_spec(experiment)
        assert all(reproduce.figure_grids(name, spec) for name in reproduce.FIGURES), experiment
        assert len(sweeps.expand_jobs(spec)) > 50
    quick = sweeps.experiment_spec("reproduce")
    fig1b = [dict(o.split("=", 1) for o in j) for j in sweeps.expand_jobs(quick, only=["fig1b_width"])]
    assert {j["train.lr"] for j in fig1b} == {"0.01", "0.003", "0.001"}


def test_phase_diagram_section_is_replaced_not_duplicated_in_the_report(tmp_path):
    report = tmp_path / "REPORT.md"
    report.write_text("# Report\n\nfigures\n")
    splice_section(report, "phase_diagram", "## Phase diagram\nold verdict")
    splice_section(report, "phase_diagram", "## Phase diagram\nnew verdict")
    text = report.read_text()
    assert text.startswith("# Report\n\nfigures\n") and text.count("## Phase diagram") == 1
    assert "new verdict" in text and "old verdict" not in text


def test_rewriting_the_report_keeps_the_sections_other_commands_spliced_in(tmp_path):
    from experiments.reproduce import write_report

    report = tmp_path / "REPORT.md"
    report.write_text("# old figures\n")
    splice_section(report, "theory", "## Theorem constructions\nC = 1.5")
    splice_section(report, "lm", "## Language modelling\ngap 0.07")
    meta = {"command": "python -m experiments.reproduce", "profile": "tiny", "git_commit": "abc", "wall_seconds": 1.0,
            "load_before": 0.0, "load_after": 0.0, "cpu_count": 2}
    write_report(tmp_path, {}, {"description": "test"}, meta, [])
    text = report.read_text()
    assert "# old figures" not in text and text.startswith("# Reproduction report")
    assert text.count("C = 1.5") == 1 and text.count("gap 0.07") == 1
    assert text.index("C = 1.5") < text.index("gap 0.07")  # in their earlier order
