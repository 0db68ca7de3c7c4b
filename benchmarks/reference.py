"""Plain-PyTorch reference transformer: the speed floor our models are compared against.

Same shape as a kvshift_lens model with learned positions and LayerNorm (token + learned absolute
positions, pre-LN blocks with biased q/k/v/o projections and, when `d_mlp` > 0, a biased GELU MLP,
final LayerNorm, bias-free unembedding), but no hooks, no bridge, no KV shift:
`F.scaled_dot_product_attention(is_causal=True)` and nothing else.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class RefAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads, self.d_head = n_heads, d_model // n_heads
        self.q = nn.Linear(d_model, d_model)
        self.k = nn.Linear(d_model, d_model)
        self.v = nn.Linear(d_model, d_model)
        self.o = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = (m(x).view(b, t, self.n_heads, self.d_head).transpose(1, 2) for m in (self.q, self.k, self.v))
        z = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # [b, head, pos, d_head]
        return self.o(z.transpose(1, 2).reshape(b, t, -1))


class RefBlock(nn.Module):
    def __init__(self, d_model: int, n_heads: int, d_mlp: int = 0):
        super().__init__()
        self.ln = nn.LayerNorm(d_model)
        self.attn = RefAttention(d_model, n_heads)
        self.mlp = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, d_mlp), nn.GELU(),
                                 nn.Linear(d_mlp, d_model)) if d_mlp else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln(x))
        return x + self.mlp(x) if self.mlp is not None else x


class RefModel(nn.Module):
    """Transformer (attention-only when d_mlp = 0), learned positions, LayerNorm, SDPA; logits [batch, pos, vocab]."""

    def __init__(self, d_vocab: int, d_model: int, n_heads: int, n_layers: int, n_ctx: int, d_mlp: int = 0):
        super().__init__()
        self.embed = nn.Embedding(d_vocab, d_model)
        self.pos = nn.Parameter(torch.randn(n_ctx, d_model) * 0.02)
        self.blocks = nn.ModuleList(RefBlock(d_model, n_heads, d_mlp) for _ in range(n_layers))
        self.ln_out = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, d_vocab, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) + self.pos[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_out(x))
