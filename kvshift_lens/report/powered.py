"""The full protocol's verdicts beside the quick profile's, for REPORT.md.

The quick reproduction trains a censored run on once (cap 2×), so a "cannot learn" claim that needs ≥ 4× the
learner's steps stays inconclusive there. `python -m experiments.reproduce --profile powered --runs
runs/reproduce/quick --only <figures> --out results/powered` reuses the quick runs and trains on to 8×; its
verdicts (`results/powered/reproduce_verdicts.csv`) and the budgets behind its "cannot" verdicts
(`reproduce_cannot.csv`) are listed in the main report by `section`.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from kvshift_lens.report.replication import KEYS, read_verdicts

FOLDER = "powered"  # results/<FOLDER>: the powered profile's outputs, when it was run


def comparison(quick: pd.DataFrame, powered: pd.DataFrame) -> pd.DataFrame:
    """Per claim and part the powered profile judged: its label, the quick profile's, and whether the outcome
    changed."""
    both = powered[[*KEYS, "outcome", "label"]].merge(quick[[*KEYS, "outcome", "label"]], on=KEYS, how="left",
                                                     suffixes=("_powered", "_quick")).fillna("")
    return pd.DataFrame({"claim": both["claim"], "part": both["part"], "quick": both["label_quick"],
                         "powered": both["label_powered"],
                         "changed": (both["outcome_quick"] != "") & (both["outcome_quick"] != both["outcome_powered"])})


def cannot_lines(cannot: pd.DataFrame) -> list[str]:
    """One line per "cannot learn" rule: the budget it was judged at against the one it needs."""
    lines = []
    for r in cannot.itertuples():
        if r.positive_steps != r.positive_steps:
            lines.append(f"- {r.rule}: not judged: the learner never reached the threshold")
        elif r.cannot_budget != r.cannot_budget:
            lines.append(f"- {r.rule}: not judged: no run failed (needs ≥ {r.cannot_budget_needed:,.0f} steps)")
        else:
            lines.append(f"- {r.rule}: budget {'met' if r.cannot_judged else 'not met'}: its failed runs trained "
                         f"≥ {r.cannot_budget:,.0f} steps (needs ≥ {r.cannot_budget_needed:,.0f}: "
                         f"{r.cannot_budget_needed / r.positive_steps:g}× the {r.positive_steps:,.0f} steps the learner "
                         "needed); the verdict also needs every run failed, none censored")
    return lines


def section(results: Path) -> list[str]:
    """REPORT.md lines for `results/powered` (nothing when the powered profile was not run there)."""
    folder = results / FOLDER
    verdicts = folder / "reproduce_verdicts.csv"
    if not verdicts.exists() or not (results / "reproduce_verdicts.csv").exists():
        return []
    powered = read_verdicts([verdicts])
    table = comparison(read_verdicts([results / "reproduce_verdicts.csv"]), powered)
    figures = ",".join(dict.fromkeys(powered["claim"]))
    lines = ["", "## The full protocol (powered profile), where it was run", "",
             f"`python -m experiments.reproduce --profile powered --runs runs/reproduce/quick --only {figures} "
             f"--out results/{FOLDER}` trains the quick runs on: censored runs doubled up to 8× their budget, \"cannot "
             "learn\" controls to ≥ 4× the steps the learner needed (the quick profile stops at 2×, short of that). "
             f"Its report is [{FOLDER}/REPORT.md]({FOLDER}/REPORT.md); {int(table['changed'].sum())} of "
             f"{len(table)} verdicts differ from the quick profile's above (labels before the robustness check).", ""]
    cannot = folder / "reproduce_cannot.csv"
    if cannot.exists():
        lines += ["Budgets behind the \"cannot learn\" verdicts:", "", *cannot_lines(pd.read_csv(cannot)), ""]
    rows = ["| figure | part | quick | powered |", "|---|---|---|---|"]
    rows += [f"| {r.claim} | {r.part or '(figure)'} | {r.quick} | {'**' + r.powered + '**' if r.changed else r.powered} |"
             for r in table.itertuples()]
    return lines + rows
