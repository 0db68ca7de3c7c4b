"""Tests for kvshift_lens.models with the kv_shift mixer vs vanilla (Xu et al., arXiv 2411.19574).

Every numeric claim is checked against real numbers: a from-scratch plain-torch forward with
explicit loops (Eq. 5), causality of every variant on both forward paths (bare SDPA and bridge
explicit softmax), the parameterisations' constraints, the safetensors round trip, hooks and
TransformerLens' own tools. Models are tiny (d_model 16) so the file runs in well under a minute.
The other mixers are tested in tests/test_mixers.py. Case tables here use the flat legacy keys
(arch, shift, shift_param, shift_window), which `ModelConfig.from_dict` reads as the kv_shift mixer.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import itertools
import json
import math
import pickle
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformer_lens import patching, utilities
from transformer_lens.FactoredMatrix import FactoredMatrix

from kvshift_lens import models as M
from kvshift_lens.models.checkpoints import state_sha256, write_safetensors
from kvshift_lens.models.mixers.kv_shift import KVShift
from kvshift_lens.core.errors import ConfigError
from kvshift_lens.models.config import ModelConfig
from kvshift_lens.models.transformer import (
    bare_module, bare_state_dict, build_model, build_module, constrain_, model_config, to_bridge,
)
from kvshift_lens.models.checkpoints import load_model, save_model
from kvshift_lens.models.coefficients import shift_coefficients

D_VOCAB = 23
N_CTX = 16
SEQ = 10
LN_EPS = 1e-5
ROPE_BASE = 10000.0


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine thread
    contention makes each forward ~50x slower; restore the setting for other test modules."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_cfg(**kw) -> ModelConfig:
    """A tiny config; kw may use the legacy flat KV-shift keys (see the module docstring)."""
    base = dict(d_model=16, n_heads=2, d_vocab=D_VOCAB, n_ctx=N_CTX, seed=0)
    base.update(kw)
    return ModelConfig.from_dict(base)


def window(cfg: ModelConfig) -> int:
    """The shift window of a kv_shift model (1 for vanilla: the identity coefficients (1, 0))."""
    return cfg.mixer.window if cfg.arch == "kvshift" else 1


def sides(cfg: ModelConfig) -> str:
    """Which of K, V a kv_shift model shifts ("" for vanilla)."""
    return cfg.mixer.sides if cfg.arch == "kvshift" else ""


def make_tokens(batch: int = 2, seq: int = SEQ, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, D_VOCAB, (batch, seq), generator=g)


def kv_shifts(model) -> list[KVShift]:
    return [m for m in bare_module(model).modules() if isinstance(m, KVShift)]


@torch.no_grad()
def randomize_shift_(model, seed: int = 1) -> None:
    """Move every raw shift weight off its init so tests see coefficients that do not sum to 1
    (free), arbitrary logits (gate) and values inside [0, 1] (clamp01)."""
    g = torch.Generator().manual_seed(seed)
    for m in kv_shifts(model):
        if m.param == "free":
            m.weight.copy_(torch.randn(m.weight.shape, generator=g))
        elif m.param == "gate":
            m.weight.copy_(2 * torch.randn(m.weight.shape, generator=g))
        else:
            m.weight.copy_(torch.rand(m.weight.shape, generator=g))


@torch.no_grad()
def perturb_all_(model, seed: int = 7, scale: float = 0.1) -> None:
    """Perturb every parameter, so a checkpoint round trip cannot pass by re-initialising."""
    g = torch.Generator().manual_seed(seed)
    for p in bare_module(model).parameters():
        p.add_(scale * torch.randn(p.shape, generator=g))


def coeff_matrices(model, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """α [kv_heads, w+1] and β [kv_heads, w+1] of one layer, read via `shift_coefficients`
    (identity for vanilla)."""
    cfg = model_config(model)
    width = window(cfg) + 1
    if cfg.arch == "vanilla":
        eye = torch.zeros(cfg.kv_heads, width, dtype=torch.float64)
        eye[:, 0] = 1.0
        return eye, eye.clone()
    df = shift_coefficients(model)
    rows = df[df.layer == layer].sort_values("head")
    assert list(rows["head"]) == list(range(cfg.kv_heads))
    a = torch.tensor(rows[[f"alpha{j + 1}" for j in range(width)]].to_numpy(dtype=float))
    b = torch.tensor(rows[[f"beta{j + 1}" for j in range(width)]].to_numpy(dtype=float))
    return a, b


def loop_shift(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Eq. 5 by explicit loops: x [batch, pos, head, d], c [head, w+1] -> Σ_j c_j x_{t-j}, x_{<0}=0."""
    out = torch.zeros_like(x)
    n_pos, n_heads = x.shape[1], x.shape[2]
    for t in range(n_pos):
        for h in range(n_heads):
            for j in range(c.shape[1]):
                if t - j >= 0:
                    out[:, t, h] = out[:, t, h] + c[h, j].to(x.dtype) * x[:, t - j, h]
    return out


def _layernorm(x, w, b):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + LN_EPS) * w + b


def _rope_at(x: torch.Tensor, t: int) -> torch.Tensor:
    """Rotate adjacent pairs (2i, 2i+1) of x [..., d] by angle t·base^(-2i/d) (Llama/HF layout)."""
    d = x.shape[-1]
    out = x.clone()
    for i in range(d // 2):
        theta = t * ROPE_BASE ** (-2.0 * i / d)
        c, s = math.cos(theta), math.sin(theta)
        x0, x1 = x[..., 2 * i], x[..., 2 * i + 1]
        out[..., 2 * i] = x0 * c - x1 * s
        out[..., 2 * i + 1] = x0 * s + x1 * c
    return out


def reference_logits(model, tokens: torch.Tensor) -> torch.Tensor:
    """From-scratch float64 forward of a 1-layer attn-only layernorm model, loops over positions."""
    cfg = model_config(model)
    assert cfg.n_layers == 1 and cfg.attn_only and cfg.norm == "layernorm"
    sd = {k: v.detach().double() for k, v in bare_state_dict(model).items()}
    B, T = tokens.shape
    H, KV, dh = cfg.n_heads, cfg.kv_heads, cfg.d_head
    x = sd["tok_embed.weight"][tokens]
    if cfg.positions == "learned":
        x = x + sd["pos.weight"][:T]
    h = _layernorm(x, sd["layers.0.ln1.weight"], sd["layers.0.ln1.bias"])
    q = (h @ sd["layers.0.attn.q.weight"].T + sd["layers.0.attn.q.bias"]).reshape(B, T, H, dh)
    k = (h @ sd["layers.0.attn.k.weight"].T + sd["layers.0.attn.k.bias"]).reshape(B, T, KV, dh)
    v = (h @ sd["layers.0.attn.v.weight"].T + sd["layers.0.attn.v.bias"]).reshape(B, T, KV, dh)
    alpha, beta = coeff_matrices(model, 0)
    k, v = loop_shift(k, alpha), loop_shift(v, beta)  # Eq. 5, before rotary
    if cfg.positions == "rotary":
        q = torch.stack([_rope_at(q[:, t], t) for t in range(T)], dim=1)
        k = torch.stack([_rope_at(k[:, t], t) for t in range(T)], dim=1)
    slopes = [2.0 ** (-8.0 * (i + 1) / H) for i in range(H)] if cfg.positions == "alibi" else [0.0] * H
    z = torch.zeros(B, T, H, dh, dtype=torch.float64)
    group = H // KV
    for hq in range(H):
        g = hq // group  # GQA: query heads hq share KV head hq // group
        for t in range(T):
            scores = torch.stack(
                [(q[:, t, hq] * k[:, s, g]).sum(-1) / math.sqrt(dh) - slopes[hq] * (t - s) for s in range(t + 1)],
                dim=-1,
            )
            p = torch.softmax(scores, dim=-1)
            for s in range(t + 1):
                z[:, t, hq] += p[:, s, None] * v[:, s, g]
    attn_out = z.reshape(B, T, H * dh) @ sd["layers.0.attn.o.weight"].T + sd["layers.0.attn.o.bias"]
    x = x + attn_out
    x = _layernorm(x, sd["ln_out.weight"], sd["ln_out.bias"])
    return x @ sd["head.weight"].T


# --------------------------------------------------------------------------------------------
# 1. Eq. 5 against an independent implementation
# --------------------------------------------------------------------------------------------

REFERENCE_CASES = [
    dict(arch="kvshift", positions=pos, shift=sh, shift_window=w, shift_param=sp)
    for pos in ("learned", "rotary")
    for sh in ("kv", "k", "v")
    for w, sp in ((1, "free"), (2, "gate"), (3, "clamp01"))
] + [
    dict(arch="kvshift", positions="alibi", shift="kv", shift_window=1, shift_param="free"),
    dict(arch="kvshift", positions="alibi", shift="kv", shift_window=2, shift_param="gate", n_heads=4, n_kv_heads=2),
    dict(arch="kvshift", positions="rotary", shift="kv", shift_window=1, shift_param="free", n_heads=4, n_kv_heads=2),
    dict(arch="kvshift", positions="learned", shift="kv", shift_window=1, shift_param="free", n_heads=4, n_kv_heads=1),
    dict(arch="vanilla", positions="learned"),
    dict(arch="vanilla", positions="rotary"),
    dict(arch="vanilla", positions="alibi"),
]


@pytest.mark.parametrize(
    "kw", REFERENCE_CASES, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items())
)
def test_logits_match_from_scratch_eq5_reference(kw):
    cfg = make_cfg(**kw)
    model = build_model(cfg)
    randomize_shift_(model)
    tokens = make_tokens(2, 8)
    with torch.no_grad():
        ref = reference_logits(model, tokens)
        got_bridge = model(tokens).double()
    torch.testing.assert_close(got_bridge, ref, atol=1e-5, rtol=1e-5)

    bare = build_module(cfg)  # same seed -> same weights; same raw shift weights after randomize
    randomize_shift_(bare)
    with torch.no_grad():
        got_bare = bare(tokens).double()
    torch.testing.assert_close(got_bare, ref, atol=1e-5, rtol=1e-5)


def test_reference_detects_a_wrong_shift():
    """Guard against a vacuous reference: swapping α1/α2 must break the match."""
    model = build_model(make_cfg(positions="rotary"))
    randomize_shift_(model)
    tokens = make_tokens(2, 8)
    with torch.no_grad():
        ref = reference_logits(model, tokens)
        for m in kv_shifts(model):
            m.weight.copy_(m.weight.flip(-1))
        assert (model(tokens).double() - ref).abs().max() > 1e-3


def test_shift_applies_before_rotary_not_after():
    """Shifting keys after rotary would rotate K_{t-1} by angle t instead of t-1: the model must
    match the before-rotary reference and not the after-rotary variant."""
    cfg = make_cfg(positions="rotary", shift="k")
    model = build_model(cfg)
    with torch.no_grad():
        for m in kv_shifts(model):
            m.weight.copy_(torch.tensor([[0.0, 1.0]] * cfg.kv_heads))  # K̂_t = K_{t-1}
    tokens = make_tokens(1, 8)
    logits, cache = model.run_with_cache(tokens)
    k = cache["blocks.0.attn.hook_k"]
    k_hat = cache["blocks.0.attn.hook_k_shifted"]
    assert torch.equal(k_hat[:, 0], torch.zeros_like(k_hat[:, 0]))
    assert torch.equal(k_hat[:, 1:], k[:, :-1])
    torch.testing.assert_close(logits.double(), reference_logits(model, tokens), atol=1e-5, rtol=1e-5)


def test_shift_helper_moves_positions_later_and_zero_fills():
    x = torch.arange(1, 1 + 2 * 5 * 3 * 2, dtype=torch.float32).reshape(2, 5, 3, 2)
    for j in range(0, 7):
        got = M.shift(x, j)
        assert got.shape == x.shape
        for t in range(5):
            want = x[:, t - j] if t - j >= 0 else torch.zeros_like(x[:, 0])
            assert torch.equal(got[:, t], want), (j, t)


# --------------------------------------------------------------------------------------------
# 2. Causality of every variant on both paths
# --------------------------------------------------------------------------------------------

CAUSAL_CASES = [
    dict(arch="vanilla", positions=pos, attn_only=ao)
    for pos in ("learned", "rotary", "alibi")
    for ao in (True, False)
] + [
    dict(arch="kvshift", shift=sh, shift_param=sp, shift_window=w, positions=pos, attn_only=ao)
    for sh, sp, w, pos, ao in itertools.product(
        ("kv", "k", "v"), ("free", "gate", "clamp01"), (1, 2, 3), ("learned", "rotary", "alibi"), (True, False)
    )
]

# The bridge is ~20x more expensive to build than the bare module, so the real-bridge check runs
# on a covering subset: every positions × window × attn_only/MLP cell, with the shift side and
# the parameterisation rotating so each appears with every positions type.
BRIDGE_CAUSAL_CASES = [
    dict(arch="vanilla", positions=pos, attn_only=ao) for pos in ("learned", "rotary", "alibi") for ao in (True, False)
] + [
    dict(
        arch="kvshift", positions=pos, shift_window=w, attn_only=ao,
        shift=("kv", "k", "v")[i % 3], shift_param=("free", "gate", "clamp01")[(i // 3) % 3],
        mlp=("gelu", "swiglu")[i % 2],
    )
    for i, (pos, w, ao) in enumerate(itertools.product(("learned", "rotary", "alibi"), (1, 2, 3), (True, False)))
]


def _single_token_edits(tokens: torch.Tensor) -> torch.Tensor:
    """Row 0: tokens; row 1+t: tokens with position t replaced by a different token."""
    seq = tokens.shape[1]
    rows = tokens.repeat(seq + 1, 1)
    for t in range(seq):
        rows[1 + t, t] = (tokens[0, t] + 1 + t) % D_VOCAB
    return rows


def with_explicit_softmax(bare):
    """A copy of a bare module whose attention takes the explicit-softmax branch the bridge uses
    (an identity `pattern_fn`), without the cost of building a bridge."""
    bare = copy.deepcopy(bare)
    for attn in M.attention_layers(bare):
        attn.forward = functools.partial(M.MixerAttention.forward, attn, pattern_fn=lambda p: p)
    return bare


def assert_causal(logits: torch.Tensor, path: str) -> None:
    base = logits[0]
    for t in range(SEQ):
        edited = logits[1 + t]
        torch.testing.assert_close(edited[:t], base[:t], atol=1e-6, rtol=0, msg=f"{path}: t={t}")
        # the edit is visible at t itself (the test is not vacuous)
        assert (edited[t] - base[t]).abs().max() > 1e-4, f"{path}: edit at {t} invisible"


@pytest.mark.parametrize("kw", CAUSAL_CASES, ids=lambda kw: "-".join(str(v) for v in kw.values()))
def test_shift_never_reads_the_future(kw):
    cfg = make_cfg(n_layers=2, d_mlp=16, **kw)
    bare = build_module(cfg)
    randomize_shift_(bare, seed=3)
    explicit = with_explicit_softmax(bare)
    rows = _single_token_edits(make_tokens(1, SEQ, seed=5))
    with torch.no_grad():
        sdpa_logits, explicit_logits = bare(rows), explicit(rows)
    assert_causal(sdpa_logits, "bare-sdpa")
    assert_causal(explicit_logits, "explicit-softmax")
    torch.testing.assert_close(explicit_logits, sdpa_logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kw", BRIDGE_CAUSAL_CASES, ids=lambda kw: "-".join(str(v) for v in kw.values()))
def test_bridge_never_reads_the_future(kw):
    cfg = make_cfg(n_layers=2, d_mlp=16, **kw)
    bare = build_module(cfg)
    randomize_shift_(bare, seed=3)
    bridge = to_bridge(copy.deepcopy(bare))
    rows = _single_token_edits(make_tokens(1, SEQ, seed=5))
    with torch.no_grad():
        assert_causal(bridge(rows), "bridge")


# --------------------------------------------------------------------------------------------
# 3. Identity shift = vanilla; shared weights
# --------------------------------------------------------------------------------------------

SHARED_WEIGHT_CASES = [
    dict(positions="learned"),
    dict(positions="rotary", n_heads=4, n_kv_heads=2),
    dict(positions="alibi", attn_only=False, mlp="swiglu", norm="rmsnorm", n_layers=2),
    dict(positions="learned", attn_only=False, mlp="gelu", residual_scale=True, n_layers=2, shift="v"),
    dict(positions="rotary", shift="k", shift_window=3, seed=11),
]


@pytest.mark.parametrize("kw", SHARED_WEIGHT_CASES, ids=lambda kw: "-".join(str(v) for v in kw.values()))
def test_kvshift_and_vanilla_from_one_seed_share_every_other_weight(kw):
    van = bare_state_dict(build_module(make_cfg(arch="vanilla", **kw)))
    kvs = bare_state_dict(build_module(make_cfg(arch="kvshift", **kw)))
    assert set(van) <= set(kvs)
    extra = set(kvs) - set(van)
    assert extra and all(k.endswith(("k_shift.weight", "v_shift.weight")) for k in extra), extra
    for k, v in van.items():
        assert torch.equal(v, kvs[k]), k
    other = bare_state_dict(build_module(make_cfg(arch="vanilla", **{**kw, "seed": kw.get("seed", 0) + 1})))
    assert not torch.equal(van["tok_embed.weight"], other["tok_embed.weight"])


@pytest.mark.parametrize("shift_param", ["free", "gate", "clamp01"])
@pytest.mark.parametrize("kw", SHARED_WEIGHT_CASES, ids=lambda kw: "-".join(str(v) for v in kw.values()))
def test_identity_shift_equals_vanilla(kw, shift_param):
    # bare (SDPA) modules: the bridge path is pinned to the bare path by the path-agreement tests
    vanilla = build_module(make_cfg(arch="vanilla", **kw))
    shifted = build_module(make_cfg(arch="kvshift", shift_param=shift_param, **kw))
    tokens = make_tokens(2, SEQ)
    with torch.no_grad():
        before = shifted(tokens)
        for m in kv_shifts(shifted):
            if m.param == "gate":  # softmax([40, 0, ...]) == (1, 0, ...) to float32 precision
                m.weight.fill_(-40.0)
                m.weight[:, 0] = 40.0
            else:
                m.weight.zero_()
                m.weight[:, 0] = 1.0
        want = vanilla(tokens)
        got = shifted(tokens)
    # the random init really shifts (otherwise the equality below is trivial)
    assert (before - want).abs().max() > 1e-3
    if shift_param == "gate":
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    else:
        assert torch.equal(got, want)


# --------------------------------------------------------------------------------------------
# 4. Parameterisation constraints and init
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("window", [1, 2, 3])
def test_gate_coefficients_sum_to_one_and_lie_strictly_inside_unit_interval(window):
    model = build_model(make_cfg(shift_param="gate", shift_window=window, n_layers=2, n_heads=4))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in kv_shifts(model):
            assert m.weight.shape == (4, window)
            m.weight.add_(3 * torch.randn(m.weight.shape, generator=g))
    for m in kv_shifts(model):
        c = m.coefficients().detach()
        assert c.shape == (4, window + 1)
        torch.testing.assert_close(c.sum(-1), torch.ones(4), atol=1e-6, rtol=0)
        assert (c > 0).all() and (c < 1).all()
        raw = m.weight.detach()
        if window == 1:  # α1 = sigmoid(a), α2 = 1 - α1
            torch.testing.assert_close(c[:, 0], torch.sigmoid(raw[:, 0]))
            torch.testing.assert_close(c[:, 1], 1 - torch.sigmoid(raw[:, 0]))
        else:  # softmax with the last logit fixed at 0
            torch.testing.assert_close(c, torch.softmax(torch.cat([raw, torch.zeros(4, 1)], -1), -1))
    df = shift_coefficients(model)
    for n in ("alpha", "beta"):
        cols = [f"{n}{j + 1}" for j in range(window + 1)]
        assert ((df[cols].sum(axis=1) - 1).abs() < 1e-6).all()


@pytest.mark.parametrize("window", [1, 2])
def test_clamp01_coefficients_stay_in_unit_interval_and_constrain_projects_raw(window):
    cfg = make_cfg(shift_param="clamp01", shift_window=window, n_heads=4)
    model = build_model(cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in kv_shifts(model):
            m.weight.copy_(3 * torch.randn(m.weight.shape, generator=g))
    raws = [m.weight.detach().clone() for m in kv_shifts(model)]
    assert any((r < 0).any() and (r > 1).any() for r in raws)  # really pushed outside
    for m, raw in zip(kv_shifts(model), raws):
        c = m.coefficients().detach()
        assert (c >= 0).all() and (c <= 1).all()
        assert torch.equal(c, raw.clamp(0, 1))
    df = shift_coefficients(model)
    vals = df.drop(columns=["layer", "head"]).to_numpy()
    assert (vals >= 0).all() and (vals <= 1).all()

    tokens = make_tokens(2, SEQ)
    with torch.no_grad():
        before = model(tokens)
    constrain_(model)
    for m, raw in zip(kv_shifts(model), raws):
        w = m.weight.detach()
        assert (w >= 0).all() and (w <= 1).all()
        assert torch.equal(w, raw.clamp(0, 1))  # in-range values untouched, others projected
    with torch.no_grad():
        after = model(tokens)
    assert torch.equal(before, after)  # the forward already used the clamped values


@pytest.mark.parametrize("shift_param", ["free", "gate"])
def test_constrain_leaves_unconstrained_parameterisations_alone(shift_param):
    model = build_model(make_cfg(shift_param=shift_param))
    with torch.no_grad():
        for m in kv_shifts(model):
            m.weight.copy_(torch.tensor([[2.5, -1.5], [-0.25, 3.0]])[:, : m.weight.shape[1]])
    raws = [m.weight.detach().clone() for m in kv_shifts(model)]
    constrain_(model)
    for m, raw in zip(kv_shifts(model), raws):
        assert torch.equal(m.weight.detach(), raw)


@pytest.mark.parametrize("window", [1, 2, 3])
def test_free_init_is_a_convex_mix_with_alpha1_in_unit_interval(window):
    model = build_model(make_cfg(shift_param="free", shift_window=window, n_layers=3, n_heads=4))
    df = shift_coefficients(model)
    assert len(df) == 3 * 4
    for n in ("alpha", "beta"):
        cols = [f"{n}{j + 1}" for j in range(window + 1)]
        assert ((df[cols].sum(axis=1) - 1).abs() < 1e-6).all()
        assert ((df[cols] > 0) & (df[cols] < 1)).all().all()
    # K and V coefficients are drawn independently
    assert not (df["alpha1"] == df["beta1"]).all()


def test_init_alpha1_is_uniform_on_unit_interval():
    """α1 ~ U(0,1): 4000 heads' draws have mean ≈ 1/2 and quartiles ≈ 1/4, 1/2, 3/4."""
    m = KVShift(n_heads=4000, window=1, param="free")
    m.reset_parameters(torch.Generator().manual_seed(0))
    a1 = m.coefficients().detach()[:, 0]
    torch.testing.assert_close(m.coefficients().detach().sum(-1), torch.ones(4000), atol=1e-6, rtol=0)
    assert abs(a1.mean().item() - 0.5) < 0.02
    for qq in (0.25, 0.5, 0.75):
        assert abs(torch.quantile(a1, qq).item() - qq) < 0.03
    # the gate parameterisation starts from the same coefficients for the same generator
    gate = KVShift(n_heads=4000, window=1, param="gate")
    gate.reset_parameters(torch.Generator().manual_seed(0))
    torch.testing.assert_close(gate.coefficients().detach(), m.coefficients().detach(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shift_param", ["free", "gate", "clamp01"])
def test_init_is_reproducible_for_a_seed_and_differs_across_seeds(shift_param):
    kw = dict(shift_param=shift_param, n_layers=2, attn_only=False)
    a = bare_state_dict(build_module(make_cfg(seed=3, **kw)))
    b = bare_state_dict(build_module(make_cfg(seed=3, **kw)))
    c = bare_state_dict(build_module(make_cfg(seed=4, **kw)))
    assert set(a) == set(b) == set(c)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    for k in ("layers.0.attn.k_shift.weight", "layers.1.attn.v_shift.weight", "layers.0.attn.q.weight"):
        assert not torch.equal(a[k], c[k]), k
    # layers and K/V draw different coefficients
    assert not torch.equal(a["layers.0.attn.k_shift.weight"], a["layers.1.attn.k_shift.weight"])
    assert not torch.equal(a["layers.0.attn.k_shift.weight"], a["layers.0.attn.v_shift.weight"])


# --------------------------------------------------------------------------------------------
# 5. Checkpoints
# --------------------------------------------------------------------------------------------

ROUND_TRIP_CASES = [
    dict(),
    dict(positions="rotary", n_heads=4, n_kv_heads=2, shift_param="gate", shift_window=2),
    dict(positions="learned", attn_only=False, mlp="swiglu", norm="rmsnorm", n_layers=2, shift="v"),
    dict(positions="alibi", shift_param="clamp01", shift="k", n_heads=4, n_kv_heads=1),
    dict(arch="vanilla", positions="alibi", attn_only=False, mlp="gelu", norm="none", d_mlp=24),
]


@pytest.mark.parametrize("kw", ROUND_TRIP_CASES, ids=lambda kw: "-".join(str(v) for v in kw.values()) or "default")
def test_save_load_round_trip_is_bit_identical(kw, tmp_path):
    cfg = make_cfg(**kw)
    model = build_model(cfg)
    perturb_all_(model)  # a reload that re-initialises from the seed must fail
    path = save_model(model, tmp_path / "sub" / "m.safetensors")
    assert path.is_file()
    loaded = load_model(path)
    assert model_config(loaded) == cfg
    sd0, sd1 = bare_state_dict(model), bare_state_dict(loaded)
    assert set(sd0) == set(sd1)
    for k in sd0:
        assert sd0[k].dtype == sd1[k].dtype and torch.equal(sd0[k], sd1[k]), k
    fresh = bare_state_dict(build_model(cfg))
    assert any(not torch.equal(fresh[k], sd1[k]) for k in sd1 if fresh[k].numel())
    tokens = make_tokens(2, SEQ)
    with torch.no_grad():
        assert torch.equal(model(tokens), loaded(tokens))
    if cfg.arch == "kvshift":
        pd.testing.assert_frame_equal(shift_coefficients(model), shift_coefficients(loaded))


@pytest.mark.parametrize(
    "kw", [dict(), dict(attn_only=False, mlp="gelu"), dict(attn_only=False, mlp="swiglu", norm="rmsnorm")],
    ids=["attn-only", "gelu-mlp", "swiglu-mlp"],
)
def test_bare_state_dict_of_a_bridge_has_exactly_the_bare_module_tensors(kw):
    """The bridge wraps modules in place and adds alias paths (e.g. MLPBridge's `in`/`out` for
    the native `fc_in`/`fc_out`); the checkpoint must hold each tensor once, under bare names."""
    cfg = make_cfg(n_layers=2, **kw)
    bare = build_module(cfg)
    want = bare_state_dict(bare)
    assert set(want) == set(torch.nn.Module.state_dict(bare))
    got = bare_state_dict(to_bridge(copy.deepcopy(bare)))
    assert sorted(got) == sorted(want)
    for k in want:
        assert torch.equal(got[k], want[k]), k


def test_checkpoint_is_safetensors_and_loads_without_pickle(tmp_path, monkeypatch):
    model = build_model(make_cfg(shift_window=2))
    perturb_all_(model)
    path = save_model(model, tmp_path / "m.safetensors")
    raw = path.read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + header_len])
    assert header["__metadata__"]["format"] == M.CHECKPOINT_FORMAT
    assert json.loads(header["__metadata__"]["config"]) == model_config(model).to_dict()
    assert set(load_file(str(path))) == set(bare_state_dict(model))

    def no_pickle(*a, **k):
        raise AssertionError("pickle used while loading a checkpoint")

    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(pickle, "loads", no_pickle)
    monkeypatch.setattr(pickle, "Unpickler", no_pickle)
    monkeypatch.setattr(torch, "load", no_pickle)
    loaded = load_model(path)
    tokens = make_tokens(1, SEQ)
    with torch.no_grad():
        assert torch.equal(model(tokens), loaded(tokens))


def test_missing_checkpoint_raises_file_not_found_naming_the_path(tmp_path):
    path = tmp_path / "nowhere" / "m.safetensors"
    with pytest.raises(FileNotFoundError) as e:
        load_model(path)
    assert str(path) in str(e.value)


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory):
    """One valid checkpoint (a bare module saves the same file as its bridge)."""
    return save_model(build_module(make_cfg()), tmp_path_factory.mktemp("ckpt") / "good.safetensors")


def _corrupt_file(good, tmp_path, kind):
    path = tmp_path / f"{kind}.safetensors"
    if kind == "garbage":
        path.write_bytes(b"this is not a safetensors file at all")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        raw = good.read_bytes()
        path.write_bytes(raw[: len(raw) - 40])
    elif kind == "pickle":  # a torch.save pickle under a .safetensors name is refused, not unpickled
        torch.save(load_file(str(good)), path)
    return path


@pytest.mark.parametrize("kind", ["garbage", "empty", "truncated", "pickle"])
def test_corrupt_checkpoint_raises_value_error_naming_the_path(good_checkpoint, tmp_path, kind):
    path = _corrupt_file(good_checkpoint, tmp_path, kind)
    with pytest.raises(ValueError) as e:
        load_model(path)
    assert str(path) in str(e.value)


def test_foreign_safetensors_file_raises_value_error_naming_the_path(tmp_path):
    path = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(3, 2)}, str(path), metadata={"format": "pt"})
    with pytest.raises(ValueError) as e:
        load_model(path)
    assert str(path) in str(e.value) and "kvshift_lens" in str(e.value)
    path2 = tmp_path / "foreign_nometa.safetensors"
    save_file({"w": torch.zeros(3, 2)}, str(path2))
    with pytest.raises(ValueError) as e:
        load_model(path2)
    assert str(path2) in str(e.value)


def _rewrite_metadata(src, dst, meta):
    save_file(load_file(str(src)), str(dst), metadata=meta)
    return dst


def test_checkpoint_missing_a_tensor_raises_value_error_naming_path_and_tensor(good_checkpoint, tmp_path):
    with safe_open(str(good_checkpoint), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(good_checkpoint))
    tensors.pop("layers.0.attn.k_shift.weight")
    path = write_safetensors(tensors, {**meta, "sha256": state_sha256(tensors)}, tmp_path / "dropped.safetensors")
    with pytest.raises(ValueError) as e:
        load_model(path)
    assert str(path) in str(e.value) and "k_shift" in str(e.value)


def test_checkpoint_with_tensors_not_matching_its_config_raises_value_error_naming_the_path(good_checkpoint, tmp_path):
    with safe_open(str(good_checkpoint), framework="pt") as f:
        meta = f.metadata()
    cfg = json.loads(meta["config"])
    cfg.update(d_model=32, d_head=None)  # edited config: every matrix now has the wrong shape
    path = _rewrite_metadata(good_checkpoint, tmp_path / "edited.safetensors", {**meta, "config": json.dumps(cfg)})
    with pytest.raises(ValueError) as e:
        load_model(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("config", [None, "{not json", json.dumps({"d_model": 16, "colour": "red"})])
def test_checkpoint_with_broken_config_metadata_raises_value_error_naming_the_path(good_checkpoint, tmp_path, config):
    good = good_checkpoint
    meta = {"format": M.CHECKPOINT_FORMAT}
    if config is not None:
        meta["config"] = config
    path = _rewrite_metadata(good, tmp_path / "broken.safetensors", meta)
    with pytest.raises(ValueError) as e:
        load_model(path)
    assert str(path) in str(e.value)


# --------------------------------------------------------------------------------------------
# 6. Bare SDPA path vs bridge explicit path: outputs and gradients
# --------------------------------------------------------------------------------------------

PATH_CASES = [
    dict(arch=a, positions=p) for a in ("vanilla", "kvshift") for p in ("learned", "rotary", "alibi")
] + [
    dict(arch="kvshift", positions="rotary", n_heads=4, n_kv_heads=2, shift_window=2, shift_param="gate"),
    dict(arch="kvshift", positions="alibi", n_heads=4, n_kv_heads=1, shift="v", shift_param="clamp01"),
    dict(arch="vanilla", positions="rotary", n_heads=4, n_kv_heads=2),
    dict(arch="kvshift", positions="learned", attn_only=False, mlp="swiglu", norm="rmsnorm", shift="k"),
]


def _strip(name: str) -> str:
    return name.replace("._original_component", "")


@pytest.mark.parametrize("kw", PATH_CASES, ids=lambda kw: "-".join(str(v) for v in kw.values()))
def test_bare_sdpa_and_bridge_paths_agree_in_outputs_and_gradients(kw):
    cfg = make_cfg(n_layers=2, **kw)
    bare = build_module(cfg)
    randomize_shift_(bare, seed=2)
    bridge = to_bridge(copy.deepcopy(bare))
    tokens = make_tokens(3, SEQ, seed=1)
    targets = make_tokens(3, SEQ, seed=2)

    out_bare, out_bridge = bare(tokens), bridge(tokens)
    torch.testing.assert_close(out_bridge, out_bare, atol=1e-5, rtol=1e-5)
    F.cross_entropy(out_bare.reshape(-1, D_VOCAB), targets.reshape(-1)).backward()
    F.cross_entropy(out_bridge.reshape(-1, D_VOCAB), targets.reshape(-1)).backward()

    g_bare = {n: p.grad for n, p in bare.named_parameters()}
    g_bridge = {_strip(n): p.grad for n, p in bridge.named_parameters()}
    assert set(g_bare) == set(g_bridge)
    for n, g in g_bare.items():
        assert g is not None and g_bridge[n] is not None, n
        torch.testing.assert_close(g_bridge[n], g, atol=1e-5, rtol=1e-4, msg=n)
    shift_grads = [g for n, g in g_bare.items() if "_shift." in n]
    assert len(shift_grads) == cfg.n_layers * len(sides(cfg))
    assert all(g.abs().sum() > 0 for g in shift_grads)  # α/β really receive gradient


# --------------------------------------------------------------------------------------------
# 7. Hooks
# --------------------------------------------------------------------------------------------

HOOK_CASES = [
    dict(positions="learned"),
    dict(positions="rotary", n_heads=4, n_kv_heads=2, shift_window=2, shift_param="gate"),
    dict(positions="alibi", shift_window=3, shift_param="clamp01", attn_only=False),
]


@pytest.mark.parametrize("kw", HOOK_CASES, ids=lambda kw: "-".join(str(v) for v in kw.values()))
def test_cache_exposes_shifted_keys_and_values_equal_to_eq5_of_cached_raw_ones(kw):
    cfg = make_cfg(n_layers=2, **kw)
    model = build_model(cfg)
    randomize_shift_(model)
    tokens = make_tokens(2, SEQ)
    _, cache = model.run_with_cache(tokens)
    for layer in range(cfg.n_layers):
        alpha, beta = coeff_matrices(model, layer)
        for which, c in (("k", alpha), ("v", beta)):
            name = f"blocks.{layer}.attn.hook_{which}_shifted"
            assert name in cache
            got, raw = cache[name], cache[f"blocks.{layer}.attn.hook_{which}"]
            assert got.shape == (2, SEQ, cfg.kv_heads, cfg.d_head)
            assert raw.shape == got.shape
            torch.testing.assert_close(got.double(), loop_shift(raw.double(), c), atol=1e-6, rtol=1e-6)
            assert torch.equal(cache[f"blocks.{layer}.hook_{which}_shifted"], got)  # block alias


@pytest.mark.parametrize("shift", ["k", "v"])
def test_only_the_shifted_side_gets_a_hook(shift):
    model = build_model(make_cfg(shift=shift))
    _, cache = model.run_with_cache(make_tokens(1, SEQ))
    other = "v" if shift == "k" else "k"
    assert f"blocks.0.attn.hook_{shift}_shifted" in cache
    assert f"blocks.0.attn.hook_{other}_shifted" not in cache


def test_vanilla_has_no_shift_hooks_or_weights():
    model = build_model(make_cfg(arch="vanilla"))
    _, cache = model.run_with_cache(make_tokens(1, SEQ))
    assert not [k for k in cache.keys() if "shift" in k]
    assert not [k for k in model.hook_dict if "shift" in k]
    assert not [k for k in model.state_dict() if "shift" in k]
    assert not kv_shifts(model)


@pytest.mark.parametrize("which", ["k", "v"])
def test_zeroing_shifted_hook_changes_output(which):
    model = build_model(make_cfg(n_layers=2))
    tokens = make_tokens(2, SEQ)
    with torch.no_grad():
        clean = model(tokens)
        seen = {}

        def zero(x, hook):
            seen[hook.name] = True
            return torch.zeros_like(x)

        patched = model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.0.attn.hook_{which}_shifted", zero)])
    assert seen
    assert (patched - clean).abs().max() > 1e-3


def test_zeroed_values_leave_only_the_output_bias():
    model = build_model(make_cfg(n_layers=1))
    perturb_all_(model)  # nonzero o.bias
    tokens = make_tokens(2, SEQ)
    store = {}
    with torch.no_grad():
        model.run_with_hooks(
            tokens,
            fwd_hooks=[
                ("blocks.0.attn.hook_v_shifted", lambda x, hook: torch.zeros_like(x)),
                ("blocks.0.hook_attn_out", lambda x, hook: store.__setitem__("attn_out", x.clone())),
            ],
        )
    bias = bare_state_dict(model)["layers.0.attn.o.bias"]
    torch.testing.assert_close(store["attn_out"], bias.expand_as(store["attn_out"]), atol=1e-6, rtol=0)


def test_patching_hook_pattern_reaches_the_output():
    cfg = make_cfg(n_heads=4, n_kv_heads=2, positions="rotary")
    model = build_model(cfg)
    randomize_shift_(model)
    tokens = make_tokens(2, SEQ)
    eye = torch.eye(SEQ)

    def self_only(pattern, hook):
        return eye.expand_as(pattern).clone()

    cache = {}

    def keep(name):
        def hook_fn(x, hook):
            cache[name] = x.detach().clone()

        return hook_fn

    with torch.no_grad():
        clean, clean_cache = model.run_with_cache(tokens)
        # a no-op edit keeps the output
        same = model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_pattern", lambda p, hook: p.clone())])
        assert torch.equal(same, clean)
        patched = model.run_with_hooks(
            tokens,
            fwd_hooks=[("blocks.0.attn.hook_pattern", self_only)]
            + [(f"blocks.0.attn.hook_{n}", keep(f"blocks.0.attn.hook_{n}")) for n in ("v_shifted", "z", "pattern")],
        )
    assert (patched - clean).abs().max() > 1e-3
    # attending only to itself, head h's z is its KV head's shifted value
    v_hat = cache["blocks.0.attn.hook_v_shifted"].repeat_interleave(cfg.n_heads // cfg.kv_heads, dim=2)
    torch.testing.assert_close(cache["blocks.0.attn.hook_z"], v_hat, atol=1e-6, rtol=1e-6)
    assert torch.equal(cache["blocks.0.attn.hook_pattern"], eye.expand_as(cache["blocks.0.attn.hook_pattern"]))
    # the clean pattern is a causal softmax
    pat = clean_cache["blocks.0.attn.hook_pattern"]
    torch.testing.assert_close(pat.sum(-1), torch.ones(pat.shape[:-1]), atol=1e-6, rtol=0)
    assert torch.equal(pat.triu(1), torch.zeros_like(pat))


def test_patching_hook_k_flows_into_hook_k_shifted():
    cfg = make_cfg(n_heads=4, n_kv_heads=2, shift_window=2)
    model = build_model(cfg)
    randomize_shift_(model)
    tokens = make_tokens(2, SEQ)
    r = torch.randn(2, SEQ, cfg.kv_heads, cfg.d_head, generator=torch.Generator().manual_seed(9))
    store = {}
    with torch.no_grad():
        clean = model(tokens)
        patched = model.run_with_hooks(
            tokens,
            fwd_hooks=[
                ("blocks.0.attn.hook_k", lambda x, hook: r.clone()),
                ("blocks.0.attn.hook_k_shifted", lambda x, hook: store.__setitem__("k_hat", x.clone())),
            ],
        )
    alpha, _ = coeff_matrices(model, 0)
    torch.testing.assert_close(store["k_hat"].double(), loop_shift(r.double(), alpha), atol=1e-6, rtol=1e-6)
    assert (patched - clean).abs().max() > 1e-4


# --------------------------------------------------------------------------------------------
# 8. TransformerLens tools
# --------------------------------------------------------------------------------------------


def _logit_metric(logits):
    return logits[:, -1, 3].mean() - logits[:, -1, 5].mean()


@pytest.mark.parametrize("arch", ["vanilla", "kvshift"])
def test_tl_head_patching_runs_and_gives_n_layers_by_n_heads(arch):
    cfg = make_cfg(arch=arch, n_layers=2, n_heads=4)
    model = build_model(cfg)
    clean, corrupt = make_tokens(2, 8, seed=1), make_tokens(2, 8, seed=2)
    _, clean_cache = model.run_with_cache(clean)
    with torch.no_grad():
        base = _logit_metric(model(corrupt)).item()
        clean_metric = _logit_metric(model(clean)).item()
    out = patching.get_act_patch_attn_head_out_all_pos(model, corrupt, clean_cache, _logit_metric)
    assert tuple(out.shape) == (2, 4)
    assert torch.isfinite(out).all()
    assert (out - base).abs().max() > 1e-5  # some head matters
    # one entry recomputed by hand: layer 1, head 2 of z patched from the clean run
    def patch_z(x, hook):
        x = x.clone()
        x[:, :, 2] = clean_cache[hook.name][:, :, 2]
        return x

    with torch.no_grad():
        manual = model.run_with_hooks(corrupt, fwd_hooks=[("blocks.1.attn.hook_z", patch_z)])
    assert abs(out[1, 2].item() - _logit_metric(manual).item()) < 1e-5
    # identical clean and corrupted inputs: every patch is a no-op
    same = patching.get_act_patch_attn_head_out_all_pos(model, clean, clean_cache, _logit_metric)
    torch.testing.assert_close(same, torch.full((2, 4), clean_metric), atol=1e-5, rtol=0)


def test_tl_generic_patching_of_k_shifted_matches_a_manual_patch():
    cfg = make_cfg(n_layers=2, n_heads=4)
    model = build_model(cfg)
    randomize_shift_(model)
    clean, corrupt = make_tokens(2, 8, seed=1), make_tokens(2, 8, seed=2)
    _, clean_cache = model.run_with_cache(clean)
    name = utilities.get_act_name("k_shifted", 1)
    assert name in clean_cache and name in model.hook_dict
    out = patching.generic_activation_patch(
        model, corrupt, clean_cache, _logit_metric,
        patch_setter=patching.layer_head_vector_patch_setter,
        activation_name="k_shifted", index_axis_names=("layer", "head"),
    )
    assert tuple(out.shape) == (2, 4)

    def patch_head(x, hook, h):
        x = x.clone()
        x[:, :, h] = clean_cache[hook.name][:, :, h]
        return x

    with torch.no_grad():
        base = _logit_metric(model(corrupt)).item()
        for layer, h in ((0, 1), (1, 2)):
            hook = utilities.get_act_name("k_shifted", layer)
            manual = model.run_with_hooks(corrupt, fwd_hooks=[(hook, lambda x, hook, h=h: patch_head(x, hook, h))])
            assert abs(out[layer, h].item() - _logit_metric(manual).item()) < 1e-5
    assert (out - base).abs().max() > 1e-5  # patching the shifted keys does something


def test_get_act_name_resolves_shift_hooks_present_in_the_cache():
    model = build_model(make_cfg(n_layers=2))
    _, cache = model.run_with_cache(make_tokens(1, SEQ))
    for layer in range(2):
        for which in ("k_shifted", "v_shifted"):
            name = utilities.get_act_name(which, layer)
            assert name in cache, name
            assert torch.equal(cache[name], cache[f"blocks.{layer}.attn.hook_{which}"])


@pytest.mark.parametrize("arch", ["vanilla", "kvshift"])
def test_weight_accessors_have_tl_shapes_and_match_the_linear_layers(arch):
    cfg = make_cfg(arch=arch, n_layers=2, n_heads=4, d_model=16)
    L, H, D, dh = 2, 4, 16, 4
    model = build_model(cfg)
    assert model.W_Q.shape == (L, H, D, dh)
    assert model.W_K.shape == (L, H, D, dh)
    assert model.W_V.shape == (L, H, D, dh)
    assert model.W_O.shape == (L, H, dh, D)
    sd = bare_state_dict(model)
    for l in range(L):
        q, k = sd[f"layers.{l}.attn.q.weight"], sd[f"layers.{l}.attn.k.weight"]
        v, o = sd[f"layers.{l}.attn.v.weight"], sd[f"layers.{l}.attn.o.weight"]
        for h in range(H):
            sl = slice(h * dh, (h + 1) * dh)
            assert torch.equal(model.W_Q[l, h], q[sl].T)
            assert torch.equal(model.W_K[l, h], k[sl].T)
            assert torch.equal(model.W_V[l, h], v[sl].T)
            assert torch.equal(model.W_O[l, h], o[:, sl].T)
    qk, ov = model.QK, model.OV
    assert isinstance(qk, FactoredMatrix) and isinstance(ov, FactoredMatrix)
    assert qk.shape == (L, H, D, D) and ov.shape == (L, H, D, D)
    torch.testing.assert_close(ov.AB, model.W_V @ model.W_O)
    torch.testing.assert_close(qk.AB, model.W_Q @ model.W_K.transpose(-1, -2))


def test_bridge_state_dict_contains_the_shift_weights():
    cfg = make_cfg(n_layers=2, shift_window=2)
    model = build_model(cfg)
    randomize_shift_(model)
    sd = model.state_dict()
    for l, attn in enumerate(M.attention_layers(model)):
        for which in ("k", "v"):
            key = f"blocks.{l}.attn.{which}_shift.weight"
            assert key in sd, key
            assert torch.equal(sd[key], getattr(attn, f"{which}_shift").weight.detach())
            assert sd[key].shape == (cfg.kv_heads, 3)


# --------------------------------------------------------------------------------------------
# 9. Config validation
# --------------------------------------------------------------------------------------------


def test_indivisible_d_model_names_d_model_and_n_heads():
    with pytest.raises(ConfigError) as e:
        ModelConfig(d_model=30, n_heads=4)
    assert "d_model" in str(e.value) and "n_heads" in str(e.value)
    assert issubclass(ConfigError, ValueError)
    # an explicit d_head makes it legal
    assert ModelConfig(d_model=30, n_heads=4, d_head=8).d_head == 8


@pytest.mark.parametrize(
    "field,value,allowed",
    [
        ("positions", "sinusoidal", ["learned", "rotary", "alibi"]),
        ("norm", "batchnorm", ["layernorm", "rmsnorm", "none"]),
        ("mlp", "relu", ["gelu", "swiglu"]),
    ],
)
def test_unknown_choice_lists_allowed_values(field, value, allowed):
    with pytest.raises(ConfigError) as e:
        ModelConfig(**{field: value})
    msg = str(e.value)
    assert field in msg and value in msg
    assert all(a in msg for a in allowed), msg


@pytest.mark.parametrize(
    "mixer,field,allowed",
    [
        ("mamba", "model.mixer.name", ["none", "kv_shift", "canon", "token_shift"]),
        (dict(name="kv_shift", sides="q"), "model.mixer.sides", ["kv", "k", "v"]),
        (dict(name="kv_shift", param="softmax"), "model.mixer.param", ["free", "gate", "clamp01"]),
    ],
)
def test_unknown_mixer_choice_lists_allowed_values(mixer, field, allowed):
    with pytest.raises(ConfigError) as e:
        ModelConfig(mixer=mixer)
    msg = str(e.value)
    assert field in msg and all(a in msg for a in allowed), msg


def test_legacy_flat_configs_read_as_the_same_kv_shift_or_vanilla_model():
    legacy = dict(d_model=16, n_heads=2, arch="kvshift", shift="k", shift_param="gate", shift_window=2)
    new = ModelConfig(d_model=16, n_heads=2, mixer=dict(name="kv_shift", sides="k", param="gate", window=2))
    assert ModelConfig.from_dict(legacy) == new and new.arch == "kvshift"
    assert ModelConfig.from_dict(dict(arch="vanilla", shift="kv")) == ModelConfig(mixer="none")
    with pytest.raises(ConfigError, match="model.arch='transformer'"):
        ModelConfig.from_dict(dict(arch="transformer"))
    with pytest.raises(ConfigError, match="legacy"):
        ModelConfig.from_dict(dict(arch="kvshift", mixer={"name": "none"}))


@pytest.mark.parametrize(
    "kw,field",
    [
        (dict(mixer=dict(name="kv_shift", window=0)), "model.mixer.window"),
        (dict(d_mlp=0), "model.d_mlp"),
        (dict(n_layers=0), "n_layers"),
        (dict(n_heads=4, n_kv_heads=3, d_model=16), "n_kv_heads"),
        (dict(positions="rotary", d_model=12, n_heads=4), "d_head"),
        (dict(init_std=0.0), "init_std"),
    ],
)
def test_invalid_numbers_raise_config_error_naming_the_field(kw, field):
    with pytest.raises(ConfigError) as e:
        ModelConfig(**kw)
    assert field in str(e.value)


def test_from_dict_rejects_unknown_keys_by_name_and_round_trips():
    with pytest.raises(ConfigError) as e:
        ModelConfig.from_dict({"d_model": 16, "n_heads": 2, "shift_windw": 2})
    assert "shift_windw" in str(e.value)
    cfg = make_cfg(shift_window=2, positions="rotary", n_heads=4, n_kv_heads=2, attn_only=False)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_alibi_model_builds_with_odd_d_head():
    """ALiBi has no rotary tables, so an odd d_head (which validation accepts) must build and
    match the reference."""
    cfg = make_cfg(positions="alibi", d_model=12, n_heads=4)  # d_head = 3
    assert cfg.d_head == 3
    model = build_model(cfg)
    tokens = make_tokens(2, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(tokens).double(), reference_logits(model, tokens), atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------------
# 10. shift_coefficients
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(shift_window=2, shift_param="gate", n_heads=4, n_kv_heads=2),
        dict(shift="k", shift_param="clamp01"),
        dict(shift="v", shift_window=3),
    ],
    ids=["default", "w2-gate-gqa", "k-only", "v-only-w3"],
)
def test_shift_coefficients_has_one_row_per_layer_and_kv_head_matching_the_modules(kw):
    cfg = make_cfg(n_layers=3, **kw)
    model = build_model(cfg)
    randomize_shift_(model)
    df = shift_coefficients(model)
    w = window(cfg) + 1
    assert list(df.columns) == ["layer", "head"] + [f"alpha{j + 1}" for j in range(w)] + [
        f"beta{j + 1}" for j in range(w)
    ]
    assert len(df) == cfg.n_layers * cfg.kv_heads
    assert list(zip(df.layer, df["head"])) == [(l, h) for l in range(cfg.n_layers) for h in range(cfg.kv_heads)]
    identity = torch.zeros(cfg.kv_heads, w, dtype=torch.float64)
    identity[:, 0] = 1
    for l, attn in enumerate(M.attention_layers(model)):
        rows = df[df.layer == l]
        a = torch.tensor(rows[[f"alpha{j + 1}" for j in range(w)]].to_numpy(dtype=float))
        b = torch.tensor(rows[[f"beta{j + 1}" for j in range(w)]].to_numpy(dtype=float))
        want_a = attn.k_shift.coefficients().detach().double() if "k" in sides(cfg) else identity
        want_b = attn.v_shift.coefficients().detach().double() if "v" in sides(cfg) else identity
        assert hasattr(attn, "k_shift") == ("k" in sides(cfg)) and hasattr(attn, "v_shift") == ("v" in sides(cfg))
        torch.testing.assert_close(a, want_a, atol=1e-7, rtol=0)
        torch.testing.assert_close(b, want_b, atol=1e-7, rtol=0)


@pytest.mark.parametrize("mixer", ["none", "canon"])
def test_shift_coefficients_without_kv_shift_modules_is_an_empty_frame_with_the_columns(mixer):
    df = shift_coefficients(build_model(make_cfg(mixer=mixer)))
    assert df.empty
    assert list(df.columns) == ["layer", "head", "alpha1", "alpha2", "beta1", "beta2"]


def test_shift_coefficients_works_on_bare_module_and_bridge_alike():
    bare = build_module(make_cfg(n_layers=2))
    randomize_shift_(bare)
    a = shift_coefficients(bare)
    b = shift_coefficients(to_bridge(copy.deepcopy(bare)))
    pd.testing.assert_frame_equal(a, b)
    with pytest.raises(TypeError):
        shift_coefficients(torch.nn.Linear(2, 2))


# --------------------------------------------------------------------------------------------
# 11. The weights and logits of the code before the mixer registry (up to float rounding)
# --------------------------------------------------------------------------------------------

DATA = Path(__file__).parent / "data"
PINNED = json.loads((DATA / "pinned_digests.json").read_text())
# The weights and logits of every pinned config, and the legacy checkpoint's logits, on make_tokens(): written
# (torch 2.13, one thread, an AVX-512 CPU) by code that reproduced there, bit for bit, every sha256 digest that
# pinned_digests.json recorded at commit d211285.
PRE_MIXER = load_file(str(DATA / "pre_mixer_models.safetensors"))

# Another CPU reproduces those float32 tensors only up to rounding, so they are compared within a tolerance
# (bit-exact comparisons stay within one process: tests/test_mixers.py, the resume tests). The integer bits of a
# seeded generator are the same everywhere, but the init turns them into floats through vectorised kernels:
#  - torch.randn (init_weights) fills tensors of >= 16 elements with a vectorised Box-Muller: Sleef's log/cos/sin
#    under AVX2 and AVX-512, the C library's under ATEN_CPU_CAPABILITY=default: every matrix moves there;
#  - torch.log1p of KVShift's Exp(1) draws (KVShift.reset_parameters) is ATen-vectorised the same way;
#  - torch.log of the gate logits (KVShift.reset_parameters, param="gate") runs through MKL's VML, which picks its
#    code path from the CPU it finds (vendor included), not from ATEN_CPU_CAPABILITY: the likely reason only the
#    [gate, window 2] config's weights changed on an AVX2 AMD EPYC (issue 22). MKL_ENABLE_INSTRUCTIONS=SSE4_2
#    reproduces exactly that on an Intel CPU: one of that config's k_shift logits moves by 2.4e-7.
# The forward's matmuls and reductions then sum in another order. Measured against the stored tensors under
# ATEN_CPU_CAPABILITY=avx2, =default, MKL's SSE4_2 path and both (.ci/run): weights differ by at most 3.6e-7 (a few
# float32 ulps of |w| < 1; not at all under avx2), logits by at most 2.2e-6 (|logits| < 3): a fifth of the tolerances
# below at most, while moving one weight by 1e-3 lands 300x past the weights' and 30x past the logits' (last test).
WEIGHTS_TOL = dict(atol=2e-6, rtol=1e-5)
LOGITS_TOL = dict(atol=1e-5, rtol=1e-5)


def case_id(record: dict) -> str:
    return "-".join(f"{k}={v}" for k, v in record["legacy_config"].items()) or "default"


def pre_mixer_weights(record: dict) -> dict[str, torch.Tensor]:
    prefix = f"{case_id(record)}/weights/"
    return {k.removeprefix(prefix): v for k, v in PRE_MIXER.items() if k.startswith(prefix)}


def _sha(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().contiguous().numpy().tobytes()).hexdigest()


def test_the_stored_weights_and_logits_hash_to_the_digests_recorded_before_the_mixer_registry():
    """Hashes stored bytes, computes nothing: true on every machine, and ties the references to d211285."""
    for record in PINNED["models"]:
        weights = pre_mixer_weights(record)
        h = hashlib.sha256()
        for k in sorted(weights):
            h.update(k.encode())
            h.update(weights[k].numpy().tobytes())
        assert h.hexdigest() == record["weights"], case_id(record)
        assert _sha(PRE_MIXER[f"{case_id(record)}/logits"]) == record["logits"], case_id(record)
    assert _sha(PRE_MIXER["legacy_checkpoint/logits"]) == PINNED["legacy_checkpoint"]["logits"]


@pytest.mark.numerics
@pytest.mark.parametrize("record", PINNED["models"], ids=case_id)
def test_models_from_one_seed_have_the_weights_and_logits_of_the_pre_mixer_code(record):
    """Up to float32 rounding of this CPU (WEIGHTS_TOL, LOGITS_TOL)."""
    module = build_module(make_cfg(**record["legacy_config"]))
    torch.testing.assert_close(bare_state_dict(module), pre_mixer_weights(record), **WEIGHTS_TOL)
    with torch.no_grad():
        torch.testing.assert_close(module(make_tokens()), PRE_MIXER[f"{case_id(record)}/logits"], **LOGITS_TOL)


@pytest.mark.numerics
def test_a_checkpoint_written_before_the_mixer_registry_loads_with_its_weights_and_logits():
    path = DATA / PINNED["legacy_checkpoint"]["file"]
    with safe_open(str(path), framework="pt") as f:
        assert "arch" in json.loads(f.metadata()["config"])  # really the old flat layout
    cfg, tensors, _ = M.read_checkpoint(path)
    assert cfg.mixer.name == "kv_shift" and cfg.mixer.window == 2 and cfg.mixer.param == "gate"
    bare = build_module(cfg)
    bare.load_state_dict(tensors, strict=True)
    tokens = make_tokens()
    with torch.no_grad():
        torch.testing.assert_close(bare(tokens), PRE_MIXER["legacy_checkpoint/logits"], **LOGITS_TOL)
        torch.testing.assert_close(load_model(path)(tokens), bare(tokens), atol=1e-5, rtol=1e-5)


@pytest.mark.numerics
def test_one_weight_moved_by_1e_3_fails_the_comparison_with_the_pre_mixer_code():
    """The tolerances still catch a real change: a query weight, which reaches the logits only through the
    attention pattern, moves them (by up to 4e-4) 30x past LOGITS_TOL."""
    record = PINNED["models"][0]
    module = build_module(make_cfg(**record["legacy_config"]))
    with torch.no_grad():
        module.get_parameter("layers.0.attn.q.weight")[0, 0] += 1e-3
        logits = module(make_tokens())
    with pytest.raises(AssertionError, match=r"layers\.0\.attn\.q\.weight"):
        torch.testing.assert_close(bare_state_dict(module), pre_mixer_weights(record), **WEIGHTS_TOL)
    with pytest.raises(AssertionError, match="Tensor-likes are not close"):
        torch.testing.assert_close(logits, PRE_MIXER[f"{case_id(record)}/logits"], **LOGITS_TOL)
