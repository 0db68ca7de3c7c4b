"""Micro-benchmark of KV-shift implementations (forward + backward), interleaved, 1 thread.

`python -m benchmarks.kvshift_variants` — checks every variant against the plain formula of Eq. 5
(values and gradients) and prints median ms and the ratio to it, for the K/V tensor shapes of the
benchmark shapes. `lag_mix` (exact and fused multiply-add) is what every mixer runs now
(`kvshift_lens.models.mixers.base.lag_mix`; KV shift uses `exact=True`).
"""

from __future__ import annotations

import statistics

import torch
import torch.nn.functional as F

from benchmarks.harness import interleaved, ratio
from kvshift_lens.models.mixers.base import lag_mix, shift


def current(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:  # the plain formula (KVShift before lag_mix)
    return c[:, 0, None] * x + c[:, 1, None] * shift(x, 1)


def lag_mix_exact(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:  # KVShift.forward now
    return lag_mix(x, c.T[:, :, None], exact=True)


def lag_mix_fma(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:  # every other mixer now
    return lag_mix(x, c.T[:, :, None])


def slice_add(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """No F.pad: scale, then add the shifted term into positions 1.. in place."""
    out = c[:, 0, None] * x
    out[:, 1:] += c[:, 1, None] * x[:, :-1]
    return out


def flat_coeffs(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Per-channel coefficient vectors over the contiguous last dim [h*d] (fast broadcast path)."""
    b, t, h, d = x.shape
    cc = c.repeat_interleave(d, dim=0)  # [h*d, w+1]
    xf = x.reshape(b, t, h * d)
    out = xf * cc[:, 0]
    out[:, 1:] += xf[:, :-1] * cc[:, 1]
    return out.view(b, t, h, d)


def flat_addcmul(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    b, t, h, d = x.shape
    cc = c.repeat_interleave(d, dim=0)
    xf = x.reshape(b, t, h * d)
    out = xf * cc[:, 0]
    out = torch.cat([out[:, :1], torch.addcmul(out[:, 1:], xf[:, :-1], cc[:, 1])], dim=1)
    return out.view(b, t, h, d)


class _ShiftMix(torch.autograd.Function):
    """Fused window-1 mix with hand-written backward (coefficient grads by einsum)."""

    @staticmethod
    def forward(ctx, x, c0, c1):  # x [b, t, h, d]; c0, c1 [h]
        ctx.save_for_backward(x, c0, c1)
        out = x * c0[:, None]
        out[:, 1:].add_(x[:, :-1] * c1[:, None])
        return out

    @staticmethod
    def backward(ctx, g):
        x, c0, c1 = ctx.saved_tensors
        gx = g * c0[:, None]
        gx[:, :-1].add_(g[:, 1:] * c1[:, None])
        g0 = torch.einsum("bthd,bthd->h", g, x)
        g1 = torch.einsum("bthd,bthd->h", g[:, 1:], x[:, :-1])
        return gx, g0, g1


def fused(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return _ShiftMix.apply(x, c[:, 0], c[:, 1])


def conv(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Causal depthwise conv1d over positions (one op for any window)."""
    b, t, h, d = x.shape
    w = torch.stack([c[:, 1], c[:, 0]], dim=1).repeat_interleave(d, dim=0)[:, None, :]  # [h*d, 1, 2]
    y = F.conv1d(F.pad(x.reshape(b, t, h * d).transpose(1, 2), (1, 0)), w, groups=h * d)
    return y.transpose(1, 2).reshape(b, t, h, d)


VARIANTS = {"current": current, "slice_add": slice_add, "flat_coeffs": flat_coeffs,
            "flat_addcmul": flat_addcmul, "fused_fn": fused, "conv1d": conv, "lag_mix_exact": lag_mix_exact,
            "lag_mix": lag_mix_fma}


def main() -> None:
    torch.set_num_threads(1)
    for b, t, h, d in [(32, 128, 4, 16), (8, 512, 4, 64), (64, 64, 4, 16)]:
        g = torch.Generator().manual_seed(0)
        x0 = torch.randn(b, t, h, d, generator=g)
        c0 = torch.rand(h, 2, generator=g)
        gout = torch.randn(b, t, h, d, generator=g)
        ref = None
        fns = {}
        for name, fn in VARIANTS.items():
            x, c = x0.clone().requires_grad_(), c0.clone().requires_grad_()
            y = fn(x, c)
            y.backward(gout)
            got = (y.detach(), x.grad, c.grad)
            if ref is None:
                ref = got
            ok = all(torch.allclose(a, r, atol=1e-3, rtol=1e-3) for a, r in zip(got, ref))
            assert ok, name

            def run(fn=fn):
                x, c = x0.clone().requires_grad_(), c0.clone().requires_grad_()
                fn(x, c).backward(gout)

            fns[name] = run
        times = interleaved(fns, rounds=30, inner=5, device=torch.device("cpu"), warmup=0)
        print(f"x=[{b},{t},{h},{d}]  " + "  ".join(
            f"{n}: {1e3 * statistics.median(v):.3f} ms ({ratio(times, n, 'current'):.2f}x)" for n, v in times.items()))


if __name__ == "__main__":
    main()
