"""The shared timing harness: benchmark shapes, one training step as every variant runs it, and interleaved
timing whose ratios survive a shared, drifting CPU.

Compared variants run in one process, interleaved (A B C ... then ... C B A, repeated); each ratio is the median
of per-round ratios (`interleaved`, `ratio`). `Context` is what the driver (`benchmarks/run.py`) hands every
benchmark family.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_SECONDS = 0.15  # work per timed sample: keeps timer noise small without long runs


@dataclass
class Shape:
    n_layers: int
    d_model: int
    seq: int
    batch: int
    n_heads: int = 4
    d_vocab: int = 64

    @property
    def label(self) -> str:
        return f"{self.n_layers}L d{self.d_model} seq{self.seq} b{self.batch}"


FULL_SHAPES = [Shape(1, 64, 64, 64),  # the default kvshift_1l/induction training shape
               Shape(1, 64, 128, 32), Shape(2, 64, 128, 32), Shape(1, 256, 512, 8), Shape(2, 256, 512, 8)]
QUICK_SHAPES = [Shape(1, 16, 16, 4, n_heads=2, d_vocab=16)]


@dataclass
class Context:
    """What every benchmark family gets from the driver."""

    device: torch.device
    quick: bool  # --quick: tiny shapes, seconds, numbers meaningless
    rounds: int  # interleaved rounds per measurement
    threads: int  # torch threads of the in-process benches
    tmp: Path  # scratch folder (subprocess benches write their runs here)
    options: argparse.Namespace  # every flag of the driver, the families' own included

    @property
    def warmup(self) -> int:
        """Untimed calls of each variant before timing."""
        return 1 if self.quick else 3

    @property
    def shapes(self) -> list[Shape]:
        return QUICK_SHAPES if self.quick else FULL_SHAPES


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_step(model: torch.nn.Module, tokens: torch.Tensor) -> Callable[[], None]:
    """One training step as every variant runs it: forward, next-token CE, backward, AdamW."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    vocab_targets = tokens[:, 1:].reshape(-1)

    def step() -> None:
        logits = model(tokens)
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), vocab_targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def mixer_model_config(shape: Shape, mixer: str):
    """The bare model of `shape` with `mixer` at its default options ("none" = vanilla)."""
    from kvshift_lens.models.config import ModelConfig

    return ModelConfig(mixer=mixer, n_layers=shape.n_layers, d_model=shape.d_model, n_heads=shape.n_heads,
                       d_vocab=shape.d_vocab, n_ctx=shape.seq, seed=0)


def model_config(shape: Shape, arch: str):
    """The bare model of `shape`: "kvshift" (the paper's KV shift) or "vanilla"."""
    return mixer_model_config(shape, "kv_shift" if arch == "kvshift" else "none")


def shape_task(shape: Shape):
    """The induction task at the shape's vocabulary and length (every benchmark's data)."""
    from kvshift_lens.data.tasks.base import make_task, task_config

    return make_task(task_config("induction", d_vocab=shape.d_vocab, seq_len=shape.seq))


def shape_tokens(shape: Shape, device: torch.device) -> torch.Tensor:
    """One induction batch of the shape (the same tokens for every variant)."""
    return shape_task(shape).sample(shape.batch, torch.Generator().manual_seed(0)).tokens.to(device)


def interleaved(variants: dict[str, Callable[[], None]], rounds: int, inner: int, device: torch.device,
                warmup: int = 3) -> dict[str, list[float]]:
    """Seconds per call of each variant, one sample per round; order alternates A B C / C B A."""
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    sync(device)
    names = list(variants)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for n in names if r % 2 == 0 else names[::-1]:
            fn = variants[n]
            sync(device)
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            sync(device)
            times[n].append((time.perf_counter() - t0) / inner)
    return times


def ratio(times: dict[str, list[float]], a: str, b: str) -> float:
    """Median over rounds of time(a) / time(b) (robust to load drifting between rounds)."""
    return statistics.median(x / y for x, y in zip(times[a], times[b]))


def samples_per_round(step: Callable[[], None], device: torch.device) -> int:
    """Calls per timed sample so that one sample is ~SAMPLE_SECONDS of work (1 to 20)."""
    probe = interleaved({"probe": step}, 1, 1, device, warmup=1)["probe"][0]
    return max(1, min(20, round(SAMPLE_SECONDS / max(probe, 1e-6))))


def ms_per_call(times: dict[str, list[float]]) -> dict[str, float]:
    """Median milliseconds per call of each variant."""
    return {n: round(1e3 * statistics.median(t), 3) for n, t in times.items()}


def trainer_loop_step(model: torch.nn.Module, cfg, shape: Shape, device: torch.device) -> Callable[[], None]:
    """`kvshift_lens.training.trainer.train`'s loop step (`train_step`: lr schedule, `cfg.interventions`, loss,
    backward, clip, AdamW, constraints) on a fresh induction batch of `shape` each call."""
    from kvshift_lens.training.intervention_hooks import InterventionSchedule
    from kvshift_lens.training.trainer import make_optimizer, train_step

    opt = make_optimizer(model, cfg)
    schedule = InterventionSchedule(model, cfg.interventions, cfg.steps, shape.seq)
    task = shape_task(shape)
    gen = torch.Generator().manual_seed(0)
    state = {"step": 0}

    def step() -> None:
        train_step(model, model, opt, task.sample(cfg.batch_size, gen).to(device), state["step"], cfg, schedule)
        state["step"] += 1

    return step
