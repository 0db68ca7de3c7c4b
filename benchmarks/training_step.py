"""Training-step time per shape: the plain-SDPA reference, our bare vanilla and KV-shift models, the
TransformerBridge, the trainer's own loop body, and how fast the task generates batches against what a step
consumes (bench.json: `details` and the worst case over shapes as the headline ratios)."""

from __future__ import annotations

import argparse
import statistics
from typing import Callable

import torch

from benchmarks.harness import (Context, Shape, interleaved, make_step, model_config, ms_per_call, ratio,
                                samples_per_round, shape_task, shape_tokens, trainer_loop_step)
from benchmarks.reference import RefModel

TARGETS = {  # worst case over the shapes, on the 2-core CPU
    "step_ratio_vs_sdpa": ("<=", 1.2),
    "kvshift_vs_vanilla": ("<=", 1.05),
    "datagen_vs_consumption": (">=", 10.0),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd KV-shift")


def make_trainer_step(shape: Shape, device: torch.device) -> Callable[[], None]:
    """The body of `kvshift_lens.training.trainer.train`'s loop for KV-shift 1L at `shape` (`trainer_loop_step`)."""
    from kvshift_lens.models.transformer import build_module
    from kvshift_lens.training.train_config import TrainConfig

    model = build_module(model_config(shape, "kvshift")).to(device).train()
    return trainer_loop_step(model, TrainConfig(batch_size=shape.batch), shape, device)


def bench_shape(shape: Shape, device: torch.device, rounds: int, with_compile: bool, warmup: int = 3) -> dict:
    """Every variant's step at one shape, interleaved, and the data generator against consumption."""
    from kvshift_lens.models.transformer import build_model, build_module

    torch.manual_seed(0)
    task = shape_task(shape)
    tokens = shape_tokens(shape, device)
    ref = RefModel(shape.d_vocab, shape.d_model, shape.n_heads, shape.n_layers, shape.seq).to(device)
    variants = {
        "sdpa_ref": make_step(ref.train(), tokens),
        "vanilla": make_step(build_module(model_config(shape, "vanilla")).to(device).train(), tokens),
        "kvshift": make_step(build_module(model_config(shape, "kvshift")).to(device).train(), tokens),
        "bridge_kvshift": make_step(build_model(model_config(shape, "kvshift")).to(device).train(), tokens),
        "train_loop_kvshift": make_trainer_step(shape, device),
    }
    gen = torch.Generator().manual_seed(1)
    variants["datagen"] = lambda: task.sample(shape.batch, gen)  # one training batch, interleaved too
    if with_compile:
        compiled = torch.compile(build_module(model_config(shape, "kvshift")).to(device).train())
        variants["kvshift_compiled"] = make_step(compiled, tokens)
    inner = samples_per_round(variants["kvshift"], device)
    times = interleaved(variants, rounds, inner, device, warmup=warmup)

    dt = times.pop("datagen")
    datagen = shape.batch / statistics.median(dt)
    step_kv = statistics.median(times["kvshift"])
    loop_kv = statistics.median(times["train_loop_kvshift"])
    row = {
        "shape": shape.label, **{k: v for k, v in vars(shape).items()},
        "ms_per_step": ms_per_call(times),
        "vanilla_vs_sdpa": round(ratio(times, "vanilla", "sdpa_ref"), 3),
        "kvshift_vs_sdpa": round(ratio(times, "kvshift", "sdpa_ref"), 3),
        "bridge_kvshift_vs_sdpa": round(ratio(times, "bridge_kvshift", "sdpa_ref"), 3),
        "kvshift_vs_vanilla": round(ratio(times, "kvshift", "vanilla"), 3),
        "train_loop_vs_kvshift_step": round(ratio(times, "train_loop_kvshift", "kvshift"), 3),
        "datagen_seq_per_s": round(datagen, 1),
        "consumption_seq_per_s": round(shape.batch / step_kv, 1),
        "train_loop_seq_per_s": round(shape.batch / loop_kv, 1),
        "datagen_vs_consumption": round(statistics.median(k / d for k, d in zip(times["kvshift"], dt)), 2),
        "datagen_ms_per_batch": round(1e3 * statistics.median(dt), 3),
        "rounds": rounds, "steps_per_sample": inner,
    }
    if with_compile:
        row["compiled_kvshift_vs_kvshift"] = round(ratio(times, "kvshift_compiled", "kvshift"), 3)
    return row


def measure(ctx: Context) -> dict:
    details = []
    for shape in ctx.shapes:
        row = bench_shape(shape, ctx.device, ctx.rounds, ctx.options.compile, warmup=ctx.warmup)
        details.append(row)
        print(f"[bench] {shape.label}: {row['ms_per_step']} kv/van={row['kvshift_vs_vanilla']} "
              f"van/ref={row['vanilla_vs_sdpa']} kv/ref={row['kvshift_vs_sdpa']} "
              f"datagen/consumed={row['datagen_vs_consumption']}", flush=True)
    return {"step_ratio_vs_sdpa": max(max(d["vanilla_vs_sdpa"], d["kvshift_vs_sdpa"]) for d in details),
            "kvshift_vs_vanilla": max(d["kvshift_vs_vanilla"] for d in details),
            "datagen_vs_consumption": min(d["datagen_vs_consumption"] for d in details),
            "details": details}


def markdown(res: dict) -> list[str]:
    lines = ["## Training step (forward + backward + AdamW), ms per step, medians of interleaved rounds", "",
             "| shape | SDPA ref | vanilla | KV-shift | bridge KV-shift | train loop KV-shift | vanilla/ref | "
             "KV-shift/ref | bridge/ref | KV-shift/vanilla | datagen seq/s | consumed seq/s | datagen/consumed |",
             "|---|" + "---|" * 12]
    for d in res["details"]:
        ms = d["ms_per_step"]
        lines.append(f"| {d['shape']} | {ms['sdpa_ref']} | {ms['vanilla']} | {ms['kvshift']} | {ms['bridge_kvshift']} | "
                     f"{ms['train_loop_kvshift']} | {d['vanilla_vs_sdpa']} | {d['kvshift_vs_sdpa']} | "
                     f"{d['bridge_kvshift_vs_sdpa']} | {d['kvshift_vs_vanilla']} | {d['datagen_seq_per_s']} | "
                     f"{d['consumption_seq_per_s']} | {d['datagen_vs_consumption']} |")
    if any("compiled_kvshift_vs_kvshift" in d for d in res["details"]):
        lines += ["", "torch.compile (KV-shift, compiled / eager): " +
                  ", ".join(f"{d['shape']}: {d['compiled_kvshift_vs_kvshift']}" for d in res["details"])]
    return lines
