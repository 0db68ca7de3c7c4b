"""K/V projection + shift, forward + backward: vanilla floor vs current shift vs folded-into-matmul.

`python -m benchmarks.kv_projection_variants` (1 thread, interleaved, medians). The folded
variant computes [K̂ | V̂] = [x | shift(x)] @ [[c0·W_k, c0·W_v], [c1·W_k, c1·W_v]] + bias terms,
i.e. one matmul and no per-element coefficient passes.
"""

from __future__ import annotations

import statistics

import torch
import torch.nn.functional as F

from benchmarks.harness import interleaved, ratio
from kvshift_lens.models.mixers.base import shift


def vanilla(x, wk, bk, wv, bv, ck, cv, h):
    return F.linear(x, wk, bk), F.linear(x, wv, bv)


def current(x, wk, bk, wv, bv, ck, cv, h):
    b, t, D = x.shape
    k = F.linear(x, wk, bk).view(b, t, h, -1)
    v = F.linear(x, wv, bv).view(b, t, h, -1)
    k = ck[:, 0, None] * k + ck[:, 1, None] * shift(k)
    v = cv[:, 0, None] * v + cv[:, 1, None] * shift(v)
    return k.reshape(b, t, D), v.reshape(b, t, D)


def folded(x, wk, bk, wv, bv, ck, cv, h):
    b, t, D = x.shape
    d = D // h
    sk = ck.repeat_interleave(d, dim=0)  # [D, 2] per output channel
    sv = cv.repeat_interleave(d, dim=0)
    w = torch.cat([torch.cat([wk * sk[:, :1], wk * sk[:, 1:]], dim=1),
                   torch.cat([wv * sv[:, :1], wv * sv[:, 1:]], dim=1)], dim=0)  # [2D, 2D]
    xx = torch.cat([x, shift(x)], dim=-1)  # [b, t, 2D]
    bias0 = torch.cat([bk * sk[:, 0], bv * sv[:, 0]])
    bias1 = torch.cat([bk * sk[:, 1], bv * sv[:, 1]])
    out = F.linear(xx, w, bias0 + bias1)
    out[:, 0] -= bias1  # no X_{-1} term at t = 0
    return out[..., :D], out[..., D:]


VARIANTS = {"vanilla": vanilla, "current": current, "folded": folded}


def main() -> None:
    torch.set_num_threads(1)
    for b, t, D, h in [(32, 128, 64, 4), (8, 512, 256, 4)]:
        g = torch.Generator().manual_seed(0)
        x0 = torch.randn(b, t, D, generator=g)
        params0 = [torch.randn(D, D, generator=g) / D**0.5, torch.randn(D, generator=g),
                   torch.randn(D, D, generator=g) / D**0.5, torch.randn(D, generator=g),
                   torch.rand(h, 2, generator=g), torch.rand(h, 2, generator=g)]
        gk, gv = torch.randn(b, t, D, generator=g), torch.randn(b, t, D, generator=g)

        def run(fn):
            x = x0.clone().requires_grad_()
            ps = [p.clone().requires_grad_() for p in params0]
            k, v = fn(x, *ps, h)
            torch.autograd.backward([k, v], [gk, gv])
            return [k, v, x.grad] + [p.grad for p in ps]

        ref = run(current)
        got = run(folded)
        assert all(torch.allclose(a, r, atol=1e-3, rtol=1e-3) for a, r in zip(got, ref))
        steps = {n: (lambda fn=fn: run(fn)) for n, fn in VARIANTS.items()}
        times = interleaved(steps, rounds=20, inner=3, device=torch.device("cpu"), warmup=0)
        print(f"x=[{b},{t},{D}] h={h}  " + "  ".join(
            f"{n}: {1e3 * statistics.median(v):.2f} ms ({ratio(times, n, 'vanilla'):.2f}x vanilla)"
            for n, v in times.items()), flush=True)


if __name__ == "__main__":
    main()
