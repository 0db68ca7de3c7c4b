"""Reproduce the paper's figures: `python -m experiments.reproduce [--profile quick|full] [--only a,b] [--out results]`.

For each figure: run its experiment config as a multirun sweep (a subprocess of `experiments.train`
with the profile's launcher; finished runs are skipped and killed runs resume on rerun), then write
`<out>/<name>.csv` (tidy), `<name>.png` (drawn from that CSV) and `<name>.provenance.json`; finally
`<out>/REPORT.md` from the same tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Optional

import matplotlib
import pandas as pd
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from experiments import theory
from experiments.report import splice_section
from kvshift_lens import figures as F
from kvshift_lens.train import git_commit

matplotlib.use("Agg")  # an entry point that writes figures to files, never shows them

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


@dataclass
class FigureSpec:
    """How to draw one figure: the sweep it reads, its tidy table, plot and finding."""

    sweep: str  # experiment config (conf/experiment/<sweep>.yaml) whose sweep this figure reads
    table: Callable[[Path], pd.DataFrame]
    plot: Callable[[pd.DataFrame], "F.Figure"]
    find: Callable[[pd.DataFrame], F.Finding]


def _ablation_label(row: pd.Series) -> str:
    return "vanilla" if row["model.arch"] == "vanilla" else f"shift {row['model.mixer.sides']}"


def _size_label(row: pd.Series) -> str:
    return f"{row['model.arch']} {int(row['model.n_layers'])}L d{int(row['model.d_model'])}"


def _ngram_table(sweep_dir: Path) -> pd.DataFrame:
    t = F.curves_table(sweep_dir, _size_label)
    t["size"] = t["label"].str.split(" ", n=1).str[1] + " (" + (t["n_params"] / 1e3).round(1).astype(str) + "K params)"
    t["size"] = t.groupby(t["label"].str.split(" ", n=1).str[1])["size"].transform("first")
    return t


def _ngram_plot(table: pd.DataFrame) -> "F.Figure":
    sizes = sorted(table["size"].unique())
    fig, axes = F.plt.subplots(1, len(sizes), figsize=(5 * len(sizes), 4), squeeze=False)
    for ax, size in zip(axes[0], sizes):
        F.plot_curves(table[table["size"] == size], f"3-gram: {size}", ax=ax)
        ax.set_ylabel("3-gram accuracy")
    fig.tight_layout()
    return fig


FIGURES: dict[str, FigureSpec] = {
    "fig1a_depth": FigureSpec("fig1a_depth", F.curves_table,
                              lambda t: F.plot_curves(t, "Induction accuracy vs depth (Fig 1a)"), F.find_fig1a),
    "fig2_landscape": FigureSpec("fig1a_depth", F.shift_table, F.plot_landscape, F.find_fig2),
    "table4_alpha_beta": FigureSpec("fig1a_depth", F.shift_table, F.plot_quadrants, F.find_table4),
    "fig8_variants": FigureSpec(
        "fig8_variants", lambda d: F.curves_table(d, lambda r: f"shift_param={r['model.mixer.param']}"),
        lambda t: F.plot_curves(t, "Shift parametrisation (Fig 8)"),
        F.find_curves("Every parametrisation of the shift coefficients learns the induction task (1 layer).", "")),
    "fig8_ablation": FigureSpec(
        "fig8_ablation", lambda d: F.curves_table(d, _ablation_label),
        lambda t: F.plot_curves(t, "Shift K and V vs K only vs V only vs vanilla (Fig 8)"),
        F.find_curves("Shifting K, V or both lets one layer learn induction; vanilla one layer does not.", "vanilla")),
    "fig8_window": FigureSpec(
        "fig8_window", lambda d: F.curves_table(d, lambda r: f"window={int(r['model.mixer.window'])}"),
        lambda t: F.plot_curves(t, "Shift window (Fig 8)"),
        F.find_curves("A wider shift window (w = 2, 3) still learns induction in one layer.", "")),
    "fig1b_width": FigureSpec(
        "fig1b_width", F.curves_table,
        lambda t: F.plot_final_vs(t, ("model.d_model", "n_params"), "Induction accuracy vs width (Fig 1b)"),
        F.find_fig1b),
    "fig3_ngram": FigureSpec("fig3_ngram", _ngram_table, _ngram_plot, F.find_fig3),
    "hopk": FigureSpec(
        "hopk", F.curves_table,
        lambda t: F.plot_final_vs(t, ("task.hops",), "hop-k error vs hops", transform=lambda s: 1 - s,
                                  ylabel="final hop-k error (1 − accuracy)"),
        F.find_hopk),
}


def load_profile(name: str) -> dict:
    """conf/profile/<name>.yaml as a plain dict (one clear error if absent)."""
    path = CONF / "profile" / f"{name}.yaml"
    if not path.exists():
        choices = sorted(p.stem for p in (CONF / "profile").glob("*.yaml"))
        raise SystemExit(f"error: no profile {name!r} at {path}; choose one of {choices}")
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)


def sweep_commands(sweep: str, profile: dict, out_dir: Path) -> list[list[str]]:
    """The `experiments.train -m` command lines of one experiment under a profile (one per profile sweep)."""
    spec = profile["figures"].get(sweep, {})
    seeds = ",".join(str(s) for s in spec.get("seeds", profile.get("seeds", [0, 1, 2])))
    base = [sys.executable, "-m", "experiments.train", "-m", f"hydra/launcher={profile.get('launcher', 'local_parallel')}",
            f"+experiment={sweep}", f"out_dir={out_dir}", f"seed={seeds}", *profile.get("overrides", []),
            *spec.get("overrides", [])]
    return [base + list(extra) for extra in spec.get("sweeps", [[]])]


def run_sweep(commands: list[list[str]], log: Path) -> None:
    """Run the sweep commands in order, appending their output to `log`; raise on failure."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    log.parent.mkdir(parents=True, exist_ok=True)
    for cmd in commands:
        with log.open("a") as f:
            f.write("$ " + " ".join(cmd) + "\n")
            f.flush()
            r = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env)
        if r.returncode != 0:
            raise RuntimeError(f"sweep failed (exit {r.returncode}): {' '.join(cmd[2:])}; see {log}")


def _loadavg() -> Optional[list[float]]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def training_time(sweep_dir: Path) -> dict:
    """From the run files: summed train seconds of finished runs and the wall span from the first run's
    step-0 checkpoint to the last summary.json (covers interrupted and resumed invocations)."""
    summaries = list(sweep_dir.rglob("summary.json"))
    starts = [p.stat().st_mtime for p in sweep_dir.rglob("step_0000000.safetensors")]
    train_s = sum(json.loads(p.read_text()).get("train_seconds", 0.0) for p in summaries)
    span = max(p.stat().st_mtime for p in summaries) - min(starts) if summaries and starts else None
    return {"finished_runs_train_seconds_sum": round(train_s, 1),
            "wall_span_first_run_start_to_last_run_end_s": round(span, 1) if span is not None else None}


def provenance(name: str, spec: FigureSpec, profile: dict, commands: list[list[str]], table: pd.DataFrame,
               wall: dict, load: dict, finished: int, sweep_dir: Path) -> dict:
    """What produced a figure: commit, experiment config text, command lines, seeds, timings and load."""
    exp = CONF / "experiment" / f"{spec.sweep}.yaml"
    return {
        "figure": name, "git_commit": git_commit(), "profile": profile.get("name"),
        "experiment": spec.sweep, "experiment_config": exp.read_text(),
        "overrides": [c[3:] for c in commands], "seeds": sorted(int(s) for s in table["seed"].unique()),
        "n_runs": int(table["run"].nunique()), "runs_finished": finished, "wall_seconds": wall,
        "training_time": training_time(sweep_dir), "load_average": load,
        "cpu_count": os.cpu_count(), "python": platform.python_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def draw(name: str, spec: FigureSpec, sweep_dir: Path, out: Path) -> tuple[pd.DataFrame, F.Finding]:
    """Table -> CSV -> PNG (drawn from the CSV as re-read) and the finding."""
    spec.table(sweep_dir).to_csv(out / f"{name}.csv", index=False)
    table = pd.read_csv(out / f"{name}.csv")
    fig = spec.plot(table)
    fig.savefig(out / f"{name}.png", dpi=120)
    F.plt.close(fig)
    finding = spec.find(table) if name != "fig2_landscape" else F.find_fig2(table, _basins())
    return table, finding


@lru_cache(maxsize=1)
def _basins() -> pd.DataFrame:
    """theorem3_basins for Eq. 10 and the App. E script (coarse grid to stay quick)."""
    from kvshift_lens.theory import theorem3_basins, theorem3_loss, theorem3_loss_script

    return pd.concat([theorem3_basins(loss=loss, n=21, steps=500) for loss in (theorem3_loss, theorem3_loss_script)],
                     ignore_index=True)


PHASE_SECTION = "phase_diagram.md"  # written by experiments.phase_diagram; REPORT.md carries it as a section


def write_report(out: Path, findings: dict[str, F.Finding], profile: dict, meta: dict) -> Path:
    """REPORT.md: per figure the claim, setup, numbers with intervals, verdict and the image."""
    lines = ["# Reproduction report: KV Shifting Attention (Xu et al., arXiv 2411.19574)", "",
             f"Generated by `python -m experiments.reproduce --profile {profile.get('name')}` from the CSVs in this "
             f"folder; every number below is computed from them (`kvshift_lens/figures.py`).", "",
             f"- profile: **{profile.get('name')}** — {profile.get('description', '').strip()}",
             f"- git commit: `{meta['git_commit']}`; wall time of this invocation: {meta['wall_seconds']:.0f} s"
             + (" (--draw-only: redrawn from existing runs; each provenance file's `training_time` gives the runs' "
                "own training seconds and wall span)" if meta.get("draw_only") else "") + "; "
             f"load average before/after: {meta['load_before']} / {meta['load_after']} on {os.cpu_count()} cores", "",
             "| figure | verdict |", "|---|---|"]
    lines += [f"| [{n}](#{n}) | {f.verdict} |" for n, f in findings.items()]
    for name, f in findings.items():
        lines += ["", f"## {name}", "", f"**Paper's claim.** {f.claim}", "", f"**Our setup.** {f.setup}", "",
                  "**Our numbers.**", ""] + [f"- {n}" for n in f.numbers] + \
                 ["", f"**Verdict: {f.verdict}.** " + " ".join(f.notes), "", f"![{name}]({name}.png)"]
    missing = [n for n in profile.get("draw", list(FIGURES)) if n not in findings]
    if missing:
        lines += ["", "## Not drawn yet", "", "These figures of the profile have no CSV here yet; their sweeps resume with "
                  f"`python -m experiments.reproduce --profile {profile.get('name')} --only {','.join(missing)}`:", ""]
        lines += [f"- {n}" for n in missing]
    path = out / "REPORT.md"
    path.write_text("\n".join(lines) + "\n")
    if (out / PHASE_SECTION).exists():
        splice_section(path, "phase_diagram", (out / PHASE_SECTION).read_text())
    return path


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="quick", help="conf/profile/<name>.yaml (quick | full | tiny)")
    parser.add_argument("--only", default="", help="comma-separated figure names (default: all in the profile)")
    parser.add_argument("--out", default="results", help="output folder for figures, CSVs and REPORT.md")
    parser.add_argument("--draw-only", action="store_true",
                        help="skip training; draw from whatever runs (finished or not) the sweep folders hold")
    parser.add_argument("--runs", default=None, help="root of the sweep directories (default runs/reproduce/<profile>)")
    args = parser.parse_args(argv)
    profile = load_profile(args.profile)
    names = [n for n in args.only.split(",") if n] or [n for n in FIGURES if n in profile.get("draw", list(FIGURES))]
    unknown = [n for n in names if n not in FIGURES]
    if unknown:
        raise SystemExit(f"error: unknown figure(s) {unknown}; choose from {list(FIGURES)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs_root = Path(args.runs or ROOT / "runs" / "reproduce" / profile["name"]).resolve()
    started, load_before = time.perf_counter(), _loadavg()
    findings: dict[str, F.Finding] = {}
    swept: dict[str, float] = {}
    failed: dict[str, str] = {}
    for name in tqdm(names, desc="figures", unit="fig"):
        spec = FIGURES[name]
        commands = sweep_commands(spec.sweep, profile, runs_root)
        t0, load0 = time.perf_counter(), _loadavg()
        try:
            if args.draw_only:
                swept.setdefault(spec.sweep, 0.0)
            if spec.sweep not in swept:
                run_sweep(commands, runs_root / "logs" / f"{spec.sweep}.log")
                swept[spec.sweep] = time.perf_counter() - t0
            t1 = time.perf_counter()
            table, findings[name] = draw(name, spec, runs_root / "sweeps" / spec.sweep, out)
        except Exception as e:  # one broken figure must not lose the others; rerun resumes its sweep
            failed[name] = f"{type(e).__name__}: {e}"
            print(f"error: {name}: {failed[name]}", file=sys.stderr)
            continue
        wall = {"draw_only": args.draw_only, "sweep": round(swept[spec.sweep], 1), "sweep_this_call": round(t1 - t0, 1),
                "draw": round(time.perf_counter() - t1, 1)}
        finished = len(list((runs_root / "sweeps" / spec.sweep).rglob("summary.json")))
        prov = provenance(name, spec, profile, commands, table, wall, {"before": load0, "after": _loadavg()}, finished,
                          runs_root / "sweeps" / spec.sweep)
        (out / f"{name}.provenance.json").write_text(json.dumps(prov, indent=2))
    for name in FIGURES:  # figures drawn by earlier invocations stay in the report, recomputed from their CSVs
        if name not in findings and (out / f"{name}.csv").exists():
            table = pd.read_csv(out / f"{name}.csv")
            findings[name] = F.find_fig2(table, _basins()) if name == "fig2_landscape" else FIGURES[name].find(table)
    meta = {"git_commit": git_commit(), "wall_seconds": time.perf_counter() - started, "draw_only": args.draw_only,
            "load_before": load_before, "load_after": _loadavg()}
    report = write_report(out, findings, profile, meta)
    theory.write_outputs(out)  # the theorem constructions: seconds, no training
    print(f"wrote {len(findings)} figure(s) and {report} in {meta['wall_seconds']:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
