"""Model-level effect of compiling only the KV-shift mix (proposed patch; models.py untouched).

`python -m benchmarks.compiled_shift` — interleaved training steps at the default training shape
(1L d64 seq64 b64, 1 thread): vanilla, KV-shift eager, KV-shift with `torch.compile`d
`KVShift.forward` (monkeypatched on instances in this process only).
"""

from __future__ import annotations

import statistics
import time
import types

import torch

from benchmarks.harness import Shape, interleaved, make_step, model_config, ratio, shape_tokens
from kvshift_lens.models.mixers.base import shift
from kvshift_lens.models.mixers.kv_shift import KVShift
from kvshift_lens.models.transformer import build_module


def _mix(x: torch.Tensor, c: torch.Tensor, window: int) -> torch.Tensor:
    out = c[:, 0, None] * x
    for j in range(1, window + 1):
        out = out + c[:, j, None] * shift(x, j)
    return out


_compiled_mix = torch.compile(_mix, dynamic=False)


def compiled_forward(self: KVShift, x: torch.Tensor) -> torch.Tensor:
    return _compiled_mix(x, self.coefficients(), self.window)


def main() -> None:
    torch.set_num_threads(1)
    s = Shape(1, 64, 64, 64)
    tokens = shape_tokens(s, torch.device("cpu"))
    patched = build_module(model_config(s, "kvshift")).train()
    for m in patched.modules():
        if isinstance(m, KVShift):
            m.forward = types.MethodType(compiled_forward, m)
    variants = {"vanilla": make_step(build_module(model_config(s, "vanilla")).train(), tokens),
                "kvshift": make_step(build_module(model_config(s, "kvshift")).train(), tokens),
                "kvshift_compiled_shift": make_step(patched, tokens)}
    t0 = time.perf_counter()
    variants["kvshift_compiled_shift"]()
    print(f"first step incl. compile: {time.perf_counter() - t0:.1f} s", flush=True)
    t = interleaved(variants, 10, 3, torch.device("cpu"))
    print({k: round(1e3 * statistics.median(v), 1) for k, v in t.items()},
          f"kvshift/vanilla {ratio(t, 'kvshift', 'vanilla'):.3f}",
          f"compiled_shift/vanilla {ratio(t, 'kvshift_compiled_shift', 'vanilla'):.3f}")


if __name__ == "__main__":
    main()
