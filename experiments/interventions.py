"""Interventions during training (issue 20 §2): run the study's sweep, then write results/interventions*.

    python -m experiments.interventions                    # CPU profile: sweep + outputs (resumable)
    python -m experiments.interventions --only mqar_kv_shift mqar_canon mqar_short_conv   # + the family on MQAR
    python -m experiments.interventions --skip-train       # outputs only, from the finished runs
    python -m experiments.interventions --profile cluster  # more seeds and learning rates on SLURM (submitit)
    python -m experiments.interventions --profile tiny --out-dir /tmp/iv --results-dir /tmp/iv/results

A profile is one `conf/experiment/interventions*.yaml` (`hydra/sweeper=grids`) run as one `python -m experiments.train
-m +experiment=<file>` multirun into `<out-dir>/sweeps/<name>`; re-running skips finished runs. Its arms are
`conf/interventions/*.yaml` groups (`train.interventions` lists). The outputs read exactly the profile's runs and judge
them with `kvshift_lens.report.interventions`: a free previous-token head (the share of the vanilla-2L-to-KV-1L gap the
clamp closes), switching the shift off, then on (the delay after release), Singh et al.'s A/B/C sub-circuit timing (from
the heads.csv of the detected arms), ablating each seed's strongest layer-0 previous-token head, the family's lags
on MQAR, and the developmental stages (the LLC over checkpoints, computed here for the best-lr vanilla 2L and KV-shift
1L runs: does the induction bump split into "previous-token, then the rest"?).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from joblib import Parallel, delayed  # noqa: E402

from kvshift_lens.analysis.development import analyze_development  # noqa: E402
from kvshift_lens.analysis.emergence import read_heads  # noqa: E402
from kvshift_lens.analysis.subcircuits import SUBCIRCUITS, strongest_previous_head  # noqa: E402
from kvshift_lens.report import adaptive  # noqa: E402
from kvshift_lens.report import interventions as study  # noqa: E402
from kvshift_lens.report import markdown  # noqa: E402
from kvshift_lens.report.markdown import md_table  # noqa: E402
from kvshift_lens.report.verdicts import Verdict  # noqa: E402
from kvshift_lens.training import provenance, sweeps  # noqa: E402
from kvshift_lens.training.runs import load_runs, run_status  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FAMILY_GRIDS = ("mqar_kv_shift", "mqar_canon", "mqar_short_conv")  # the family on MQAR: a second CPU command
ADAPTIVE = {"cpu": adaptive.Adaptive(cap=2, lr_bounds=None), "cluster": adaptive.Adaptive(cap=8),
            "tiny": adaptive.OFF}  # cpu: censored runs trained on once at a doubled budget, the lr grid as written
PROFILES = {"cpu": ("interventions", "local_parallel", ("free_head", "ablate_prev_head", "kvshift_1l", "release")),
            "tiny": ("interventions_tiny", "basic", ()), "cluster": ("interventions_cluster", "cluster_slurm", ())}
# profile -> (experiment file, launcher, grids trained by default: () = all)


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


def _develop(run_dir: Path) -> Optional[str]:
    """The developmental measures of one run, on one torch thread (a worker of `develop`); its error, if any."""
    import torch

    torch.set_num_threads(1)
    try:
        analyze_development(run_dir)
    except Exception as e:  # one run's failure costs the study only that run's row
        return f"{run_dir}: {type(e).__name__}: {e}"
    return None


def develop(sweep_dir: Path, cells: pd.DataFrame, n_jobs: int = 1) -> dict[str, dict]:
    """Loss by position, loss PCA, QK eigenvalues and the LLC (`analysis.development`, default `LLCConfig`) of every
    best-lr vanilla 2L and KV-shift 1L run whose summary.json lacks them (never computed, or rewritten since by a
    longer budget), `n_jobs` at a time; run -> its summary.json."""
    picks = cells[(cells["task"] == study.INDUCTION) & cells["arm"].isin([study.VANILLA, study.KV])]["run"]
    def summary(run: str) -> dict:
        return json.loads((sweep_dir / run / "summary.json").read_text())

    summaries = {run: summary(run) for run in picks}
    todo = [run for run, s in summaries.items() if "llc_stage_boundaries" not in s]
    for error in Parallel(n_jobs=max(1, min(n_jobs, len(todo))))(delayed(_develop)(sweep_dir / run) for run in todo):
        if error:
            print(f"error: developmental measures failed for {error}", file=sys.stderr, flush=True)
    return {**summaries, **{run: summary(run) for run in todo}}


def write_outputs(sweep_dir: Path, results: Path, spec: dict, record: dict, n_jobs: int = 1) -> dict[str, Path]:
    """Tables, figure, provenance and markdown for the study's finished runs (after their developmental measures,
    `n_jobs` at a time); returns the paths written."""
    prefix = spec["name"]
    paths = markdown.output_paths(results, prefix, {
        "cells": "_cells.csv", "free_head": "_free_head.csv", "release": "_release.csv", "png": ".png",
        "timings": "_subcircuits.csv", "order": "_subcircuit_order.csv", "timelines": "_subcircuits.png",
        "ablation": "_ablation.csv", "family": "_family.csv", "development": "_development.csv",
        "provenance": "_provenance.json", "md": ".md"})
    curves = study_curves(sweep_dir, spec)
    cells = study.cells(curves)
    dev_table = study.development_table(cells, develop(sweep_dir, cells, n_jobs))
    split = study.split_verdict(dev_table)
    head_table, head = study.free_head(cells)
    release_table, release = study.release_delays(cells)
    # Checkpoints hold weights only: a clamped arm scored without its clamp shows an untrained layer-0 head, not the
    # circuit it trained with, so only the arms without interventions get sub-circuit timings.
    plain = cells[cells["arm"].isin([study.VANILLA, study.KV])]
    timings = study.timing_table(plain, {run: read_heads(sweep_dir / run) for run in plain["run"]})
    order_table, timing = study.subcircuit_order(timings)
    ablation_table, ablation = study.ablation(cells, previous_heads(sweep_dir, cells))
    family_table, lags = study.lag_roles(cells)
    for key, table in (("cells", cells), ("free_head", head_table), ("release", release_table), ("timings", timings),
                       ("order", order_table), ("ablation", ablation_table), ("family", family_table),
                       ("development", dev_table)):
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
        f"Regenerate: `{record['command']}`, then `{record['command']} --only {' '.join(FAMILY_GRIDS)}` for the "
        f"family on MQAR (resumable; `--skip-train` rebuilds only the outputs, from every finished run). "
        f"{spec['description']} "
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
        verdict_line("Developmental stages (LLC)", study.DEV_CLAIM, split),
        *[verdict_line(f"The family on MQAR: {arm}", study.LAGS_CLAIM.format(
            mixer=arm.split(study.LAGS_OFF)[0], parts=arm.split(study.LAGS_OFF)[1].strip("[]")), v)
          for arm, v in lags.items()],
        "", md_table(head_table), "", md_table(release_table) if len(release_table) else "No release arm in this profile.",
        "", md_table(order_table) if len(order_table) else "No heads.csv in this profile.", "", md_table(ablation_table),
        "", md_table(family_table) if len(family_table) else "No MQAR arms in this profile.",
        "", "Developmental measures of every best-lr vanilla 2L and KV-shift 1L run (`analysis.development`: the LLC "
        "by devinterp's SGLD at the calibrated settings of docs/detect.md, stage boundaries at sign changes of its "
        "slope over log-step; formation steps of the best previous-token and induction heads):", "",
        md_table(dev_table.drop(columns="run")) if len(dev_table) else "No detected arms in this profile.",
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
    parser.add_argument("--only", nargs="+", default=None, metavar="GRID",
                        help="train these grids (default: the profile's; the CPU profile leaves the family on MQAR, "
                             f"{' '.join(FAMILY_GRIDS)}, to a second command); the outputs cover every finished run")
    args = sweeps.parse_study_args(parser, argv)

    experiment, launcher, grids = PROFILES[args.profile]
    launcher, n_jobs = sweeps.study_launcher(args, launcher)
    only = list(args.only) if args.only is not None else list(grids)
    spec = sweeps.experiment_spec(experiment)
    sweeps.expand_jobs(spec, only=only)  # unknown grid names stop here, before any training
    out_dir, args.results_dir = sweeps.study_dirs(args, args.out_dir, args.results_dir)
    spec = sweeps.with_seed_offset(spec, args.seed_offset)
    sweep_dir = out_dir / "sweeps" / spec["name"]
    policy = ADAPTIVE[args.profile]
    t0, rounds = time.perf_counter(), 0
    if not args.skip_train:
        sweeps.train_study(sweeps.sweep_command(experiment, out_dir, launcher, n_jobs, only=only,
                                                 seed_offset=args.seed_offset), sweep_dir,
                           out_dir / "logs" / f"{spec['name']}.log")
        rounds = sweeps.train_rounds(spec, lambda: adaptive.next_round(sweep_dir, spec, policy, grids=only),
                                     sweep_dir, out_dir, launcher, n_jobs)
    markdown.finish_study("experiments.interventions", args, "interventions", sweep_dir, t0,
                          lambda record: write_outputs(sweep_dir, args.results_dir, spec, record, n_jobs or 1),
                          launcher=launcher, n_jobs=n_jobs, grids=only, adaptive_policy=dataclasses.asdict(policy),
                          adaptive_rounds_this_invocation=rounds)


if __name__ == "__main__":
    main()
