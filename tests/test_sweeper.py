"""hydra/sweeper=grids: one multirun over the union of named cartesian grids."""

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException

from hydra_plugins.kvshift_lens_sweeper import grid_union_sweeper

# Hydra's plugin scan (run by any in-process compose, e.g. other tests) re-executes plugin modules,
# so the class is looked up at call time rather than bound once at import.

GRIDS = {"main": {"arch": "v,k", "d": "8,4"}, "extra": {"arch": "k", "d": "4,2", "seed": "9"}}


def jobs(params: dict, grids: dict, command_line: list[str] = (), only=None) -> list[list[str]]:
    sweeper = grid_union_sweeper.GridUnionSweeper(max_batch_size=None, params=params, grids=grids, only=only)
    overrides = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()] + list(command_line))
    (batch,) = sweeper.split_arguments(overrides, None)
    return batch


def test_union_keeps_grid_order_and_runs_a_shared_job_once():
    got = jobs({"seed": "0"}, {"main": GRIDS["main"], "again": {"arch": "k", "d": "4,2"}})
    assert got == [["arch=v", "d=8", "seed=0"], ["arch=v", "d=4", "seed=0"], ["arch=k", "d=8", "seed=0"],
                   ["arch=k", "d=4", "seed=0"], ["arch=k", "d=2", "seed=0"]]


def test_shared_params_vary_fastest_and_a_grid_entry_wins_over_them():
    got = jobs({"seed": "0,1"}, GRIDS)
    assert got[:2] == [["arch=v", "d=8", "seed=0"], ["arch=v", "d=8", "seed=1"]]
    assert [j for j in got if "seed=9" in j] == [["arch=k", "d=4", "seed=9"], ["arch=k", "d=2", "seed=9"]]
    assert len(got) == 2 * 2 * 2 + 2


def test_command_line_wins_over_grids_and_shared_params():
    got = jobs({"seed": "0,1"}, GRIDS, ["seed=3", "d=4"])
    assert got == [["arch=v", "d=4", "seed=3"], ["arch=k", "d=4", "seed=3"]]


def test_only_runs_the_named_grids_and_rejects_unknown_names():
    assert jobs({"seed": "0"}, GRIDS, only=["extra"]) == [["arch=k", "d=4", "seed=9"], ["arch=k", "d=2", "seed=9"]]
    with pytest.raises(HydraException, match="no such grid"):
        grid_union_sweeper.GridUnionSweeper(max_batch_size=None, grids=GRIDS, only=["nope"])


def test_max_batch_size_splits_the_union_into_launches():
    sweeper = grid_union_sweeper.GridUnionSweeper(max_batch_size=3, params={}, grids=GRIDS)
    batches = sweeper.split_arguments(OverridesParser.create().parse_overrides([]), 3)
    assert [len(b) for b in batches] == [3, 3]


def fake_run(root, name: str, overrides: list[str]) -> None:
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (run / "config.json").write_text("{}")
    (run / "metrics.csv").write_text("step\n")


def test_a_study_reads_exactly_the_runs_of_its_jobs_wherever_they_were_written(tmp_path):
    from kvshift_lens.training.sweeps import runs_of_jobs

    fake_run(tmp_path, "a", ["model.d_model=8", "train.lr=0.001", "+experiment=x", "out_dir=/elsewhere"])
    fake_run(tmp_path, "b", ["model.d_model=8", "train.lr=0.001", "+experiment=x", "model.n_heads=5"])  # extra key
    fake_run(tmp_path, "c", ["model.d_model=16", "train.lr=0.001", "+experiment=x"])
    fake_run(tmp_path, "d", ["model.d_model=4", "+experiment=x", "train.steps=80"])  # its budget extended (adaptive)
    jobs = [["model.d_model=8", "train.lr=0.001", "+experiment=x"], ["model.d_model=4", "+experiment=x"]]
    assert [p.name for p in runs_of_jobs(tmp_path, jobs)] == ["a", "d"]
    assert runs_of_jobs(tmp_path / "missing", jobs) == []


def test_expanded_jobs_use_the_sweepers_value_formatting():
    from kvshift_lens.training.sweeps import expand_jobs

    spec = {"experiment": "x", "params": {"seed": "0,1"}, "grids": {"g": {"train.lr": "1e-3,1e-2"}}}
    jobs = expand_jobs(spec, ["out_dir=/tmp/r"])
    assert ["train.lr=0.001", "seed=0", "+experiment=x", "out_dir=/tmp/r"] in jobs and len(jobs) == 4


def test_select_runs_only_the_listed_jobs_in_grid_order_and_rejects_strangers(tmp_path):
    from kvshift_lens.training.sweeps import write_selection

    path = write_selection(tmp_path / "round.yaml", [["d=2", "arch=k", "seed=9"], ["arch=v", "d=4", "seed=0"]])
    sweeper = grid_union_sweeper.GridUnionSweeper(max_batch_size=None, params={"seed": "0"}, grids=GRIDS, select=str(path))
    (batch,) = sweeper.split_arguments(OverridesParser.create().parse_overrides(["seed=0"]), None)
    assert batch == [["arch=v", "d=4", "seed=0"], ["arch=k", "d=2", "seed=9"]]  # override order does not matter
    write_selection(path, [["arch=v", "d=16", "seed=0"]])
    with pytest.raises(HydraException, match="hydra.sweeper.select=.*not jobs of this sweep"):
        sweeper.split_arguments(OverridesParser.create().parse_overrides(["seed=0"]), None)
    path.write_text("arch=v\n")
    with pytest.raises(HydraException, match="must be a YAML list of jobs"):
        sweeper.split_arguments(OverridesParser.create().parse_overrides(["seed=0"]), None)


def test_a_selection_of_expanded_jobs_launches_exactly_those_runs(tmp_path):
    import subprocess
    import sys

    from kvshift_lens.training.sweeps import (
        ROOT, expand_jobs, experiment_spec, runs_of_jobs, sweep_command, write_selection,
    )

    spec = experiment_spec("phase_diagram_tiny")
    out = tmp_path / "runs"
    jobs = expand_jobs(spec)
    chosen = [jobs[0], jobs[-1]]
    cmd = sweep_command("phase_diagram_tiny", out, "basic", select=write_selection(tmp_path / "sel.yaml", chosen))
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    found = runs_of_jobs(out / "sweeps" / spec["name"], jobs)
    assert len(found) == 2 and len(runs_of_jobs(out / "sweeps" / spec["name"], chosen)) == 2
