"""Profile one training step of each variant: `python -m benchmarks.profile_step [L d seq batch]`.

Prints torch.profiler op tables (self CPU time) for the SDPA reference, bare vanilla and bare
KV-shift, so the extra ops of our models stand out.
"""

from __future__ import annotations

import sys

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.harness import Shape, make_step, model_config, shape_tokens
from benchmarks.reference import RefModel
from kvshift_lens.models.transformer import build_module


def main() -> None:
    torch.set_num_threads(1)
    args = [int(a) for a in sys.argv[1:5]] or [1, 64, 128, 32]
    shape = Shape(*args)
    tokens = shape_tokens(shape, torch.device("cpu"))
    variants = {
        "sdpa_ref": make_step(RefModel(shape.d_vocab, shape.d_model, shape.n_heads, shape.n_layers, shape.seq), tokens),
        "vanilla": make_step(build_module(model_config(shape, "vanilla")).train(), tokens),
        "kvshift": make_step(build_module(model_config(shape, "kvshift")).train(), tokens),
    }
    for name, step in variants.items():
        for _ in range(3):
            step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(10):
                step()
        print(f"==== {name} {shape.label} (10 steps)")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18))


if __name__ == "__main__":
    main()
