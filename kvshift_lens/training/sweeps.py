"""One sweep mechanism for every study: experiment files with named grids, run as hydra multiruns.

An experiment file (`conf/experiment/<name>.yaml`, `hydra/sweeper=grids`) lists named cartesian
grids; `expand_jobs` turns it into the exact job override lists the sweeper launches (the
`hydra_plugins` sweeper calls `grid_jobs` too), `run_sweep` runs one multirun in a subprocess
(1 torch thread per job, resumable: finished runs are skipped), and `runs_of_jobs` selects the run
directories of a sweep whose `.hydra/overrides.yaml` is one of those jobs, so a study reads exactly
its own runs and never strays from older grids.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import yaml
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override


ROOT = Path(__file__).resolve().parents[2]
EXPERIMENTS = ROOT / "conf" / "experiment"
HISTORY = "sweep_history.jsonl"  # one line per sweep invocation, kept in the sweep directory
VOLATILE = ("out_dir",)  # override keys that say where a run was written, not what it computed
ADAPTIVE = ("train.steps", "train.lr")  # keys a study's adaptive rounds change per run (kvshift_lens/report/adaptive.py)
SEED_OFFSET = "seed_offset"  # `seed_offset=K` (or --seed-offset K): every job's seed s becomes s + K (replication)


def study_parser(description: str, profiles: Sequence[str], out_dir: Path) -> argparse.ArgumentParser:
    """The command line every study entry point shares (profile, launcher, run and results folders, jobs, skip-train)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--profile", choices=sorted(profiles), default="cpu")
    parser.add_argument("--launcher", help="hydra launcher (default: the profile's; e.g. cluster_local, local_parallel)")
    parser.add_argument("--out-dir", type=Path, default=out_dir, help="hydra out_dir (runs live below)")
    parser.add_argument("--results-dir", type=Path, default=None,
                        help="where the outputs go (default results/; with a seed offset <out-dir>/seed_offset_K/results)")
    parser.add_argument("--n-jobs", type=int, default=None, help="parallel training processes (local launchers)")
    parser.add_argument("--skip-train", action="store_true", help="only rebuild the outputs from finished runs")
    add_seed_offset(parser)
    return parser


def add_seed_offset(parser: argparse.ArgumentParser,
                    help: str = "train every job on seed + K, into the run folder's seed_offset_K (never results/)") -> None:
    """`--seed-offset K` (also spelled `seed_offset=K`, `parse_study_args`): the study on seeds K, K+1, ... into its own
    run and results folders, for the replication table (kvshift_lens/report/replication.py)."""
    parser.add_argument("--seed-offset", type=int, default=0, metavar="K", help=help)


def parse_study_args(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """`parser.parse_args`, reading the hydra-style `seed_offset=K` as `--seed-offset K`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    fixed: list[str] = []
    for a in argv:
        fixed += ["--seed-offset", a.split("=", 1)[1]] if a.startswith(f"{SEED_OFFSET}=") else [a]
    return parser.parse_args(fixed)


def study_dirs(args: argparse.Namespace, out_dir: Path, results_dir: Optional[Path]) -> tuple[Path, Path]:
    """(run folder, results folder) of a study invocation. With a seed offset K both move to
    `<out_dir>/seed_offset_K[/results]`, so a replication never mixes with, or overwrites, the committed runs and
    results; the tiny (pipeline-test) profile writes its outputs to `<out_dir>/tiny_results`. For either, an explicit
    results folder equal to results/ is refused."""
    offset = getattr(args, "seed_offset", 0) or 0
    tiny = getattr(args, "profile", None) == "tiny"
    if not offset and not tiny:
        return out_dir.resolve(), (results_dir or ROOT / "results").resolve()
    runs = (out_dir / f"seed_offset_{offset}").resolve() if offset else out_dir.resolve()
    results = (results_dir or (runs / "results" if offset else runs / "tiny_results")).resolve()
    if results == (ROOT / "results").resolve():
        what = f"seed_offset={offset}" if offset else "--profile tiny (numbers meaningless)"
        raise SystemExit(f"error: {what} must not write into {results} (the committed results); "
                         "pick another --results-dir")
    return runs, results


def study_launcher(args: argparse.Namespace, default: str) -> tuple[str, Optional[int]]:
    """The launcher and parallel jobs of a study invocation: the command line's, else the profile's launcher,
    with 2 jobs when it is local_parallel (the 2-core machine)."""
    launcher = args.launcher or default
    return launcher, args.n_jobs if args.n_jobs is not None else (2 if launcher == "local_parallel" else None)


def train_study(cmd: Sequence[str], sweep_dir: Path, log: Path) -> dict:
    """One study multirun (`sweep_command`), echoed; returns `run_sweep`'s history line ({} when it failed). A failed
    or diverged job is recorded in its run directory and the failure reported in one line; the study goes on to its
    outputs from the runs that finished."""
    print("$ python", " ".join(cmd[1:]), flush=True)
    try:
        return run_sweep(cmd, sweep_dir, log)
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return {}


def train_rounds(spec: dict, plan: Callable[[], Sequence[Sequence[str]]], sweep_dir: Path, out_dir: Path,
                 launcher: str, n_jobs: Optional[int], label: str = "adaptive") -> int:
    """Rounds of a study that decides its next runs from the finished ones: `plan()` (read the runs, return the next
    jobs) -> one `select` multirun of them (`train_study`) -> plan again, until the plan is empty or repeats the last
    round's jobs (they did not finish: reported in one line; the outputs use what did). Returns the rounds run."""
    rounds, last, log = 0, None, out_dir / "logs" / f"{spec['name']}.log"
    while True:
        jobs = [list(j) for j in plan()]
        if not jobs:
            return rounds
        ids = {identity(j) for j in jobs}
        if last is not None and ids <= last:
            print(f"error: {len(jobs)} planned run(s) of the {label} rounds did not finish, e.g. {' '.join(jobs[0])}; "
                  f"see {log}", file=sys.stderr, flush=True)
            return rounds
        rounds, last = rounds + 1, ids
        print(f"[{spec['name']}] {label} round {rounds}: {len(jobs)} runs", flush=True)
        selection = write_selection(sweep_dir / "rounds" / f"{label}_{time.strftime('%Y%m%dT%H%M%S')}_{rounds:02d}.yaml",
                                    jobs)
        train_study(sweep_command(spec["experiment"], out_dir, launcher, n_jobs, select=selection,
                                  seed_offset=int(spec.get("seed_offset") or 0)), sweep_dir, log)


def experiment_spec(name: str) -> dict:
    """`conf/experiment/<name>.yaml` as hydra composes it (defaults and inheritance applied): its `name`,
    `description`, `search` (how a study picks runs: "grid" = all, "scan" = `report.search`) and sweeper
    `params` and `grids` as plain data. One clear error if the file is absent."""
    if not (EXPERIMENTS / f"{name}.yaml").exists():
        choices = sorted(p.stem for p in EXPERIMENTS.glob("*.yaml"))
        raise SystemExit(f"error: no experiment {name!r} at {EXPERIMENTS / name}.yaml; choose one of {choices}")
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(EXPERIMENTS.parent), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"+experiment={name}"], return_hydra_config=True)
    sweeper = OmegaConf.to_container(cfg.hydra.sweeper, resolve=False)
    return {"experiment": name, "name": cfg.name, "description": str(sweeper.get("description") or "").strip(),
            "search": str(sweeper.get("search") or "grid"), "params": sweeper.get("params") or {},
            "grids": sweeper.get("grids") or {}, "steps": int(cfg.train.steps), "seed_offset": 0}


def with_seed_offset(spec: dict, offset: int) -> dict:
    """`spec` whose jobs run on seed + `offset` (`expand_jobs` and `sweep_command(seed_offset=...)` apply it)."""
    return {**spec, "seed_offset": int(offset)}


def shift_seed(job: Sequence[str], offset: int) -> list[str]:
    """`job` with its `seed=s` override replaced by `seed=s+offset` (a job without one gets `seed=offset`)."""
    if not offset:
        return list(job)
    if not any(o.split("=", 1)[0] == "seed" for o in job):
        return [*job, f"seed={offset}"]
    return [f"seed={int(o.split('=', 1)[1]) + offset}" if o.split("=", 1)[0] == "seed" else o for o in job]


def grid_budget(spec: dict, job: Sequence[str]) -> int:
    """The budget (`train.steps`) a job of `spec` has in its grid: its own override, else the experiment's."""
    value = next((o.split("=", 1)[1] for o in job if o.split("=", 1)[0].lstrip("+") == "train.steps"), None)
    return int(value) if value is not None else int(spec["steps"])


def grids_of(spec: dict) -> dict[str, dict]:
    """Each named grid of an `experiment_spec` with the shared params filled in (the grid wins)."""
    return {name: {**spec["params"], **(grid or {})} for name, grid in spec["grids"].items()}


def grid_jobs(grids: Mapping[str, Mapping[str, object]], shared: Sequence[Override],
              command_line: Sequence[Override], only: Optional[Sequence[str]] = None,
              seed_offset: int = 0) -> list[list[str]]:
    """Jobs of the selected grids in grid order, each grid's cartesian product as hydra's basic sweeper
    builds it; a grid's entry wins over `shared` params, the command line over both; duplicates run once;
    `seed_offset` shifts every job's seed (`shift_seed`)."""
    parser = OverridesParser.create()
    jobs: list[list[str]] = []
    seen: set[tuple[str, ...]] = set()
    for name in only or list(grids):
        grid = parser.parse_overrides([f"{k}={v}" for k, v in grids[name].items()])
        keys = {o.get_key_element() for o in grid}
        merged = grid + [o for o in shared if o.get_key_element() not in keys] + list(command_line)
        for job in BasicSweeper.split_arguments(merged, None)[0]:
            job = shift_seed(job, seed_offset)
            if tuple(sorted(job)) not in seen:
                seen.add(tuple(sorted(job)))
                jobs.append(job)
    return jobs


def expand_jobs(spec: dict, command_line: Sequence[str] = (), only: Sequence[str] = ()) -> list[list[str]]:
    """The job override lists a `+experiment=<spec>` multirun launches with `command_line` task overrides
    (`experiment_spec` in; the same expansion as the `grids` sweeper, `grid_jobs`)."""
    parser = OverridesParser.create()
    shared = parser.parse_overrides([f"{k}={v}" for k, v in spec["params"].items()])
    grids = spec["grids"] or {"": {}}
    unknown = sorted(set(only) - set(grids))
    if unknown:
        raise SystemExit(f"error: {unknown} are not grids of experiment {spec['experiment']} (grids: {sorted(grids)})")
    command_line = [f"+experiment={spec['experiment']}", *command_line]
    return grid_jobs(grids, shared, parser.parse_overrides(command_line), list(only) or None,
                     int(spec.get("seed_offset") or 0))


def identity(overrides: Sequence[str]) -> frozenset[str]:
    """What a job computes: its overrides as a set, `VOLATILE` keys (where it was written) left out."""
    return frozenset(o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in VOLATILE)


def base_identity(overrides: Sequence[str]) -> frozenset[str]:
    """A job's identity up to the keys adaptive rounds change (`ADAPTIVE`: budget and learning rate): the runs of one
    grid job at any budget it was extended to and at any rate added beyond its grid share it."""
    return frozenset(o for o in identity(overrides) if o.split("=", 1)[0].lstrip("+~") not in ADAPTIVE)


def write_selection(path: Path, jobs: Sequence[Sequence[str]]) -> Path:
    """Write `jobs` (override lists) as the YAML file `hydra.sweeper.select` reads; returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump([list(j) for j in jobs], default_flow_style=False))
    return path


def select_jobs(jobs: Sequence[Sequence[str]], path: Path) -> list[list[str]]:
    """The jobs listed in the selection file at `path`, in `jobs`' order: a listed job is one of `jobs` (identity up
    to `VOLATILE` keys and order) or one of them at another budget or learning rate (`base_identity`: an adaptive
    round's extension, launched as listed). ValueError naming a listed job that is neither, or a file that is not a
    list of lists."""
    listed = yaml.safe_load(path.read_text())
    if not isinstance(listed, list) or not all(isinstance(j, list) for j in listed):
        raise ValueError(f"{path} must be a YAML list of jobs, each a list of overrides (sweeps.write_selection)")
    order = {}
    for i, j in enumerate(jobs):
        order.setdefault(base_identity(j), i)
    unknown = [j for j in listed if base_identity(j) not in order]
    if unknown:
        raise ValueError(f"{len(unknown)} selected job(s) are not jobs of this sweep, e.g. {sorted(unknown[0])}")
    grid = {base_identity(j): list(j) for j in jobs}
    picked = {identity(j): _adapted(grid[base_identity(j)], j) for j in listed}
    return sorted(picked.values(), key=lambda j: order[base_identity(j)])


def _adapted(grid_job: Sequence[str], listed: Sequence[str]) -> list[str]:
    """The grid job (which carries the command line: out_dir, ...) with the listed job's `ADAPTIVE` values."""
    keys = {o.split("=", 1)[0].lstrip("+~"): o for o in listed if o.split("=", 1)[0].lstrip("+~") in ADAPTIVE}
    out = [keys.pop(o.split("=", 1)[0].lstrip("+~"), o) for o in grid_job]
    return out + list(keys.values())


def job_overrides(run_dir: Path) -> list[str]:
    """The overrides hydra recorded for a run (`.hydra/overrides.yaml`; empty if absent)."""
    path = run_dir / ".hydra" / "overrides.yaml"
    return list(yaml.safe_load(path.read_text()) or []) if path.exists() else []


def runs_of_jobs(sweep_dir: Path, jobs: Sequence[Sequence[str]], failed: bool = False) -> list[Path]:
    """Run directories under `sweep_dir` whose recorded overrides are one of `jobs` (out_dir aside), at whatever
    budget and learning rate adaptive rounds trained it to (`base_identity`); with `failed`, also the runs that failed
    before their first evaluation (`runs.find_runs`)."""
    from kvshift_lens.training.runs import find_runs

    wanted = {base_identity(j) for j in jobs}
    return [d for d in find_runs(sweep_dir, failed=failed) if base_identity(job_overrides(d)) in wanted] \
        if sweep_dir.exists() else []


def sweep_command(experiment: Optional[str], out_dir: Path, launcher: str = "local_parallel",
                  n_jobs: Optional[int] = None, overrides: Sequence[str] = (), only: Sequence[str] = (),
                  select: Optional[Path] = None, seed_offset: int = 0) -> list[str]:
    """The `python -m experiments.train -m [+experiment=<name>]` command of one multirun (`select`: a
    `write_selection` file, to run only those of its jobs; `seed_offset`: every job on seed + K)."""
    cmd = [sys.executable, "-m", "experiments.train", "-m", f"hydra/launcher={launcher}",
           *([f"+experiment={experiment}"] if experiment else []), f"out_dir={out_dir}", *overrides]
    if seed_offset:
        cmd.append(f"hydra.sweeper.seed_offset={seed_offset}")
    if n_jobs is not None:
        cmd.append(f"hydra.launcher.n_jobs={n_jobs}")
    if select is not None:
        cmd.append(f"hydra.sweeper.select={select}")
    return cmd + ([f"hydra.sweeper.only=[{','.join(only)}]"] if only else [])


def run_sweep(cmd: Sequence[str], sweep_dir: Path, log: Path, threads_per_job: Optional[int] = 1) -> dict:
    """Run one multirun command (`threads_per_job` OpenMP threads per job; None leaves the environment as it is),
    append its output to `log` and one line to the sweep's history; returns that line (command, finish time,
    wall seconds). Raises RuntimeError naming the log on failure."""
    threads = {} if threads_per_job is None else {"OMP_NUM_THREADS": str(threads_per_job),
                                                  "MKL_NUM_THREADS": str(threads_per_job)}
    env = {**os.environ, "HYDRA_FULL_ERROR": "1", **threads}
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with log.open("a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        proc = subprocess.run(list(cmd), cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"sweep failed (exit {proc.returncode}): {' '.join(cmd[2:])}; see {log}")
    entry = {"command": " ".join(["python", *cmd[1:]]), "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
             "wall_seconds": round(time.perf_counter() - t0, 1)}
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with (sweep_dir / HISTORY).open("a") as f:
        f.write(json.dumps(entry) + "\n")
    return entry


def sweep_history(sweep_dir: Path) -> list[dict]:
    """Every sweep invocation recorded in `sweep_dir` (command, finish time, wall seconds)."""
    path = sweep_dir / HISTORY
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
