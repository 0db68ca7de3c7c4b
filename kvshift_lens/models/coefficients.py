"""The mixer coefficients of a model as tidy tables (α/β of KV shift, every lag weight of any mixer), and
how far back each mixer slot reaches."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from kvshift_lens.models.mixers.kv_shift import KVShift
from kvshift_lens.models.config import ModelConfig
from kvshift_lens.models.transformer import Model, blocks, model_config


MIXER_COEFFICIENT_COLUMNS = ["layer", "slot", "head", "channel", "lag", "value"]


def mixer_coefficients(model: Model) -> pd.DataFrame:
    """Every mixer's effective lag coefficients as the forward uses them (residual identity included):
    one row per (layer, slot, head, channel, lag). Slots q/k/v have a head; per-head coefficients have
    channel -1; slots on d_model or MLP features have head -1. Empty (same columns) without a mixer."""
    frames = []
    for layer, block in enumerate(blocks(model)):
        for slot, mixer in block.all_mixers().items():
            with torch.no_grad():
                c = mixer.lag_coefficients().detach().cpu().float().numpy()  # [lags, *feature]
            per_head = c.ndim == 3  # [lags, head, 1 or d_head] on q/k/v; [lags, channel] elsewhere
            c = c if per_head else c[:, None, :]
            lag, head, channel = np.meshgrid(*(np.arange(n) for n in c.shape), indexing="ij")
            frames.append(pd.DataFrame({
                "layer": layer, "slot": slot,
                "head": head.ravel() if per_head else -1,
                "channel": -1 if per_head and c.shape[2] == 1 else channel.ravel(),
                "lag": lag.ravel(), "value": c.ravel(),
            }))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=MIXER_COEFFICIENT_COLUMNS)


def mixer_reach(cfg: ModelConfig) -> dict[str, int]:
    """For q, k and v: the largest lag j such that token t - j reaches position t's query, key or value through
    the attention's mixers (lags add along x -> <side>_input -> projection -> <side>), over layers; 0 without.
    E.g. kv_shift: {"q": 0, "k": 1, "v": 1}; sides=v: {"q": 0, "k": 0, "v": 1}; canon AB (kernel 4): 6 each."""
    reach = {side: 0 for side in "qkv"}
    for layer in range(cfg.n_layers):
        lags = {slot: m.lag_coefficients().shape[0] - 1 for slot, m in cfg.mixer.build(cfg, layer).items()}
        for side in reach:
            reach[side] = max(reach[side], sum(lags.get(slot, 0) for slot in ("x", f"{side}_input", side)))
    return reach


def shift_coefficients(model: Model) -> pd.DataFrame:
    """One row per (layer, KV head) of a model whose mixer is `KVShift` modules on K and/or V
    (kv_shift, smeared_key): alpha1..alpha{w+1}, beta1..beta{w+1} as the forward uses them.

    An unshifted K or V reports its identity coefficients (1, 0, ...); a model without KV-shift
    modules (vanilla, other mixers: see `mixer_coefficients`) gives an empty frame.
    """
    cfg = model_config(model)
    shifts = [{s: m for s, m in b.all_mixers().items() if isinstance(m, KVShift) and s in ("k", "v")} for b in blocks(model)]
    width = max((m.window + 1 for layer in shifts for m in layer.values()), default=2)
    cols = ["layer", "head"] + [f"{n}{j + 1}" for n in ("alpha", "beta") for j in range(width)]
    if not any(shifts):
        return pd.DataFrame(columns=cols)
    identity = torch.zeros(cfg.kv_heads, width)
    identity[:, 0] = 1.0
    rows = []
    for layer, found in enumerate(shifts):
        with torch.no_grad():
            ca, cb = (found[s].coefficients().cpu() if s in found else identity for s in "kv")
        for h in range(cfg.kv_heads):
            rows.append([layer, h, *ca[h].tolist(), *cb[h].tolist()])
    return pd.DataFrame(rows, columns=cols)
