"""Replication on fresh seeds: do a study's verdicts come out the same on seeds it never saw?

Every study command writes its verdicts in machine-readable form, `<results>/<study>_verdicts.csv`
(`verdict_rows` -> `write_verdicts`: one row per claim and part). Run with `seed_offset=K` it trains the
same grids on seeds K, K+1, … into its own run and results folders (`training.sweeps.study_dirs`), and
`replication_table` compares those verdicts with the committed ones:

| committed | replication | status |
|---|---|---|
| reproduced / not reproduced (decisive) | the same | **replicated** |
| decisive | anything else | **fragile** (the verdict counts as inconclusive) |
| partly reproduced / inconclusive | anything | not decisive |
| present | absent | missing (the replication did not judge it) |
| absent | present | new |

`replication_markdown` writes the table with counts per status (results/replication.md; the CSV beside it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd

from kvshift_lens.report.verdicts import NOT_REPRODUCED, REPRODUCED, Verdict

VERDICT_COLUMNS = ["study", "claim", "part", "outcome", "label"]
KEYS = ["study", "claim", "part"]
DECISIVE = (REPRODUCED, NOT_REPRODUCED)
REPLICATED, FRAGILE, NOT_DECISIVE, MISSING, NEW = "replicated", "fragile", "not decisive", "missing", "new"
STATUSES = (REPLICATED, FRAGILE, NOT_DECISIVE, MISSING, NEW)
TABLE_COLUMNS = [*KEYS, "committed", "replication", "status"]


def verdict_rows(study: str, claims: Iterable[tuple[str, Verdict, Sequence[tuple[str, Verdict]]]]) -> pd.DataFrame:
    """A study's verdicts as rows: each claim (part "") and each of its parts, with outcome and label."""
    rows = []
    for claim, verdict, parts in claims:
        rows.append({"study": study, "claim": claim, "part": "", "outcome": verdict.outcome, "label": verdict.label})
        rows += [{"study": study, "claim": claim, "part": name, "outcome": v.outcome, "label": v.label}
                 for name, v in parts]
    return pd.DataFrame(rows, columns=VERDICT_COLUMNS)


def write_verdicts(path: Path, rows: pd.DataFrame) -> Path:
    """Write `verdict_rows` as CSV; returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows[VERDICT_COLUMNS].to_csv(path, index=False)
    return path


def read_verdicts(paths: Iterable[Path]) -> pd.DataFrame:
    """Every `*_verdicts.csv` in `paths`, concatenated (empty frame if none)."""
    frames = [pd.read_csv(p, keep_default_na=False) for p in paths]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=VERDICT_COLUMNS)


def classify(committed: str, replication: str) -> str:
    """The status of one verdict (module table); "" stands for absent."""
    if not committed:
        return NEW
    if not replication:
        return MISSING
    if committed not in DECISIVE:
        return NOT_DECISIVE
    return REPLICATED if replication == committed else FRAGILE


def replication_table(committed: pd.DataFrame, replication: pd.DataFrame) -> pd.DataFrame:
    """One row per claim and part of either frame: both outcomes and the status (`classify`). Only the studies the
    replication ran are compared (a study not rerun is not "missing")."""
    committed = committed[committed["study"].isin(set(replication["study"]))]
    both = committed[[*KEYS, "outcome"]].merge(replication[[*KEYS, "outcome"]], on=KEYS, how="outer",
                                               suffixes=("_c", "_r"), sort=False).fillna("")
    return pd.DataFrame({**{k: both[k] for k in KEYS}, "committed": both["outcome_c"],
                         "replication": both["outcome_r"],
                         "status": [classify(c, r) for c, r in zip(both["outcome_c"], both["outcome_r"])]},
                        columns=TABLE_COLUMNS)


def replication_markdown(table: pd.DataFrame, offset: int, command: str) -> str:
    """results/replication.md: what was rerun, counts per status, the fragile verdicts, then the whole table."""
    from kvshift_lens.report.markdown import md_table

    counts = table["status"].value_counts()
    decisive = int(counts.get(REPLICATED, 0) + counts.get(FRAGILE, 0))
    fragile = table[table["status"] == FRAGILE]
    lines = ["## Replication on fresh seeds", "",
             f"Regenerate: `{command}` after each study ran with `seed_offset={offset}` (seeds {offset}, {offset + 1}, …; "
             "runs and outputs in their own `seed_offset_<K>` folders, never in results/). A decisive verdict "
             "(reproduced / not reproduced) replicates when the fresh seeds give the same one; one that does not is "
             "**fragile** and counts as inconclusive.", "",
             f"{int(counts.get(REPLICATED, 0))} of {decisive} decisive verdicts replicated; "
             + ", ".join(f"{s}: {int(counts.get(s, 0))}" for s in STATUSES) + ".", ""]
    if len(fragile):
        lines += ["Fragile: " + "; ".join(f"{r.study} — {r.claim}{' / ' + r.part if r.part else ''} "
                                         f"({r.committed} → {r.replication or 'absent'})"
                                         for r in fragile.itertuples()) + ".", ""]
    return "\n".join(lines + [md_table(table), ""])


def write_replication(results: Path, committed: pd.DataFrame, replication: pd.DataFrame, offset: int,
                      command: str) -> dict[str, Path]:
    """results/replication.csv and .md from the two verdict frames; returns the paths."""
    table = replication_table(committed, replication)
    paths = {"csv": results / "replication.csv", "md": results / "replication.md"}
    results.mkdir(parents=True, exist_ok=True)
    table.to_csv(paths["csv"], index=False)
    paths["md"].write_text(replication_markdown(table, offset, command))
    return paths
