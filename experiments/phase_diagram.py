"""Phase diagram of induction learning: run the sweep, then write results/phase_diagram*.

    python -m experiments.phase_diagram                    # CPU profile: sweep + outputs (resumable)
    python -m experiments.phase_diagram --skip-train       # outputs only, from the finished runs
    python -m experiments.phase_diagram --only length      # train one grid, then outputs from all runs
    python -m experiments.phase_diagram --profile cluster  # the larger grid on SLURM (submitit)
    python -m experiments.phase_diagram --profile tiny --out-dir /tmp/pd --results-dir /tmp/pd/results
    python -m experiments.phase_diagram seed_offset=10    # replication: seeds 10, 11, ... into runs/seed_offset_10

A profile is one `conf/experiment/*.yaml` (`hydra/sweeper=grids`) run as one `python -m experiments.train
-m +experiment=<file>` multirun into `<out-dir>/sweeps/<name>`; re-running skips finished runs. The
grid is followed by adaptive rounds (`kvshift_lens/report/adaptive.py`: censored runs trained on at a doubled
budget, vanilla 1L's failures to 4× the steps 1-layer KV shift needed, a rate beyond an edge of the lr grid).
The outputs read exactly the runs whose `.hydra/overrides.yaml` is one of the profile's jobs and judge them
with the capacity protocol (`kvshift_lens/report/protocol.py`): per-run CSV (with `lr`, `outcome`,
`censored`), best-lr cells, frontiers, length trends, parameter-matched table, figures, provenance and a
markdown section with the verdicts (also spliced into results/REPORT.md).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Optional, Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from kvshift_lens.report import adaptive, markdown, replication  # noqa: E402
from kvshift_lens.training import provenance, sweeps  # noqa: E402
from kvshift_lens.training.runs import load_runs, run_status  # noqa: E402
from kvshift_lens.report import phase, figures as plots  # noqa: E402
from kvshift_lens.report.markdown import md_table  # noqa: E402
from kvshift_lens.report.multiplicity import fmt_adjusted  # noqa: E402
from kvshift_lens.report.claims import plateau_text  # noqa: E402
from kvshift_lens.report.protocol import lr_grid_violations  # noqa: E402
from kvshift_lens.report.robustness import robustness  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROFILES = {"cpu": ("phase_diagram", "local_parallel"), "tiny": ("phase_diagram_tiny", "basic"),
            "cluster": ("phase_diagram_cluster", "cluster_slurm"),
            "powered": ("phase_diagram_powered", "local_parallel")}  # profile -> (experiment file, launcher)
ADAPTIVE = {"cpu": adaptive.Adaptive(cap=2, lr_bounds=None), "powered": adaptive.Adaptive(cap=8),
            "cluster": adaptive.Adaptive(cap=8), "tiny": adaptive.OFF}  # quick (cpu): one doubling, the lr grid as written
CANNOT = [adaptive.CannotRule("one vanilla layer cannot learn induction",
                              negative={"model/mixer": "none", "model.n_layers": "1"},
                              positive={"model/mixer": "kv_shift", "model.n_layers": "1"},
                              within=["task.seq_len", "model.d_model"])]


def study_runs(sweep_dir: Path, spec: dict) -> pd.DataFrame:
    """Learning curves of the finished runs under `sweep_dir` that are jobs of `spec` (strays left out; diverged
    runs kept with the rows they logged, failed and unfinished ones left out)."""
    dirs = [d for d in sweeps.runs_of_jobs(sweep_dir, sweeps.expand_jobs(spec))
            if run_status(d) in ("completed", "diverged")]
    if not dirs:
        raise SystemExit(f"error: no finished runs of {spec['experiment']} under {sweep_dir}; run without --skip-train")
    curves = load_runs(sweep_dir)
    return curves[curves["run"].isin({str(d.relative_to(sweep_dir)) for d in dirs})]


def verdict_lines(cells: pd.DataFrame, trends: pd.DataFrame, frontiers: pd.DataFrame) -> list[str]:
    """The verdict paragraphs: each names its rule and baseline; every number comes from the tables."""
    depth, parts = phase.depth_verdict(cells)
    lines = [f"- **Depth claim** — {phase.DEPTH_CLAIM} **Verdict: {depth.label}.** Rule: {depth.rule}. "
             f"Baseline: {depth.baseline}. Success rates over width × seed at the best lr: "
             + "; ".join(phase.success_rate_line(cells, a, n) for a, n in (("kvshift", 1), ("vanilla", 1), ("vanilla", 2)))
             + "."]
    lines += [f"  - {name}: **{v.label}** — rule: {v.rule}; baseline: {v.baseline}; {'; '.join(v.evidence)}"
              + (f" (claimed direction: {fmt_adjusted(v)})." if fmt_adjusted(v) else ".") for name, v in parts]
    width = phase.width_verdict(trends)
    lines.append(f"- **Width claim** — {phase.WIDTH_CLAIM} **Verdict: {width.label}.** Rule: {width.rule}. Baseline: "
                 f"{width.baseline}. " + " ".join(e + "." for e in width.evidence))
    heads = frontiers[(frontiers.arch == "kvshift") & (frontiers.n_layers == 1)]
    if heads.n_heads.nunique() > 1:
        lines.append("- **Head count** (1-layer KV shift, frontier d_model): "
                     + "; ".join(f"{r.n_heads} head(s) at seq {r.seq_len}: {r.text}" for r in heads.itertuples()) + ".")
    return lines


def write_outputs(sweep_dir: Path, results: Path, spec: dict, record: dict) -> dict[str, Path]:
    """Tables, figures, provenance and markdown for the study's finished runs; returns the paths written."""
    prefix = spec["name"]
    paths = markdown.output_paths(results, prefix, {
        "csv": ".csv", "cells": "_cells.csv", "frontier": "_frontier.csv", "length": "_length.csv",
        "params": "_params.csv", "heatmaps": "_heatmaps.png", "params_png": "_params.png",
        "length_png": "_length.png", "provenance": "_provenance.json", "md": ".md", "verdicts": "_verdicts.csv",
        "adaptive": "_adaptive.csv", "cannot": "_cannot.csv"})
    curves = study_runs(sweep_dir, spec)
    runs = phase.tidy_runs(curves, sweep_dir)
    cells = phase.cells(runs)
    status = phase.status(cells)
    frontiers = phase.frontiers(status)
    trends = phase.length_trends(frontiers)
    pm = phase.param_matched(cells)
    runs.to_csv(paths["csv"], index=False)
    cells.to_csv(paths["cells"], index=False)
    frontiers.to_csv(paths["frontier"], index=False)
    trends.to_csv(paths["length"], index=False)
    pm.to_csv(paths["params"], index=False)
    generic = adaptive.study_runs(sweep_dir, sweeps.expand_jobs(spec), spec["steps"])
    policy = adaptive.Adaptive(**{**record["adaptive_policy"], "lr_bounds": record["adaptive_policy"]["lr_bounds"]
                                  and tuple(record["adaptive_policy"]["lr_bounds"])})
    adaptive.lr_table(generic, ["setting", "arm"], policy, adaptive.Protocol(lr="lr")).to_csv(paths["adaptive"], index=False)
    adaptive.cannot_table(generic, CANNOT, policy, adaptive.Protocol(lr="lr")).to_csv(paths["cannot"], index=False)
    depth, depth_parts = phase.depth_verdict(cells)
    replication.write_verdicts(paths["verdicts"], replication.verdict_rows(prefix.removesuffix("_tiny").removesuffix(
        "_cluster"), [(phase.DEPTH_CLAIM, depth, depth_parts), (phase.WIDTH_CLAIM, phase.width_verdict(trends), [])]))

    main_len = int(cells["seq_len"].mode().iloc[0])
    main = cells[(cells.seq_len == main_len) & (cells.n_heads == cells.n_heads.min())]
    budget = sorted(int(b) for b in runs.budget.unique())
    lrs = sorted(float(x) for x in runs.lr.unique())
    title = f"seq_len {main_len}, 1 head, best of {len(lrs)} lrs, {cells.seed.nunique()} seeds"
    for key, fig in (("heatmaps", plots.plot_heatmaps(main, title)), ("params_png", plots.plot_param_matched(pm)),
                     ("length_png", plots.plot_frontiers(frontiers))):
        fig.savefig(paths[key], dpi=120)
        plt.close(fig)

    core_min = phase.seconds(runs) / 60
    record = {**record, "experiment": spec, "n_runs": len(runs), "n_cells": len(status),
              "seeds": sorted(int(s) for s in runs.seed.unique()), "learning_rates": lrs, "budgets": budget,
              "threshold": phase.PROTOCOL.threshold, "train_core_minutes": round(core_min, 1),
              "training_time": provenance.training_time(sweep_dir / r for r in runs.run)}
    provenance.write_json(paths["provenance"], record)

    violations = lr_grid_violations(cells, phase.PROTOCOL)
    fragile = robustness(lambda p: phase.judge(curves, p), phase.PROTOCOL)
    lines = [
        f"## Phase diagram: who learns induction, at which width, depth and length ({prefix})", "",
        f"Regenerate: `{record['command']}` (resumable; `--skip-train` rebuilds only the outputs). {spec['description']} "
        f"{len(runs)} runs in {len(status)} cells; AdamW lr {', '.join(f'{x:g}' for x in lrs)}; budgets "
        f"{'/'.join(map(str, budget))} steps; batch {'/'.join(str(b) for b in sorted(runs.batch_size.unique()))}. Training compute {core_min:.1f} core-minutes (sum of per-run "
        f"train seconds, 1 thread each); {provenance.wall_text(record)}; `{paths['provenance'].name}` has commit, "
        "grids and timings.", "",
        "**Protocol** (`kvshift_lens/report/protocol.py`, docs/protocol.md): a run *succeeds* when held-out induction "
        f"accuracy reaches {phase.PROTOCOL.threshold:.0%} (it stops there); otherwise it *failed* if it plateaued "
        f"({plateau_text(phase.PROTOCOL)}; `kvshift_lens/report/plateau.py`), else it is *censored* (possibly still "
        "improving: never counted as a failure). A cell and seed succeeds if any learning rate does, is censored if any "
        "is, else failed; a cell succeeds when ≥ 2/3 of seeds do; the frontier is the smallest such width (\"≤\" at the "
        "narrowest width tried). The depth claim's tests are one family, Holm-adjusted; a verdict that changes with the "
        "success threshold at 0.85 / 0.95 or the plateau gain halved or doubled is *fragile* (listed below). "
        "Intervals: success proportions carry 95 % Wilson intervals (`binomtest`); paired comparisons use the exact "
        "binomial test on discordant pairs; times to 90 % the log-rank test (`scipy.stats.logrank`).", "",
        "### Verdicts", "", *verdict_lines(cells, trends, frontiers), "",
        "**Fragile** (the outcome changes under a protocol variant; counted as inconclusive): "
        + (", ".join(f"{r.verdict} ({r.base})" for r in fragile[fragile.fragile].itertuples()) or "none") + ".", "",
    ]
    if len(violations):
        lines += [f"**Protocol not met** in {len(violations)} cell-seeds (fewer than 3 learning rates or a span < 10×).", ""]
    edge = cells[cells.lr_at_edge & (cells.outcome == "success")]
    lines += [] if edge.empty else [f"The best learning rate sits at an end of the grid in {len(edge)} of {int((cells.outcome == 'success').sum())} "
              "succeeding cell-seeds (" + ", ".join(f"lr {lr:g}: {n}" for lr, n in edge.lr.value_counts().sort_index().items())
              + "): a wider grid could move those cells, not the ones whose best lr is interior.", ""]
    lines += [
        f"### Best accuracy during training (running maximum) at the best lr, mean over seeds (seq_len {main_len}, "
        "1 head; blank: never trained)", "",
        md_table(phase.grid_table(main, "best_induction_acc").round(3).reset_index(), ".3f"), "",
        "Seeds reaching 90 % at their best lr (censored seeds in brackets):", "",
        md_table(phase.outcome_table(main).reset_index()), "",
        "Best learning rate per cell (median over seeds):", "",
        md_table(phase.grid_table(main, "lr", agg="median").reset_index(), ".0e"), "",
        f"![heatmaps]({paths['heatmaps'].name})", "",
        "### Frontier width (smallest d_model where ≥ 2/3 seeds succeed at their best lr)", "",
        md_table(frontiers[["arch", "n_layers", "n_heads", "seq_len", "text", "frontier_status", "min_width",
                            "max_width"]]), "", phase.monotone_line(status), "",
        "### Sequence length", "",
        md_table(trends.astype({"seq_len": str, "frontiers": str})) if len(trends) else "No length sweep in this profile.",
        "", f"![length]({paths['length_png'].name})", "",
        "### Parameter-matched: 1-layer KV shift vs 2-layer vanilla (best lr per seed)", "",
        md_table(pm), "", f"![params]({paths['params_png'].name})", "",
    ]
    paths["md"].write_text("\n".join(lines))
    return paths


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = sweeps.study_parser(__doc__.splitlines()[0], PROFILES, ROOT / "runs")
    parser.add_argument("--only", nargs="+", default=(), metavar="GRID",
                        help="train only these grids of the profile (outputs still cover all its finished runs)")
    args = sweeps.parse_study_args(parser, argv)

    experiment, launcher = PROFILES[args.profile]
    launcher, n_jobs = sweeps.study_launcher(args, launcher)
    spec = sweeps.with_seed_offset(sweeps.experiment_spec(experiment), args.seed_offset)
    sweeps.expand_jobs(spec, only=args.only)  # unknown grid names stop here, before any training
    out_dir, args.results_dir = sweeps.study_dirs(args, args.out_dir, args.results_dir)
    sweep_dir = out_dir / "sweeps" / spec["name"]
    policy = ADAPTIVE[args.profile]
    t0, rounds = time.perf_counter(), 0
    if not args.skip_train:
        sweeps.train_study(sweeps.sweep_command(experiment, out_dir, launcher, n_jobs, only=args.only,
                                                seed_offset=args.seed_offset), sweep_dir,
                           out_dir / "logs" / f"{spec['name']}.log")
        rounds = sweeps.train_rounds(spec, lambda: adaptive.next_round(sweep_dir, spec, policy, CANNOT),
                                     sweep_dir, out_dir, launcher, n_jobs)
    markdown.finish_study("experiments.phase_diagram", args, "phase_diagram", sweep_dir, t0,
                        lambda record: write_outputs(sweep_dir, args.results_dir, spec, record),
                        launcher=launcher, n_jobs=n_jobs, seed_offset=args.seed_offset,
                        adaptive_policy=dataclasses.asdict(policy), adaptive_rounds_this_invocation=rounds)


if __name__ == "__main__":
    main()
