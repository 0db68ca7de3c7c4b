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
    from kvshift_lens.sweeps import runs_of_jobs

    fake_run(tmp_path, "a", ["model.d_model=8", "train.lr=0.001", "+experiment=x", "out_dir=/elsewhere"])
    fake_run(tmp_path, "b", ["model.d_model=8", "train.lr=0.001", "+experiment=x", "train.steps=5"])  # extra key
    fake_run(tmp_path, "c", ["model.d_model=16", "train.lr=0.001", "+experiment=x"])
    jobs = [["model.d_model=8", "train.lr=0.001", "+experiment=x"], ["model.d_model=4", "+experiment=x"]]
    assert [p.name for p in runs_of_jobs(tmp_path, jobs)] == ["a"]
    assert runs_of_jobs(tmp_path / "missing", jobs) == []


def test_expanded_jobs_use_the_sweepers_value_formatting():
    from kvshift_lens.sweeps import expand_jobs

    spec = {"experiment": "x", "params": {"seed": "0,1"}, "grids": {"g": {"train.lr": "1e-3,1e-2"}}}
    jobs = expand_jobs(spec, ["out_dir=/tmp/r"])
    assert ["train.lr=0.001", "seed=0", "+experiment=x", "out_dir=/tmp/r"] in jobs and len(jobs) == 4
