"""Phase diagram of induction learning (issue 5 §2): run the sweep, then write results/phase_diagram*.

    python -m experiments.phase_diagram                    # CPU profile: sweep + outputs (resumable)
    python -m experiments.phase_diagram --skip-train       # outputs only, from the finished runs
    python -m experiments.phase_diagram --only heads       # train one grid, then outputs from all runs
    python -m experiments.phase_diagram --profile tiny --out-dir /tmp/pd --results-dir /tmp/pd/results

A profile is one `conf/experiment/*.yaml` whose `hydra.sweeper` (`hydra/sweeper=grids`) lists named
grids; it runs as one `python -m experiments.train -m hydra/launcher=local_parallel
+experiment=<file>` multirun (2 jobs × 1 torch thread) into `<out-dir>/sweeps/<name>`. Re-running
skips the runs that already finished, so an interrupted command picks up where it stopped. Outputs
(prefix `<name>`): the tidy per-run CSV, frontier / length / parameter-matched tables, heatmaps and
plots, a provenance JSON (git commit, grids, seeds, wall and train seconds) and a markdown section
with the verdicts."""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import matplotlib
import numpy as np
import pandas as pd
import torch
import yaml

from experiments.report import splice_section
from kvshift_lens import phase
from kvshift_lens.analysis import load_summaries
from kvshift_lens.train import git_commit

matplotlib.use("Agg")  # an entry point that writes figures to files, never shows them

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "conf" / "experiment"
PROFILES = {"cpu": "phase_diagram", "tiny": "phase_diagram_tiny"}  # profile -> experiment file (hydra/sweeper=grids)
HISTORY = "sweep_history.jsonl"  # one line per sweep invocation, kept in the sweep directory


def experiment_spec(name: str) -> dict:
    """The parsed experiment file `conf/experiment/<name>.yaml`."""
    return yaml.safe_load((EXPERIMENTS / f"{name}.yaml").read_text())


def grids_of(spec: dict) -> dict[str, dict]:
    """Each named grid of an experiment's `hydra.sweeper`, with the shared params filled in (the grid wins)."""
    sweeper = spec["hydra"]["sweeper"]
    return {name: {**(sweeper.get("params") or {}), **grid} for name, grid in sweeper["grids"].items()}


def sweep_command(experiment: str, out_dir: Path, n_jobs: int, only: Sequence[str] = ()) -> list[str]:
    """The hydra multirun command of one experiment file (optionally only some of its grids)."""
    cmd = [sys.executable, "-m", "experiments.train", "-m", "hydra/launcher=local_parallel",
           f"hydra.launcher.n_jobs={n_jobs}", f"+experiment={experiment}", f"out_dir={out_dir}"]
    return cmd + ([f"hydra.sweeper.only=[{','.join(only)}]"] if only else [])


def run_sweep(experiment: str, out_dir: Path, n_jobs: int, only: Sequence[str] = ()) -> dict:
    """Run the experiment's multirun (finished runs are skipped); record and return its timing."""
    cmd = sweep_command(experiment, out_dir, n_jobs, only)
    print("$", " ".join(cmd[1:]), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"sweep {experiment} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    entry = {"experiment": experiment, "command": " ".join(["python", *cmd[1:]]),
             "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
             "wall_seconds": round(time.perf_counter() - t0, 1)}
    with (out_dir / "sweeps" / experiment_spec(experiment)["name"] / HISTORY).open("a") as f:
        f.write(json.dumps(entry) + "\n")
    return entry


def sweep_history(sweep_dir: Path) -> list[dict]:
    """Every sweep invocation recorded in `sweep_dir` (command, finish time, wall seconds)."""
    path = sweep_dir / HISTORY
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _md_table(df: pd.DataFrame, floatfmt: str = ".3g") -> str:
    """A GitHub markdown table (NaN / NA as blank) without the optional `tabulate` dependency."""
    def cell(v: object) -> str:
        if v is None or v is pd.NA or (isinstance(v, float) and v != v):
            return ""
        if isinstance(v, float):
            return format(v, floatfmt)
        return str(v)
    header = [str(c) for c in df.columns]
    body = [[cell(v) for v in row] for row in df.itertuples(index=False)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body])


def _rate(df: pd.DataFrame) -> str:
    k, n, lo, hi = phase.success_rate(df)
    return f"{k}/{n} runs (95% Wilson CI {lo:.2f}–{hi:.2f})" if n else "no runs"


def verdicts(df: pd.DataFrame, main: pd.DataFrame, fr: pd.DataFrame, length: pd.DataFrame,
             pm: pd.DataFrame) -> list[str]:
    """Rule-based verdict paragraphs computed from the tables (no numbers typed in by hand)."""
    out = []

    def runs(arch: str, layers: int) -> pd.DataFrame:
        return main[(main.arch == arch) & (main.n_layers == layers)]

    widest = main["d_model"].max() if len(main) else float("nan")
    kv1, va1, va2 = runs("kvshift", 1), runs("vanilla", 1), runs("vanilla", 2)
    va_deep = main[(main.arch == "vanilla") & (main.n_layers >= 2)]
    kv1_w, va1_w = kv1[kv1.d_model == widest], va1[va1.d_model == widest]
    _, n_kv, lo_kv, _ = phase.success_rate(kv1)
    _, n_v1, _, hi_v1 = phase.success_rate(va1)
    k_vd, n_vd, _, hi_vd = phase.success_rate(va_deep)
    depth = (f"**Depth claim** (one KV-shift layer does what vanilla needs two layers for). Pooled over every width "
             f"of the main grid, 1-layer KV shift succeeds in {_rate(kv1)}, 1-layer vanilla in {_rate(va1)}, 2-layer "
             f"vanilla in {_rate(va2)} (≥2-layer vanilla: {_rate(va_deep)}); at the widest width, d_model = {widest}, "
             f"1-layer KV shift {_rate(kv1_w)} and 1-layer vanilla {_rate(va1_w)}. ")
    if n_kv and n_v1 and lo_kv > hi_v1:
        depth += ("Supported for the one-layer half: the pooled intervals separate, so one KV-shift layer learns "
                  "induction where one vanilla layer does not. ")
    else:
        depth += "Not separated at this sample size: the pooled intervals for 1-layer KV shift and 1-layer vanilla overlap. "
    if n_vd and k_vd == 0:
        depth += (f"The 'vanilla needs two layers' half is **not tested** by this budget: no ≥2-layer vanilla run "
                  f"reached {phase.THRESHOLD:.0%} at any width (success rate ≤ {hi_vd:.2f} at 95%), so the data show "
                  f"KV shift learning induction faster, not that two vanilla layers are equivalent to one KV-shift layer. ")
    elif n_vd:
        depth += "2-layer vanilla does reach the threshold for some widths; compare frontiers below. "
    unstable = phase.non_monotone_seeds(main)
    if len(unstable):
        depth += ("Success is not monotone in width: " + "; ".join(
            f"{r.arch} {r.n_layers}L seed {r.seed} fails at d_model {r.fails_at} above a width where it succeeds"
            for r in unstable.itertuples()) + " — a fixed budget measures learnability, not capacity. ")
    for other in (("vanilla", 1), ("vanilla", 2)):
        k, n, p = phase.paired_sign_test(main, ("kvshift", 1), other)
        if n:
            depth += (f"Paired by width and seed, 1-layer KV shift ends with higher accuracy than {other[1]}-layer "
                      f"vanilla in {k}/{n} pairs (one-sided sign test p = {p:.2g}). ")
    pf = phase.param_frontier(pm) if len(pm) else pd.DataFrame()
    if len(pf):
        parts = [f"{r.model} ({r.n_heads} head(s), seq {r.seq_len}): "
                 + (f"{r.params_all_seeds:.0f} params (d_model {r.d_model_all_seeds:.0f})"
                    if r.params_all_seeds == r.params_all_seeds else f"none up to {r.max_params_tried:.0f} params")
                 for r in pf.itertuples()]
        depth += "Smallest parameter count at which all seeds succeed — " + "; ".join(parts) + "."
    out.append(depth)

    width = ("**Width claim** (a one-layer transformer's width must grow with the sequence length; Sanford, Hsu "
             "& Telgarsky 2024). ")
    if len(length):
        parts = []
        for key, g in length.groupby(["arch", "n_layers", "n_heads"]):
            g = g.sort_values("seq_len")
            cells = ", ".join(f"seq {r.seq_len}: {r.frontier}" for r in g.itertuples())
            slope = g["slope"].iloc[0]
            parts.append(f"{key[0]} {key[1]}L, {key[2]} head(s) — frontier d_model median [seed range]: {cells}; "
                         f"log-log slope {slope:.2f}" if slope == slope else
                         f"{key[0]} {key[1]}L, {key[2]} head(s) — {cells}; slope undefined (< 2 lengths fully reached)")
        width += " ".join(p + "." for p in parts) + " "
        trend = phase.width_trend(length)
        growing = [k for k, v in trend.items() if v == "grows"]
        against = [k for k, v in trend.items() if v == "shrinks"]
        if growing and not against:
            width += ("The needed width grows with length in this range, consistent with the lower bound; the width "
                      "grid is powers of two, so each frontier is only known to within a factor of 2. ")
        elif against:
            width += ("**Not supported here**: for " + ", ".join(f"{a} {n}L ({h} head)" for a, n, h in against)
                      + " a shorter sequence needs a larger (or unreached) width than a longer one, the opposite of "
                        "the lower bound's direction: at this budget the length sweep does not isolate the width a "
                        "layer needs (one untested explanation: a short Appendix-D sequence holds fewer induction "
                        "targets per step). ")
        else:
            width += "No trend with length is resolved on this power-of-two width grid. "
        swept = set(zip(length.arch, length.n_layers))
        never = fr[(fr.n_reached == 0).to_numpy() & np.array([(a, n) not in swept for a, n in zip(fr.arch, fr.n_layers)], dtype=bool)]
        if len(never):
            width += ("Not length-swept because they reach the threshold at no width even at the main length, so their "
                      "frontier is censored at every length: "
                      + ", ".join(sorted({f"{a} {n}L" for a, n in zip(never.arch, never.n_layers)})) + ". ")
        width += ("Caveat: at a fixed step budget, longer sequences also change the number of scored tokens per step, "
                  "so the frontier mixes representational size with optimisation speed.")
    else:
        width += "No length sweep in this profile."
    out.append(width)

    heads = fr[(fr.arch == "kvshift") & (fr.n_layers == 1)]
    if heads["n_heads"].nunique() > 1:
        cells = "; ".join(f"{r.n_heads} head(s) at seq {r.seq_len}: {r.frontier}" for r in heads.itertuples())
        out.append(f"**Head count vs head size** (1-layer KV shift, frontier d_model median [seed range]): {cells}.")
    return out


def write_outputs(sweep_dir: Path, results: Path, prefix: str, provenance: dict, grids: Sequence[dict]) -> dict:
    """Tables, figures, provenance and markdown for the finished runs under `sweep_dir` that lie in one of the
    profile's sweeper `grids` (strays from older grids are left out); returns the paths written."""
    results.mkdir(parents=True, exist_ok=True)
    raw = load_summaries(sweep_dir)
    raw = raw[raw.status != "failed"] if "status" in raw else raw  # failed jobs have no metrics (diverged ones do)
    if raw.empty:
        sys.exit(f"no finished runs under {sweep_dir}")
    raw = raw[phase.in_grid(raw, grids)].reset_index(drop=True)
    df = phase.tidy(raw)
    budget = {k: sorted(raw[c].unique().tolist()) for k, c in
              {"steps": "train.steps", "batch_size": "train.batch_size", "lr": "train.lr",
               "d_vocab": "task.d_vocab", "stop_at": "train.stop_at"}.items() if c in raw}
    paths = {k: results / f"{prefix}{suffix}" for k, suffix in {
        "csv": ".csv", "frontier": "_frontier.csv", "length": "_length.csv", "params": "_params.csv",
        "heatmaps": "_heatmaps.png", "params_png": "_params.png", "length_png": "_length.png",
        "provenance": "_provenance.json", "md": ".md"}.items()}
    df.to_csv(paths["csv"], index=False)
    main_len = int(df["seq_len"].mode().iloc[0]) if df.groupby("seq_len").ngroups else None
    main = df[(df.seq_len == main_len) & (df.n_heads == df["n_heads"].min())]
    fr = phase.frontier(df)
    fr.to_csv(paths["frontier"], index=False)
    length = phase.length_scaling(df)
    length.to_csv(paths["length"], index=False)
    pm = phase.param_matched(df)
    pm.to_csv(paths["params"], index=False)
    fig = phase.plot_heatmaps(main, title=f"seq_len {main_len}, {main['n_heads'].min()} head(s), "
                                          f"{int(main['final_step'].max())} steps, {main.seed.nunique()} seeds")
    fig.savefig(paths["heatmaps"], dpi=120)
    phase.plot_param_matched(pm).savefig(paths["params_png"], dpi=120)
    if len(length):
        phase.plot_length_scaling(length).savefig(paths["length_png"], dpi=120)
    else:
        paths.pop("length_png")

    provenance = {**provenance, "n_runs": len(df), "seeds": sorted(int(s) for s in df.seed.unique()),
                  "train_seconds_sum": round(float(df.train_seconds.sum()), 1),
                  "threshold": phase.THRESHOLD, "budget": budget}
    paths["provenance"].write_text(json.dumps(provenance, indent=2, default=str))

    acc = phase.grid_table(main, "induction_acc").round(3).reset_index()
    steps = phase.grid_table(main, "steps_to_90", agg="median").reset_index()
    ok = phase.success_table(main).reset_index()
    fr_main = fr[(fr.seq_len == main_len)][["arch", "n_layers", "n_heads", "n_reached", "n_seeds",
                                            "frontier", "all_seeds"]]
    one = lambda k: budget[k][0] if len(budget[k]) == 1 else budget[k]  # noqa: E731
    lines = [
        f"## Phase diagram: who learns induction, at which width and depth ({prefix})", "",
        f"Regenerate: `{provenance['command']}` (resumable; `--skip-train` rebuilds only the outputs). "
        f"{len(df)} runs, seeds {provenance['seeds']}, fixed budget {one('steps')} steps × batch "
        f"{one('batch_size')} (AdamW, lr {one('lr')}), vocab {one('d_vocab')}, attention-only, layernorm, "
        f"learned positions. Success = final held-out induction accuracy ≥ {phase.THRESHOLD:.0%}"
        + (f" (a run stops early once it reaches {one('stop_at'):.0%}). " if budget.get("stop_at", [0])[0] else ". ") +
        f"Training compute {provenance['train_seconds_sum'] / 60:.1f} core-minutes (sum of per-run train seconds, "
        f"1 thread each); see `{paths['provenance'].name}` for commit, configs and wall times.", "",
        "### Verdicts", "", *[f"- {v}" for v in verdicts(df, main, fr, length, pm)], "",
        f"### Final induction accuracy, mean over seeds (seq_len {main_len}, {main['n_heads'].min()} head)", "",
        _md_table(acc, ".3f"), "",
        "Seeds reaching 90%:", "", _md_table(ok), "",
        "Steps to 90%, median over the seeds that reached it (blank: none):", "", _md_table(steps, ".0f"), "",
        f"![heatmaps]({paths['heatmaps'].name})", "",
        "### Minimum-width frontier (d_model; median [min, max] over seeds; `all_seeds`: smallest width where every "
        "seed succeeds)", "", _md_table(fr_main), "",
        "### Parameter-matched: 1-layer KV shift vs 2-layer vanilla", "",
        _md_table(pm[["model", "n_heads", "seq_len", "d_model", "n_params", "n_params_non_embedding", "acc_mean",
                      "acc_min", "acc_max", "n_reached", "n_seeds"]]), "",
        _md_table(phase.param_frontier(pm)), "", f"![params]({paths['params_png'].name})", "",
    ]
    if len(length):
        lines += ["### Sequence length: frontier width vs seq_len", "",
                  _md_table(length[["arch", "n_layers", "n_heads", "seq_len", "n_reached", "n_seeds", "frontier",
                                    "all_seeds", "slope"]]), "", f"![length]({paths['length_png'].name})", ""]
    paths["md"].write_text("\n".join(lines))
    return paths


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "runs", help="hydra out_dir (runs live below)")
    parser.add_argument("--results-dir", type=Path, default=ROOT / "results")
    parser.add_argument("--n-jobs", type=int, default=2, help="parallel training processes (1 thread each)")
    parser.add_argument("--skip-train", action="store_true", help="only rebuild the outputs from finished runs")
    parser.add_argument("--only", nargs="+", metavar="GRID",
                        help="train only these grids of the profile (outputs still cover all its finished runs)")
    args = parser.parse_args(argv)

    experiment = PROFILES[args.profile]
    spec = experiment_spec(experiment)
    grids = grids_of(spec)
    unknown = sorted(set(args.only or ()) - set(grids))
    if unknown:
        sys.exit(f"--only {unknown}: not a grid of conf/experiment/{experiment}.yaml (grids: {list(grids)})")
    name = spec["name"]
    t0 = time.perf_counter()
    sweeps = [] if args.skip_train else [run_sweep(experiment, args.out_dir.resolve(), args.n_jobs, args.only or ())]
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
    provenance = {
        "command": "python -m experiments.phase_diagram" + ("" if args.profile == "cpu" else f" --profile {args.profile}"),
        "profile": args.profile, "git_commit": git_commit(), "git_dirty": dirty.splitlines(),
        "experiment": {"file": f"conf/experiment/{experiment}.yaml", "grids": grids},
        "train_overrides": spec.get("train", {}),
        "sweeps_this_invocation": sweeps, "wall_seconds_this_invocation": round(time.perf_counter() - t0, 1),
        "sweep_history": sweep_history(args.out_dir / "sweeps" / name),
        "n_jobs": args.n_jobs, "python": platform.python_version(), "torch": torch.__version__,
        "machine": platform.machine(), "cpu_count": __import__("os").cpu_count(),
    }
    paths = write_outputs(args.out_dir / "sweeps" / name, args.results_dir, name, provenance, list(grids.values()))
    splice_section(args.results_dir / "REPORT.md", "phase_diagram", paths["md"].read_text())
    print("\n".join(f"wrote {p}" for p in paths.values()))


if __name__ == "__main__":
    main()
