"""The local-mixing family study: train the rounds `report.search` plans, then write results/mixers*.

    python -m experiments.mixers                           # CPU profile: every round + outputs (resumable)
    python -m experiments.mixers --skip-train              # outputs only, from the finished runs
    python -m experiments.mixers --profile cluster         # the larger profile on SLURM (submitit)
    python -m experiments.mixers --profile tiny --out-dir /tmp/m --results-dir /tmp/m/results

A profile is one `conf/experiment/mixers*.yaml` (`hydra/sweeper=grids`). Each round is one `python -m
experiments.train -m +experiment=<file> hydra.sweeper.select=<round file>` multirun into
`<out-dir>/sweeps/<name>`, of the jobs `report.search.plan_round` picks from the finished runs (the
profile's `search`: bisect or grid); re-running resumes, finished runs are never retrained. The outputs
(`report.family`) are judged with the capacity protocol and spliced into results/REPORT.md.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional, Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from kvshift_lens.report import markdown  # noqa: E402
from kvshift_lens.training import provenance, sweeps  # noqa: E402
from kvshift_lens.report import family  # noqa: E402
from kvshift_lens.report.figures import plot_family  # noqa: E402
from kvshift_lens.report.search import plan_round  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROFILES = {"cpu": ("mixers", "local_parallel"), "tiny": ("mixers_tiny", "basic"),
            "cluster": ("mixers_cluster", "cluster_slurm")}  # profile -> (experiment file, launcher)


def train_rounds(spec: dict, jobs, sweep_dir: Path, out_dir: Path, launcher: str, n_jobs: Optional[int]) -> int:
    """Plan and run rounds until the plan is empty; returns the number of rounds run by this invocation."""
    rounds, last, log = 0, None, out_dir / "logs" / f"{spec['name']}.log"
    while True:
        runnable = jobs.drop(family.failed_jobs(sweep_dir, jobs))  # a job that failed with an error is not retried
        runs = family.run_table(family.finished_curves(sweep_dir, jobs), sweep_dir)
        plan = plan_round(runnable, runs, family.FAMILY, family.WIDTH, family.PROTOCOL, spec["search"])
        if plan.empty:
            return rounds
        if last is not None and set(plan.index) <= last:
            raise SystemExit(f"error: {len(plan)} planned run(s) did not finish in the last round, e.g. "
                             f"{' '.join(plan['job'].iloc[0])}; see {log}")
        rounds, last = rounds + 1, set(plan.index)
        print(f"[mixers] round {rounds}: {len(plan)} runs ({len(runs)} finished of {len(jobs)} in the full grid)", flush=True)
        selection = sweeps.write_selection(sweep_dir / "rounds" / f"round_{len(runs):05d}.yaml", list(plan["job"]))
        sweeps.train_study(sweeps.sweep_command(spec["experiment"], out_dir, launcher, n_jobs, select=selection),
                           sweep_dir, log)


def write_outputs(sweep_dir: Path, results: Path, spec: dict, jobs, record: dict) -> dict[str, Path]:
    """CSV tables, figure, provenance and the markdown section of the finished study."""
    results.mkdir(parents=True, exist_ok=True)
    paths = {k: results / f"{spec['name']}{suffix}" for k, suffix in {
        "csv": ".csv", "families": "_families.csv", "heads": "_heads.csv", "png": ".png",
        "provenance": "_provenance.json", "md": ".md"}.items()}
    runs = family.typed(family.run_table(family.finished_curves(sweep_dir, jobs), sweep_dir))
    if runs.empty:
        raise SystemExit(f"error: no finished runs of {spec['experiment']} under {sweep_dir}; run without --skip-train")
    cells = family.cells(runs)
    fam = family.families(cells, jobs[family.WIDTH].astype(float).unique())
    heads = family.head_table(sweep_dir, family.runs_to_analyse(cells, fam))
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
    paths["md"].write_text("\n".join(family.markdown(spec, runs, cells, fam, heads, record, paths)))
    return paths


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = sweeps.study_parser(__doc__.splitlines()[0], PROFILES, ROOT / "runs")
    args = parser.parse_args(argv)

    experiment, launcher = PROFILES[args.profile]
    launcher, n_jobs = sweeps.study_launcher(args, launcher)
    spec = sweeps.experiment_spec(experiment)
    jobs = family.job_frame(spec)
    out_dir = args.out_dir.resolve()
    sweep_dir = out_dir / "sweeps" / spec["name"]
    t0 = time.perf_counter()
    rounds = 0 if args.skip_train else train_rounds(spec, jobs, sweep_dir, out_dir, launcher, n_jobs)
    markdown.finish_study("experiments.mixers", args, spec["name"], sweep_dir, t0,
                        lambda record: write_outputs(sweep_dir, args.results_dir, spec, jobs, record),
                        launcher=launcher, n_jobs=n_jobs, rounds_this_invocation=rounds)


if __name__ == "__main__":
    main()
