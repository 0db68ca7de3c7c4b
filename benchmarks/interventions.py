"""Training under an intervention against a plain step (bench.json: `intervention_step_ratio`, `interventions`).

The trainer's loop body for vanilla 2L with layer 0's `hook_pattern` clamped to a perfect previous-token pattern (the
study's arm: that layer takes the explicit softmax path) against the same body unclamped (SDPA), interleaved in one
process. Details add the induction clamp (its pattern built from each batch) and a one-head clamp (the explicit path
with the gradient still flowing through the other heads).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from benchmarks.harness import (Context, Shape, interleaved, model_config, ms_per_call, ratio, samples_per_round,
                                trainer_loop_step)

TARGETS = {"intervention_step_ratio": ("<=", 1.5)}  # a clamped training step vs a plain one
FULL_SHAPE = Shape(2, 64, 64, 64)  # vanilla 2L at the default training shape
QUICK_SHAPE = Shape(2, 16, 16, 4, n_heads=2, d_vocab=16)
CLAMPS: dict[str, Optional[tuple[str, Optional[list[int]]]]] = {  # variant -> (pattern, heads) of layer 0's clamp
    "plain": None, "previous_token": ("previous_token", None), "induction": ("induction", None),
    "previous_token_head_0": ("previous_token", [0]),
}


def trainer_step(shape: Shape, clamp: Optional[tuple[str, Optional[list[int]]]], device: torch.device) -> Callable[[], None]:
    """The body of `trainer.train`'s loop for vanilla `shape`, with the intervention calls and `clamp` on layer 0."""
    from kvshift_lens.models.transformer import build_module
    from kvshift_lens.training.interventions import Intervention
    from kvshift_lens.training.train_config import TrainConfig

    model = build_module(model_config(shape, "vanilla")).to(device).train()
    ivs = [Intervention("blocks.0.attn.hook_pattern", "clamp", clamp[0], heads=clamp[1])] if clamp else []
    return trainer_loop_step(model, TrainConfig(batch_size=shape.batch, interventions=ivs), shape, device)


def bench_interventions(shape: Shape, device: torch.device, rounds: int, warmup: int = 3) -> dict:
    """Every variant's step time and its median per-round ratio to the plain step."""
    variants = {name: trainer_step(shape, clamp, device) for name, clamp in CLAMPS.items()}
    inner = samples_per_round(variants["plain"], device)
    times = interleaved(variants, rounds, inner, device, warmup=warmup)
    return {"shape": shape.label, "ms_per_step": ms_per_call(times), "rounds": rounds, "steps_per_sample": inner,
            "ratio_vs_plain": {n: round(ratio(times, n, "plain"), 3) for n in variants if n != "plain"}}


def measure(ctx: Context) -> dict:
    res = bench_interventions(QUICK_SHAPE if ctx.quick else FULL_SHAPE, ctx.device, ctx.rounds, warmup=ctx.warmup)
    print(f"[bench] interventions vs plain ({res['shape']}): {res['ratio_vs_plain']}", flush=True)
    return {"intervention_step_ratio": res["ratio_vs_plain"]["previous_token"], "interventions": res}


def markdown(res: dict) -> list[str]:
    r = res["interventions"]
    lines = [f"## Interventions: a clamped training step vs a plain one ({r['shape']}, vanilla 2L, layer 0's "
             "pattern clamped, interleaved)", "", "| variant | ms / step | / plain |", "|---|---|---|",
             f"| plain (SDPA) | {r['ms_per_step']['plain']} | 1 |"]
    return lines + [f"| {n} | {r['ms_per_step'][n]} | {v} |" for n, v in r["ratio_vs_plain"].items()]
