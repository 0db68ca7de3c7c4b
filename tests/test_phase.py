"""Phase-diagram tables (kvshift_lens.report.phase) on synthetic runs, and the one-command pipeline end to end."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kvshift_lens.training import sweeps
from kvshift_lens.report import phase, figures as plots
from kvshift_lens.report.verdicts import CENSORED, FAILURE, SUCCESS

ROOT = Path(__file__).resolve().parents[1]


def curves(cell: dict, seed: int, lr: float, accs: list[float]) -> list[dict]:
    """Learning-curve rows of one run as `analysis.load_runs` returns them."""
    run = f"{cell['arch']}{cell['n_layers']}/d{cell['d_model']}/s{cell['seq_len']}/seed{seed}/lr{lr}"
    return [{"run": run, "step": 100 * i, "induction_acc": a, "train_seconds": 0.5 * i, "seed": seed,
             "model.arch": cell["arch"], "model.n_layers": cell["n_layers"], "model.d_model": cell["d_model"],
             "model.n_heads": 1, "model.d_head": None, "model.d_vocab": 16, "model.n_ctx": cell["seq_len"],
             "task.seq_len": cell["seq_len"], "train.lr": lr, "train.steps": 100 * (len(accs) - 1),
             "train.batch_size": 32} for i, a in enumerate(accs)]


WIN, FLAT, RISING = [0.1, 0.5, 0.95], [0.1] + [0.2] * 30, [0.1] * 8 + [0.3, 0.5, 0.7]  # FLAT: 3,000 steps, a long flat tail
MIXERS = {"kvshift": "kv_shift", "vanilla": "none"}  # derived model.arch -> model.mixer.name


@pytest.fixture
def synthetic(tmp_path) -> tuple[pd.DataFrame, Path]:
    """Learning curves of 54 runs and a root holding each run's config.json (parameter counts come from it)."""
    rows = []
    for seed in range(3):
        for lr in (1e-3, 3e-3, 1e-2):
            good = lr == 3e-3  # only the middle learning rate learns: a fixed lr of 1e-2 would miss it
            rows += curves({"arch": "kvshift", "n_layers": 1, "d_model": 4, "seq_len": 8}, seed, lr, FLAT)
            rows += curves({"arch": "kvshift", "n_layers": 1, "d_model": 8, "seq_len": 8}, seed, lr, WIN if good else FLAT)
            rows += curves({"arch": "vanilla", "n_layers": 1, "d_model": 8, "seq_len": 8}, seed, lr, FLAT)
            rows += curves({"arch": "vanilla", "n_layers": 2, "d_model": 8, "seq_len": 8}, seed, lr,
                           RISING if seed == 0 and good else FLAT)
            rows += curves({"arch": "kvshift", "n_layers": 1, "d_model": 8, "seq_len": 16}, seed, lr, FLAT)
            rows += curves({"arch": "kvshift", "n_layers": 1, "d_model": 16, "seq_len": 16}, seed, lr, WIN)
    df = pd.DataFrame(rows)
    for _, r in df.drop_duplicates("run").iterrows():
        (tmp_path / r.run).mkdir(parents=True)
        model = {"mixer": {"name": MIXERS[r["model.arch"]]}, "n_layers": r["model.n_layers"],
                 "d_model": r["model.d_model"], "n_heads": 1, "d_vocab": 16, "n_ctx": r["task.seq_len"]}
        (tmp_path / r.run / "config.json").write_text(json.dumps({"model": model}))
    return df, tmp_path


def test_tidy_runs_carry_lr_outcome_and_censoring_per_run(synthetic):
    runs = phase.tidy_runs(*synthetic)
    assert len(runs) == 6 * 3 * 3 and {"lr", "outcome", "censored", "n_params", "budget"} <= set(runs.columns)
    assert runs.groupby(phase.CELL).lr.nunique().min() == 3
    rising = runs[(runs.arch == "vanilla") & (runs.n_layers == 2) & (runs.seed == 0) & (runs.lr == 3e-3)].iloc[0]
    assert rising.outcome == CENSORED and rising.censored
    assert (runs.n_params > 0).all() and runs.steps_to_90.notna().sum() == 3 * 3 + 3


def test_cells_take_the_best_learning_rate_and_frontiers_count_censored_cells_as_open(synthetic):
    cells = phase.cells(phase.tidy_runs(*synthetic))
    kv8 = cells[(cells.arch == "kvshift") & (cells.d_model == 8) & (cells.seq_len == 8)]
    assert (kv8.outcome == SUCCESS).all() and (kv8.lr == 3e-3).all()
    v2 = cells[(cells.arch == "vanilla") & (cells.n_layers == 2)].set_index("seed")
    assert v2.loc[0, "outcome"] == CENSORED and v2.loc[1, "outcome"] == FAILURE
    status = phase.status(cells)
    fr = phase.frontiers(status).set_index(["arch", "n_layers", "seq_len"])
    assert fr.loc[("kvshift", 1, 8), "text"] == "8" and fr.loc[("kvshift", 1, 16), "text"] == "16"
    assert fr.loc[("vanilla", 2, 8), "frontier_status"] == "none"  # 1 censored seed of 3 cannot reach 2/3
    trend = phase.length_trends(phase.frontiers(status))
    assert trend.set_index("arch").loc["kvshift", "trend"] == "grows"


def test_tables_and_plots_are_functions_of_the_cells(synthetic):
    cells = phase.cells(phase.tidy_runs(*synthetic))
    assert phase.outcome_table(cells[cells.seq_len == 8]).loc[("vanilla", 2), 8] == "0/3 (1 cens.)"
    pm = phase.param_matched(cells)
    at8 = pm[pm.seq_len == 8]
    assert set(pm.model) == {"kvshift 1L", "vanilla 2L"} and list(at8.n_params) == sorted(at8.n_params)
    for fig in (plots.plot_heatmaps(cells), plots.plot_param_matched(pm),
                plots.plot_frontiers(phase.frontiers(phase.status(cells)))):
        assert fig.axes


def test_tables_hold_only_configurations_that_were_trained_and_medians_censor_seeds_that_never_reach_90(synthetic):
    cells = phase.cells(phase.tidy_runs(*synthetic))
    main = cells[cells.seq_len == 8]
    acc = phase.grid_table(main, "best_induction_acc")
    assert ("kvshift", 2) not in acc.index and len(acc) == 3  # no all-NaN row for a model never trained
    assert not phase.trained_cells(main).loc[("vanilla", 1), 4]  # a width not trained for that model: a blank cell
    km = phase.km_table(main)
    assert km.loc[("kvshift", 1), 8] == 200  # every seed reached 90 % at step 200
    assert np.isnan(km.loc[("vanilla", 2), 8])  # no seed reached it: no median, not the median of the successes


def status_rows(outcomes: dict[int, str]) -> pd.DataFrame:
    return pd.DataFrame([{"arch": "kvshift", "n_layers": 1, "n_heads": 1, "seq_len": 16, "d_model": d, "n_seeds": 3,
                          "n_success": 3 if o == SUCCESS else 1, "n_failure": 2 if o == FAILURE else 0,
                          "n_censored": 2 if o == CENSORED else 0, "status": o} for d, o in outcomes.items()])


@pytest.mark.parametrize("outcomes, shown", [
    ({8: CENSORED, 16: SUCCESS, 32: SUCCESS}, True),
    ({8: SUCCESS, 16: CENSORED, 32: SUCCESS}, False),  # censored above the narrowest success: not shown
    ({8: SUCCESS, 16: FAILURE, 32: SUCCESS}, False),  # failed above it: evidence against
    ({8: CENSORED, 16: FAILURE}, None),  # no success: nothing to compare
])
def test_the_monotone_line_names_every_cell_above_the_narrowest_success_that_did_not_succeed(outcomes, shown):
    line = phase.monotone_line(status_rows(outcomes))
    assert line.startswith("Every trained width") == bool(shown) and line.startswith("No cell") == (shown is None)
    if shown is False:
        assert "d_model 16: " in line and "d_model 32" not in line


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
    model = {"mixer": {"name": MIXERS[arch]}, "n_layers": n_layers, "d_model": d, "n_heads": heads, "d_head": d_head,
             "d_vocab": 16, "n_ctx": 12}
    assert phase.param_counts(model) == expected_params(arch, n_layers, d, heads, d_head, 16, 12)


def test_every_profile_sweeps_at_least_three_learning_rates_spanning_ten_x_per_cell():
    for experiment in ("phase_diagram", "phase_diagram_tiny", "phase_diagram_cluster"):
        jobs = sweeps.expand_jobs(sweeps.experiment_spec(experiment))
        cells: dict[tuple, set[float]] = {}
        for job in jobs:
            d = dict(o.split("=", 1) for o in job)
            cells.setdefault(tuple(sorted((k, v) for k, v in d.items() if k != "train.lr")), set()).add(
                float(d["train.lr"]))
        assert min(len(v) for v in cells.values()) >= 3, experiment
        assert min(max(v) / min(v) for v in cells.values()) >= 10, experiment


def test_one_command_runs_the_tiny_profile_end_to_end(tmp_path):
    cmd = [sys.executable, "-m", "experiments.phase_diagram", "--profile", "tiny", "--out-dir", str(tmp_path / "runs"),
           "--results-dir", str(tmp_path / "results")]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    res = tmp_path / "results"
    df = pd.read_csv(res / "phase_diagram_tiny.csv")
    assert {"arch", "n_layers", "d_model", "n_heads", "seq_len", "seed", "lr", "outcome", "censored",
            "induction_acc", "steps_to_90", "n_params"} <= set(df.columns)
    assert len(df) == 9 and df.groupby(["arch", "seq_len"]).lr.nunique().min() == 3
    cells = pd.read_csv(res / "phase_diagram_tiny_cells.csv")
    assert {"lr", "n_lrs", "lr_span", "outcome", "censored"} <= set(cells.columns) and (cells.n_lrs == 3).all()
    for suffix in ("_frontier.csv", "_length.csv", "_params.csv", "_heatmaps.png", "_params.png", "_length.png"):
        assert (res / f"phase_diagram_tiny{suffix}").stat().st_size > 0
    prov = json.loads((res / "phase_diagram_tiny_provenance.json").read_text())
    assert prov["n_runs"] == 9 and prov["learning_rates"] == [0.001, 0.003, 0.01]
    assert prov["sweep_history"][0]["wall_seconds"] > 0 and prov["git_commit"]
    md = (res / "phase_diagram_tiny.md").read_text()
    assert "### Verdicts" in md and md.count("Rule:") >= 2 and md.count("Baseline:") >= 2
    # a stray run from an older grid is left out; outputs regenerate from the finished runs alone
    stray = tmp_path / "runs" / "sweeps" / "phase_diagram_tiny" / "stray"
    stray.mkdir()
    (stray / ".hydra").mkdir()
    (stray / ".hydra" / "overrides.yaml").write_text("- model.arch=vanilla\n- model.d_model=99\n")
    for name in ("config.json", "metrics.csv", "summary.json"):
        src = next((tmp_path / "runs" / "sweeps" / "phase_diagram_tiny").rglob(name))
        (stray / name).write_text(src.read_text())
    (res / "phase_diagram_tiny.csv").unlink()
    r = subprocess.run(cmd + ["--skip-train"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert pd.read_csv(res / "phase_diagram_tiny.csv").equals(df)


def test_an_unknown_grid_stops_with_one_line_before_training(tmp_path):
    r = subprocess.run([sys.executable, "-m", "experiments.phase_diagram", "--profile", "tiny", "--only", "nope",
                        "--out-dir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "not grids of experiment phase_diagram_tiny" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "sweeps").exists()
