"""One real training run of the default 1L KV-shift config in a fresh process: seconds to 90 % induction accuracy
and the process's peak memory (bench.json: `seconds_to_90pct_induction`, `peak_rss_mb`, `training_run`)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks.harness import ROOT, Context

TRAIN_SNIPPET = r"""
import json, resource, sys, time
def peak_rss_mb():  # VmHWM: this process's own peak; ru_maxrss would include the forking parent's (Linux exec)
    try:
        return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t0 = time.perf_counter()
from kvshift_lens.training.run_config import compose
from kvshift_lens.training.trainer import train
run = compose(json.loads(sys.argv[1]))
summary = train(run.model, run.task, run.train, sys.argv[2], progress=False)
print("BENCH_JSON" + json.dumps({
    "seconds_to_90": summary["seconds_to_90"], "steps_to_90": summary["steps_to_90"],
    "train_seconds": summary["train_seconds"], "final_induction_acc": summary["final_induction_acc"],
    "process_seconds": time.perf_counter() - t0,
    "max_rss_mb": peak_rss_mb()}))
"""
QUICK_OVERRIDES = ["model=kvshift_1l", "train.steps=6", "train.warmup=1", "train.threads=1", "train.eval_every=3",
                   "train.eval_size=8", "train.batch_size=4", "train.n_checkpoints=2",
                   "task.d_vocab=16", "task.seq_len=16", "model.d_model=16", "model.n_heads=2"]
FULL_OVERRIDES = ["model=kvshift_1l", "train.steps=600", "train.threads=1"]
SKIPPED = {"overrides": [], "seconds_to_90": None, "steps_to_90": None, "train_seconds": None,
           "process_seconds": 0.0, "max_rss_mb": float("nan"), "final_induction_acc": None}


def bench_training_run(overrides: list[str], tmp: Path, in_process: bool = False) -> dict:
    """Train the default 1L KV-shift config in a fresh process: seconds to 90% and its max RSS.

    `in_process` (--quick) trains here instead; max RSS is then this process's.
    """
    if in_process:
        import resource

        from kvshift_lens.training.run_config import compose
        from kvshift_lens.training.trainer import train

        t0 = time.perf_counter()
        run = compose(overrides)
        threads = torch.get_num_threads()
        summary = train(run.model, run.task, run.train, tmp / "train_run", progress=False)
        torch.set_num_threads(threads)
        return {"overrides": overrides, "seconds_to_90": summary["seconds_to_90"],
                "steps_to_90": summary["steps_to_90"], "train_seconds": summary["train_seconds"],
                "final_induction_acc": summary["final_induction_acc"],
                "process_seconds": time.perf_counter() - t0,
                "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    r = subprocess.run([sys.executable, "-c", TRAIN_SNIPPET, json.dumps(overrides), str(tmp / "train_run")],
                       cwd=ROOT, capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        raise RuntimeError(f"training run failed:\n{r.stderr[-3000:]}")
    line = next(x for x in r.stdout.splitlines() if x.startswith("BENCH_JSON"))
    return {"overrides": overrides, **json.loads(line[len("BENCH_JSON"):])}


def measure(ctx: Context) -> dict:
    if ctx.options.skip_subprocess:
        training = dict(SKIPPED)
    else:
        training = bench_training_run(QUICK_OVERRIDES if ctx.quick else FULL_OVERRIDES, ctx.tmp, in_process=ctx.quick)
        print(f"[bench] training run: {training}", flush=True)
    return {"seconds_to_90pct_induction": training["seconds_to_90"], "peak_rss_mb": round(training["max_rss_mb"], 1),
            "training_run": training}


def markdown(res: dict) -> list[str]:
    t = res["training_run"]
    return ["## Training run (fresh process)", "",
            f"`{' '.join(t['overrides'])}`: seconds_to_90 = {t['seconds_to_90']} (step {t['steps_to_90']}), "
            f"train_seconds = {t['train_seconds']}, process {t['process_seconds']:.1f} s, max RSS "
            f"{t['max_rss_mb']:.0f} MB"]
