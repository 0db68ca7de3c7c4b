"""Emergence tracking: heads.csv per checkpoint, summary keys, the detect CLI, and the plots."""

import json
import shutil
import sys
from pathlib import Path

import matplotlib
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

from experiments.detect import main as detect_main
from experiments.train import main as train_main
from kvshift_lens import load_model, shift_coefficients
from kvshift_lens.training.runs import load_heads
from kvshift_lens.analysis.emergence import (
    CHEAP_METRICS, HEADS_COLUMNS, detect_run, emergence_step, phase_change_step, run_checkpoints,
)
from kvshift_lens.analysis.run_detection import analyze_run
from kvshift_lens.models.config import ModelConfig
from kvshift_lens.data.tasks.base import task_config
from kvshift_lens.training.train_config import TrainConfig
from kvshift_lens.training.trainer import train

matplotlib.use("Agg")
CONF = Path(__file__).resolve().parents[1] / "conf"
N_HEADS = 2
TINY_CLI = ["task.d_vocab=16", "task.seq_len=16", "model.d_model=16", "model.n_heads=2", "train.steps=4", "train.warmup=1",
            "train.eval_every=2", "train.eval_size=8", "train.batch_size=4", "train.n_checkpoints=2",
            "train.threads=1", "progress=false"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """A sweep dir with a tiny 30-step 1L kvshift run and 1L vanilla run, both analysed."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("sweep")
    for arch in ("kvshift", "vanilla"):
        model = ModelConfig(mixer={"kvshift": "kv_shift", "vanilla": "none"}[arch], d_model=16, n_heads=N_HEADS, d_vocab=16, n_ctx=16)
        cfg = TrainConfig(steps=30, warmup=5, eval_every=10, eval_size=16, batch_size=8, n_checkpoints=4, threads=1)
        train(model, task_config("induction", d_vocab=16, seq_len=16), cfg, root / arch, progress=False)
        analyze_run(root / arch, batch_size=4)
    return root


def test_heads_csv_holds_tidy_rows_for_every_checkpoint(runs):
    heads = pd.read_csv(runs / "vanilla" / "heads.csv")
    assert list(heads.columns) == HEADS_COLUMNS
    assert sorted(heads["step"].unique()) == sorted(run_checkpoints(runs / "vanilla"))
    early = heads[heads["step"] == 0]
    assert sorted(early["metric"].unique()) == sorted(CHEAP_METRICS)
    assert len(early) == len(CHEAP_METRICS) * N_HEADS
    assert not heads.duplicated(["step", "layer", "head", "metric"]).any()


def test_final_checkpoint_also_gets_ablation_and_icl_rows(runs):
    heads = pd.read_csv(runs / "vanilla" / "heads.csv")
    final = heads[heads["step"] == heads["step"].max()]
    assert {"zero_ablation_acc_drop", "mean_ablation_acc_drop", "icl_score"} <= set(final["metric"])


def test_shift_coefficient_rows_exist_for_kvshift_heads_only(runs):
    kv, vanilla = (pd.read_csv(runs / arch / "heads.csv") for arch in ("kvshift", "vanilla"))
    coef = {"alpha1", "alpha2", "beta1", "beta2"}
    assert not coef & set(vanilla["metric"])
    assert (kv[kv["metric"].isin(coef)].groupby("step").size() == len(coef) * N_HEADS).all()
    final = max(run_checkpoints(runs / "kvshift"))
    expected = shift_coefficients(load_model(run_checkpoints(runs / "kvshift")[final]))
    got = kv[(kv["step"] == final) & (kv["metric"] == "alpha2")].sort_values("head")["value"].to_numpy()
    assert got == pytest.approx(expected["alpha2"].to_numpy(), abs=1e-6)


def test_rerun_adds_no_rows_and_rescores_only_missing_checkpoints(runs, tmp_path):
    run = shutil.copytree(runs / "kvshift", tmp_path / "run")
    before = pd.read_csv(run / "heads.csv")
    assert len(detect_run(run)) == len(before)
    last = before["step"].max()
    before[before["step"] != last].to_csv(run / "heads.csv", index=False)
    resumed = detect_run(run, batch_size=4)
    assert len(resumed) == len(before) and set(resumed["step"]) == set(before["step"])


def test_summary_gains_emergence_keys_and_keeps_training_keys(runs):
    summary = json.loads((runs / "kvshift" / "summary.json").read_text())
    assert set(summary) >= {"steps_to_90", "seconds_to_90", "final_induction_acc"}
    assert {"emergence_step", "phase_change_step", "induction_heads", "induction_mechanisms", "repeated_acc",
            "repeated_acc_induction_heads_ablated", "repeated_chance"} <= set(summary)
    assert len(summary["induction_heads"]) == len(summary["induction_mechanisms"])


def test_emergence_step_is_where_the_best_head_stays_above_threshold():
    rows = [(0, 0.1), (10, 0.6), (20, 0.3), (40, 0.7), (80, 0.9)]
    heads = pd.DataFrame([(s, 0, h, "induction_score", v / (h + 1)) for s, v in rows for h in range(2)],
                         columns=HEADS_COLUMNS)
    assert emergence_step(heads, threshold=0.5) == 40
    assert emergence_step(heads, threshold=0.95) is None


def test_phase_change_step_ends_the_steepest_rise_per_step():
    metrics = pd.DataFrame({"step": [0, 50, 100, 150, 160], "induction_acc": [0.0, 0.1, 0.2, 0.8, 0.85]})
    assert phase_change_step(metrics) == 150
    assert phase_change_step(metrics.assign(induction_acc=0.1)) is None


def test_a_small_rise_is_not_a_phase_change():
    flat = pd.DataFrame({"step": [0, 100, 200, 300], "induction_acc": [0.02, 0.03, 0.09, 0.08]})  # 1L vanilla
    assert phase_change_step(flat) is None
    assert phase_change_step(flat, min_rise=0.05) == 200


def test_load_heads_adds_run_and_config_columns(runs):
    heads = load_heads(runs)
    assert set(heads["run"]) == {"kvshift", "vanilla"}
    assert {"model.arch", "seed", *HEADS_COLUMNS} <= set(heads.columns)


def run_cli(main, monkeypatch, *args: str) -> int:
    """Call a hydra entry point in-process (a subprocess pays ~20 s of imports); its exit code."""
    monkeypatch.setattr(sys, "argv", ["prog", f"--config-path={CONF}", *args])
    try:
        main()
    except SystemExit as e:
        return int(e.code or 0)
    return 0


@pytest.mark.parametrize("args", [["run_dir=/nonexistent/run"], []])
def test_detect_cli_without_a_valid_dir_prints_one_line(args, monkeypatch, capsys):
    assert run_cli(detect_main, monkeypatch, *args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_detect_cli_processes_every_run_of_a_sweep(runs, tmp_path, monkeypatch):
    sweep = shutil.copytree(runs, tmp_path / "sweep")
    for run in ("kvshift", "vanilla"):
        (sweep / run / "heads.csv").unlink()
    assert run_cli(detect_main, monkeypatch, f"run_dir={sweep}", "batch_size=4") == 0
    assert all((sweep / run / "heads.csv").exists() for run in ("kvshift", "vanilla"))


def test_training_with_detect_true_writes_heads_csv(tmp_path, monkeypatch):
    args = ["model=kvshift_1l", "detect=true", f"out_dir={tmp_path}", *TINY_CLI]
    assert run_cli(train_main, monkeypatch, *args) == 0
    run = next(tmp_path.rglob("heads.csv")).parent
    assert "emergence_step" in json.loads((run / "summary.json").read_text())


def test_plots_return_figures(runs):
    from kvshift_lens.analysis import attention_plots as plots

    heads = load_heads(runs)
    final = heads[(heads["run"] == "kvshift") & (heads["step"] == heads["step"].max())]
    model = load_model(run_checkpoints(runs / "kvshift")[int(final["step"].max())])
    figures = [plots.emergence_curves(heads), plots.emergence_curves(heads, best_per_run=True),
               plots.shift_trajectories(heads[heads["run"] == "kvshift"]), plots.attention_pattern(model, 0, 1),
               plots.ablation_matrix(final)]
    assert all(isinstance(f, Figure) and f.axes for f in figures)
