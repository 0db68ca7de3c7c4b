"""The hydra command line: single runs, sweeps with every launcher, bad input, load_runs."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kvshift_lens.analysis import load_runs, load_summaries

ROOT = Path(__file__).resolve().parents[1]
TINY = ["task.d_vocab=16", "task.seq_len=16", "model.d_model=16", "model.n_heads=2",
        "train.steps=4", "train.eval_every=2", "train.eval_size=8", "train.batch_size=4",
        "train.n_checkpoints=2", "train.threads=1", "progress=false"]


def cli(*args: str, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, "-m", "experiments.train", *args, f"out_dir={out}"],
                          cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)


def test_single_run_writes_its_files_and_loads_into_pandas(tmp_path):
    r = cli("model=vanilla_2l", "seed=3", *TINY, out=tmp_path)
    assert r.returncode == 0, r.stderr
    run_dir = next(tmp_path.glob("vanilla_2l/induction/seed3/*"))
    assert {"metrics.csv", "summary.json", "config.json", "checkpoints", "resume.pt"} <= {p.name for p in run_dir.iterdir()}
    df = load_runs(tmp_path)
    assert set(df["model.n_layers"]) == {2} and set(df.seed) == {3} and list(df.step) == [0, 2, 4]


def test_rerunning_the_same_command_resumes_instead_of_restarting(tmp_path):
    assert cli("model=kvshift_1l", *TINY, out=tmp_path).returncode == 0
    r = cli("model=kvshift_1l", *TINY, out=tmp_path)
    assert r.returncode == 0, r.stderr
    assert len(load_runs(tmp_path)) == 3  # steps 0, 2, 4 once each


@pytest.mark.parametrize("override,field", [
    ("model.n_heads=4 model.d_model=30", "d_model"),
    ("model.mixer=transformer", "model.mixer"),
    ("model.mixer.window=0", "model.mixer.window"),
    ("model/mixer=canon model.mixer.positions=AC", "model.mixer.positions"),
    ("task=mqar task.num_kv_pairs=40", "task.seq_len"),
    ("train.steps=0", "train.steps"),
    ("model.n_ctx=8", "n_ctx"),
    ("task.name=copying", "task.name"),
])
def test_bad_config_prints_one_line_naming_the_field(tmp_path, override, field):
    r = cli(*TINY, *override.split(), out=tmp_path)
    assert r.returncode != 0
    assert field in r.stderr and "Traceback" not in r.stderr
    assert len([line for line in r.stderr.splitlines() if line.strip()]) == 1
    assert not list(tmp_path.rglob("metrics.csv"))


@pytest.mark.parametrize("launcher", ["basic", "local_parallel", "cluster_local"])
def test_multirun_sweeps_every_combination(tmp_path, launcher):
    r = cli("-m", f"hydra/launcher={launcher}", "model=vanilla_1l,kvshift_1l", "seed=0,1", "name=t", *TINY,
            out=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    summaries = load_summaries(tmp_path / "sweeps" / "t")
    assert sorted(zip(summaries["model.arch"], summaries.seed)) == [
        ("kvshift", 0), ("kvshift", 1), ("vanilla", 0), ("vanilla", 1)]
