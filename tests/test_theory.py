"""Theorems 1-3 of Xu et al. (arXiv 2411.19574) as checked by kvshift_lens.analysis.theory (`pytest -k theorem`)."""

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch

from kvshift_lens.models.transformer import attention_layers, model_config
from kvshift_lens.models.coefficients import shift_coefficients
from kvshift_lens.analysis.theory import (
    attention_output, induction_head_operator, plot_theorem1_error, plot_theorem3_landscape, theorem1_bound, theorem1_error, theorem1_model, theorem1_table, theorem2_gaps, theorem2_model, theorem3_basins, theorem3_descent, theorem3_gradient, theorem3_loss, theorem3_loss_script,
)


@pytest.fixture(autouse=True)
def one_thread():
    """These are tiny tensors: one thread avoids spin-wait contention on a busy 2-core box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def gaussian(batch=4, T=12, d=6, seed=0, dtype=torch.float64):
    return torch.randn(batch, T, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ---------------------------------------------------------------- Theorem 2 (and Definition 1)


def test_theorem2_operator_copies_token_after_previous_occurrence():
    tokens = torch.eye(5, dtype=torch.float64)  # orthonormal embeddings A..E
    x = tokens[[0, 1, 2, 3, 0]][None]  # A B C D A
    out = induction_head_operator(x, m=0.01, sigma=0.05)
    torch.testing.assert_close(out[0, -1], tokens[1], atol=1e-6, rtol=0)  # -> B


def test_theorem2_operator_is_zero_where_definition1_sum_is_empty():
    out = induction_head_operator(gaussian(), m=0.3, sigma=1.0)
    assert out[:, :2].abs().max() == 0  # t = 0, 1 have no key s in 1..t-1
    assert out[:, 2:].abs().min(dim=-1).values.gt(0).all()


def test_theorem2_model_holds_the_proof_construction():
    model = theorem2_model(d=6, m=0.3, sigma=0.5, n_ctx=12)
    coeffs = shift_coefficients(model).iloc[0]
    assert (coeffs.alpha1, coeffs.alpha2, coeffs.beta1, coeffs.beta2) == (0.0, 1.0, 1.0, 0.0)
    attn = attention_layers(model)[0]
    assert attn.alibi.tolist() == [0.3]
    torch.testing.assert_close(attn.q.weight, torch.eye(6, dtype=torch.float64) * math.sqrt(6) / 0.5)
    cfg = model_config(model)
    assert (cfg.arch, cfg.n_layers, cfg.d_model, cfg.positions) == ("kvshift", 1, 6, "alibi")


def test_theorem2_model_equals_definition1_with_boundary_keys_masked():
    x = gaussian()
    model = theorem2_model(d=6, m=0.3, sigma=0.5, n_ctx=12)
    out = attention_output(model, x, keys={0: "interior"})
    assert (out - induction_head_operator(x, 0.3, 0.5)).abs().max() < 1e-12


def test_theorem2_unmasked_model_equals_ih_over_its_causal_keys_but_not_definition1():
    x = gaussian()
    model = theorem2_model(d=6, m=0.3, sigma=0.5, n_ctx=12)
    out = attention_output(model, x)
    assert (out - induction_head_operator(x, 0.3, 0.5, keys="causal")).abs().max() < 1e-12
    assert (out - induction_head_operator(x, 0.3, 0.5)).abs().max() > 0.5  # the boundary keys s = 0 and s = t


def test_theorem2_gaps_float32_within_float_precision_and_deterministic():
    gaps = theorem2_gaps(d=6, n_ctx=12, batch=4, dtype=torch.float32).set_index("model_keys")
    assert gaps["gap_vs_ih_same_keys"].max() < 1e-5
    assert gaps.loc["interior", "gap_vs_definition1"] < 1e-5
    assert gaps.drop(index="interior")["gap_vs_definition1_t>=2"].min() > 0.5
    again = theorem2_gaps(d=6, n_ctx=12, batch=4, dtype=torch.float32)
    pd.testing.assert_frame_equal(gaps.reset_index(), again)


# ---------------------------------------------------------------- Theorem 1


def test_theorem1_model_is_two_layer_vanilla_of_width_2d():
    model = theorem1_model(d=4, p=3.0, m=0.2, sigma=1.0, n_ctx=8)
    cfg = model_config(model)
    assert (cfg.arch, cfg.n_layers, cfg.d_model, cfg.n_heads) == ("vanilla", 2, 8, 1)
    assert [a.alibi.item() for a in attention_layers(model)] == [3.0, 0.2]


@pytest.mark.parametrize("keys", ["interior", "causal"])
def test_theorem1_error_below_paper_bound(keys):
    for p in (1.0, 4.0, 10.0):
        assert theorem1_error(p, d=6, n_ctx=16, batch=4, keys=keys) < theorem1_bound(p, 6, 1.0)


def test_theorem1_error_decays_like_exp_minus_p():
    table = theorem1_table(ps=range(4, 13, 2), d=6, n_ctx=16, batch=4, keys=["interior"])
    assert table["error"].is_monotonic_decreasing
    slope = np.polyfit(table["p"], np.log(table["error"]), 1)[0]
    assert -1.1 < slope < -0.9


def test_theorem1_copy_layer_needs_strict_causal_mask():
    # an ordinary causal first layer copies x_s, not x_{s-1}: the error stops decaying in p
    errors = [theorem1_error(p, d=6, n_ctx=16, batch=4, copy_keys="causal") for p in (4.0, 12.0)]
    assert min(errors) > 0.3
    assert errors[1] > 0.5 * errors[0]


def test_theorem1_error_is_deterministic_given_seed():
    kw = dict(d=6, n_ctx=16, batch=4)
    assert theorem1_error(3.0, seed=1, **kw) == theorem1_error(3.0, seed=1, **kw)
    assert theorem1_error(3.0, seed=1, **kw) != theorem1_error(3.0, seed=2, **kw)


def test_theorem1_table_is_tidy_and_plots_on_log_axis():
    table = theorem1_table(ps=[2, 3], d=4, n_ctx=8, batch=2)
    assert list(table.columns) == ["keys", "p", "error", "bound"]
    assert len(table) == 4 and set(table["keys"]) == {"interior", "causal"}
    fig = plot_theorem1_error(table)
    assert fig.axes[0].get_yscale() == "log"
    assert len(fig.axes[0].get_lines()) == 3
    plt.close(fig)


# ---------------------------------------------------------------- Theorem 3 (Eq. 10)


def test_theorem3_loss_matches_hand_computed_values():
    # (α1, β1) = (1, 0), O(T) = 0: all four logits equal 1/S, so L = log 4
    assert theorem3_loss(1.0, 0.0, 0.0) == pytest.approx(math.log(4), abs=1e-12)
    # (0, 1), O(T) = 0: S = e + 2, logits e/S (target), 1/S (x2), 2/S
    S = math.e + 2
    hand = math.log(math.exp(math.e / S) + 2 * math.exp(1 / S) + math.exp(2 / S)) - math.e / S
    assert theorem3_loss(0.0, 1.0, 0.0) == pytest.approx(hand, abs=1e-12)
    assert hand == pytest.approx(1.1781398615852312, abs=1e-12)
    # (0.5, 0.5), O(T) = 10: target and neighbour logits coincide, x_i logit 1.5·a2
    S = 3 * math.exp(0.5) + 10
    a2 = math.exp(0.5) / S
    t = 0.5 * a2 + 0.5 / S
    assert theorem3_loss(0.5, 0.5, 10.0) == pytest.approx(math.log(3 * math.exp(t) + math.exp(1.5 * a2) + 10) - t, abs=1e-12)


def test_theorem3_script_differs_where_expected():
    # (1, 0), O(T) = 0: the x_i logit becomes a2 + β2 = 1/S + 1 and e^{O(T)} = 1 joins the denominator
    S = 1 + 2 * math.e
    hand = math.log(3 * math.exp(1 / S) + math.exp(1 + 1 / S) + 1) - 1 / S
    assert theorem3_loss_script(1.0, 0.0, 0.0) == pytest.approx(hand, abs=1e-12)
    assert theorem3_loss_script(1.0, 0.0, 0.0) - theorem3_loss(1.0, 0.0, 0.0) > 0.4
    # large O(T): e^{O(T)} swamps the denominator, so the script's L ≈ O(T) − target, Eq. 10's ≈ log O(T)
    assert theorem3_loss_script(0.0, 1.0, 100.0) == pytest.approx(100.0, abs=0.05)
    assert theorem3_loss(0.0, 1.0, 100.0) == pytest.approx(math.log(104), abs=0.05)


def test_theorem3_loss_broadcasts_tensor_and_float_inputs():
    alpha1 = torch.linspace(0, 1, 3, dtype=torch.float64)[:, None]  # [3, 1]
    beta1 = torch.linspace(0, 1, 4, dtype=torch.float64)[None, :]  # [1, 4]
    o_t = torch.tensor([0.0, 10.0], dtype=torch.float64)[:, None, None]  # [2, 1, 1]
    for loss in (theorem3_loss, theorem3_loss_script):
        grid = loss(alpha1, beta1, o_t)
        assert grid.shape == (2, 3, 4)
        assert grid[1, 2, 3].item() == pytest.approx(loss(1.0, 1.0, 10.0), abs=1e-12)
        assert isinstance(loss(0.3, 0.4, 1.0), float)
        assert loss(torch.tensor(0.3, dtype=torch.float32), 0.4, 1.0).dtype == torch.float32
        assert torch.is_tensor(loss(np.array([0.1, 0.2]), 0.4, 1.0))


@pytest.mark.parametrize("loss", [theorem3_loss, theorem3_loss_script])
def test_theorem3_gradient_matches_finite_differences(loss):
    a = torch.tensor([0.1, 0.5, 0.9, 0.3], dtype=torch.float64)
    b = torch.tensor([0.2, 0.5, 0.7, 0.95], dtype=torch.float64)
    h = 1e-6
    for o_t in (0.0, 10.0):
        grad_a, grad_b = theorem3_gradient(a, b, o_t, loss)
        fd_a = (loss(a + h, b, o_t) - loss(a - h, b, o_t)) / (2 * h)
        fd_b = (loss(a, b + h, o_t) - loss(a, b - h, o_t)) / (2 * h)
        torch.testing.assert_close(grad_a, fd_a, atol=1e-8, rtol=1e-6)
        torch.testing.assert_close(grad_b, fd_b, atol=1e-8, rtol=1e-6)
        assert grad_a.abs().min() > 0  # the finite differences are not trivially zero


@pytest.mark.parametrize("loss", [theorem3_loss, theorem3_loss_script])
def test_theorem3_induction_head_is_minimum_over_square(loss):
    grid = torch.linspace(0, 1, 41, dtype=torch.float64)
    A, B = torch.meshgrid(grid, grid, indexing="xy")
    for o_t in (0.0, 10.0, 100.0):
        Z = loss(A, B, o_t)
        assert (A.flatten()[Z.argmin()], B.flatten()[Z.argmin()]) == (0.0, 1.0)


def test_theorem3_eq10_has_second_basin_the_script_lacks():
    start = (torch.tensor(0.9, dtype=torch.float64), torch.tensor(0.1, dtype=torch.float64))
    a, b = theorem3_descent(*start, 0.0, theorem3_loss, steps=250)
    assert (a.item(), b.item()) == (1.0, 0.0)  # Eq. 10: corner (1, 0) is a local minimum on the square
    a, b = theorem3_descent(*start, 0.0, theorem3_loss_script, steps=250)
    assert (a.item(), b.item()) == (0.0, 1.0)
    basins = theorem3_basins(o_ts=(0.0, 100.0), n=9, steps=200).set_index("o_t")
    assert basins.loc[0.0, "to_1_0"] > 0.2 and basins.loc[100.0, "to_induction_head"] == 1.0


def test_theorem3_plot_overlays_trajectories_on_every_panel():
    traj = pd.DataFrame({
        "step": [0, 1, 2] * 2, "layer": 0, "head": [0] * 3 + [1] * 3, "seed": 7,
        "alpha1": [0.8, 0.6, 0.4, 0.2, 0.1, 0.05], "beta1": [0.2, 0.4, 0.6, 0.5, 0.7, 0.9],
    })
    fig = plot_theorem3_landscape(trajectories=traj, n=15)
    assert len(fig.axes) == 3
    for ax in fig.axes:  # 2 markers (grid minimum, induction head) + per head: path, start, end
        assert len(ax.get_lines()) == 2 + 2 * 3
    with pytest.raises(ValueError, match="beta1"):
        plot_theorem3_landscape(trajectories=traj.drop(columns="beta1"), n=11)
    plt.close("all")


def test_theorem1_decay_fit_reads_slope_minus_one_from_exact_exponential_decay():
    from experiments.theory import decay_fit

    p = np.arange(1.0, 17.0)
    table = pd.DataFrame({"keys": "interior", "p": p, "error": 1.3 * np.exp(-p), "bound": 40 * np.exp(-p)})
    fit = decay_fit(table).iloc[0]
    assert fit.slope == pytest.approx(-1.0) and fit.error_times_exp_p == pytest.approx(1.3)
    assert fit.min_bound_over_error == pytest.approx(40 / 1.3)
