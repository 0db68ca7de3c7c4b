"""The same four-run sweep (`experiments.train -m`) with the sequential and the 2-worker joblib launcher, wall
seconds including process start-up (bench.json: `sweep_speedup_2_workers`, `sweep`)."""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.harness import ROOT, Context
from kvshift_lens.training import sweeps

TARGETS = {"sweep_speedup_2_workers": (">=", 1.7)}
QUICK_OVERRIDES = ["model=vanilla_1l,kvshift_1l", "seed=0,1", "train.steps=2", "train.warmup=1", "train.eval_every=2",
                   "train.eval_size=4", "train.batch_size=4", "train.n_checkpoints=1",
                   "task.d_vocab=16", "task.seq_len=16", "model.d_model=16", "model.n_heads=2", "progress=false"]
LAUNCHERS = ("basic", "local_parallel")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sweep-steps", type=int, default=600,
                        help="train.steps of each of the 4 sweep runs (long enough that worker start-up, ~10 s, is not the measurement)")
    parser.add_argument("--sweep-reps", type=int, default=1, help="repetitions of the basic/local_parallel pair")


def not_measured(overrides: list[str], note: str) -> dict:
    return {"overrides": overrides, "reps": 0, "wall_seconds": {k: [] for k in LAUNCHERS},
            "sum_run_train_seconds": {k: [] for k in LAUNCHERS}, "speedup": None, "python_import_seconds": {},
            "note": note}


def run_sweep(launcher: str, overrides: list[str], out: Path) -> tuple[float, float]:
    """Wall seconds of one `experiments.train -m` sweep (process start-up included) and the
    summed in-run train_seconds of its runs (the launcher sets its own threads: no 1-thread env)."""
    cmd = sweeps.sweep_command(None, out, launcher, overrides=[*overrides, "name=bench"])
    entry = sweeps.run_sweep(cmd, out / "sweeps" / "bench", out / "bench.log", threads_per_job=None)
    summaries = list(out.rglob("summary.json"))
    return entry["wall_seconds"], sum(json.loads(p.read_text())["train_seconds"] for p in summaries)


def bench_sweep(overrides: list[str], reps: int, tmp: Path) -> dict:
    walls: dict[str, list[float]] = {k: [] for k in LAUNCHERS}
    train_s: dict[str, list[float]] = {k: [] for k in LAUNCHERS}
    for r in range(reps):
        for launcher in LAUNCHERS if r % 2 == 0 else LAUNCHERS[::-1]:
            wall, ts = run_sweep(launcher, overrides, tmp / f"sweep_{launcher}_{r}")
            walls[launcher].append(wall)
            train_s[launcher].append(ts)
    speedups = [b / p for b, p in zip(walls["basic"], walls["local_parallel"])]
    return {
        "overrides": overrides, "reps": reps,
        "wall_seconds": {k: [round(x, 2) for x in v] for k, v in walls.items()},
        "sum_run_train_seconds": {k: [round(x, 2) for x in v] for k, v in train_s.items()},
        "speedup": round(statistics.median(speedups), 3),
        "python_import_seconds": import_seconds(),
        "note": "wall time includes process start-up: basic imports once and runs the 4 jobs in "
                "one process (torch default threads); local_parallel = joblib/loky, 2 workers that "
                "each import torch + transformer_lens + kvshift_lens, 1 torch thread per worker",
    }


def import_seconds() -> dict:
    """Cold-ish import cost of what a sweep worker loads (a fresh interpreter each time)."""
    out = {}
    for mod in ("torch", "transformer_lens", "kvshift_lens.training.trainer"):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", f"import {mod}"], cwd=ROOT, check=True, capture_output=True)
        out[mod] = round(time.perf_counter() - t0, 2)
    return out


def measure(ctx: Context) -> dict:
    if ctx.options.skip_subprocess:
        sweep = not_measured([], "skipped")
    elif ctx.quick:  # two hydra process trees cost ~30-60 s of imports on a loaded 2-core box
        sweep = not_measured(QUICK_OVERRIDES, "not measured in --quick mode")
    else:
        overrides = ["model=vanilla_1l,kvshift_1l", "seed=0,1", f"train.steps={ctx.options.sweep_steps}", "progress=false"]
        sweep = bench_sweep(overrides, ctx.options.sweep_reps, ctx.tmp)
    print(f"[bench] sweep: {sweep['wall_seconds']} speedup {sweep['speedup']}", flush=True)
    return {"sweep_speedup_2_workers": sweep["speedup"], "sweep": sweep}


def markdown(res: dict) -> list[str]:
    s = res["sweep"]
    return ["## Sweep (4 runs) — `experiments.train -m`, wall seconds incl. process start-up", "",
            f"`{' '.join(s['overrides'])}`", "",
            f"- basic (sequential): {s['wall_seconds']['basic']} s (runs' own train_seconds {s['sum_run_train_seconds']['basic']})",
            f"- local_parallel (joblib, 2 workers): {s['wall_seconds']['local_parallel']} s "
            f"(runs' own train_seconds {s['sum_run_train_seconds']['local_parallel']})",
            f"- speedup: **{s['speedup']}×**; fresh-interpreter import seconds: {s['python_import_seconds']}",
            f"- {s['note']}"]
