"""Sub-circuit timing (Singh et al. 2024's A/B/C) from heads.csv, the shift's previous-token share, the order of
formation, and the study rules built on them (timing, ablation during training, the family's lags), each driven to
every outcome on synthetic data."""

import math

import numpy as np
import pandas as pd
import pytest

from kvshift_lens.analysis.subcircuits import (formation_order, shift_previous_token_share, subcircuit_scores,
                                               subcircuit_timing)
from kvshift_lens.report import interventions as study
from kvshift_lens.report.verdicts import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED

STEPS = [0, 10, 100, 1000]


def heads_rows(scores: dict[tuple[str, int, int], list[float]]) -> pd.DataFrame:
    """heads.csv rows: (metric, layer, head) -> one value per step of STEPS."""
    return pd.DataFrame([{"step": s, "layer": layer, "head": head, "metric": metric, "value": v}
                         for (metric, layer, head), values in scores.items() for s, v in zip(STEPS, values)])


VANILLA_2L = heads_rows({
    ("previous_token_score", 0, 0): [0.1, 0.2, 0.6, 0.9],  # A forms at 100
    ("previous_token_score", 0, 1): [0.1, 0.1, 0.1, 0.1],
    ("previous_token_score", 1, 0): [0.9, 0.9, 0.9, 0.9],  # a last-layer head never counts for A
    ("prefix_matching", 1, 0): [0.0, 0.1, 0.2, 0.8],  # B at 1000
    ("prefix_matching", 0, 1): [0.9, 0.9, 0.9, 0.9],  # a layer-0 head never counts for B
    ("copying_score", 1, 0): [0.1, 0.6, 0.4, 0.7],  # C dips below at 100: forms at 1000
    ("induction_score", 1, 0): [0.0, 0.0, 0.1, 0.9],
})


def test_a_b_and_c_are_read_from_the_right_layers_and_form_by_the_stays_above_rule():
    timing = subcircuit_timing(VANILLA_2L).set_index("subcircuit")
    assert timing.loc["A", "formation_step"] == 100 and timing.loc["A", "metric"] == "previous_token_score"
    assert timing.loc["B", "formation_step"] == 1000 and timing.loc["C", "formation_step"] == 1000
    assert timing.loc["induction", "formation_step"] == 1000 and "A_shift" not in timing.index
    assert timing.loc["A", "score_at_first"] == pytest.approx(0.1)
    assert formation_order(timing.reset_index()) == "A < B = C = induction"


def test_the_shift_share_is_the_keys_weight_on_earlier_tokens():
    heads = heads_rows({("alpha1", 0, 0): [1.0, 0.5, 0.0, -0.2], ("alpha2", 0, 0): [0.0, 0.5, 1.0, 0.6],
                        ("alpha1", 0, 1): [0.9, 0.9, 0.9, 0.9], ("alpha2", 0, 1): [0.1, 0.1, 0.1, 0.1],
                        ("beta1", 0, 0): [1.0] * 4, ("beta2", 0, 0): [1.0] * 4})  # values never count
    share = shift_previous_token_share(heads)
    head0 = share[share["head"] == 0].set_index("step")["value"]
    assert head0.tolist() == pytest.approx([0.0, 0.5, 1.0, 0.75])
    best = subcircuit_scores(heads)
    assert best[best.subcircuit == "A_shift"].set_index("step")["value"].tolist() == pytest.approx([0.1, 0.5, 1.0, 0.75])
    assert subcircuit_timing(heads).set_index("subcircuit").loc["A_shift", "formation_step"] == 10


def test_in_a_one_layer_model_every_sub_circuit_reads_layer_zero_and_a_never_formed_one_is_listed_last():
    heads = heads_rows({("previous_token_score", 0, 0): [0.1, 0.1, 0.1, 0.1],
                        ("prefix_matching", 0, 1): [0.1, 0.6, 0.7, 0.9], ("copying_score", 0, 1): [0.6] * 4,
                        ("induction_score", 0, 1): [0.1, 0.6, 0.7, 0.9],
                        ("alpha1", 0, 1): [0.4] * 4, ("alpha2", 0, 1): [0.6] * 4})
    timing = subcircuit_timing(heads)
    assert formation_order(timing) == "A_shift = C < B = induction; never: A"


def test_the_shift_share_of_an_untrained_kv_shift_model_comes_from_its_coefficients():
    import torch

    from kvshift_lens.analysis.emergence import shift_rows
    from kvshift_lens.models.coefficients import shift_coefficients
    from kvshift_lens.models.config import ModelConfig
    from kvshift_lens.models.transformer import build_module, to_bridge

    bridge = to_bridge(build_module(ModelConfig(mixer="kv_shift", n_layers=1, d_model=16, n_heads=4, d_vocab=16,
                                                n_ctx=16, seed=0)))
    rows = shift_rows(bridge).assign(step=0)
    coefs = shift_coefficients(bridge)
    expected = (coefs.alpha2.abs() / (coefs.alpha1.abs() + coefs.alpha2.abs())).max()
    assert subcircuit_scores(rows)["value"].item() == pytest.approx(expected)
    assert torch.isfinite(torch.tensor(expected)) and expected > study.MATCH_FACTOR / 10  # α2 is not 0 at init


# ---------------------------------------------------------------------------- the timing rule

def times(values: list[float], last: float = 2000) -> tuple[np.ndarray, np.ndarray]:
    """(step, formed) per seed; NaN: never formed (censored at `last`)."""
    v = np.asarray(values, dtype=float)
    return np.where(np.isnan(v), last, v), ~np.isnan(v)


@pytest.mark.parametrize("at_init,kv,bc,outcome,reason", [
    ([True] * 6, [300, 320, 310, 290, 330, 300], [300, 310, 320, 300, 290, 305], REPRODUCED, ""),
    ([True] * 6, [300, 320, 310, 290, 330, 300], [1000, 1100, 1050, 1200, 990, 1010], NOT_REPRODUCED, ""),
    ([False, False, False, True, True, True], [300] * 6, [300] * 6, NOT_REPRODUCED, "A absent at init"),
    ([True] * 6, [200, 700, 250, 650, 240, 600], [300, 310, 320, 300, 290, 305], INCONCLUSIVE,
     "interval crosses a match bound"),
    ([True] * 6, [300] * 6, [math.nan] * 6, INCONCLUSIVE, "a median undefined"),
    ([], [300] * 6, [300] * 6, INCONCLUSIVE, "no data"),
    ([True] * 6, [125] * 6, [2000] * 6, NOT_REPRODUCED, ""),  # no spread, but 16x apart: beyond the resolution
    ([True] * 6, [500] * 6, [1000] * 6, INCONCLUSIVE,  # no spread, 2x apart: within the checkpoints' resolution
     "zero-width interval: every seed at the same checkpoints (denser checkpoints needed)"),
])
def test_the_timing_rule_gives_each_outcome(at_init, kv, bc, outcome, reason):
    v = study.timing_verdict(np.asarray(at_init, dtype=bool), {"kv": times(kv), "bc": times(bc)}, n_boot=400)
    assert (v.outcome, v.reason) == (outcome, reason), v.evidence


def test_sub_circuit_order_reads_the_best_lr_runs_heads_and_judges_the_prediction():
    kv = heads_rows({("previous_token_score", 0, 0): [0.1] * 4, ("prefix_matching", 0, 0): [0.0, 0.1, 0.8, 0.9],
                     ("copying_score", 0, 0): [0.1, 0.6, 0.7, 0.8], ("induction_score", 0, 0): [0.0, 0.1, 0.8, 0.9],
                     ("alpha1", 0, 0): [0.4] * 4, ("alpha2", 0, 0): [0.6] * 4})
    early = VANILLA_2L.assign(value=np.where(VANILLA_2L.step == 100, VANILLA_2L.value.clip(lower=0.8),
                                             VANILLA_2L.value))  # B and C (and induction) form at 100
    cells = pd.DataFrame([{"task": "induction", "arm": arm, "seed": s, "run": f"{arm}/{s}"}
                          for arm in (study.KV, study.VANILLA) for s in range(6)])
    heads = {f"{study.KV}/{s}": kv for s in range(6)} | {f"{study.VANILLA}/{s}": early for s in range(6)}
    timings = study.timing_table(cells, heads)
    assert set(timings.arm) == {study.KV, study.VANILLA} and (timings.last_step == 1000).all()
    table, verdict = study.subcircuit_order(timings, n_boot=200)
    # induction at 100 in every KV 1L seed, B and C at 100 in every vanilla seed: a ratio of 1 with no spread
    assert verdict.outcome == INCONCLUSIVE and verdict.reason.startswith("zero-width"), verdict.evidence
    assert "ratio 1.00 [1.00, 1.00]" in verdict.evidence
    orders = table.drop_duplicates("arm").set_index("arm")["order"]
    assert orders[study.KV] == "A_shift < C < B = induction; never: A"
    assert orders[study.VANILLA] == "C < A = B = induction"  # C was at 0.6 by step 10


# ---------------------------------------------------------------------------- ablation during training

def cells_of(arms: dict[str, list[float]], task: str = "induction", budget: float = 2000) -> pd.DataFrame:
    """`cell_results`-like rows: arm -> time to 90 % per seed (NaN: never, censored at `budget`)."""
    return pd.DataFrame([{"task": task, "arm": arm, "release": 0, "seed": seed, "time": budget if t != t else t,
                          "event": t == t, "run": f"{arm}/{seed}"} for arm, ts in arms.items() for seed, t in enumerate(ts)])


PLAIN = [1000, 1100, 1050, 1200, 990, 1010]
NEVER = [math.nan] * 6
STRONGEST = {0: 2, 1: 2, 2: 0, 3: 2, 4: 1, 5: 2}  # seed -> the plain run's strongest layer-0 previous-token head


@pytest.mark.parametrize("matched,plain,outcome,reason", [
    ([1300, 1400, 1350, 1500, 1250, 1300], PLAIN, REPRODUCED, ""),  # formed through another head, ~300 steps later
    (NEVER, PLAIN, NOT_REPRODUCED, ""),
    ([1300] * 6, NEVER, INCONCLUSIVE, "plain vanilla 2L has no median"),
])
def test_the_ablation_rule_gives_each_outcome_and_picks_each_seeds_strongest_head(matched, plain, outcome, reason):
    arms = {study.VANILLA: plain}
    for h in range(3):  # the matched head's time where it is that seed's strongest, an early time elsewhere
        arms[f"{study.ABLATED}{h}"] = [t if STRONGEST[s] == h else 900.0 for s, t in enumerate(matched)]
    table, verdict = study.ablation(cells_of(arms), STRONGEST, n_boot=300)
    assert (verdict.outcome, verdict.reason) == (outcome, reason), verdict.evidence
    row = table.set_index("arm").loc[f"{study.ABLATED}<strongest>"]
    assert row.seeds == 6 and row.reached_90 == sum(t == t for t in matched)


def test_the_ablation_rule_is_inconclusive_without_ablated_runs():
    assert study.ablation(cells_of({study.VANILLA: PLAIN}), STRONGEST, n_boot=100)[1].reason == "no ablated runs"


def test_ablation_arms_are_read_from_the_run_config():
    iv = [{"hook": "blocks.0.attn.hook_z", "action": "zero", "heads": [3], "start": 0, "end": None}]
    assert study.arm_of("none", 2, iv) == (f"{study.ABLATED}3", 0)
    off = [{"hook": "blocks.0.attn.x_mix.coefficients", "action": "clamp", "value": "shift_off", "end": None}]
    assert study.arm_of("short_conv", 1, off) == ("short_conv_1l+lags_off[x_mix]", 0)


# ---------------------------------------------------------------------------- the family's lags on MQAR

ON = [400, 420, 410, 390, 430, 400]


@pytest.mark.parametrize("off,outcome,reason", [
    (NEVER, REPRODUCED, ""),  # no MQAR without the lags
    ([450, 430, 440, 460, 420, 450], NOT_REPRODUCED, ""),  # about as fast without them
    ([1000, math.nan, 1200, math.nan, 1100, math.nan], INCONCLUSIVE, "not significant"),  # slower, too few seeds apart
])
def test_the_lag_rule_gives_each_outcome(off, outcome, reason):
    ranks = {REPRODUCED: 1e-4, NOT_REPRODUCED: 0.3, INCONCLUSIVE: 0.2}
    v = study.lags_verdict(study.km_median(*times(ON)), study.km_median(*times(off)), ranks[outcome])
    assert (v.outcome, v.reason) == (outcome, reason), v.evidence


def test_the_lag_rule_is_inconclusive_without_a_median_with_the_lags():
    assert study.lags_verdict(math.nan, math.nan, 0.01).reason == "no median with the lags"


def test_lag_roles_pairs_each_mixer_with_its_lags_off_arm_on_mqar_only():
    kv_off, k_off, canon_off = ("kvshift_1l+lags_off[k_shift,v_shift]", "kvshift_1l+lags_off[k_shift]",
                                "canon_1l+lags_off[x_mix]")
    cells = pd.concat([cells_of({"kvshift_1l": ON, kv_off: NEVER, k_off: NEVER, "canon_1l": ON,
                                 canon_off: [450, 430, 440, 460, 420, 450], "short_conv_1l": ON}, task="mqar"),
                       cells_of({"kvshift_1l": ON, kv_off: ON})])  # induction arms never count here
    table, verdicts = study.lag_roles(cells)
    assert list(zip(table.arm, table.lags_off)) == [("canon_1l", "x_mix"), ("kvshift_1l", "k_shift,v_shift"),
                                                    ("kvshift_1l", "k_shift")]  # short_conv: no lags-off arm
    assert verdicts[kv_off].outcome == REPRODUCED and verdicts[k_off].outcome == REPRODUCED
    assert verdicts[canon_off].outcome == NOT_REPRODUCED


def test_the_strongest_previous_token_head_is_read_at_the_last_checkpoint_of_layer_zero():
    from kvshift_lens.analysis.subcircuits import strongest_previous_head

    heads = heads_rows({("previous_token_score", 0, 0): [0.9, 0.9, 0.2, 0.2], ("previous_token_score", 0, 1): [0.1] * 4,
                        ("previous_token_score", 0, 3): [0.1, 0.2, 0.6, 0.8], ("previous_token_score", 1, 2): [1.0] * 4})
    assert strongest_previous_head(heads) == 3 and strongest_previous_head(heads.iloc[:0]) is None
