"""Every verdict rule of the language-model study driven to each outcome it can return (kvshift_lens.report.lm_claims)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kvshift_lens.report.lm_claims import find_lm_gap, find_lm_induction, find_lm_table4
from kvshift_lens.report.tables import QUADRANTS
from kvshift_lens.report.verdicts import INCONCLUSIVE, NOT_REPRODUCED, PARTLY, REPRODUCED

CONFIG = {"task.corpus": "shakespeare", "task.tokenizer": "char", "task.seq_len": 256, "train.batch_size": 16,
          "train.lr": 2e-3, "train.warmup": 50, "train.schedule": "cosine", "model.d_model": 128, "model.n_heads": 4,
          "model.d_mlp": 352, "model.norm": "rmsnorm", "model.mlp": "swiglu", "model.positions": "rotary", "steps": 400}


def curves(final_gaps: list[float], half_gaps: list[float] | None = None, variant: str = "llama") -> pd.DataFrame:
    """Curves of one size: per seed, vanilla at 2.0 / 1.9 / 1.8 and KV shift lower by the given gaps (half, final)."""
    half_gaps = half_gaps if half_gaps is not None else final_gaps
    rows = []
    for seed, (gh, gf) in enumerate(zip(half_gaps, final_gaps)):
        for step, van, gap in ((0, 4.3, 0.0), (200, 1.9, gh), (400, 1.8, gf)):
            for arch, loss in (("vanilla", van), ("kvshift", van - gap)):
                rows.append({"run": f"{arch}/{seed}", "seed": seed, "arch": arch, "variant": variant, "n_layers": 2,
                             "label": f"{arch} 2L {variant}", "n_params": 1000, "step": step, "tokens": step * 4096,
                             "eval_loss": loss, "eval_bpb": loss / np.log(2)})
    return pd.DataFrame(rows)


def runs_of(curves_: pd.DataFrame) -> pd.DataFrame:
    return curves_.drop_duplicates("run").assign(**CONFIG)


@pytest.mark.parametrize("gaps, outcome", [
    ([0.10, 0.08, 0.09], REPRODUCED),
    ([-0.10, -0.08, -0.09], NOT_REPRODUCED),
    ([0.10, -0.08, 0.01], INCONCLUSIVE),
])
def test_gap_rule_reads_the_paired_interval_over_seeds(gaps, outcome):
    c = curves(gaps)
    f = find_lm_gap(c, runs_of(c))
    assert f.verdict.outcome == outcome and f.parts[0][1].outcome == outcome


def test_gap_rule_says_whether_the_gap_closes_and_combines_sizes():
    c = pd.concat([curves([0.02, 0.03, 0.025], half_gaps=[0.10, 0.11, 0.09]),
                   curves([-0.1, 0.1, 0.0], variant="attn-only")], ignore_index=True)
    f = find_lm_gap(c, runs_of(c))
    assert "(closes)" in f.numbers[1] and f.verdict.outcome == PARTLY  # 2L llama part reproduced, attn-only inconclusive
    widening = curves([0.10, 0.11, 0.09], half_gaps=[0.02, 0.03, 0.025])
    assert "(widens)" in find_lm_gap(widening, runs_of(widening)).numbers[0]


def induction_runs(kv_layers: list[str], va_layers: list[str], co: list[object]) -> pd.DataFrame:
    rows = []
    for arch, layers in (("kvshift", kv_layers), ("vanilla", va_layers)):
        for seed, lay in enumerate(layers):
            first = f"L{lay.split()[0]}H0" if lay else None
            rows.append({"run": f"{arch}/{seed}", "seed": seed, "arch": arch, "variant": "llama", "n_layers": 2,
                         "label": f"{arch} 2L llama", "induction_layers": lay, "first_induction_head": first,
                         "emergence_step": 100.0 if lay else np.nan, "best_final_induction_score": 0.6 if lay else 0.01,
                         "icl_jump_step": 90.0, "final_icl_band_score": -0.2, "final_icl_score": -0.2})
    out = pd.DataFrame(rows)
    out["icl_jump_with_emergence"] = co
    return out


@pytest.mark.parametrize("kv, va, co, outcomes", [
    (["0", "0", "0 1"], ["1", "1", "1"], [True] * 6, [REPRODUCED] * 3),
    (["1", "1", "1"], ["0", "0 1", "0"], [False] * 6, [NOT_REPRODUCED] * 3),
    (["", "", ""], ["", "", ""], [None] * 6, [INCONCLUSIVE] * 3),  # nothing formed within the budget: censored
    (["0", "", ""], ["1", "", ""], [True, None, None, True, None, None], [INCONCLUSIVE] * 3),
])
def test_induction_rules_censor_runs_without_an_induction_head(kv, va, co, outcomes):
    f = find_lm_induction(induction_runs(kv, va, co), 0.5)
    assert [v.outcome for _, v in f.parts] == outcomes


def shifts(init: list[int], end: list[int], runs: int = 3) -> pd.DataFrame:
    """Heads of one label with `init` / `end` counts per quadrant (QUADRANTS order), dealt over `runs` runs;
    head i sits in the i-th quadrant of each list, so equal lists leave every head where it was."""
    rows = []
    for progress, counts in ((0.0, init), (1.0, end)):
        heads = [q for q, n in zip(QUADRANTS, counts) for _ in range(n)]
        rows += [{"run": f"kvshift/{i % runs}", "layer": 0, "head": i // runs, "label": "kvshift 2L llama",
                  "progress": progress, "quadrant": q} for i, q in enumerate(heads)]
    return pd.DataFrame(rows)


@pytest.mark.parametrize("init, end, outcome", [
    ([11, 11, 11, 11], [20, 2, 2, 20], REPRODUCED),  # onto the diagonal, as in the paper
    ([11, 11, 11, 11], [2, 20, 20, 2], NOT_REPRODUCED),  # off the diagonal
    ([11, 11, 11, 11], [11, 11, 11, 11], INCONCLUSIVE),  # where init left them
    ([20, 2, 2, 20], [20, 2, 2, 20], INCONCLUSIVE),  # on the diagonal already at init: not training's doing
])
def test_table4_adds_the_papers_diagonal_pattern_against_the_heads_own_init(init, end, outcome):
    f = find_lm_table4(shifts(init, end))
    assert [name for name, _ in f.parts] == [
        "kvshift 2L llama: training spreads heads over all four quadrants",
        "kvshift 2L llama: training moves heads onto the diagonal quadrants, as in the paper"]
    assert f.parts[-1][1].outcome == outcome and "paper 102/128" in f.numbers[-1]


def test_table4_on_the_lm_never_decides_on_a_zero_width_interval_when_no_head_moved():
    f = find_lm_table4(shifts([2, 1, 1, 2], [2, 1, 1, 2]))  # 6 heads, none changed quadrant
    spread = dict(f.parts)["kvshift 2L llama: training spreads heads over all four quadrants"]
    assert spread.outcome == INCONCLUSIVE and "0/6 heads changed quadrant [0.00, 0.46]" in spread.evidence[-1]
    assert "not testable at this scale" in f.numbers[0]  # 6 heads: expected counts far below 5
