"""Every mixer of kvshift_lens.models.mixers against an independent loop implementation of its paper's formula,
causal on both forward paths, hooked in the bridge, saved and reloaded, decomposed by lag, and seen
by the mechanism analysis. KV shift's own grid is in tests/test_models.py."""

from __future__ import annotations

import copy
import functools
import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from test_detect import distinct_repeat
from test_models import _layernorm, _rope_at, assert_causal, _single_token_edits

from kvshift_lens import models as M
from kvshift_lens.analysis.circuits import classify_heads, logit_terms, output_terms
from kvshift_lens.analysis.head_detectors import head_scores, repeated_tokens
from kvshift_lens.models.mixers.base import MIXERS, LagMixer, lag_mix, shift
from kvshift_lens.models.config import ModelConfig
from kvshift_lens.models.transformer import bare_state_dict, blocks, build_model, build_module, to_bridge
from kvshift_lens.models.checkpoints import load_model, save_model
from kvshift_lens.models.coefficients import mixer_coefficients
from kvshift_lens.training.train_config import TrainConfig
from kvshift_lens.training.trainer import make_optimizer

D_VOCAB, N_CTX, SEQ = 23, 16, 10

MIXER_CASES = {
    "smeared_key": dict(mixer="smeared_key"),
    "primer": dict(mixer="primer_dconv"),
    "primer-kv-kernel2-gqa-rotary": dict(mixer=dict(name="primer_dconv", sides="kv", kernel=2), n_heads=4,
                                         n_kv_heads=2, positions="rotary"),
    "canon-AB": dict(mixer="canon"),
    "canon-ABCD-gelu": dict(mixer=dict(name="canon", positions="ABCD"), attn_only=False),
    "canon-BCD-swiglu-rotary": dict(mixer=dict(name="canon", positions="BCD", kernel=3), attn_only=False,
                                    mlp="swiglu", positions="rotary"),
    "token_shift": dict(mixer="token_shift"),
    "token_shift-k-gqa": dict(mixer=dict(name="token_shift", sides="k"), n_heads=4, n_kv_heads=1),
    "short_conv": dict(mixer="short_conv"),
    "short_conv-kernel4-rotary": dict(mixer=dict(name="short_conv", kernel=4), positions="rotary"),
    "kv_shift": dict(mixer="kv_shift"),
}
IDS = list(MIXER_CASES)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_cfg(**kw) -> ModelConfig:
    return ModelConfig(**{"d_model": 16, "n_heads": 2, "d_vocab": D_VOCAB, "n_ctx": N_CTX, "d_mlp": 24, **kw})


def tokens_(batch: int = 2, seq: int = SEQ, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, D_VOCAB, (batch, seq), generator=torch.Generator().manual_seed(seed))


def mixers_of(model) -> list[LagMixer]:
    return [m for m in M.bare_module(model).modules() if isinstance(m, LagMixer)]


@torch.no_grad()
def randomize_(model, seed: int = 1) -> None:
    """Move every mixer parameter off its init (inits like Primer's are constant across channels)."""
    g = torch.Generator().manual_seed(seed)
    for m in mixers_of(model):
        for p in m.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=g))


# --- independent loop implementations of each paper's formula (raw parameters, no lag_coefficients) ---

def loop_causal_conv(x, w, residual=False, bias=None):
    """out_t = [x_t +] Σ_j w[..., j] ⊙ x_{t-j} [+ b], by loops over positions and taps; x [B, T, *f]."""
    out = torch.zeros_like(x)
    for t in range(x.shape[1]):
        acc = x[:, t].clone() if residual else torch.zeros_like(x[:, t])
        for j in range(w.shape[-1]):
            if t - j >= 0:
                acc = acc + w[..., j] * x[:, t - j]
        out[:, t] = acc if bias is None else acc + bias
    return out


def loop_token_shift(x, mu):
    """RWKV-4: μ ⊙ x_t + (1 - μ) ⊙ x_{t-1}, x_{-1} = 0."""
    out = torch.zeros_like(x)
    for t in range(x.shape[1]):
        out[:, t] = mu * x[:, t] + ((1 - mu) * x[:, t - 1] if t else 0)
    return out


def loop_smeared_key(k, a):
    """Olsson et al.: σ(a)·k_t + (1 - σ(a))·k_{t-1} per head; k [B, T, H, d], a [H]."""
    s = torch.sigmoid(a)[:, None]
    out = torch.zeros_like(k)
    for t in range(k.shape[1]):
        out[:, t] = s * k[:, t] + ((1 - s) * k[:, t - 1] if t else 0)
    return out


def reference_mixer(cfg: ModelConfig, sd: dict, layer: int, slot: str):
    """The formula of `cfg.mixer` at `slot` of `layer`, from the raw checkpoint tensors; None if no module."""
    part = {"mlp_in": "", "mlp_hidden": "mlp."}.get(slot, "attn.")
    prefix = f"layers.{layer}.{part}{cfg.mixer.module_name(slot)}"
    if f"{prefix}.weight" not in sd:
        return None
    w, b = sd[f"{prefix}.weight"], sd.get(f"{prefix}.bias")
    name = cfg.mixer.name
    if name == "token_shift":
        return functools.partial(loop_token_shift, mu=w)
    if name == "smeared_key":
        return functools.partial(loop_smeared_key, a=w[:, 0])
    if name == "kv_shift":  # the free parameterisation: c_j = w[:, j] per head (Eq. 5)
        return functools.partial(loop_causal_conv, w=w[:, None, :])
    return functools.partial(loop_causal_conv, w=w, residual=name == "canon", bias=b)


def reference_logits(model, tokens: torch.Tensor) -> torch.Tensor:
    """From-scratch float64 forward (layernorm, learned or rotary positions, optional MLP) with each mixer's
    loop formula at its slot: x -> x / q_input / k_input / v_input -> projection -> q / k / v -> rotary."""
    cfg = M.model_config(model)
    sd = {k: v.detach().double() for k, v in bare_state_dict(model).items()}
    B, T = tokens.shape
    H, KV, dh = cfg.n_heads, cfg.kv_heads, cfg.d_head
    x = sd["tok_embed.weight"][tokens]
    if cfg.positions == "learned":
        x = x + sd["pos.weight"][:T]
    for layer in range(cfg.n_layers):
        p = f"layers.{layer}."
        mix = {s: reference_mixer(cfg, sd, layer, s) or (lambda t: t) for s in
               ("x", "q_input", "k_input", "v_input", "q", "k", "v", "mlp_in", "mlp_hidden")}
        h = mix["x"](_layernorm(x, sd[p + "ln1.weight"], sd[p + "ln1.bias"]))
        proj = {s: mix[f"{s}_input"](h) @ sd[p + f"attn.{s}.weight"].T + sd[p + f"attn.{s}.bias"] for s in "qkv"}
        q = mix["q"](proj["q"].reshape(B, T, H, dh))
        k = mix["k"](proj["k"].reshape(B, T, KV, dh))
        v = mix["v"](proj["v"].reshape(B, T, KV, dh))
        if cfg.positions == "rotary":
            q = torch.stack([_rope_at(q[:, t], t) for t in range(T)], dim=1)
            k = torch.stack([_rope_at(k[:, t], t) for t in range(T)], dim=1)
        z = torch.zeros(B, T, H, dh, dtype=torch.float64)
        for hq in range(H):
            g = hq // (H // KV)
            for t in range(T):
                scores = torch.stack([(q[:, t, hq] * k[:, s, g]).sum(-1) / math.sqrt(dh) for s in range(t + 1)], -1)
                pattern = torch.softmax(scores, dim=-1)
                for s in range(t + 1):
                    z[:, t, hq] += pattern[:, s, None] * v[:, s, g]
        x = x + z.reshape(B, T, H * dh) @ sd[p + "attn.o.weight"].T + sd[p + "attn.o.bias"]
        if not cfg.attn_only:
            h = mix["mlp_in"](_layernorm(x, sd[p + "ln2.weight"], sd[p + "ln2.bias"]))
            if cfg.mlp == "swiglu":
                gate, up = mix["mlp_hidden"](torch.cat([h @ sd[p + "mlp.gate.weight"].T, h @ sd[p + "mlp.in.weight"].T],
                                                       -1)).chunk(2, -1)
                x = x + (F.silu(gate) * up) @ sd[p + "mlp.out.weight"].T
            else:
                mid = F.gelu(mix["mlp_hidden"](h @ sd[p + "mlp.fc_in.weight"].T + sd[p + "mlp.fc_in.bias"]))
                x = x + mid @ sd[p + "mlp.fc_out.weight"].T + sd[p + "mlp.fc_out.bias"]
    return _layernorm(x, sd["ln_out.weight"], sd["ln_out.bias"]) @ sd["head.weight"].T


@pytest.mark.parametrize("kw", MIXER_CASES.values(), ids=IDS)
def test_logits_match_the_loop_reference_of_each_papers_formula_on_both_paths(kw):
    cfg = make_cfg(**kw)
    bare = build_module(cfg)
    if cfg.mixer.name != "kv_shift":  # the reference reads kv_shift's raw weights as free coefficients
        randomize_(bare)
    tokens = tokens_(2, 8)
    with torch.no_grad():
        ref = reference_logits(bare, tokens)
        torch.testing.assert_close(bare(tokens).double(), ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(to_bridge(copy.deepcopy(bare))(tokens).double(), ref, atol=1e-5, rtol=1e-5)


def test_the_reference_detects_a_mixer_at_the_wrong_slot():
    """Guard against a vacuous reference: a Canon-A module moved after the projections must break the match."""
    bare = build_module(make_cfg(mixer=dict(name="canon", positions="A")))
    randomize_(bare)
    tokens = tokens_(2, 8)
    with torch.no_grad():
        ref = reference_logits(bare, tokens)
        attn = bare.layers[0].attn
        attn.mixer_names = {"q_input": "x_mix"}  # same module, queries only
        assert (bare(tokens).double() - ref).abs().max() > 1e-3


def test_smeared_key_is_kv_shift_on_keys_with_a_gate_under_its_own_name():
    a = build_module(make_cfg(mixer="smeared_key"))
    b = build_module(make_cfg(mixer=dict(name="kv_shift", sides="k", param="gate")))
    sa, sb = bare_state_dict(a), bare_state_dict(b)
    assert torch.equal(sa.pop("layers.0.attn.k_mix.weight"), sb.pop("layers.0.attn.k_shift.weight"))
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    tokens = tokens_()
    with torch.no_grad():
        assert torch.equal(a(tokens), b(tokens))


# --- init --------------------------------------------------------------------------------------

def test_inits_follow_the_papers():
    primer = build_module(make_cfg(mixer="primer_dconv"))
    w = primer.layers[0].attn.q_mix.weight
    assert (w[..., 0] == 0.5).all() and (w[..., 1:] == 0.5 / 3).all()
    canon = [m.weight for m in mixers_of(build_module(make_cfg(mixer=dict(name="canon", positions="ABCD"), attn_only=False)))]
    assert all((c.abs() <= 0.5).all() for c in canon) and torch.cat([c.flatten() for c in canon]).std() > 0.2
    conv = build_module(make_cfg(mixer="short_conv")).layers[0].attn.x_mix
    assert (conv.weight.abs() <= 3 ** -0.5).all() and (conv.bias.abs() <= 3 ** -0.5).all() and conv.bias.std() > 0
    rwkv = build_module(make_cfg(mixer="token_shift", n_layers=3))
    channel = torch.arange(16) / 16
    for layer in range(3):
        attn = rwkv.layers[layer].attn
        ratio = 1 - layer / 3
        torch.testing.assert_close(attn.k_input_mix.weight.detach(), channel ** ratio)
        torch.testing.assert_close(attn.v_input_mix.weight.detach(), channel ** ratio + 0.3 * layer / 2)
        torch.testing.assert_close(attn.q_input_mix.weight.detach(), channel ** (0.5 * ratio))


@pytest.mark.parametrize("kw", MIXER_CASES.values(), ids=IDS)
def test_every_mixer_and_vanilla_from_one_seed_share_every_other_weight(kw):
    vanilla = bare_state_dict(build_module(make_cfg(**{**kw, "mixer": "none"})))
    mixed = bare_state_dict(build_module(make_cfg(**kw)))
    extra = set(mixed) - set(vanilla)
    assert set(vanilla) <= set(mixed) and extra
    assert all(k.rsplit(".", 2)[-2].endswith(("_mix", "_shift")) for k in extra), extra
    assert all(torch.equal(vanilla[k], mixed[k]) for k in vanilla)


@pytest.mark.parametrize("kw", MIXER_CASES.values(), ids=IDS)
def test_mixer_parameters_are_exactly_the_no_weight_decay_extras(kw):
    model = build_module(make_cfg(**kw))
    decay, no_decay = make_optimizer(model, TrainConfig()).param_groups
    mixer = {id(p) for m in mixers_of(model) for p in m.parameters()}
    assert mixer and mixer <= {id(p) for p in no_decay["params"]} and not mixer & {id(p) for p in decay["params"]}
    assert all(p.dim() >= 2 for p in decay["params"])


# --- causality and the two forward paths ---------------------------------------------------------

CAUSAL_CASES = {
    **MIXER_CASES,
    "canon-A-kernel1": dict(mixer=dict(name="canon", positions="A", kernel=1)),
    "canon-C-alibi": dict(mixer=dict(name="canon", positions="C"), attn_only=False, positions="alibi"),
    "canon-D-swiglu": dict(mixer=dict(name="canon", positions="D"), attn_only=False, mlp="swiglu"),
    "primer-q-kernel4": dict(mixer=dict(name="primer_dconv", sides="q", kernel=4)),
    "token_shift-qv-alibi": dict(mixer=dict(name="token_shift", sides="qv"), positions="alibi"),
    "short_conv-kernel1-mlp": dict(mixer=dict(name="short_conv", kernel=1), attn_only=False),
}


def with_explicit_softmax(bare):
    """A copy of a bare module whose attention takes the bridge's explicit-softmax branch."""
    bare = copy.deepcopy(bare)
    for attn in M.attention_layers(bare):
        attn.forward = functools.partial(M.MixerAttention.forward, attn, pattern_fn=lambda p: p)
    return bare


@pytest.mark.parametrize("kw", CAUSAL_CASES.values(), ids=list(CAUSAL_CASES))
def test_no_mixer_reads_the_future_on_either_path(kw):
    bare = build_module(make_cfg(n_layers=2, **kw))
    randomize_(bare, seed=3)
    rows = _single_token_edits(tokens_(1, SEQ, seed=5))
    with torch.no_grad():
        sdpa, explicit = bare(rows), with_explicit_softmax(bare)(rows)
    assert_causal(sdpa, "bare-sdpa")
    assert_causal(explicit, "explicit-softmax")
    torch.testing.assert_close(explicit, sdpa, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kw", MIXER_CASES.values(), ids=IDS)
def test_bare_sdpa_and_bridge_paths_agree_in_outputs_and_gradients(kw):
    bare = build_module(make_cfg(n_layers=2, **kw))
    randomize_(bare, seed=2)
    bridge = to_bridge(copy.deepcopy(bare))
    tokens, targets = tokens_(3, SEQ, seed=1), tokens_(3, SEQ, seed=2)
    out_bare, out_bridge = bare(tokens), bridge(tokens)
    torch.testing.assert_close(out_bridge, out_bare, atol=1e-5, rtol=1e-5)
    F.cross_entropy(out_bare.reshape(-1, D_VOCAB), targets.reshape(-1)).backward()
    F.cross_entropy(out_bridge.reshape(-1, D_VOCAB), targets.reshape(-1)).backward()
    g_bare = {n: p.grad for n, p in bare.named_parameters()}
    g_bridge = {n.replace("._original_component", ""): p.grad for n, p in bridge.named_parameters()}
    assert set(g_bare) == set(g_bridge)
    for n, g in g_bare.items():
        torch.testing.assert_close(g_bridge[n], g, atol=1e-5, rtol=1e-4, msg=n)
    assert all(p.grad.abs().sum() > 0 for m in mixers_of(bare) for p in m.parameters())  # mixers really train


# --- hooks, state dict, checkpoints ------------------------------------------------------------------

def hook_names(cfg: ModelConfig, model) -> list[str]:
    """Every mixer hook alias of the model, attention-level and block-level, per layer."""
    names = []
    for layer, block in enumerate(blocks(model)):
        for slot in block.all_mixers():
            hook = cfg.mixer.hook_name(slot)
            names.append(f"blocks.{layer}.{hook}")
            part = {"mlp_in": None, "mlp_hidden": "mlp"}.get(slot, "attn")
            if part:
                names.append(f"blocks.{layer}.{part}.{hook}")
    return names


@pytest.mark.parametrize("kw", MIXER_CASES.values(), ids=IDS)
def test_run_with_cache_exposes_each_mixed_output_equal_to_the_module_on_its_input(kw):
    cfg = make_cfg(n_layers=2, **kw)
    model = build_model(cfg)
    randomize_(model)
    _, cache = model.run_with_cache(tokens_())
    names = hook_names(cfg, model)
    assert names and all(n in cache for n in names), [n for n in names if n not in cache]
    for layer, block in enumerate(blocks(model)):
        for slot, mixer in block.all_mixers().items():
            path = {"mlp_in": "", "mlp_hidden": "mlp."}.get(slot, "attn.") + cfg.mixer.module_name(slot)
            got = cache[f"blocks.{layer}.{path}.hook_out"]
            assert torch.equal(cache[f"blocks.{layer}.{cfg.mixer.hook_name(slot)}"], got)
            with torch.no_grad():
                torch.testing.assert_close(got, mixer(cache[f"blocks.{layer}.{path}.hook_in"]))


@pytest.mark.parametrize("kw", MIXER_CASES.values(), ids=IDS)
def test_run_with_hooks_on_each_mixed_output_reaches_the_logits(kw):
    cfg = make_cfg(**kw)
    model = build_model(cfg)
    tokens = tokens_()
    with torch.no_grad():
        base = model(tokens)
        for name in hook_names(cfg, model):
            same = model.run_with_hooks(tokens, fwd_hooks=[(name, lambda x, hook: x)])
            zeroed = model.run_with_hooks(tokens, fwd_hooks=[(name, lambda x, hook: torch.zeros_like(x))])
            assert torch.equal(same, base) and (zeroed - base).abs().max() > 1e-4, name


@pytest.mark.parametrize("kw", MIXER_CASES.values(), ids=IDS)
def test_bridge_state_dict_and_checkpoint_round_trip_keep_every_mixer_parameter(kw, tmp_path):
    cfg = make_cfg(**kw)
    model = build_model(cfg)
    randomize_(model, seed=4)
    sd = model.state_dict()  # TL keeps only weight/bias leaves of mapped components
    for layer, block in enumerate(blocks(model)):
        for slot, mixer in block.all_mixers().items():
            path = {"mlp_in": "", "mlp_hidden": "mlp."}.get(slot, "attn.") + cfg.mixer.module_name(slot)
            for leaf, p in mixer.named_parameters():
                assert torch.equal(sd[f"blocks.{layer}.{path}.{leaf}"], p.detach())
    loaded = load_model(save_model(model, tmp_path / "m.safetensors"))
    assert M.model_config(loaded) == cfg
    a, b = bare_state_dict(model), bare_state_dict(loaded)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    pd.testing.assert_frame_equal(mixer_coefficients(model), mixer_coefficients(loaded))
    tokens = tokens_()
    with torch.no_grad():
        assert torch.equal(model(tokens), loaded(tokens))


# --- coefficients and lag decomposition ------------------------------------------------------------------

@pytest.mark.parametrize("kw", MIXER_CASES.values(), ids=IDS)
def test_mixer_coefficients_frame_lists_every_coefficient_the_forward_uses(kw):
    model = build_module(make_cfg(n_layers=2, **kw))
    randomize_(model)
    df = mixer_coefficients(model)
    assert list(df.columns) == ["layer", "slot", "head", "channel", "lag", "value"]
    expected = sum(m.lag_coefficients().numel() for m in mixers_of(model))
    assert len(df) == expected == len(df.drop_duplicates(["layer", "slot", "head", "channel", "lag"]))
    for layer, block in enumerate(blocks(model)):
        for slot, mixer in block.all_mixers().items():
            c = mixer.lag_coefficients().detach()  # [lags, *feature]
            rows = df[(df.layer == layer) & (df.slot == slot)].sort_values(["lag", "head", "channel"])
            torch.testing.assert_close(torch.tensor(rows.value.to_numpy()), c.flatten().float())


def test_mixer_coefficients_report_canon_and_token_shift_in_their_papers_terms():
    canon = build_module(make_cfg(mixer=dict(name="canon", positions="A")))
    df = mixer_coefficients(canon)
    w = canon.layers[0].attn.x_mix.weight.detach()  # [d_model, kernel]
    lag0 = df[df.lag == 0].sort_values("channel").value.to_numpy()
    torch.testing.assert_close(torch.tensor(lag0), 1 + w[:, 0])  # the residual identity is in lag 0
    assert set(df["head"]) == {-1} and len(df) == 16 * 4
    rwkv = mixer_coefficients(build_module(make_cfg(mixer="token_shift")))
    pair = rwkv.pivot_table(index=["slot", "channel"], columns="lag", values="value")
    assert ((pair[0] + pair[1]) - 1).abs().max() < 1e-6  # μ and 1 - μ
    assert mixer_coefficients(build_module(make_cfg(mixer="none"))).empty


@pytest.mark.parametrize("kw", MIXER_CASES.values(), ids=IDS)
def test_lag_terms_sum_to_the_mixed_activations_logits_and_outputs(kw):
    cfg = make_cfg(n_layers=2, **kw)
    model = build_model(cfg)
    randomize_(model)
    for mixer in mixers_of(model):
        x = torch.randn(2, SEQ, *mixer.lag_coefficients().shape[1:], generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            torch.testing.assert_close(mixer.lag_terms(x).sum(0), mixer(x))
    tokens = repeated_tokens(3, 7, D_VOCAB, torch.Generator().manual_seed(0))
    _, cache = model.run_with_cache(tokens)
    with torch.no_grad():
        for layer, attn in enumerate(M.attention_layers(model)):
            q, k, v = attn.mixed_qkv(cache[f"blocks.{layer}.attn.hook_in"])
            for side, want in zip("qkv", (q, k, v)):
                torch.testing.assert_close(attn.lag_terms(cache[f"blocks.{layer}.attn.hook_in"], side).sum(0), want)
            terms, bias = logit_terms(model, cache, layer)
            torch.testing.assert_close(terms.sum(0) + bias, cache[f"blocks.{layer}.attn.hook_attn_scores"])
            outs = output_terms(model, cache, layer)
            torch.testing.assert_close(outs.sum((0, 3)) + model.b_O[layer], cache[f"blocks.{layer}.hook_attn_out"])


def token_shift_induction_model(d_vocab=32, d_model=48, n_ctx=21):
    """Theorem 2's one-layer induction head built through RWKV token shift: μ_K = 0 makes the key input
    the previous token, μ_Q = μ_V = 1 keep the current one; W_Q = 3I, W_K = W_V = W_O = I."""
    module = build_module(ModelConfig(mixer="token_shift", n_heads=1, d_model=d_model, d_vocab=d_vocab, n_ctx=n_ctx))
    raw = torch.randn(d_model, d_vocab, generator=torch.Generator().manual_seed(0))
    embed = torch.linalg.qr(raw - raw.mean(0)).Q.T  # [vocab, d_model]: orthonormal, zero-mean rows
    attn, eye = module.layers[0].attn, torch.eye(d_model)
    with torch.no_grad():
        module.tok_embed.weight.copy_(embed)
        module.pos.weight.zero_()
        for lin, w in ((attn.q, 3 * eye), (attn.k, eye), (attn.v, eye), (attn.o, eye)):
            lin.weight.copy_(w)
        attn.q_input_mix.weight.fill_(1.0)
        attn.k_input_mix.weight.fill_(0.0)
        attn.v_input_mix.weight.fill_(1.0)
        module.head.weight.copy_(3 * embed)
    return to_bridge(module)


def test_an_induction_head_through_a_block_input_mixer_is_mixer_mediated():
    model = token_shift_induction_model()
    row = classify_heads(model, distinct_repeat(10, 32, batch=8)).iloc[0]
    assert row.is_induction and row.mechanism == "mixer-mediated"
    assert row.prev_key_fraction == pytest.approx(1.0) and row.own_value_fraction == pytest.approx(1.0)
    assert head_scores(model, distinct_repeat(10, 32, batch=8), metrics=("copying_score",)).value.item() > 0.95


def test_the_same_head_with_the_shift_on_the_value_input_is_not_mixer_mediated():
    model = token_shift_induction_model()
    attn = M.attention_layers(model)[0]
    with torch.no_grad():  # keys keep the current token: a duplicate-token head, no induction
        attn.k_input_mix.weight.fill_(1.0)
        attn.v_input_mix.weight.fill_(0.0)
    row = classify_heads(model, distinct_repeat(10, 32, batch=8)).iloc[0]
    assert not row.is_induction and row.mechanism == "none"
    assert math.isnan(row.prev_key_fraction)  # the target key is not favoured at all


def test_every_registered_mixer_is_covered_here():
    assert {make_cfg(**kw).mixer.name for kw in MIXER_CASES.values()} | {"none"} == set(MIXERS.names())


@pytest.mark.parametrize("mixer,reach", [
    ("none", dict(q=0, k=0, v=0)), ("kv_shift", dict(q=0, k=1, v=1)), (dict(name="kv_shift", sides="v"), dict(q=0, k=0, v=1)),
    (dict(name="kv_shift", window=3), dict(q=0, k=3, v=3)), ("smeared_key", dict(q=0, k=1, v=0)),
    ("primer_dconv", dict(q=2, k=2, v=2)), ("canon", dict(q=6, k=6, v=6)), (dict(name="canon", positions="A"), dict(q=3, k=3, v=3)),
    ("token_shift", dict(q=1, k=1, v=1)), (dict(name="token_shift", sides="v"), dict(q=0, k=0, v=1)), ("short_conv", dict(q=2, k=2, v=2))])
def test_mixer_reach_says_how_far_back_each_of_q_k_v_reads(mixer, reach):
    assert M.mixer_reach(make_cfg(mixer=mixer)) == reach


@pytest.mark.parametrize("c_shape", [(3, 4, 5), (3, 4, 1), (3, 5), (3, 1), (2, 4, 5), (4, 1, 1)])
@pytest.mark.parametrize("exact", [True, False])
def test_lag_mix_equals_the_plain_formula_in_value_and_gradient_for_every_coefficient_shape(c_shape, exact):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, 4, 5, dtype=torch.float64, generator=g, requires_grad=True)
    c = torch.randn(*c_shape, dtype=torch.float64, generator=g, requires_grad=True)
    plain = sum(c[j] * shift(x, j) for j in range(c.shape[0]))
    torch.testing.assert_close(lag_mix(x, c, exact), plain)
    torch.autograd.gradcheck(lambda x, c: lag_mix(x, c, exact), (x, c))
    short = x[:, :2]  # fewer positions than lags
    torch.testing.assert_close(lag_mix(short, c, exact), sum(c[j] * shift(short, j) for j in range(c.shape[0])))


@pytest.mark.numerics
def test_kv_shift_forward_is_bit_identical_to_the_plain_formula():
    x = torch.randn(3, 9, 4, 16, generator=torch.Generator().manual_seed(1))
    c = torch.rand(2, 4, 1, generator=torch.Generator().manual_seed(2))
    assert torch.equal(lag_mix(x, c, exact=True)[:, 1:], (c[0] * x + c[1] * shift(x, 1))[:, 1:])
