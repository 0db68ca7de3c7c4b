"""Speed and memory benchmarks: `python -m benchmarks.run [--quick] [--out DIR]`.

Everything is reported as a ratio measured inside one run, because the CPU machine is shared and absolute
timings drift with the load: compared variants are interleaved and every ratio is the median of per-round
ratios (`benchmarks/harness.py`). Writes `<out>/bench.json` (top-level keys = worst case over the measured
shapes, plus each family's details) and a readable `<out>/bench.md`, after every family (partial results
survive an interrupted run). CUDA is used when present (same command on a GPU machine).

Each benchmark family is one module, listed once in `FAMILIES` (in-process families first, then the ones
that start processes). A new family (`benchmarks/<family>.py`) is that file plus its line here:

    TARGETS = {"my_ratio": ("<=", 1.1)}        # optional: headline keys checked in bench.md's target table
    def add_arguments(parser) -> None: ...     # optional: the family's own flags (read from ctx.options)
    def measure(ctx: Context) -> dict: ...     # its top-level bench.json keys; time with harness.interleaved
    def markdown(res: dict) -> list[str]: ...  # its bench.md section, read from the whole result

Helpers outside `make bench`: `profile_step` (torch.profiler tables), `kvshift_variants` and
`kv_projection_variants` (implementations of the shift), `compiled_shift` (torch.compile on the shift alone).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from benchmarks import compile_payback, development, interventions, lm, mixers, sweep, training_run, training_step
from benchmarks.harness import ROOT, Context
from benchmarks.report import machine_info, targets, to_markdown, verdicts
from kvshift_lens.training.provenance import git_commit, git_dirty, load_average

FAMILIES = [training_step, mixers, interventions, compile_payback, lm, development, training_run, sweep]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny smoke run (seconds; numbers meaningless)")
    p.add_argument("--out", type=Path, default=ROOT / "results", help="directory for bench.json / bench.md")
    p.add_argument("--threads", type=int, default=1, help="torch threads for the step benchmarks (default 1)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds per shape")
    p.add_argument("--skip-subprocess", action="store_true", help="skip the sweep and training-run benches")
    for family in FAMILIES:
        if hasattr(family, "add_arguments"):
            family.add_arguments(p)
    args = p.parse_args(argv)

    started = time.perf_counter()
    commit = git_commit() + ("-dirty" if git_dirty() else "")  # before the first partial write of bench.json
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    res = {"git_commit": commit, "machine": machine_info(device), "load_average": {"start": load_average()},
           "quick": args.quick}
    bounds = targets(FAMILIES)
    with tempfile.TemporaryDirectory(prefix="kvshift_bench_") as tmp:
        ctx = Context(device=device, quick=args.quick, rounds=args.rounds or (2 if args.quick else 10),
                      threads=args.threads, tmp=Path(tmp), options=args)
        for i, family in enumerate(FAMILIES):
            res.update(family.measure(ctx))
            res["load_average"]["end"] = load_average()
            res["targets"] = verdicts(res, bounds)
            res["total_seconds"] = round(time.perf_counter() - started, 1)
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "bench.json").write_text(json.dumps(res, indent=2))
            (args.out / "bench.md").write_text(to_markdown(res, FAMILIES[: i + 1]))
    print(f"[bench] wrote {args.out / 'bench.json'} and bench.md in {res['total_seconds']} s", flush=True)
    return res


if __name__ == "__main__":
    main()
