"""Whether `train.compile=true` pays back, per mixer: compile seconds in fresh processes with a cold and a
warm inductor cache, eager vs compiled step time, and the steps after which the compile is repaid
(bench.json: `compile_payback`)."""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.harness import (ROOT, Context, Shape, interleaved, make_step, mixer_model_config, ratio,
                                samples_per_round, shape_tokens, sync)

DEFAULT_RUN_STEPS = 3000  # conf/train/default.yaml: the run length a compile must pay back within
COMPILE_SNIPPET = r"""
import json, sys
from benchmarks.compile_payback import compile_probe
from benchmarks.harness import Shape
print("BENCH_JSON" + json.dumps(compile_probe(Shape(**json.loads(sys.argv[1])), sys.argv[2], int(sys.argv[3]),
                                              int(sys.argv[4]))))
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--compile-mixers", nargs="*", default=None, metavar="MIXER",
                        help="mixers whose train.compile payback is measured (default: kv_shift canon; none with --quick)")


def compile_probe(shape: Shape, mixer: str, rounds: int, threads: int) -> dict:
    """In this process: the first `torch.compile`d training step (compile included) and, interleaved, the eager,
    compiled and eager-vanilla steps (seconds). Run by `bench_compile` in fresh processes."""
    from kvshift_lens.models.transformer import build_module

    torch.set_num_threads(threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokens = shape_tokens(shape, device)
    compiled = make_step(torch.compile(build_module(mixer_model_config(shape, mixer)).to(device).train()), tokens)
    sync(device)
    t0 = time.perf_counter()
    compiled()
    sync(device)
    first = time.perf_counter() - t0
    eager = make_step(build_module(mixer_model_config(shape, mixer)).to(device).train(), tokens)
    vanilla = make_step(build_module(mixer_model_config(shape, "none")).to(device).train(), tokens)
    times = interleaved({"vanilla": vanilla, "eager": eager, "compiled": compiled}, rounds,
                        samples_per_round(eager, device), device)
    return {"first_step": first, **{k: statistics.median(v) for k, v in times.items()},
            "compiled_vs_eager": ratio(times, "compiled", "eager"), "compiled_vs_vanilla": ratio(times, "compiled", "vanilla")}


def payback_summary(probes: dict[str, dict]) -> dict:
    """From the "cold" and "warm" `compile_probe` results of one mixer: compile seconds (first compiled step minus
    a compiled step), step times, and the steps after which the compile is paid back (None: not faster)."""
    warm = probes["warm"]
    saved = warm["eager"] - warm["compiled"]
    seconds = {k: max(p["first_step"] - p["compiled"], 0.0) for k, p in probes.items()}
    payback = {k: (math.ceil(v / saved) if saved > 0 else None) for k, v in seconds.items()}
    return {
        "compile_seconds": {k: round(v, 2) for k, v in seconds.items()},
        "ms_per_step": {"eager": round(1e3 * warm["eager"], 3), "compiled": round(1e3 * warm["compiled"], 3),
                        "vanilla_eager": round(1e3 * warm["vanilla"], 3)},
        "compiled_vs_eager": round(warm["compiled_vs_eager"], 3),
        "compiled_vs_vanilla": round(warm["compiled_vs_vanilla"], 3),
        "payback_steps": payback,
        "pays_back_in_default_run": {k: v is not None and v <= DEFAULT_RUN_STEPS for k, v in payback.items()},
    }


def bench_compile(shape: Shape, mixers: list[str], rounds: int, threads: int, cache_dir: Path) -> dict:
    """Whether `train.compile=true` pays back, per mixer: compile seconds (first compiled step minus a compiled
    step) in a fresh process with an empty inductor cache ("cold") and in a second fresh process that finds
    the first one's cache ("warm"), eager vs compiled step time, and the steps after which the compile is paid
    back (None: the compiled step is not faster)."""
    out = {}
    for name in mixers:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache_dir / name)}
        probes = {}
        for kind in ("cold", "warm"):
            r = subprocess.run([sys.executable, "-c", COMPILE_SNIPPET, json.dumps(vars(shape)), name, str(rounds),
                                str(threads)], cwd=ROOT, capture_output=True, text=True, timeout=1800, env=env)
            if r.returncode != 0:
                raise RuntimeError(f"compile probe of {name} failed:\n{r.stderr[-3000:]}")
            probes[kind] = json.loads(next(x for x in r.stdout.splitlines() if x.startswith("BENCH_JSON"))[10:])
        out[name] = payback_summary(probes)
    return {"shape": shape.label, "default_run_steps": DEFAULT_RUN_STEPS, "rounds": rounds, "mixers": out,
            "note": "compile seconds = first compiled step minus a compiled step, each in a fresh process: 'cold' with "
                    "an empty inductor cache (a fresh machine), 'warm' when an earlier process compiled the same "
                    "shapes (every run of a sweep after the first with that shape); step times from the warm process; "
                    "payback = compile seconds / seconds saved per step"}


def measure(ctx: Context) -> dict:
    chosen = ctx.options.compile_mixers
    mixers = chosen if chosen is not None else ([] if ctx.quick else ["kv_shift", "canon"])
    with tempfile.TemporaryDirectory(prefix="kvshift_inductor_") as cache:
        compiled = bench_compile(ctx.shapes[0], mixers, ctx.rounds, ctx.threads, Path(cache))
    for name, d in compiled["mixers"].items():
        print(f"[bench] compile {name}: {d['compile_seconds']} s, compiled/eager {d['compiled_vs_eager']}, "
              f"payback steps {d['payback_steps']}", flush=True)
    return {"compile_payback": compiled}


def markdown(res: dict) -> list[str]:
    c = res["compile_payback"]
    if not c["mixers"]:
        return []
    lines = [f"## `train.compile=true` ({c['shape']}): does the compile pay back within {c['default_run_steps']} steps?", "",
             "| mixer | compile s cold / warm | eager ms | compiled ms | compiled / vanilla eager | payback steps cold / warm |",
             "|---|---|---|---|---|---|"]
    for n, d in c["mixers"].items():
        lines.append(f"| {n} | {d['compile_seconds']['cold']} / {d['compile_seconds']['warm']} | {d['ms_per_step']['eager']} | "
                     f"{d['ms_per_step']['compiled']} | {d['compiled_vs_vanilla']} | "
                     f"{d['payback_steps']['cold']} / {d['payback_steps']['warm']} |")
    return lines + ["", c["note"]]
