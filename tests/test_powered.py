"""The powered profile's verdicts listed beside the quick profile's in REPORT.md (kvshift_lens/report/powered.py)."""

import pandas as pd

from kvshift_lens.report import powered
from kvshift_lens.report.replication import verdict_rows, write_verdicts
from kvshift_lens.report.verdicts import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, Verdict


def _rows(cannot_outcome: str):
    learns = Verdict(REPRODUCED, "r", "b")
    cannot = Verdict(cannot_outcome, "r", "b")
    return verdict_rows("reproduce", [("fig1a_depth", Verdict(INCONCLUSIVE, "r", "b"),
                                       [("1L KV shift learns", learns), ("1L vanilla cannot", cannot)])])


def test_comparison_marks_only_the_parts_whose_outcome_changed():
    table = powered.comparison(_rows(INCONCLUSIVE), _rows(REPRODUCED))
    assert list(table["changed"]) == [False, False, True]
    assert table.loc[2, "quick"] == INCONCLUSIVE and table.loc[2, "powered"] == REPRODUCED
    only_powered = powered.comparison(_rows(INCONCLUSIVE).iloc[:2], _rows(REPRODUCED))
    assert list(only_powered["changed"]) == [False, False, False] and only_powered.loc[2, "quick"] == ""


def test_no_section_without_a_powered_folder(tmp_path):
    write_verdicts(tmp_path / "reproduce_verdicts.csv", _rows(INCONCLUSIVE))
    assert powered.section(tmp_path) == []


def test_the_section_names_the_command_the_budgets_and_the_changed_verdicts(tmp_path):
    write_verdicts(tmp_path / "reproduce_verdicts.csv", _rows(INCONCLUSIVE))
    write_verdicts(tmp_path / "powered" / "reproduce_verdicts.csv", _rows(NOT_REPRODUCED))
    pd.DataFrame({"rule": ["fig1a: one vanilla layer", "fig8: shift v only"], "positive_steps": [250.0, None],
                  "cannot_budget_needed": [1000.0, None], "cannot_budget": [3200.0, None],
                  "cannot_judged": [True, False]}).to_csv(tmp_path / "powered" / "reproduce_cannot.csv", index=False)
    text = "\n".join(powered.section(tmp_path))
    assert "--profile powered --runs runs/reproduce/quick --only fig1a_depth --out results/powered" in text
    assert "1 of 3 verdicts differ" in text
    assert "fig1a: one vanilla layer: budget met: its failed runs trained ≥ 3,200 steps (needs ≥ 1,000: 4× the 250" in text
    assert "fig8: shift v only: not judged: the learner never reached the threshold" in text
    assert f"| fig1a_depth | 1L vanilla cannot | {INCONCLUSIVE} | **{NOT_REPRODUCED}** |" in text
