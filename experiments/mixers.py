"""The local-mixing family study: train the rounds `report.search` plans, then write results/mixers*.

    python -m experiments.mixers                           # CPU profile: every round + outputs (resumable)
    python -m experiments.mixers --skip-train              # outputs only, from the finished runs
    python -m experiments.mixers --profile cluster         # the larger profile on SLURM (submitit)
    python -m experiments.mixers --profile tiny --out-dir /tmp/m --results-dir /tmp/m/results
    python -m experiments.mixers seed_offset=10           # replication: seeds 10, 11, ... into runs/seed_offset_10

A profile is one `conf/experiment/mixers*.yaml` (`hydra/sweeper=grids`). Each round is one `python -m
experiments.train -m +experiment=<file> hydra.sweeper.select=<round file>` multirun into
`<out-dir>/sweeps/<name>`, of the jobs `report.search.plan_round` picks from the finished runs (the
profile's `search`: scan or grid); re-running resumes, finished runs are never retrained. The outputs
(`report.family`) are judged with the capacity protocol and spliced into results/REPORT.md. When the search's plan
is empty, adaptive rounds (`report.adaptive`) train censored runs on at doubled budgets, one vanilla layer's and
value-only mixing's failures to 4× the steps KV shift needed, and rates beyond an edge of the lr grid.
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
from kvshift_lens.report import family  # noqa: E402
from kvshift_lens.report.figures import plot_family  # noqa: E402
from kvshift_lens.report.robustness import robustness  # noqa: E402
from kvshift_lens.report.search import plan_round  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROFILES = {"cpu": ("mixers", "local_parallel"), "tiny": ("mixers_tiny", "basic"),
            "cluster": ("mixers_cluster", "cluster_slurm"),
            "powered": ("mixers_powered", "local_parallel")}  # profile -> (experiment file, launcher)
ADAPTIVE = {"cpu": adaptive.OFF, "powered": adaptive.Adaptive(cap=8), "cluster": adaptive.Adaptive(cap=8),
            "tiny": adaptive.OFF}  # cpu: no adaptive rounds (a quick profile)
KV = {"model/mixer": "kv_shift", "model.n_layers": "1", "model.mixer.sides": ""}
CANNOT = [adaptive.CannotRule("one vanilla layer cannot", {"model/mixer": "none", "model.n_layers": "1"}, KV,
                              ["task", "model.d_model"]),
          adaptive.CannotRule("value-only mixing cannot", {"model/mixer": "kv_shift", "model.mixer.sides": "v"}, KV,
                              ["task", "model.d_model"])]


def scan_round(spec: dict, jobs: pd.DataFrame, sweep_dir: Path) -> list[list[str]]:
    """The width scan's next jobs (`report.search.plan_round` over the finished runs; a job that failed with an error
    is not retried), for `sweeps.train_rounds`."""
    runnable = jobs.drop(family.failed_jobs(sweep_dir, jobs))
    runs = family.run_table(family.finished_curves(sweep_dir, jobs), sweep_dir)
    plan = plan_round(runnable, runs, family.FAMILY, family.WIDTH, family.PROTOCOL, spec["search"])
    if not plan.empty:
        print(f"[{spec['name']}] {len(runs)} of the full grid's {len(jobs)} runs finished", flush=True)
    return list(plan["job"])


def write_outputs(sweep_dir: Path, results: Path, spec: dict, jobs, record: dict) -> dict[str, Path]:
    """CSV tables, figure, provenance and the markdown section of the finished study."""
    paths = markdown.output_paths(results, spec["name"], {
        "csv": ".csv", "families": "_families.csv", "heads": "_heads.csv", "png": ".png",
        "provenance": "_provenance.json", "md": ".md", "verdicts": "_verdicts.csv", "adaptive": "_adaptive.csv",
        "cannot": "_cannot.csv"})
    curves = family.finished_curves(sweep_dir, jobs)
    runs = family.typed(family.run_table(curves, sweep_dir))
    if runs.empty:
        raise SystemExit(f"error: no finished runs of {spec['experiment']} under {sweep_dir}; run without --skip-train")
    cells = family.cells(runs)
    grid = jobs[family.WIDTH].astype(float).unique()
    fam = family.families(cells, grid)
    heads = family.head_table(sweep_dir, family.runs_to_analyse(cells, fam))
    fragile = robustness(lambda p: family.judge(curves, sweep_dir, grid, heads, p), family.PROTOCOL)
    runs.to_csv(paths["csv"], index=False)
    fam.to_csv(paths["families"], index=False)
    heads.to_csv(paths["heads"], index=False)
    fig = plot_family(fam, family.ARM_ORDER, [t for t in (*family.RECALL_TASKS, family.CONTROL_TASK) if t in set(fam.task)])
    fig.savefig(paths["png"], dpi=120)
    plt.close(fig)
    record = {**record, "experiment": spec, "n_runs": len(runs), "full_grid_runs": len(jobs),
              "train_core_minutes": round(float(runs["train_seconds"].sum()) / 60, 1),
              "training_time": provenance.training_time(sweep_dir / r for r in runs["run"])}
    provenance.write_json(paths["provenance"], record)
    generic = adaptive.study_runs(sweep_dir, sweeps.expand_jobs(spec), spec["steps"])
    policy = adaptive.Adaptive(**{**record["adaptive_policy"], "lr_bounds": record["adaptive_policy"]["lr_bounds"]
                                  and tuple(record["adaptive_policy"]["lr_bounds"])})
    adaptive.lr_table(generic, ["setting", "arm"], policy, adaptive.Protocol(lr="lr")).to_csv(paths["adaptive"], index=False)
    adaptive.cannot_table(generic, CANNOT, policy, adaptive.Protocol(lr="lr")).to_csv(paths["cannot"], index=False)
    replication.write_verdicts(paths["verdicts"], replication.verdict_rows(
        "mixers", [(claim, v, []) for claim, v in family.verdicts(fam, heads)]))
    paths["md"].write_text("\n".join(family.markdown(spec, runs, cells, fam, heads, record, paths, fragile)))
    return paths


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = sweeps.study_parser(__doc__.splitlines()[0], PROFILES, ROOT / "runs")
    args = sweeps.parse_study_args(parser, argv)

    experiment, launcher = PROFILES[args.profile]
    launcher, n_jobs = sweeps.study_launcher(args, launcher)
    spec = sweeps.with_seed_offset(sweeps.experiment_spec(experiment), args.seed_offset)
    jobs = family.job_frame(spec)
    out_dir, args.results_dir = sweeps.study_dirs(args, args.out_dir, args.results_dir)
    sweep_dir = out_dir / "sweeps" / spec["name"]
    policy = ADAPTIVE[args.profile]
    t0, rounds, extra = time.perf_counter(), 0, 0
    if not args.skip_train:
        rounds = sweeps.train_rounds(spec, lambda: scan_round(spec, jobs, sweep_dir), sweep_dir, out_dir, launcher,
                                     n_jobs, label="scan")
        extra = sweeps.train_rounds(spec, lambda: adaptive.next_round(sweep_dir, spec, policy, CANNOT),
                                    sweep_dir, out_dir, launcher, n_jobs)
    markdown.finish_study("experiments.mixers", args, spec["name"], sweep_dir, t0,
                        lambda record: write_outputs(sweep_dir, args.results_dir, spec, jobs, record),
                        launcher=launcher, n_jobs=n_jobs, rounds_this_invocation=rounds, seed_offset=args.seed_offset,
                        adaptive_policy=dataclasses.asdict(policy), adaptive_rounds_this_invocation=extra)


if __name__ == "__main__":
    main()
