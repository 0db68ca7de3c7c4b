"""Every registered mixer's training step against vanilla at the default training shape, interleaved in one
process (bench.json: `mixer_vs_vanilla`, `mixer_targets`, `mixers`)."""

from __future__ import annotations

import torch

from benchmarks.harness import (Context, Shape, interleaved, make_step, mixer_model_config, ms_per_call, ratio,
                                samples_per_round, shape_tokens)

MIXER_TARGET = ("<=", 1.15)  # each mixer's training step vs vanilla at the default training shape


def bench_mixers(shape: Shape, device: torch.device, rounds: int, warmup: int = 3) -> dict:
    """Training-step time of vanilla and every registered mixer (default options), interleaved in one
    process: `mixer_vs_vanilla` maps mixer -> median per-round ratio to vanilla."""
    from kvshift_lens.models.mixers.base import MIXERS
    from kvshift_lens.models.transformer import build_module

    tokens = shape_tokens(shape, device)
    variants = {name: make_step(build_module(mixer_model_config(shape, name)).to(device).train(), tokens)
                for name in MIXERS.names()}
    inner = samples_per_round(variants["none"], device)
    times = interleaved(variants, rounds, inner, device, warmup=warmup)
    return {"shape": shape.label, "ms_per_step": ms_per_call(times),
            "mixer_vs_vanilla": {n: round(ratio(times, n, "none"), 3) for n in variants if n != "none"},
            "rounds": rounds, "steps_per_sample": inner}


def mixer_verdicts(mixer_vs_vanilla: dict[str, float]) -> dict:
    """Per mixer: its ratio to vanilla against MIXER_TARGET."""
    op, bound = MIXER_TARGET
    return {name: {"target": f"{op} {bound}", "value": v, "met": v <= bound} for name, v in mixer_vs_vanilla.items()}


def measure(ctx: Context) -> dict:
    mixers = bench_mixers(ctx.shapes[0], ctx.device, ctx.rounds, warmup=ctx.warmup)
    print(f"[bench] mixers vs vanilla ({mixers['shape']}): {mixers['mixer_vs_vanilla']}", flush=True)
    return {"mixer_vs_vanilla": mixers["mixer_vs_vanilla"], "mixer_targets": mixer_verdicts(mixers["mixer_vs_vanilla"]),
            "mixers": mixers}


def markdown(res: dict) -> list[str]:
    m = res["mixers"]
    lines = [f"## Mixers: training step vs vanilla ({m['shape']}, default options, interleaved)", "",
             "| mixer | ms / step | / vanilla | target met |", "|---|---|---|---|",
             f"| none (vanilla) | {m['ms_per_step']['none']} | 1 | - |"]
    return lines + [f"| {n} | {m['ms_per_step'][n]} | {v['value']} | {'yes' if v['met'] else 'NO'} |"
                    for n, v in res["mixer_targets"].items()]
