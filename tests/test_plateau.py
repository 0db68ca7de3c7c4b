"""The plateau rule (`report.plateau`) on synthetic learning curves: plateaued only when the tail's improvement
is significantly below the practical gain, weighed against the run's own evaluation noise."""

import math

import numpy as np
import pandas as pd

from kvshift_lens.report import protocol as P
from kvshift_lens.report.plateau import MIN_POINTS, tail_fit
from kvshift_lens.report.verdicts import CENSORED, FAILURE

RNG = np.random.default_rng(0)


def noisy(values: np.ndarray, sd: float) -> np.ndarray:
    return np.clip(values + RNG.normal(0, sd, len(values)), 0, 1)


def test_a_long_flat_tail_with_evaluation_noise_is_plateaued():
    steps = np.arange(0, 3001, 25)
    fit = tail_fit(steps, noisy(np.full(len(steps), 0.12), 0.003), eval_size=512)
    assert fit.label == FAILURE and fit.projected_gain < 0.01 and 0.002 < fit.noise < 0.005


def test_a_slow_linear_rise_is_censored():
    steps = np.arange(0, 3001, 25)
    fit = tail_fit(steps, noisy(0.1 + 0.4 * steps / 3000, 0.003), eval_size=512)
    assert fit.label == CENSORED and fit.slope > 0


def vanilla_2l(steps: np.ndarray) -> np.ndarray:
    """Like the 2-layer vanilla runs of fig1a: flat at ~0.1 until step ~1,100, then up to 0.99."""
    return np.where(steps < 1100, 0.1, 0.1 + 0.89 * np.clip((steps - 1100) / 400, 0, 1))


def test_a_late_phase_change_cut_early_is_censored_not_failed():
    steps = np.arange(0, 401, 50)
    draws = [tail_fit(steps, vanilla_2l(steps) + np.random.default_rng(seed).normal(0, 0.01, len(steps)), 512).label
             for seed in range(200)]
    assert draws[0] == CENSORED
    # the cut tail is flat, so only the slope's uncertainty keeps it open: a noise draw that slopes down reads as
    # plateaued at about the rule's level (the upper end of a 95 % interval: 2.5 % at a slope of 0), never as the rule's default
    assert draws.count(FAILURE) / len(draws) < 0.1


def test_the_same_curve_run_to_its_end_is_not_labelled_by_the_rule():
    steps = np.arange(0, 1601, 50)
    curve = pd.DataFrame({"run": "r", "step": steps, "induction_acc": vanilla_2l(steps)})
    assert P.run_outcomes(curve, []).outcome.item() == "success"


def test_a_tail_that_never_moves_gets_the_resolution_of_the_held_out_set_as_its_noise():
    steps = np.arange(0, 1001, 100)
    fit = tail_fit(steps, np.full(len(steps), 0.3), eval_size=256)
    assert fit.noise == 1 / 256 and fit.slope_ucb > 0  # never a zero-width interval


def test_too_few_evaluations_in_the_tail_are_censored():
    steps = np.arange(0, 301, 100)  # 2 evaluations in the last half
    fit = tail_fit(steps, [0.1, 0.1, 0.1, 0.1], eval_size=512)
    assert fit.n < MIN_POINTS and fit.label == CENSORED and math.isnan(fit.projected_gain)


def test_a_larger_practical_gain_or_a_shorter_horizon_labels_more_runs_plateaued():
    steps = np.arange(0, 2001, 50)
    values = noisy(np.full(len(steps), 0.2), 0.008)
    strict, loose = tail_fit(steps, values, 512, gain=0.005), tail_fit(steps, values, 512, gain=0.2)
    assert strict.label == CENSORED and loose.label == FAILURE
    assert tail_fit(steps, values, 512, horizon=0.01).label == FAILURE


def test_run_outcomes_reads_the_eval_size_of_each_run_when_the_frame_has_it():
    steps = np.arange(0, 1001, 100)
    rows = pd.DataFrame({"run": "r", "step": steps, "induction_acc": 0.3, "train.eval_size": 64})
    out = P.run_outcomes(rows, [])
    assert out.tail_noise.item() == 1 / 64
