"""Interventions during training (issue 20 §2): run the study's sweep, then write results/interventions*.

    python -m experiments.interventions                    # CPU profile: sweep + outputs (resumable)
    python -m experiments.interventions --skip-train       # outputs only, from the finished runs
    python -m experiments.interventions --profile cluster  # more seeds and learning rates on SLURM (submitit)
    python -m experiments.interventions --profile tiny --out-dir /tmp/iv --results-dir /tmp/iv/results

A profile is one `conf/experiment/interventions*.yaml` (`hydra/sweeper=grids`) run as one `python -m experiments.train
-m +experiment=<file>` multirun into `<out-dir>/sweeps/<name>`; re-running skips finished runs. Its arms are
`conf/interventions/*.yaml` groups (`train.interventions` lists). The outputs read exactly the profile's runs and judge
them with `kvshift_lens.report.interventions`: a free previous-token head (the share of the vanilla-2L-to-KV-1L gap the
clamp closes), switching the shift off, then on (the delay after release), Singh et al.'s A/B/C sub-circuit timing (from
the heads.csv of the detected arms), ablating each seed's strongest layer-0 previous-token head, and the family's lags
on MQAR.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional, Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from kvshift_lens.analysis.emergence import read_heads  # noqa: E402
from kvshift_lens.analysis.subcircuits import SUBCIRCUITS, strongest_previous_head  # noqa: E402
from kvshift_lens.report import interventions as study  # noqa: E402
from kvshift_lens.report import markdown  # noqa: E402
from kvshift_lens.report.markdown import md_table  # noqa: E402
from kvshift_lens.report.verdicts import Verdict  # noqa: E402
from kvshift_lens.training import provenance, sweeps  # noqa: E402
from kvshift_lens.training.runs import load_runs, run_status  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROFILES = {"cpu": ("interventions", "local_parallel"), "tiny": ("interventions_tiny", "basic"),
            "cluster": ("interventions_cluster", "cluster_slurm")}  # profile -> (experiment file, launcher)


def study_curves(sweep_dir: Path, spec: dict) -> pd.DataFrame:
    """Learning curves of the finished runs under `sweep_dir` that are jobs of `spec`, with their arm."""
    dirs = [d for d in sweeps.runs_of_jobs(sweep_dir, sweeps.expand_jobs(spec))
            if run_status(d) in ("completed", "diverged")]
    if not dirs:
        raise SystemExit(f"error: no finished runs of {spec['experiment']} under {sweep_dir}; run without --skip-train")
    curves = load_runs(sweep_dir)
    return study.tidy_runs(curves[curves["run"].isin({str(d.relative_to(sweep_dir)) for d in dirs})])


def plot_curves(curves: pd.DataFrame, cells: pd.DataFrame) -> plt.Figure:
    """Held-out induction accuracy of every arm's best-lr runs (median over seeds), one line per arm / release step."""
    best = curves[curves["run"].isin(cells["run"])]
    fig, ax = plt.subplots(figsize=(7, 4))
    for (arm, release), g in best.groupby(["arm", "release"]):
        label = arm if not release else f"{arm} until {release}"
        median = g.groupby("step")["induction_acc"].median()
        ax.plot(median.index, median.values, label=label)
    ax.axhline(study.PROTOCOL.threshold, color="grey", lw=0.5, ls="--")
    ax.set(xlabel="step", ylabel="held-out induction accuracy (median over seeds, best lr)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_timelines(timings: pd.DataFrame) -> plt.Figure:
    """Formation step of each sub-circuit per arm (one dot per seed; never formed: a cross at the last checkpoint)."""
    arms = sorted(timings["arm"].unique())
    names = [n for n in SUBCIRCUITS if n in set(timings["subcircuit"])]
    fig, ax = plt.subplots(figsize=(7, 1 + 0.25 * max(len(arms) * len(names), 1)))
    labels = []
    for i, (arm, name) in enumerate((a, n) for a in arms for n in names):
        g = timings[(timings["arm"] == arm) & (timings["subcircuit"] == name)]
        formed = g["formation_step"].notna()
        ax.scatter(g.loc[formed, "formation_step"].clip(lower=1), [i] * int(formed.sum()), s=12)
        ax.scatter(g.loc[~formed, "last_step"], [i] * int((~formed).sum()), marker="x", color="grey", s=12)
        labels.append(f"{arm}: {name}")
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set(xscale="log", xlabel="formation step (step 0 drawn at 1; x: not formed by the last checkpoint)")
    fig.tight_layout()
    return fig


def previous_heads(sweep_dir: Path, cells: pd.DataFrame) -> dict[int, int]:
    """seed -> the strongest layer-0 previous-token head of the plain vanilla 2L run at its best lr (heads.csv)."""
    plain = cells[(cells["task"] == study.INDUCTION) & (cells["arm"] == study.VANILLA)]
    found = {int(c.seed): strongest_previous_head(read_heads(sweep_dir / c.run)) for c in plain.itertuples()}
    return {seed: head for seed, head in found.items() if head is not None}


def write_outputs(sweep_dir: Path, results: Path, spec: dict, record: dict) -> dict[str, Path]:
    """Tables, figure, provenance and markdown for the study's finished runs; returns the paths written."""
    prefix = spec["name"]
    paths = markdown.output_paths(results, prefix, {
        "cells": "_cells.csv", "free_head": "_free_head.csv", "release": "_release.csv", "png": ".png",
        "timings": "_subcircuits.csv", "order": "_subcircuit_order.csv", "timelines": "_subcircuits.png",
        "ablation": "_ablation.csv", "family": "_family.csv", "provenance": "_provenance.json", "md": ".md"})
    curves = study_curves(sweep_dir, spec)
    cells = study.cells(curves)
    head_table, head = study.free_head(cells)
    release_table, release = study.release_delays(cells)
    timings = study.timing_table(cells, {run: read_heads(sweep_dir / run) for run in cells["run"]})
    order_table, timing = study.subcircuit_order(timings)
    ablation_table, ablation = study.ablation(cells, previous_heads(sweep_dir, cells))
    family_table, lags = study.lag_roles(cells)
    for key, table in (("cells", cells), ("free_head", head_table), ("release", release_table), ("timings", timings),
                       ("order", order_table), ("ablation", ablation_table), ("family", family_table)):
        table.to_csv(paths[key], index=False)
    for key, fig in (("png", plot_curves(curves[curves["task"] == study.INDUCTION], cells)),
                     ("timelines", plot_timelines(timings))):
        fig.savefig(paths[key], dpi=120)
        plt.close(fig)
    runs = curves.drop_duplicates("run")
    core_min = float(curves.groupby("run")["train_seconds"].max().sum()) / 60
    record = {**record, "experiment": spec, "n_runs": len(runs), "seeds": sorted(int(s) for s in runs.seed.unique()),
              "learning_rates": sorted(float(x) for x in runs.lr.unique()), "train_core_minutes": round(core_min, 1),
              "training_time": provenance.training_time(sweep_dir / r for r in runs["run"])}
    provenance.write_json(paths["provenance"], record)
    lines = [
        f"## Interventions during training: is KV shift a free previous-token head? ({prefix})", "",
        f"Regenerate: `{record['command']}` (resumable; `--skip-train` rebuilds only the outputs). {spec['description']} "
        f"{len(runs)} runs; training compute {core_min:.1f} core-minutes; {provenance.wall_text(record)}; "
        f"`{paths['provenance'].name}` has commit, grids and timings. Interventions act on the bare training module "
        "with the bridge hooks' semantics (`kvshift_lens/training/intervention_hooks.py`); per arm and seed the best "
        "learning rate (capacity protocol, runs still improving at the end censored).", "",
        f"- **A free previous-token head** — {study.GAP_CLAIM} **Verdict: {head.label}.** Rule: {head.rule}. "
        f"Baseline: {head.baseline}. " + "; ".join(head.evidence) + ".",
        f"- **Switch the shift off, then on** — {study.RELEASE_CLAIM} **Verdict: {release.label}.** Rule: "
        f"{release.rule}. Baseline: {release.baseline}. " + "; ".join(release.evidence) + ".",
        verdict_line("Sub-circuit timing (Singh et al.'s A/B/C)", study.TIMING_CLAIM, timing),
        verdict_line("Ablate during training", study.ABLATION_CLAIM, ablation),
        *[verdict_line(f"The family on MQAR: {arm}", study.LAGS_CLAIM.format(
            mixer=arm.split(study.LAGS_OFF)[0], parts=arm.split(study.LAGS_OFF)[1].strip("[]")), v)
          for arm, v in lags.items()],
        "", md_table(head_table), "", md_table(release_table) if len(release_table) else "No release arm in this profile.",
        "", md_table(order_table) if len(order_table) else "No heads.csv in this profile.", "", md_table(ablation_table),
        "", md_table(family_table) if len(family_table) else "No MQAR arms in this profile.",
        "", f"![curves]({paths['png'].name})", "", f"![sub-circuit timelines]({paths['timelines'].name})", "",
    ]
    paths["md"].write_text("\n".join(lines))
    return paths


def verdict_line(title: str, claim: str, verdict: Verdict) -> str:
    """One REPORT.md bullet: the claim, its verdict, rule, baseline and evidence."""
    return (f"- **{title}** — {claim} **Verdict: {verdict.label}.** Rule: {verdict.rule}. Baseline: {verdict.baseline}. "
            + "; ".join(verdict.evidence) + ".")


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = sweeps.study_parser(__doc__.splitlines()[0], PROFILES, ROOT / "runs")
    args = sweeps.parse_study_args(parser, argv)

    experiment, launcher = PROFILES[args.profile]
    launcher, n_jobs = sweeps.study_launcher(args, launcher)
    spec = sweeps.experiment_spec(experiment)
    out_dir, args.results_dir = sweeps.study_dirs(args, args.out_dir, args.results_dir)
    spec = sweeps.with_seed_offset(spec, args.seed_offset)
    sweep_dir = out_dir / "sweeps" / spec["name"]
    t0 = time.perf_counter()
    if not args.skip_train:
        sweeps.train_study(sweeps.sweep_command(experiment, out_dir, launcher, n_jobs,
                                                 seed_offset=args.seed_offset), sweep_dir,
                           out_dir / "logs" / f"{spec['name']}.log")
    markdown.finish_study("experiments.interventions", args, "interventions", sweep_dir, t0,
                          lambda record: write_outputs(sweep_dir, args.results_dir, spec, record),
                          launcher=launcher, n_jobs=n_jobs)


if __name__ == "__main__":
    main()
