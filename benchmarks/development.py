"""Cost of the developmental measures of one run against its training (bench.json: `development_vs_training`,
`development`), and the SGLD calibration of the LLC (issue 20 §3).

For each preset, trains one default run in this process, then times
`kvshift_lens.analysis.development.analyze_development` on it (loss by position, loss PCA, QK eigenvalues, the LLC
at every checkpoint): the ratio development seconds / training seconds, back to back in one process (a shared
CPU's load drifts, so only ratios are compared). The standard detectors (heads.csv) run first, untimed: the
K-composition QK score and the induction split read them. Then `calibrate` on the last checkpoint of the first
preset, one chain of 3× the per-checkpoint draws per setting (longer traces to read).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from benchmarks.harness import Context

if TYPE_CHECKING:
    from kvshift_lens.analysis.llc import LLCConfig

TARGETS = {"development_vs_training": ("<=", 2.0)}  # developmental measures of a run vs its training time
PRESETS = {"kvshift_1l": ["model=kvshift_1l", "task=induction", "seed=0"],
           "vanilla_2l": ["model=vanilla_2l", "task=induction", "seed=0"]}
QUICK = ["train.steps=60", "train.eval_every=20", "train.warmup=10", "train.n_checkpoints=4", "task.seq_len=16",
         "task.d_vocab=16", "model.d_model=16", "train.batch_size=8"]
LRS, GAMMAS = (3e-4, 1e-3, 3e-3), (10.0, 100.0, 300.0)  # the calibration grid (ε, γ)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--skip-development", action="store_true",
                        help="skip the developmental-measures cost (it trains two default runs: minutes)")


def bench_run(overrides: list[str], run_dir: Path, llc: LLCConfig) -> dict:
    """Train `overrides` here, then time its developmental measures: seconds and their ratio."""
    from kvshift_lens.analysis.development import analyze_development
    from kvshift_lens.analysis.emergence import detect_run, run_checkpoints
    from kvshift_lens.training.run_config import compose
    from kvshift_lens.training.trainer import train

    run = compose(overrides)
    threads = torch.get_num_threads()
    t0 = time.perf_counter()
    summary = train(run.model, run.task, run.train, run_dir, progress=False)
    train_wall = time.perf_counter() - t0
    torch.set_num_threads(threads)
    detect_run(run_dir)
    t0 = time.perf_counter()
    analyze_development(run_dir, llc=llc)
    dev = time.perf_counter() - t0
    return {"overrides": overrides, "checkpoints": len(run_checkpoints(run_dir)),
            "train_seconds": summary["train_seconds"], "train_wall_seconds": round(train_wall, 2),
            "development_seconds": round(dev, 2), "development_vs_training": round(dev / summary["train_seconds"], 3)}


def calibration(run_dir: Path, llc: LLCConfig, lrs: tuple[float, ...], gammas: tuple[float, ...]) -> dict:
    """`calibrate` on the last checkpoint of a run (SGLD data from its task, as `analyze_development` draws it):
    the table as rows and the setting `pick_calibration` picks."""
    from kvshift_lens.analysis.emergence import run_checkpoints
    from kvshift_lens.analysis.llc import bare_checkpoint, calibrate, pick_calibration
    from kvshift_lens.data.tasks.base import make_task

    checkpoints = run_checkpoints(run_dir)
    task = make_task(json.loads((run_dir / "config.json").read_text())["task"])
    tokens = task.sample(llc.n_samples, torch.Generator().manual_seed(1)).tokens
    table = calibrate(bare_checkpoint(checkpoints[max(checkpoints)]), tokens, lrs, gammas, llc)
    picked = pick_calibration(table)
    return {"step": max(checkpoints), "num_draws": llc.num_draws, "table": table.round(4).to_dict("records"),
            "picked": None if picked is None else {k: float(picked[k]) for k in ("lr", "localization")}}


def measure(ctx: Context) -> dict:
    if ctx.options.skip_development:
        return {"development_vs_training": None, "development": None}
    from kvshift_lens.analysis.llc import LLCConfig

    llc = LLCConfig(num_draws=10, n_samples=64, batch_size=8) if ctx.quick else LLCConfig()
    runs = {}
    for name, overrides in PRESETS.items():
        runs[name] = bench_run(overrides + (QUICK if ctx.quick else []), ctx.tmp / f"development_{name}", llc)
        print(f"[bench] development {name}: {runs[name]}", flush=True)
    first = next(iter(PRESETS))
    calib = calibration(ctx.tmp / f"development_{first}", replace(llc, num_chains=1, num_draws=3 * llc.num_draws),
                        LRS[:2] if ctx.quick else LRS, GAMMAS[1:2] if ctx.quick else GAMMAS)
    print(f"[bench] LLC calibration ({first}, step {calib['step']}): picked {calib['picked']}", flush=True)
    return {"development_vs_training": max(r["development_vs_training"] for r in runs.values()),
            "development": {"runs": runs, "llc": dict(vars(llc)),
                            "calibration": {first: calib}}}


def markdown(res: dict) -> list[str]:
    d = res["development"]
    if d is None:
        return ["## Developmental measures: skipped (--skip-development)"]
    lines = ["## Developmental measures vs training (one process; LLC: "
             f"{d['llc']['num_chains']} chains × {d['llc']['num_draws']} draws, batch {d['llc']['batch_size']})", "",
             "| run | checkpoints | train s | development s | ratio |", "|---|---|---|---|---|"]
    lines += [f"| `{' '.join(r['overrides'])}` | {r['checkpoints']} | {r['train_seconds']} | "
              f"{r['development_seconds']} | {r['development_vs_training']} |" for r in d["runs"].values()]
    for name, c in d["calibration"].items():
        lines += ["", f"SGLD calibration on {name}, step {c['step']} (1 chain × {c['num_draws']} draws; "
                  f"picked {c['picked']}):", "",
                  "| ε | γ | λ̂ | finite | positive | converged | stable | usable |", "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['lr']:g} | {r['localization']:g} | {r['llc_mean']} | {r['finite']} | {r['positive']} | "
                  f"{r['converged']} | {r['stable']} | {r['usable']} |" for r in c["table"]]
    return lines
