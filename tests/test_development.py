"""Developmental measures (issue 20 §3): loss by position, the per-token-loss PCA turn, QK eigenvalue scores,
the LLC ordering, LLC stage boundaries and the induction split."""

import copy
import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kvshift_lens.analysis.development import (DEV_COLUMNS, analyze_development, induction_split, loss_by_position,
                                               loss_pca, per_token_losses, qk_eigen_scores, trajectory_turn)
from kvshift_lens.analysis.llc import LLCConfig, calibrate, estimate_llc, pick_calibration, stage_boundaries
from kvshift_lens.models.checkpoints import save_model
from kvshift_lens.models.config import ModelConfig
from kvshift_lens.models.mixers.kv_shift import KVShiftOptions
from kvshift_lens.models.transformer import build_module, to_bridge
from kvshift_lens.report.development_figures import plot_calibration, plot_development

VOCAB, T = 8, 8


def tiny(mixer: str = "none", n_layers: int = 1, seed: int = 0, norm: str = "layernorm") -> nn.Module:
    """An attention-only bare module, d_model 16, 2 heads, vocab 8, context 8."""
    mixer_cfg = KVShiftOptions() if mixer == "kv_shift" else {"name": "none"}
    return build_module(ModelConfig(mixer=mixer_cfg, n_layers=n_layers, d_model=16, n_heads=2, d_head=8,
                                    d_vocab=VOCAB, n_ctx=T, norm=norm, seed=seed))


class FixedLogits(nn.Module):
    """Uniform logits except a certain prediction of token 3 at position 2."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(*tokens.shape, VOCAB)
        logits[:, 2, 3] = 1e4
        return logits


def test_loss_by_position_is_the_batch_mean_of_each_tokens_loss_given_its_prefix():
    tokens = torch.tensor([[0, 1, 2, 3, 4], [0, 5, 6, 3, 7]])
    by_pos = loss_by_position(per_token_losses(FixedLogits(), tokens))
    assert torch.isnan(by_pos[0])  # no prediction of the first token
    assert by_pos[3] == pytest.approx(0.0, abs=1e-4)  # predicted with certainty at position 2
    for p in (1, 2, 4):
        assert by_pos[p] == pytest.approx(np.log(VOCAB), rel=1e-5)


def turning_losses(turn: int, n: int = 10, tokens: int = 40, seed: int = 0) -> np.ndarray:
    """Per-token losses of n checkpoints moving along one direction until `turn`, then along an orthogonal one."""
    rng = np.random.default_rng(seed)
    a, b = np.linalg.qr(rng.normal(size=(tokens, 2)))[0].T
    path = [i * a if i <= turn else turn * a + (i - turn) * b for i in range(n)]
    return 3.0 + np.stack(path) + 1e-3 * rng.normal(size=(n, tokens))


@pytest.mark.parametrize("turn", [3, 6])
def test_loss_pca_finds_the_turn_of_a_constructed_trajectory_at_its_checkpoint(turn):
    coords, explained = loss_pca(turning_losses(turn))
    assert explained[:2].sum() > 0.99
    assert trajectory_turn(coords) == turn


def test_a_straight_loss_trajectory_has_no_turn():
    rng = np.random.default_rng(0)
    direction = rng.normal(size=40)
    coords, _ = loss_pca(np.stack([i * direction for i in range(10)]) + 1e-4 * rng.normal(size=(10, 40)))
    assert trajectory_turn(coords) is None


def set_qk(module: nn.Module, sign: float) -> None:
    """W_K = sign · W_Q in every layer (biases do not enter the QK circuit)."""
    with torch.no_grad():
        for layer in module.layers:
            layer.attn.k.weight.copy_(sign * layer.attn.q.weight)


def scores(module: nn.Module, metric: str) -> list[float]:
    table = qk_eigen_scores(module)
    return table[table["metric"] == metric]["value"].tolist()


def test_qk_eigen_score_is_positive_for_a_matching_head_and_negative_for_an_anti_matching_one():
    module = tiny()
    set_qk(module, 1.0)  # W_QK = W_Q W_Qᵀ: every eigenvalue of the token-token circuit is >= 0
    assert scores(module, "qk_eigen_score") == pytest.approx([1.0, 1.0], abs=1e-4)
    set_qk(module, -1.0)
    assert scores(module, "qk_eigen_score") == pytest.approx([-1.0, -1.0], abs=1e-4)
    assert "qk_shift_eigen_score" not in set(qk_eigen_scores(module)["metric"])  # vanilla keys have no lag 1


def test_qk_shift_eigen_score_sees_matching_through_the_shift_that_the_weight_only_score_cannot():
    module = tiny("kv_shift")
    set_qk(module, 1.0)
    with torch.no_grad():
        # (α1, α2) per head: head 0 keys only the previous token, head 1 only its own
        module.layers[0].attn.k_shift.weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    assert scores(module, "qk_shift_eigen_score") == pytest.approx([1.0, 0.0], abs=1e-4)
    assert scores(module, "qk_eigen_score") == pytest.approx([0.0, 1.0], abs=1e-4)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_qk_kcomp_eigen_score_is_positive_when_the_key_reads_the_previous_heads_copy_as_the_query_reads_tokens(sign):
    module = tiny(n_layers=2, norm="rmsnorm")  # no centring: the copied half of the token stays as it was
    with torch.no_grad():
        l0, l1 = module.layers[0].attn, module.layers[1].attn
        l0.v.weight.copy_(torch.eye(16))  # head 0's value = the token's dims 0-7 ...
        l0.o.weight.copy_(torch.eye(16))  # ... written back to dims 0-7
        l1.q.weight[:, 8:] = 0.0  # layer 1 queries read dims 0-7 only
        l1.k.weight.copy_(sign * l1.q.weight)
    table = qk_eigen_scores(module, previous_heads={1: (0, 0)})  # layer 1's key reads layer-0 head 0
    kcomp = table[table["metric"] == "qk_kcomp_eigen_score"]
    assert list(kcomp["layer"]) == [1, 1]
    assert kcomp["value"].tolist() == pytest.approx([sign, sign], abs=1e-4)


@pytest.fixture(scope="module")
def minimum() -> tuple[nn.Module, torch.Tensor]:
    """A tiny model trained full-batch to (near) its minimum on 64 fixed `[BOS] r r` sequences, and them."""
    module = tiny()
    r = torch.randint(1, VOCAB, (64, 4), generator=torch.Generator().manual_seed(0))
    tokens = torch.cat([torch.zeros(64, 1, dtype=torch.long), r, r[:, :3]], 1)  # [64, 8]
    opt = torch.optim.Adam(module.parameters(), lr=1e-2)
    for _ in range(300):
        loss = F.cross_entropy(module(tokens)[:, :-1].reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return module, tokens


LLC_TEST = LLCConfig(batch_size=16, num_chains=2, num_draws=30, n_samples=64)


def test_the_llc_at_a_trained_minimum_is_positive_and_above_the_same_model_perturbed_off_it(minimum):
    module, tokens = minimum
    perturbed = copy.deepcopy(module)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(1)
        for p in perturbed.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    at_min, off = estimate_llc(module, tokens, LLC_TEST), estimate_llc(perturbed, tokens, LLC_TEST)
    assert off["init_loss"] > at_min["init_loss"]
    # SGLD from a point off the minimum first descends, so its loss rises less above the start: lower LLC
    assert at_min["llc_mean"] > 0 and off["llc_mean"] < at_min["llc_mean"]
    assert estimate_llc(module, tokens, LLC_TEST)["llc_mean"] == at_min["llc_mean"]  # fixed seeds


def test_calibration_marks_settings_usable_only_when_finite_positive_levelled_off_and_stable_in_lr(minimum):
    module, tokens = minimum
    table = calibrate(module, tokens, lrs=(1e-3, 3e-4), localizations=(100.0,), cfg=LLCConfig(
        batch_size=16, num_chains=1, num_draws=40, n_samples=64))
    assert list(table.columns) == ["lr", "localization", "nbeta", "llc_mean", "llc_std", "finite", "positive",
                                   "converged", "stable", "usable"]
    assert table["lr"].tolist() == [3e-4, 1e-3]  # ascending: stability compares with the smaller step
    assert not table["stable"].iloc[0]  # nothing to compare the smallest step with
    assert (table["usable"] == table["finite"] & table["positive"] & table["converged"] & table["stable"]).all()
    assert pick_calibration(table.assign(usable=False)) is None
    assert pick_calibration(table.assign(usable=True))["lr"] == 1e-3
    assert len(plot_calibration(table).axes) == 1


def llc_curve(values: list[float]) -> pd.Series:
    return pd.Series(values, index=[0, 1, 3, 10, 30, 100, 300, 1000][: len(values)])


@pytest.mark.parametrize("values, boundaries", [
    ([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0], []),  # monotone: one stage
    ([0.0, 1.0, 2.0, 4.0, 6.0, 5.0, 3.0, 2.0], [30]),  # rise, then fall: the peak ends stage 1
    ([0.0, 1.0, 3.0, 2.0, 1.0, 2.0, 4.0, 6.0], [3, 30]),  # rise, fall, rise
    ([0.0, 1.0, 2.0, 3.0, 3.01, 2.995, 3.005, 4.0], []),  # wiggles below the flat tolerance do not count
    ([0.0, 1.0, 2.0, 4.0, 4.0, 4.0, 3.0, 2.0], [10]),  # a flat top: its first checkpoint (ties: the first)
    ([0.0, 4.0, 3.0, 2.9, 2.8, 2.7, 6.0, 7.0], [100]),  # a fall, a slow (flat) fall, a rise: the lowest checkpoint
])
def test_stage_boundaries_are_the_sign_changes_of_the_llc_slope_over_log_step(values, boundaries):
    assert stage_boundaries(llc_curve(values)) == boundaries


def heads_table(previous: dict[int, float], induction: dict[int, float]) -> pd.DataFrame:
    rows = [(s, 0, 0, "previous_token_score", v) for s, v in previous.items()]
    rows += [(s, 1, 0, "induction_score", v) for s, v in induction.items()]
    return pd.DataFrame(rows, columns=["step", "layer", "head", "metric", "value"])


STEPS = [0, 10, 100, 1000]


@pytest.mark.parametrize("previous, induction, boundaries, split", [
    ([0.0, 0.6, 0.7, 0.7], [0.0, 0.0, 0.1, 0.9], [100], True),  # previous-token at 10, boundary, induction at 1000
    ([0.0, 0.6, 0.7, 0.7], [0.0, 0.0, 0.1, 0.9], [], False),  # same steps, no stage boundary between them
    ([0.0, 0.0, 0.1, 0.1], [0.0, 0.0, 0.1, 0.9], [100], False),  # no previous-token head (KV shift 1L)
    ([0.0, 0.0, 0.0, 0.7], [0.0, 0.0, 0.6, 0.9], [100], False),  # previous-token after induction
    ([0.0, 0.6, 0.7, 0.7], [0.0, 0.0, 0.1, 0.2], [100], None),  # induction never forms
    ([0.0, 0.1, 0.1, 0.7], [0.0, 0.0, 0.1, 0.9], [100], None),  # both first hold at 1000: order not resolved
])
def test_induction_split_for_each_outcome(previous, induction, boundaries, split):
    out = induction_split(heads_table(dict(zip(STEPS, previous)), dict(zip(STEPS, induction))), boundaries)
    assert out["induction_split"] is split


def test_analyze_development_writes_tidy_rows_and_summary_keys_for_a_run(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"task": {"name": "induction", "d_vocab": VOCAB, "seq_len": T}}))
    for step, seed in ((0, 0), (10, 1), (100, 2)):
        save_model(to_bridge(tiny("kv_shift", seed=seed)), run / "checkpoints" / f"step_{step:07d}.safetensors")
    table = analyze_development(run, batch_size=4, llc=LLCConfig(batch_size=8, num_chains=1, num_draws=5,
                                                                 n_samples=16))
    assert list(table.columns) == DEV_COLUMNS
    assert set(table["metric"]) == {"loss", "icl_score", "loss_pc", "qk_eigen_score", "qk_shift_eigen_score",
                                    "llc", "llc_std"}
    assert len(table[table["metric"] == "loss"]) == 3 * (T - 1)
    assert pd.read_csv(run / "development.csv").shape == table.shape
    summary = json.loads((run / "summary.json").read_text())
    assert {"loss_pca_turn_step", "loss_pca_explained", "llc_stage_boundaries"} <= set(summary)
    fig = plot_development({"kv_shift": table, "vanilla": table})
    assert len(fig.axes) == 2 * 4
