"""Every verdict rule of the language-model study driven to each outcome it can return (kvshift_lens.report.lm_claims)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from kvshift_lens.report import lm_claims

from kvshift_lens.report.lm_claims import (
    LR, at_best_lr, find_lm_gap, find_lm_induction, find_lm_table4, flatness, lr_table, next_lrs, tail_drop,
)
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
    exact = "exact sign-flip test p = 0.125 (distribution-free; the smallest p it can give at n=3 is 0.125)"
    assert (exact in f.parts[0][1].evidence) == (outcome == REPRODUCED)  # three positive gaps: the test's floor


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


def lr_runs(losses: dict[float, list[float]], label: str = "vanilla 2L llama", diverged: tuple = ()) -> pd.DataFrame:
    """One row per seed and rate: `final_eval_loss` per seed; rates in `diverged` have one run that diverged."""
    return pd.DataFrame([{"run": f"{label}/{lr}/{seed}", "label": label, "seed": seed, LR: lr, "final_eval_loss": loss,
                          "status": "diverged" if lr in diverged and seed == 0 else "completed"}
                         for lr, per_seed in losses.items() for seed, loss in enumerate(per_seed)])


def test_each_arch_is_judged_at_its_lowest_mean_held_out_loss_among_rates_that_never_diverged():
    runs = pd.concat([lr_runs({1e-3: [2.0, 2.1, 2.05], 3e-3: [1.8, 1.85, 1.9], 1e-2: [1.5, 1.6, 1.55]},
                              diverged=(1e-2,)),
                      lr_runs({1e-3: [2.0, 2.0, 2.1], 3e-3: [2.2, 2.3, 2.2]}, label="kvshift 2L llama")])
    table = lr_table(runs)
    best = table[table["best"]].set_index("label")
    assert best.loc["vanilla 2L llama", "lr"] == 3e-3 and best.loc["vanilla 2L llama", "edge"] == ""  # 1e-2 diverged
    assert best.loc["kvshift 2L llama", "lr"] == 1e-3 and best.loc["kvshift 2L llama", "edge"] == "lowest rate tried"
    assert set(at_best_lr(runs, runs, table)["run"]) == {f"vanilla 2L llama/0.003/{s}" for s in range(3)} | {
        f"kvshift 2L llama/0.001/{s}" for s in range(3)}
    assert lr_table(lr_runs({2e-3: [2.0, 2.1]}))["edge"].tolist() == ["single rate"]
    fewer = lr_table(lr_runs({1e-3: [2.0, 2.1, 2.05], 3e-3: [1.0]}))  # a rate with one finished seed never wins
    assert fewer.loc[fewer["best"], "lr"].tolist() == [1e-3]


@pytest.mark.parametrize("rates, diverged, added", [
    ({1e-3: [2.0, 2.1], 3e-3: [1.8, 1.9], 1e-2: [1.5, 1.6]}, (), {3e-2}),  # best at the top: one rate above
    ({1e-3: [1.5, 1.6], 3e-3: [1.8, 1.9], 1e-2: [2.0, 2.1]}, (), {3e-4}),  # best at the bottom: one rate below
    ({1e-3: [2.0, 2.1], 3e-3: [1.5, 1.6], 1e-2: [2.0, 2.1]}, (), set()),  # interior: nothing to add
    ({3e-3: [2.0, 2.1], 1e-2: [1.8, 1.9], 3e-2: [1.5, 1.6]}, (3e-2,), set()),  # the top rate diverged: stop
    ({1e-2: [2.0, 2.1], 3e-2: [1.8, 1.9], 1e-1: [1.5, 1.6]}, (), set()),  # 3e-1 is past the bound 1e-1
    ({3e-3: [2.0, 2.1]}, (), set()),  # a single rate is the grid as written
], ids=["top-edge", "bottom-edge", "interior", "diverged", "bound", "single"])
def test_an_edge_best_rate_adds_the_next_half_decade_rate_for_both_archs_of_its_size(rates, diverged, added):
    runs = pd.concat([lr_runs(rates, diverged=diverged, label="kvshift 2L llama"),
                      lr_runs({lr: [2.5 + 0.1 * (i != 1)] * 2 for i, lr in enumerate(rates)},
                              label="vanilla 2L llama")])  # vanilla's best rate is interior (or its only one)
    assert next_lrs(lr_table(runs)) == ({"2L llama": added} if added else {})


def test_lr_rounds_add_the_rate_for_both_archs_resume_killed_runs_and_stop_past_divergence_and_bounds(tmp_path,
                                                                                                      monkeypatch):
    """`plan_lrs` on run directories of a study replicated at seed offset 10 (lm_runs stubbed: final losses given)."""
    table = {}  # run -> (label, lr, final loss, status)

    def add(model: str, lr: str, seed: int, loss: float, status: str = "completed") -> None:
        job = [f"model={model}", f"seed={seed}", "+experiment=lm", f"train.lr={lr}"]
        d = tmp_path / model / f"lr{lr}" / f"seed{seed}"
        (d / ".hydra").mkdir(parents=True)
        (d / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([*job, f"out_dir={tmp_path}"]))
        (d / "config.json").write_text("{}")
        (d / "metrics.csv").write_text("step\n0\n")
        if status != "incomplete":
            (d / "summary.json").write_text(json.dumps({"status": status}))
        table[str(d.relative_to(tmp_path))] = (f"{model.split('_')[0]} 2L llama", float(lr), loss, status)

    def lm_runs(dirs, root):
        rows = [dict(zip(["label", LR, "final_eval_loss", "status"], table[str(d.relative_to(root))]),
                     run=str(d.relative_to(root))) for d in dirs]
        return pd.DataFrame(rows).query("status in ['completed', 'diverged']")

    monkeypatch.setattr(lm_claims, "lm_runs", lm_runs)
    grid = [[f"model={m}", f"seed={s}", "+experiment=lm", f"train.lr={lr}"]
            for m in ("vanilla_lm", "kvshift_lm") for s in (10, 11) for lr in ("1e-3", "3e-3", "1e-2")]
    for m, losses in (("vanilla_lm", (2.0, 1.8, 1.9)), ("kvshift_lm", (2.0, 1.8, 1.7))):  # kvshift: best at the top
        for s in (10, 11):
            for lr, loss in zip(("1e-3", "3e-3", "1e-2"), losses):
                add(m, lr, s, loss)
    plan = lm_claims.plan_lrs(tmp_path, grid)
    assert sorted(map(tuple, plan)) == sorted((f"model={m}", f"seed={s}", "+experiment=lm", "train.lr=3e-2")
                                              for m in ("vanilla_lm", "kvshift_lm") for s in (10, 11))
    add("kvshift_lm", "3e-2", 10, 1.6), add("kvshift_lm", "3e-2", 11, 1.6)  # still best at the top
    add("vanilla_lm", "3e-2", 10, 9.0, "diverged"), add("vanilla_lm", "3e-2", 11, 9.0, "incomplete")  # killed
    plan = lm_claims.plan_lrs(tmp_path, grid)
    assert plan[0] == ["model=vanilla_lm", "seed=11", "+experiment=lm", "train.lr=3e-2"]  # resumed first
    assert plan[1:] == [["model=kvshift_lm", f"seed={s}", "+experiment=lm", "train.lr=1e-1"] for s in (10, 11)]
    (tmp_path / "vanilla_lm" / "lr3e-2" / "seed11" / "summary.json").write_text(json.dumps({"status": "completed"}))
    table["vanilla_lm/lr3e-2/seed11"] = ("vanilla 2L llama", 0.03, 2.5, "completed")
    add("kvshift_lm", "1e-1", 10, 1.5), add("kvshift_lm", "1e-1", 11, 1.5)  # best at 1e-1: 3e-1 is past the bound
    assert lm_claims.plan_lrs(tmp_path, grid) == []


def test_the_lr_table_read_back_from_csv_names_no_edge_for_an_interior_best(tmp_path):
    runs = lr_runs({1e-3: [2.0, 2.1, 2.05], 3e-3: [1.8, 1.85, 1.9], 1e-2: [1.9, 2.0, 1.95]})
    lr_table(runs).to_csv(tmp_path / "lrs.csv", index=False)
    back = pd.read_csv(tmp_path / "lrs.csv")
    c = curves([0.1, 0.08, 0.09]).assign(label="vanilla 2L llama")
    assert flatness(c, back)["vanilla 2L llama"][1].startswith("best lr 0.003; loss fell")  # no "(nan)" edge


def tail(drops: list[float]) -> pd.DataFrame:
    """Curves of one label whose held-out loss falls by `drops[seed]` between steps 200 and 400."""
    return pd.DataFrame([{"run": f"r/{seed}", "seed": seed, "label": "kvshift 2L llama", "variant": "llama",
                          "step": step, "eval_loss": 2.0 - (d if step == 400 else 0.0)}
                         for seed, d in enumerate(drops) for step in (0, 200, 400)])


@pytest.mark.parametrize("drops, state", [
    ([0.004, 0.006, 0.005], "flat"),  # upper 95 % bound below 0.01
    ([0.002, 0.016, 0.001], "still falling"),  # mean 0.006, but the upper bound reaches 0.01: not shown flat
    ([0.05, 0.04, 0.06], "still falling"),
    ([-0.05, -0.04, -0.06], "rising"),
])
def test_flatness_reads_the_interval_of_the_tail_drop(drops, state):
    got, text = flatness(tail(drops))["kvshift 2L llama"]
    assert got == state and text.endswith(f": {state} (\"flat\" would be a drop within ±0.01 nats)")


def test_the_gap_says_whether_each_loss_curve_is_flat_or_still_falling():
    falling = curves([0.10, 0.08, 0.09])  # vanilla 1.9 -> 1.8 between steps 200 and 400
    assert all("still falling" in text for _, text in flatness(falling).values())
    f = find_lm_gap(falling, runs_of(falling))
    assert any("still falling" in e for e in f.parts[0][1].evidence) and any("fixed budget" in n for n in f.notes)
    flat = falling.copy()
    flat.loc[flat["step"] == 400, "eval_loss"] = flat.loc[flat["step"] == 200, "eval_loss"].to_numpy() - 0.001
    assert all(": flat " in text for _, text in flatness(flat).values())
    assert not find_lm_gap(flat, runs_of(flat)).notes
    drops = tail_drop(falling)
    assert (drops["from_step"] == 200).all() and drops.loc[drops["run"] == "vanilla/0", "drop"].iloc[0] == pytest.approx(0.1)
