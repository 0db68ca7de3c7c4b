"""Reproduce the paper's figures: `python -m experiments.reproduce [--profile quick|powered|full|tiny] [--only a,b] [--out results]`.

`seed_offset=K` (or `--seed-offset K`) trains every figure on seeds K, K+1, ... into runs/reproduce/<profile>/seed_offset_K
(outputs in its `results/`, never in results/), for the replication table (kvshift_lens/report/replication.py).

A profile is one experiment file (`conf/experiment/reproduce*.yaml`) whose named grids hold every
figure's runs; they train as ONE hydra multirun (`hydra/sweeper=grids`; finished runs are skipped and
killed runs resume on rerun), then adaptive rounds (`kvshift_lens/report/adaptive.py`: censored runs trained on at
a doubled budget, "cannot learn" controls to 4× the steps the learner needed, rates beyond an edge of an lr grid).
Each figure then reads exactly its runs back (those whose
`.hydra/overrides.yaml` is one of its grids' jobs) and writes `<out>/<name>.csv` (tidy),
`<name>.png` (drawn from that CSV as re-read) and `<name>.provenance.json`; finally `<out>/REPORT.md`,
whose verdicts come from the rules in `kvshift_lens/report/claims.py`.
"""

from __future__ import annotations

import argparse
import inspect
import sys
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Optional, Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from experiments import theory  # noqa: E402
from kvshift_lens.training import provenance, sweeps  # noqa: E402
from kvshift_lens.report import adaptive, powered  # noqa: E402
from kvshift_lens.report import claims as C  # noqa: E402
from kvshift_lens.report import replication  # noqa: E402
from kvshift_lens.report import figures as P  # noqa: E402
from kvshift_lens.report import tables as T  # noqa: E402
from kvshift_lens.report.markdown import finding_section, splice_section, spliced_sections, verdict_counts  # noqa: E402
from kvshift_lens.report.robustness import label, robustness  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROFILES = {"quick": ("reproduce", "local_parallel"), "tiny": ("reproduce_tiny", "basic"),
            "full": ("reproduce_full", "local_parallel"),
            "powered": ("reproduce_powered", "local_parallel")}  # profile -> (experiment file, launcher)
PHASE_SECTION = "phase_diagram.md"  # written by experiments.phase_diagram; REPORT.md carries it as a section
DETECTORS = (
    "`induction_score` is the TransformerLens/ARENA diagonal score: mean attention from each second-copy token of "
    "`[BOS] r r` to the token after its earlier occurrence. `repeated_tokens` draws r without replacement where the "
    "vocabulary allows (as at the 50k vocabularies where TL/ARENA numbers come from), so the plain diagonal applies "
    "with no row filtering; on i.i.d. r at vocab 64 a real induction head splits attention between accidental "
    "repeats (one trained head: 0.68 plain diagonal on i.i.d. r, 0.96 on distinct r), which is why rows whose token "
    "repeats in r are left out there. `copying_score` is Elhage et al. 2021 / Olsson et al. 2022's OV-circuit "
    "eigenvalue score Σλ/Σ|λ| of W_U·W_OV·W_E (LayerNorm folded; KV-shift heads through the β1 value path): 1 = "
    "copies, 0 = random. The earlier metric is kept as `copying_boost_share`: an ideal rank-16 copier over 64 tokens "
    "scores only about −0.70 on it, so the finding reported before, \"copying is negative for every trained head\", "
    "was that cap, not a property of the heads (the same induction head: +0.83 eigenvalue score, −0.70 boost share). "
    "Details: docs/detect.md.")


@dataclass
class FigureSpec:
    """How to draw one figure: the grids whose runs it reads, its tidy table, plot and finding."""

    grids: tuple[str, ...]  # grid names or `<figure>/` prefixes of the profile's experiment file
    table: Callable[[list[Path], Path], pd.DataFrame]
    plot: Callable[[pd.DataFrame], Figure]
    find: Callable[[pd.DataFrame], C.Finding]


def _ablation_label(row: pd.Series) -> str:
    return "vanilla 1L" if row["model.arch"] == "vanilla" else f"shift {row['model.mixer.sides']}"


def _fig8_label(column: str, name: str) -> Callable[[pd.Series], str]:
    return lambda r: "vanilla 1L" if r["model.arch"] == "vanilla" else f"{name}={r[column]}"


def _ngram_table(run_dirs: list[Path], root: Path) -> pd.DataFrame:
    t = T.curves_table(run_dirs, root, lambda r: f"{r['model.arch']} {int(r['model.n_layers'])}L d{int(r['model.d_model'])}")
    t["size"] = t["label"].str.split(" ", n=1).str[1] + " (" + (t["n_params"] / 1e3).round(1).astype(str) + "K params)"
    t["size"] = t.groupby(t["label"].str.split(" ", n=1).str[1])["size"].transform("first")
    return t


def _ngram_plot(table: pd.DataFrame) -> Figure:
    sizes = sorted(table["size"].unique())
    fig, axes = plt.subplots(1, len(sizes), figsize=(5 * len(sizes), 4), squeeze=False)
    for ax, size in zip(axes[0], sizes):
        P.plot_curves(table[table["size"] == size], f"3-gram: {size}", ax=ax)
        ax.set_ylabel("3-gram accuracy")
    fig.tight_layout()
    return fig


def _shift_table(run_dirs: list[Path], root: Path) -> pd.DataFrame:
    return _shifts(tuple(run_dirs), root).copy()


@lru_cache(maxsize=2)
def _shifts(run_dirs: tuple[Path, ...], root: Path) -> pd.DataFrame:
    """Shift coefficients of every checkpoint, loaded once for fig2 and table4 (same runs)."""
    labels = T.curves_table(list(run_dirs), root).groupby("run")["label"].first().to_dict()
    return T.shift_table(list(run_dirs), root, labels)


@lru_cache(maxsize=1)
def _basins() -> pd.DataFrame:
    """theorem3_basins for Eq. 10 and the App. E script (coarse grid to stay quick)."""
    from kvshift_lens.analysis.theory import theorem3_basins, theorem3_loss, theorem3_loss_script

    return pd.concat([theorem3_basins(loss=loss, n=21, steps=500) for loss in (theorem3_loss, theorem3_loss_script)],
                     ignore_index=True)


def _find_hopk(table: pd.DataFrame) -> C.Finding:
    """hop-k verdict with the context-free baseline of each hops value's task."""
    tasks = table.filter(like="task.").drop_duplicates("task.hops")
    baseline = {int(r["task.hops"]): T.context_free_accuracy({k[len("task."):]: v for k, v in r.items()})
                for _, r in tasks.iterrows()}
    return C.find_hopk(table, baseline)


FIG8 = ("fig8/base", "fig8/vanilla")
ADAPTIVE = {"quick": adaptive.Adaptive(cap=2, lr_bounds=None), "powered": adaptive.Adaptive(cap=8),
            "full": adaptive.Adaptive(cap=1), "tiny": adaptive.OFF}  # quick: one doubling, the lr grids as written;
# full: a cosine schedule depends on the budget, so a longer budget is another run (training.resume.extends)
_PLAIN_KV = {"model": "kvshift_1l", "model.mixer.param": "", "model.mixer.sides": "", "model.mixer.window": ""}
CANNOT = [  # "cannot learn" controls, each against the learner trained beside it (same stop rule and data)
    adaptive.CannotRule("fig1a: one vanilla layer", {"model": "vanilla_1l", "train.stop_at": ""},
                        {**_PLAIN_KV, "train.stop_at": ""}),
    adaptive.CannotRule("fig8: one vanilla layer", {"model": "vanilla_1l", "train.stop_at": "0.9"},
                        {**_PLAIN_KV, "train.stop_at": "0.9"}),
    adaptive.CannotRule("fig8: shift v only", {"model": "kvshift_1l", "model.mixer.sides": "v"},
                        {**_PLAIN_KV, "train.stop_at": "0.9"}),
]
FIGURES: dict[str, FigureSpec] = {
    "fig1a_depth": FigureSpec(("fig1a_depth/",), T.curves_table,
                              lambda t: P.plot_curves(t, "Induction accuracy vs depth (Fig 1a)"), C.find_fig1a),
    "fig2_landscape": FigureSpec(("fig1a_depth/one_layer",), _shift_table, P.plot_landscape,
                                 lambda t: C.find_fig2(t, _basins())),
    "table4_alpha_beta": FigureSpec(("fig1a_depth/one_layer",), _shift_table, P.plot_quadrants, C.find_table4),
    "fig8_variants": FigureSpec(
        (*FIG8, "fig8_variants"), lambda d, r: T.curves_table(d, r, _fig8_label("model.mixer.param", "shift_param")),
        lambda t: P.plot_curves(t, "Shift parametrisation (Fig 8)"),
        C.find_variants("Every parametrisation of the shift coefficients learns the induction task (1 layer).", (),
                        "vanilla 1L", baseline_must_fail=False)),
    "fig8_ablation": FigureSpec(
        (*FIG8, "fig8_ablation"), lambda d, r: T.curves_table(d, r, _ablation_label),
        lambda t: P.plot_curves(t, "Shift K and V vs K only vs V only vs vanilla (Fig 8)"),
        C.find_variants("Shifting K, or K and V, lets one layer learn induction; shifting only V does not "
                        f"({C.EXPECTATIONS['value_only'].source}); vanilla one layer does not.", (), "vanilla 1L",
                        baseline_must_fail=True, cannot=("shift v",))),
    "fig8_window": FigureSpec(
        (*FIG8, "fig8_window"), lambda d, r: T.curves_table(d, r, _fig8_label("model.mixer.window", "window")),
        lambda t: P.plot_curves(t, "Shift window (Fig 8)"),
        C.find_variants("A wider shift window (w = 2, 3) still learns induction in one layer.", (), "vanilla 1L",
                        baseline_must_fail=False)),
    "fig1b_width": FigureSpec(("fig1b_width",), T.curves_table,
                              lambda t: P.plot_lr_curves(t, "Hidden size 8 (Fig 1b), each learning rate"), C.find_fig1b),
    "fig3_ngram": FigureSpec(("fig3_ngram/",), _ngram_table, _ngram_plot, C.find_fig3),
    "hopk": FigureSpec(("hopk",), T.curves_table,
                       lambda t: P.plot_final_vs(t, ("task.hops",), "hop-k error vs hops", transform=lambda s: 1 - s,
                                                 ylabel="final hop-k error (1 − accuracy)"), _find_hopk),
}


def figure_grids(name: str, spec: dict) -> list[str]:
    """The grids of the profile's experiment that figure `name` reads (a `x/` entry matches every `x/...`)."""
    return [g for g in spec["grids"] if any(g == w or (w.endswith("/") and g.startswith(w)) for w in FIGURES[name].grids)]


def draw(name: str, run_dirs: list[Path], sweep_dir: Path, out: Path) -> tuple[pd.DataFrame, C.Finding]:
    """Table -> CSV -> PNG (drawn from the CSV as re-read) and the finding."""
    spec = FIGURES[name]
    spec.table(run_dirs, sweep_dir).to_csv(out / f"{name}.csv", index=False)
    table = pd.read_csv(out / f"{name}.csv")
    fig = spec.plot(table)
    fig.savefig(out / f"{name}.png", dpi=120)
    plt.close(fig)
    return table, spec.find(table)


def fragility(out: Path, names: Sequence[str]) -> dict[str, bool]:
    """Per figure, whether its verdict changes under `report.robustness`'s protocol variants (recomputed from its
    CSV); a figure whose rule reads no run outcome (no `protocol` parameter) cannot change."""
    flags = {}
    for name in names:
        find = FIGURES[name].find
        if "protocol" not in inspect.signature(find).parameters:
            flags[name] = False
            continue
        table = pd.read_csv(out / f"{name}.csv")
        flags[name] = bool(robustness(lambda p: {name: find(table, p).verdict}, C.PROTOCOL)["fragile"].iloc[0])
    return flags


def write_report(out: Path, findings: dict[str, C.Finding], spec: dict, meta: dict, missing: Sequence[str]) -> Path:
    """REPORT.md: a verdict table (verdict, rule, baseline per figure; Holm within each figure's family of tests;
    fragile verdicts flagged) and the verdict counts, then one section per figure."""
    fragile = fragility(out, list(findings))
    lines = ["# Reproduction report: KV Shifting Attention (Xu et al., arXiv 2411.19574)", "",
             f"Generated by `{meta['command']}` from the CSVs in this folder; every number below is computed from "
             "them, and every verdict by the rule named beside it (`kvshift_lens/report/claims.py`, tested in "
             "`tests/test_claims.py`). Verdicts: reproduced / partly reproduced / not reproduced / inconclusive.", "",
             f"- profile: **{meta['profile']}** — {spec['description']}",
             f"- git commit: `{meta['git_commit']}`; wall time of this invocation: {meta['wall_seconds']:.0f} s"
             + (" (--draw-only: redrawn from existing runs; each provenance file's `training_time` gives the runs' "
                "own training seconds)" if meta.get("draw_only") else "") + f"; load average before/after: "
             f"{meta['load_before']} / {meta['load_after']} on {meta['cpu_count']} cores",
             "- intervals: means of bounded quantities (accuracies, shares, their differences) over fewer than 10 seeds "
             "carry exact sign-flip intervals (Hartigan's subset means; the bounds themselves below 6 seeds), other "
             "means Student-t intervals; paired differences are tested by the exact sign-flip permutation test; "
             "identical values get no interval; success proportions 95 % Wilson or exact Clopper–Pearson intervals; "
             "times to 90 % are compared by the log-rank test (`scipy.stats.logrank`) and summarised by Kaplan–Meier "
             "medians, success of paired configurations by the exact binomial test on discordant pairs.",
             "- multiplicity: each figure's parts are one family of tests (named in the table below); verdicts use "
             "Holm-adjusted p-values (`kvshift_lens/report/multiplicity.py`). Robustness: every verdict that reads run "
             "outcomes is recomputed with the success threshold at 0.85 / 0.90 / 0.95 and the plateau gain halved and "
             "doubled; one that changes is marked *fragile* and counted as inconclusive (`kvshift_lens/report/robustness.py`).",
             "", "| figure (family of tests) | verdict | before Holm | rule | baseline |", "|---|---|---|---|---|"]
    lines += [f"| [{n}](#{n}) | {label(f.verdict, fragile[n])} | {f.verdict.raw_outcome} | {f.verdict.rule} | "
              f"{f.verdict.baseline} |" for n, f in findings.items()]
    lines += ["", *verdict_counts(findings, fragile)]
    lines += ["", "## Detector scores (heads.csv, notebooks)", "", DETECTORS]
    for name, f in findings.items():
        lines += finding_section(name, f, f"{name}.png")
    if missing:
        lines += ["", "## Not drawn yet", "", "These figures of the profile have no runs or CSV here yet; their runs "
                  f"resume with `{meta['command']} --only {','.join(missing)}`:", "", *[f"- {n}" for n in missing]]
    path = out / "REPORT.md"
    kept = spliced_sections(path)  # sections of other commands (phase diagram, theory, mixers, lm) survive a rewrite
    if section := powered.section(out):  # recomputed in its place: it compares the powered verdicts with these
        kept[powered.FOLDER] = "\n".join(section)
    else:
        kept.pop(powered.FOLDER, None)
    if (out / PHASE_SECTION).exists():
        kept["phase_diagram"] = (out / PHASE_SECTION).read_text()
    path.write_text("\n".join(lines) + "\n")
    for name, text in kept.items():
        splice_section(path, name, text)
    return path


def write_adaptive(out: Path, sweep_dir: Path, spec: dict, grids: Sequence[str], policy: adaptive.Adaptive) -> None:
    """`reproduce_budgets.csv` (per run: grid budget, budget reached, outcome; fig3's capability is read at the budget
    reached, its speed at the grid budget), `reproduce_lrs.csv` (best rate per cell, `lr_edge`) and
    `reproduce_cannot.csv` (the budget behind every "cannot", `cannot_budget`)."""
    runs = adaptive.study_runs(sweep_dir, sweeps.expand_jobs(spec, only=grids), spec["steps"])
    p = adaptive.Protocol(lr="lr")
    runs.drop(columns=["job", "grid_job"]).to_csv(out / "reproduce_budgets.csv", index=False)
    adaptive.lr_table(runs[runs["train.lr"].notna()] if "train.lr" in runs else runs.iloc[:0], ["setting", "arm"],
                      policy, p).to_csv(out / "reproduce_lrs.csv", index=False)
    adaptive.cannot_table(runs, CANNOT, policy, p).to_csv(out / "reproduce_cannot.csv", index=False)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="quick", choices=sorted(PROFILES))
    parser.add_argument("--only", default="", help="comma-separated figure names (default: all in the profile)")
    parser.add_argument("--out", default=None, help="output folder for figures, CSVs and REPORT.md (default results/)")
    parser.add_argument("--draw-only", action="store_true", help="skip training; draw from the finished runs on disk")
    parser.add_argument("--runs", default=None, help="hydra out_dir of the runs (default runs/reproduce/<profile>)")
    parser.add_argument("--launcher", default=None, help="hydra launcher (default: the profile's)")
    parser.add_argument("--n-jobs", type=int, default=None, help="parallel training processes (local launchers; default 2)")
    sweeps.add_seed_offset(parser)
    args = sweeps.parse_study_args(parser, argv)
    experiment, launcher = PROFILES[args.profile]
    launcher = args.launcher or launcher
    n_jobs = args.n_jobs if args.n_jobs is not None else (2 if launcher == "local_parallel" else None)
    spec = sweeps.with_seed_offset(sweeps.experiment_spec(experiment), args.seed_offset)
    names = [n for n in args.only.split(",") if n] or [n for n in FIGURES if figure_grids(n, spec)]
    unknown = [n for n in names if n not in FIGURES]
    if unknown:
        raise SystemExit(f"error: unknown figure(s) {unknown}; choose from {list(FIGURES)}")
    runs_root, out = sweeps.study_dirs(args, Path(args.runs or ROOT / "runs" / "reproduce" / args.profile),
                                       Path(args.out) if args.out is not None else None)
    out.mkdir(parents=True, exist_ok=True)
    sweep_dir = runs_root / "sweeps" / spec["name"]
    command = "python -m experiments.reproduce" + ("" if args.profile == "quick" else f" --profile {args.profile}") \
        + (f" seed_offset={args.seed_offset}" if args.seed_offset else "")
    policy = ADAPTIVE[args.profile]
    started, load_before = time.perf_counter(), provenance.load_average()
    grids = sorted({g for n in names for g in figure_grids(n, spec)}, key=list(spec["grids"]).index)
    sweep = {}
    if not args.draw_only:
        cmd = sweeps.sweep_command(experiment, runs_root, launcher, n_jobs, only=grids, seed_offset=args.seed_offset)
        sweep = sweeps.train_study(cmd, sweep_dir, runs_root / "logs" / f"{spec['name']}.log")  # {} if it failed
        sweep["adaptive_rounds"] = sweeps.train_rounds(
            spec, lambda: adaptive.next_round(sweep_dir, spec, policy, CANNOT, grids), sweep_dir, runs_root, launcher,
            n_jobs)
    findings: dict[str, C.Finding] = {}
    failed: dict[str, str] = {}
    for name in tqdm(names, desc="figures", unit="fig"):
        t0 = time.perf_counter()
        fig_grids = figure_grids(name, spec)
        run_dirs = sweeps.runs_of_jobs(sweep_dir, sweeps.expand_jobs(spec, only=fig_grids))
        try:
            table, findings[name] = draw(name, run_dirs, sweep_dir, out)
        except Exception as e:  # one broken figure must not lose the others; a rerun resumes its runs
            failed[name] = f"{type(e).__name__}: {e}"
            print(f"error: {name}: {failed[name]}", file=sys.stderr)
            continue
        provenance.write_json(out / f"{name}.provenance.json", provenance.record(
            command, figure=name, profile=args.profile, experiment=spec, grids=fig_grids,
            seeds=sorted(int(s) for s in table["seed"].unique()), n_runs=int(table["run"].nunique()),
            draw_seconds=round(time.perf_counter() - t0, 1), sweep_this_invocation=sweep,
            training_time=provenance.training_time(run_dirs)))
    for name in FIGURES:  # figures drawn by earlier invocations stay in the report, recomputed from their CSVs
        if name not in findings and name not in failed and (out / f"{name}.csv").exists():
            try:
                findings[name] = FIGURES[name].find(pd.read_csv(out / f"{name}.csv"))
            except (KeyError, ValueError) as e:  # a CSV from an older pipeline lacks the columns the rule reads
                print(f"warning: {out / name}.csv is stale ({type(e).__name__}: {e}); redraw it with --only {name}",
                      file=sys.stderr)
    findings = {n: findings[n] for n in FIGURES if n in findings}
    meta = {"command": command, "profile": args.profile, "git_commit": provenance.git_commit(),
            "wall_seconds": time.perf_counter() - started, "draw_only": args.draw_only, "load_before": load_before,
            "load_after": provenance.load_average(), "cpu_count": provenance.environment()["cpu_count"]}
    missing = [n for n in FIGURES if figure_grids(n, spec) and n not in findings]
    write_adaptive(out, sweep_dir, spec, grids, policy)
    replication.write_verdicts(out / "reproduce_verdicts.csv", replication.verdict_rows(
        "reproduce", [(n, f.verdict, f.parts) for n, f in findings.items()]))
    report = write_report(out, findings, spec, meta, missing)  # after the verdicts: its powered section reads them
    if args.profile == "powered" and out.name == powered.FOLDER:  # results/powered: listed beside the quick verdicts
        if section := powered.section(out.parent):
            splice_section(out.parent / "REPORT.md", powered.FOLDER, "\n".join(section))
    else:
        theory.write_outputs(out)  # the theorem constructions (seconds, no training); results/ has them already
    print(f"wrote {len(findings)} figure(s) and {report} in {meta['wall_seconds']:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
