"""Markdown for results/REPORT.md: tables, one section per finding, and sections owned by different commands."""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path
from typing import Callable, Mapping, Optional

import pandas as pd

from kvshift_lens.report.claims import Finding
from kvshift_lens.report.multiplicity import count_table, fmt_adjusted
from kvshift_lens.training import provenance, sweeps


def md_table(df: pd.DataFrame, floatfmt: str = ".3g") -> str:
    """A GitHub markdown table (`DataFrame.to_markdown` via tabulate); NaN / NA as blank cells."""
    return df.astype(object).where(df.notna(), None).to_markdown(index=False, floatfmt=floatfmt, missingval="")


def verdict_line(f: Finding) -> str:
    """`**Verdict: reproduced.** Rule: ... Baseline: ...` — the verdict with its rule and baseline in one line."""
    return f"**Verdict: {f.verdict.label}.** Rule: {f.verdict.rule}. Baseline: {f.verdict.baseline}."


def finding_section(name: str, f: Finding, image: str = "") -> list[str]:
    """Lines of one REPORT.md section: claim, setup, numbers, verdict (rule, baseline), parts, notes, image."""
    lines = ["", f"## {name}", "", f"**Paper's claim.** {f.claim}", "", f"**Our setup.** {f.setup}", "",
             "**Our numbers.**", "", *[f"- {n}" for n in f.numbers], "", verdict_line(f)]
    if f.parts:
        lines += ["", f"Family of tests (Holm): the parts of {name}; a part's p is its test in the claimed direction.",
                  "", "| part | verdict | p (Holm-adjusted) | rule | baseline | evidence |", "|---|---|---|---|---|---|"]
        lines += [f"| {name_} | {v.label} | {fmt_adjusted(v)} | {v.rule} | {v.baseline} | {'; '.join(v.evidence)} |"
                  for name_, v in f.parts]
    elif f.verdict.evidence:
        lines += ["", "Evidence: " + "; ".join(f.verdict.evidence) + "."]
    if f.notes:
        lines += ["", *f.notes]
    return lines + (["", f"![{name}]({image})"] if image else [])


def verdict_counts(findings: Mapping[str, Finding], fragile: Optional[Mapping[str, bool]] = None) -> list[str]:
    """Lines of the summary's count table: verdicts before and after Holm's adjustment (and with fragile verdicts
    counted as inconclusive, when `fragile` from `report.robustness` is given)."""
    table = count_table({n: f.verdict for n, f in findings.items()}, fragile)
    return ["Verdict counts before and after Holm's adjustment within each claim's family of tests"
            + (", and with verdicts that change under the robustness variants (fragile) counted as inconclusive:"
               if fragile is not None else ":"), "", md_table(table)]


def spliced_sections(report: Path) -> dict[str, str]:
    """The `<!-- name -->` sections other commands spliced into `report` (name -> text), in order; {} if absent."""
    body = report.read_text() if report.exists() else ""
    found = re.findall(r"<!-- ([\w.-]+) -->\n(.*?)\n<!-- /\1 -->", body, flags=re.S)
    return dict(found)


def splice_section(report: Path, name: str, text: str) -> None:
    """Put `text` into `report` between `<!-- name -->` markers, replacing an earlier copy (or appending)."""
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    body = report.read_text() if report.exists() else ""
    block = f"{start}\n{text.strip()}\n{end}"
    if start in body and end in body:
        body = body[:body.index(start)] + block + body[body.index(end) + len(end):]
    else:
        body = body.rstrip("\n") + ("\n\n" if body else "") + block + "\n"
    report.write_text(body)


def output_paths(results: Path, prefix: str, suffixes: Mapping[str, str]) -> dict[str, Path]:
    """A study's output files, `key -> results/<prefix><suffix>`, with the results folder made (what `finish_study`'s
    `write_outputs` returns)."""
    results.mkdir(parents=True, exist_ok=True)
    return {key: results / f"{prefix}{suffix}" for key, suffix in suffixes.items()}


def finish_study(module: str, args: argparse.Namespace, section: str, sweep_dir: Path, started: float,
                 write_outputs: Callable[[dict], Mapping[str, Path]], **fields) -> None:
    """The end of every study command: the provenance record of this invocation (`fields`, its wall time since
    `started` and the sweep history), the outputs `write_outputs(record)` returns (with the section's "md"),
    that section spliced into results/REPORT.md, and the files written."""
    command = f"python -m {module}" + ("" if args.profile == "cpu" else f" --profile {args.profile}")
    record = provenance.record(command, profile=args.profile, **fields,
                               wall_seconds_this_invocation=round(time.perf_counter() - started, 1),
                               sweep_history=sweeps.sweep_history(sweep_dir))
    paths = write_outputs(record)
    splice_section(args.results_dir / "REPORT.md", section, paths["md"].read_text())
    print("\n".join(f"wrote {p}" for p in paths.values()))
