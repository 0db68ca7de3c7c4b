"""The theory of Xu et al. (arXiv 2411.19574) made executable: Definition 1 (the induction-head
operator IH), Theorems 1-2 as weight constructions in our `TransformerBridge` models, and the
Theorem 3 loss landscape (Eq. 10, plus the App. E script's variant). See docs/theory.md.

Positions are 0-indexed: the paper's IH at its last position L (1-indexed) is our `out[:, L-1]`.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Union

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from transformer_lens import TransformerBridge

from kvshift_lens.models.config import ModelConfig
from kvshift_lens.models.transformer import attention_layers, build_model, model_config
from kvshift_lens.models.mixers.base import shift

Scalar = Union[float, torch.Tensor, np.ndarray]

# Key ranges s (for query t) an attention row may use: (first allowed s, how far below t it stops).
KEYS = {
    "causal": (0, 0),  # s = 0..t: what a causal attention layer sees
    "no_first": (1, 0),  # s = 1..t: drop the key with no predecessor (shifted key = 0)
    "no_self": (0, 1),  # s = 0..t-1: drop the query's own position (strictly causal)
    "interior": (1, 1),  # s = 1..t-1: Definition 1's sum (paper: s = 2..L-1, 1-indexed)
}


def key_mask(n: int, keys: str, device: Optional[torch.device] = None) -> torch.Tensor:
    """Bool [q, k] mask of the keys each query may attend to under a `KEYS` range."""
    if keys not in KEYS:
        raise ValueError(f"keys={keys!r} is not one of {list(KEYS)}")
    first, gap = KEYS[keys]
    pos = torch.arange(n, device=device)
    return (pos[None, :] >= first) & (pos[None, :] <= pos[:, None] - gap)


def _masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the allowed keys only; rows with no allowed key give all zeros (empty sum)."""
    pattern = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
    return torch.nan_to_num(pattern)


def induction_head_operator(x: torch.Tensor, m: float, sigma: float, keys: str = "interior") -> torch.Tensor:
    """Definition 1 (Eq. 7) at every position t of `x` [batch, T, d] -> [batch, T, d]:
    IH_t = Σ_s softmax_s(x_t·x_{s-1}/σ − m·(t−s)) x_s over s = 1..t-1; zero where the sum is empty.

    `keys` widens the sum to the boundary keys a real layer sees ("causal": s = 0..t), with
    x_{-1} = 0 as in `Shift`; the paper's IH is keys="interior".
    """
    _, T, _ = x.shape
    prev = shift(x)  # [batch, T, d]: x_{s-1}, zero at s = 0
    pos = torch.arange(T, device=x.device)
    dist = (pos[:, None] - pos[None, :]).to(x.dtype)  # [t, s]
    scores = x @ prev.transpose(-1, -2) / sigma - m * dist  # [batch, t, s]
    return _masked_softmax(scores, key_mask(T, keys, x.device)) @ x  # [batch, T, d]


def _restrict_pattern(mask: torch.Tensor) -> Callable:
    """hook_pattern edit: keep only `mask` [q, k] keys and renormalise (= softmax over them)."""

    def restrict(pattern: torch.Tensor, hook) -> torch.Tensor:  # pattern [batch, head, q, k]
        kept = pattern * mask
        return kept / kept.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(kept.dtype).tiny)  # empty rows stay 0

    return restrict


@torch.no_grad()
def attention_output(
    model: TransformerBridge, x: torch.Tensor, layer: int = -1, keys: Optional[dict[int, str]] = None
) -> torch.Tensor:
    """Feed x [batch, T, D] as the residual embedding and return `layer`'s attention output
    [batch, T, D]; keys[l] restricts layer l's keys to a `KEYS` range via hook_pattern."""
    layer = layer % model_config(model).n_layers
    batch, T, _ = x.shape
    captured: dict[str, torch.Tensor] = {}

    def capture(act: torch.Tensor, hook) -> None:
        captured["out"] = act

    hooks: list[tuple[str, Callable]] = [("hook_embed", lambda act, hook: x)]
    for l, k in (keys or {}).items():
        hooks.append((f"blocks.{l}.attn.hook_pattern", _restrict_pattern(key_mask(T, k, x.device))))
    hooks.append((f"blocks.{layer}.hook_attn_out", capture))
    tokens = torch.zeros(batch, T, dtype=torch.long, device=x.device)  # ignored: hook_embed is replaced
    model.run_with_hooks(tokens, fwd_hooks=hooks)
    return captured["out"]


def _theory_config(arch: str, n_layers: int, d_model: int, n_ctx: int) -> ModelConfig:
    """One head per layer, attention only, no norms, ALiBi: the setting of Theorems 1-2."""
    return ModelConfig(
        mixer={"name": "kv_shift" if arch == "kvshift" else "none"}, n_layers=n_layers, n_heads=1, d_model=d_model,
        d_vocab=d_model, n_ctx=n_ctx, attn_only=True, norm="none", positions="alibi",
    )


@torch.no_grad()
def _set_linear(layer: torch.nn.Module, weight: torch.Tensor) -> None:
    layer.weight.copy_(weight)
    layer.bias.zero_()


def _blocks(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """[[a, b], [c, e]] from four [d, d] blocks -> [2d, 2d] (torch Linear weight: out = W·h)."""
    return torch.cat([torch.cat([a, b], 1), torch.cat([c, e], 1)], 0)


@torch.no_grad()
def theorem2_model(
    d: int, m: float, sigma: float, n_ctx: int, dtype: torch.dtype = torch.float64
) -> TransformerBridge:
    """Theorem 2 / App. B: one-layer, one-head KV-shift model with D = d whose attention output is IH.

    α1=0, α2=1 (key = previous token), β1=1, β2=0 (value = current token), W_K=W_V=W_O=I,
    W_Q=(√d/σ)·I (our layer divides scores by √d; Def. 1 by σ), ALiBi slope m.
    """
    model = build_model(_theory_config("kvshift", 1, d, n_ctx)).to(dtype, print_details=False)
    attn = attention_layers(model)[0]
    eye = torch.eye(d, dtype=dtype)
    _set_linear(attn.q, eye * attn.scale / sigma)
    for proj in (attn.k, attn.v, attn.o):
        _set_linear(proj, eye)
    attn.k_shift.weight.copy_(torch.tensor([[0.0, 1.0]]))  # [head, (α1, α2)]
    attn.v_shift.weight.copy_(torch.tensor([[1.0, 0.0]]))  # [head, (β1, β2)]
    attn.alibi.fill_(m)
    return model


def theorem2_gaps(
    d: int = 8, m: float = 0.25, sigma: float = 1.0, n_ctx: int = 32, batch: int = 16, seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> pd.DataFrame:
    """Max |KVSA − IH| on N(0, 1) inputs, one row per key range the model's layer is restricted to
    ("causal" = unrestricted): against Def. 1's IH (all t, and t ≥ 2 where its sum is non-empty)
    and against IH summed over the same keys as the model."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, n_ctx, d, generator=g, dtype=dtype)  # [batch, T, d]
    model = theorem2_model(d, m, sigma, n_ctx, dtype)
    paper = induction_head_operator(x, m, sigma)  # [batch, T, d]
    rows = []
    for keys in KEYS:
        out = attention_output(model, x, keys=None if keys == "causal" else {0: keys})  # [batch, T, d]
        gap = (out - paper).abs()  # [batch, T, d]
        rows.append({
            "model_keys": keys,
            "gap_vs_definition1": gap.max().item(),
            "gap_vs_definition1_t>=2": gap[:, 2:].max().item(),
            "gap_vs_ih_same_keys": (out - induction_head_operator(x, m, sigma, keys=keys)).abs().max().item(),
        })
    return pd.DataFrame(rows)


@torch.no_grad()
def theorem1_model(
    d: int, p: float, m: float, sigma: float, n_ctx: int, dtype: torch.dtype = torch.float64
) -> TransformerBridge:
    """Theorem 1 / App. A: two-layer, one-head vanilla model with D = 2d approximating IH.

    Layer 0: W_Q=W_K=0, ALiBi slope p, V copies x (first d coords) into the last d coords, so with
    the residual y_s = (x_s, Σ_{τ<s} softmax(−p(s−1−τ)) x_τ) ≈ (x_s, x_{s−1}). This needs layer 0
    strictly causal (keys "no_self"): run it through `attention_output` with keys={0: "no_self"}.
    Layer 1: query x_t·√D/σ, key the copied y_s[d:], value x_s, ALiBi slope m; its attention output
    (first d coords; the paper's layer 2 has no residual) approximates IH.
    """
    D = 2 * d
    model = build_model(_theory_config("vanilla", 2, D, n_ctx)).to(dtype, print_details=False)
    first, second = attention_layers(model)
    eye, zero = torch.eye(d, dtype=dtype), torch.zeros(d, d, dtype=dtype)
    _set_linear(first.q, torch.zeros(D, D, dtype=dtype))
    _set_linear(first.k, torch.zeros(D, D, dtype=dtype))
    _set_linear(first.v, _blocks(zero, zero, eye, zero))  # v = (0, x)
    _set_linear(first.o, torch.eye(D, dtype=dtype))
    first.alibi.fill_(p)
    _set_linear(second.q, _blocks(eye, zero, zero, zero) * second.scale / sigma)  # q = (x_t, 0)·√D/σ
    _set_linear(second.k, _blocks(zero, eye, zero, zero))  # k = (y_s[d:], 0)
    _set_linear(second.v, _blocks(eye, zero, zero, zero))  # v = (x_s, 0)
    _set_linear(second.o, torch.eye(D, dtype=dtype))
    second.alibi.fill_(m)
    return model


def theorem1_bound(p: float, d: int, sigma: float) -> float:
    """App. A's bound on ‖IH − TF‖_{L,∞} for inputs in [−1, 1]^d: 4‖I/σ‖_{1,1}·e^{−p}/(1 − e^{−p})."""
    return 4 * (d / sigma) * math.exp(-p) / (1 - math.exp(-p))


def theorem1_error(
    p: float, d: int = 8, m: float = 0.25, sigma: float = 1.0, n_ctx: int = 32, batch: int = 16,
    seed: int = 0, keys: str = "interior", copy_keys: str = "no_self", dtype: torch.dtype = torch.float64,
) -> float:
    """max |IH − TF| over batch, positions and coords on U[−1, 1]^d inputs, with the model's second
    layer and IH both summing over `keys` (Def. 1: "interior"); the copy layer uses `copy_keys`
    (App. A: "no_self"; "causal" shows what an unmasked causal layer gives)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, n_ctx, d, generator=g, dtype=dtype) * 2 - 1  # [batch, T, d]
    model = theorem1_model(d, p, m, sigma, n_ctx, dtype)
    embed = torch.cat([x, torch.zeros_like(x)], dim=-1)  # [batch, T, 2d]: token x_s -> (x_s, 0)
    layer_keys = {layer: k for layer, k in ((0, copy_keys), (1, keys)) if k != "causal"}
    tf = attention_output(model, embed, layer=1, keys=layer_keys)[..., :d]  # [batch, T, d]
    return (induction_head_operator(x, m, sigma, keys=keys) - tf).abs().max().item()


def theorem1_table(
    ps: Sequence[float] = tuple(range(1, 17)), d: int = 8, m: float = 0.25, sigma: float = 1.0,
    n_ctx: int = 32, batch: int = 16, seed: int = 0, keys: Sequence[str] = ("interior", "causal"),
) -> pd.DataFrame:
    """Tidy (keys, p, error, bound) frame: measured Theorem 1 error and App. A's bound per p."""
    rows = [
        {"keys": k, "p": float(p), "error": theorem1_error(p, d, m, sigma, n_ctx, batch, seed, k),
         "bound": theorem1_bound(p, d, sigma)}
        for k in keys for p in ps
    ]
    return pd.DataFrame(rows)


def plot_theorem1_error(table: pd.DataFrame, ax: Optional[plt.Axes] = None) -> Figure:
    """Error vs p (log y) per key range, with App. A's bound; e^{−p} is a line falling 1/ln10 decades per unit p."""
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(5, 3.6))
    for keys, group in table.groupby("keys", sort=False):
        ax.semilogy(group["p"], group["error"], "o-", ms=3, label=f"measured, keys={keys}")
    bound = table.drop_duplicates("p").sort_values("p")
    ax.semilogy(bound["p"], bound["bound"], "k--", label=r"bound $4\frac{d}{\sigma}\frac{e^{-p}}{1-e^{-p}}$")
    ax.set_xlabel(r"layer-1 ALiBi slope $p$")
    ax.set_ylabel(r"$\max|IH - TF|$")
    ax.set_title("Theorem 1: two-layer vanilla approximation")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _as_tensors(*values: Scalar) -> tuple[torch.Tensor, ...]:
    """Tensors in a common float dtype (float64 unless a float tensor sets it); keeps autograd."""
    floats = [v.dtype for v in values if isinstance(v, torch.Tensor) and v.is_floating_point()]
    dtype = floats[0] if floats else torch.float64
    for other in floats[1:]:
        dtype = torch.promote_types(dtype, other)
    return tuple(torch.as_tensor(v).to(dtype) for v in values)


def _landscape_terms(alpha1: Scalar, beta1: Scalar, o_t: Scalar) -> tuple[torch.Tensor, ...]:
    """Shared pieces of Eq. 10 with α2 = 1−α1, β2 = 1−β1: (β1, β2, O(T), a1, a2, target logit,
    logit of x_{i−1} and x_T)."""
    alpha1, beta1, o_t = _as_tensors(alpha1, beta1, o_t)
    alpha2, beta2 = 1 - alpha1, 1 - beta1
    S = torch.exp(alpha2) + 2 * torch.exp(alpha1) + o_t
    a1, a2 = torch.exp(alpha1) / S, torch.exp(alpha2) / S
    target = a2 * beta1 + beta2 / S  # predicting x_{i+1}, the induction answer
    neighbour = beta1 / S + beta2 * a2  # predicting x_{i−1} or x_T (two such tokens)
    return beta1, beta2, o_t, a1, a2, target, neighbour


def _like_input(result: torch.Tensor, *inputs: Scalar) -> Union[float, torch.Tensor]:
    return result.item() if all(isinstance(v, (int, float)) for v in inputs) else result


def theorem3_loss(alpha1: Scalar, beta1: Scalar, o_t: Scalar) -> Union[float, torch.Tensor]:
    """Eq. 10: L = −log(e^{a2β1+β2/S} / (e^{a2β1+β2/S} + 2e^{β1/S+β2a2} + e^{2a1β1+a2β2} + O(T))),
    a_j = e^{α_j}/S, S = e^{α2} + 2e^{α1} + O(T), α2 = 1−α1, β2 = 1−β1. Broadcasts; floats in -> float out.

    `alpha1`, `beta1`, `o_t` [*shape] (float, tensor or array; broadcastable) -> [*shape] (their broadcast).
    """
    beta1_, beta2, o_t_, a1, a2, target, neighbour = _landscape_terms(alpha1, beta1, o_t)
    own = 2 * a1 * beta1_ + a2 * beta2  # predicting x_i itself
    denominator = torch.exp(target) + 2 * torch.exp(neighbour) + torch.exp(own) + o_t_
    return _like_input(torch.log(denominator) - target, alpha1, beta1, o_t)


def theorem3_loss_script(alpha1: Scalar, beta1: Scalar, o_t: Scalar) -> Union[float, torch.Tensor]:
    """App. E's printed `f`: Eq. 10 but with `a2+beta2` for a2·β2 in the x_i logit and e^{O(T)} for
    O(T) in the denominator (S keeps O(T)). Same broadcasting and types as `theorem3_loss`:
    `alpha1`, `beta1`, `o_t` [*shape] -> [*shape]."""
    beta1_, beta2, o_t_, a1, a2, target, neighbour = _landscape_terms(alpha1, beta1, o_t)
    own = 2 * a1 * beta1_ + a2 + beta2
    denominator = torch.exp(target) + 2 * torch.exp(neighbour) + torch.exp(own) + torch.exp(o_t_)
    return _like_input(torch.log(denominator) - target, alpha1, beta1, o_t)


def theorem3_gradient(
    alpha1: Scalar, beta1: Scalar, o_t: Scalar, loss: Callable = theorem3_loss
) -> tuple[torch.Tensor, torch.Tensor]:
    """(∂L/∂α1, ∂L/∂β1) by autograd along α2 = 1−α1, β2 = 1−β1: `alpha1`, `beta1` [*shape] (broadcastable;
    `o_t` broadcastable to it) -> ([*shape], [*shape]) tensors, [*shape] the broadcast of alpha1 and beta1."""
    a, b, o = _as_tensors(alpha1, beta1, o_t)
    a, b = torch.broadcast_tensors(a.detach().clone(), b.detach().clone())
    a, b = a.contiguous().requires_grad_(True), b.contiguous().requires_grad_(True)
    with torch.enable_grad():
        grad_a, grad_b = torch.autograd.grad(loss(a, b, o.detach()).sum(), (a, b))
    return grad_a, grad_b


def theorem3_descent(
    alpha1: Scalar, beta1: Scalar, o_t: float, loss: Callable = theorem3_loss,
    lr: float = 0.1, steps: int = 1000, clamp: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """End points of gradient descent on L from (α1, β1) (any broadcastable shape); `clamp`
    projects onto [0, 1]² after each step (the landscape is unbounded below off the square)."""
    a, b, _ = _as_tensors(alpha1, beta1, o_t)
    a, b = torch.broadcast_tensors(a.detach(), b.detach())
    for _ in range(steps):
        grad_a, grad_b = theorem3_gradient(a, b, o_t, loss)
        a, b = a - lr * grad_a, b - lr * grad_b
        if clamp:
            a, b = a.clamp(0, 1), b.clamp(0, 1)
    return a, b


def theorem3_basins(
    o_ts: Sequence[float] = (0.0, 10.0, 100.0), loss: Callable = theorem3_loss, n: int = 51,
    steps: int = 1000, tol: float = 0.02,
) -> pd.DataFrame:
    """Share of an n×n grid of starts in [0, 1]² whose projected descent ends at the induction head
    (0, 1) or at the opposite corner (1, 0); lr = 0.1·(1 + O(T)) offsets the 1/O(T) gradient scale."""
    grid = torch.linspace(0, 1, n, dtype=torch.float64)
    A, B = torch.meshgrid(grid, grid, indexing="xy")  # [n, n]
    rows = []
    for o_t in o_ts:
        a, b = theorem3_descent(A, B, o_t, loss, lr=0.1 * (1 + o_t), steps=steps)
        to_ih, to_opposite = (a < tol) & (b > 1 - tol), (a > 1 - tol) & (b < tol)  # [n, n]
        rows.append({"loss": getattr(loss, "__name__", "loss"), "o_t": o_t,
                     "to_induction_head": to_ih.double().mean().item(), "to_1_0": to_opposite.double().mean().item(),
                     "elsewhere": (~to_ih & ~to_opposite).double().mean().item()})
    return pd.DataFrame(rows)


TRAJECTORY_COLUMNS = ("step", "layer", "head", "alpha1", "beta1")


def _draw_trajectories(ax: plt.Axes, trajectories: pd.DataFrame) -> None:
    """One line per (run/seed, layer, head), ordered by step: ○ start, ★ end."""
    keys = [c for c in ("run", "seed") if c in trajectories.columns] + ["layer", "head"]
    for _, path in trajectories.sort_values("step").groupby(keys, sort=False):
        (line,) = ax.plot(path["alpha1"], path["beta1"], "-", lw=1.2, alpha=0.9)
        ax.plot(path["alpha1"].iloc[0], path["beta1"].iloc[0], "o", ms=4, color=line.get_color())
        ax.plot(path["alpha1"].iloc[-1], path["beta1"].iloc[-1], "*", ms=8, color=line.get_color())


def plot_theorem3_landscape(
    o_ts: Sequence[float] = (0.0, 10.0, 100.0),
    loss: Callable = theorem3_loss,
    trajectories: Optional[pd.DataFrame] = None,
    n: int = 201,
    level_step: float = 0.05,
) -> Figure:
    """Contours (every `level_step`, as in App. E) and −∇L streamlines over (α1, β1) ∈ [0, 1]², one
    panel per O(T); optional training trajectories (`TRAJECTORY_COLUMNS`) overlaid, clipped to the square."""
    missing = [c for c in TRAJECTORY_COLUMNS if trajectories is not None and c not in trajectories.columns]
    if missing:
        raise ValueError(f"trajectories lack column(s) {missing}; need {list(TRAJECTORY_COLUMNS)} (+ optional run/seed)")
    grid = torch.linspace(0, 1, n, dtype=torch.float64)
    A, B = torch.meshgrid(grid, grid, indexing="xy")  # [β1, α1]: rows follow β1, as plt expects
    fig, axes = plt.subplots(1, len(o_ts), figsize=(4.2 * len(o_ts), 4), squeeze=False)
    for ax, o_t in zip(axes[0], o_ts):
        Z = loss(A, B, o_t)  # [n, n]
        gA, gB = theorem3_gradient(A, B, o_t, loss)
        z = Z.numpy()
        ax.contourf(A.numpy(), B.numpy(), z, levels=30, cmap="Blues_r", alpha=0.45)
        levels = np.arange(math.floor(z.min() / level_step), math.ceil(z.max() / level_step) + 1) * level_step
        ax.contour(A.numpy(), B.numpy(), z, levels=levels, colors="black", linewidths=0.6)
        ax.streamplot(A.numpy(), B.numpy(), -gA.numpy(), -gB.numpy(), color="tab:red", density=0.9, linewidth=0.7)
        i = int(Z.argmin())
        ax.plot(A.flatten()[i], B.flatten()[i], "kx", ms=8, label="grid minimum")
        ax.plot(0, 1, "o", mfc="none", mec="k", ms=10, clip_on=False, label="induction head (0, 1)")
        if trajectories is not None:
            _draw_trajectories(ax, trajectories)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel=r"$\alpha_1$", ylabel=r"$\beta_1$", title=f"O(T) = {o_t:g}")
    axes[0, 0].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"Theorem 3 landscape: {getattr(loss, '__name__', 'loss')}")
    fig.tight_layout()
    return fig
