"""Speed and memory benchmarks: `python -m benchmarks.run [--quick] [--out DIR]`.

Everything is reported as a ratio measured inside one run, because the CPU machine is shared
and absolute timings drift with the load: compared variants are interleaved (A B C ... then
... C B A, repeated) and every ratio is the median of per-round ratios. Writes
`<out>/bench.json` (top-level keys = worst case over the measured shapes, plus `details`) and a
readable `<out>/bench.md`. CUDA is used when present (same command on a GPU machine).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from benchmarks.reference import RefModel
from kvshift_lens.training import sweeps
from kvshift_lens.training.provenance import git_commit, git_dirty, load_average

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {  # the speed targets (ratios on the 2-core CPU)
    "step_ratio_vs_sdpa": ("<=", 1.2),
    "kvshift_vs_vanilla": ("<=", 1.05),
    "sweep_speedup_2_workers": (">=", 1.7),
    "datagen_vs_consumption": (">=", 10.0),
    "lm_tokens_per_s_vs_sdpa": (">=", 0.95),  # the LM anchor shape (docs/lm.md)
    "lm_datagen_vs_consumption": (">=", 10.0),  # the window sampler outpaces training
}


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
LM_SHAPE = Shape(4, 128, 64, 12)  # nanoGPT's CPU "baby GPT" on shakespeare-char (GELU MLPs; vocab from the corpus)
QUICK_LM_SHAPE = Shape(1, 16, 16, 4, n_heads=2)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# --------------------------------------------------------------------------- step time


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


def make_trainer_step(shape: Shape, device: torch.device) -> Callable[[], None]:
    """The body of `kvshift_lens.training.trainer.train`'s loop (sampling, batch_loss, clip, constrain, .item())."""
    from kvshift_lens.models.config import ModelConfig
    from kvshift_lens.models.transformer import build_module, constrain_
    from kvshift_lens.data.tasks.base import make_task, task_config
    from kvshift_lens.training.train_config import TrainConfig
    from kvshift_lens.training.trainer import _to, batch_loss, lr_at, make_optimizer

    model = build_module(model_config(shape, "kvshift")).to(device).train()
    cfg = TrainConfig(batch_size=shape.batch)
    opt = make_optimizer(model, cfg)
    task = make_task(task_config("induction", d_vocab=shape.d_vocab, seq_len=shape.seq))
    gen = torch.Generator().manual_seed(0)
    state = {"step": 0}

    def step() -> None:
        for group in opt.param_groups:
            group["lr"] = lr_at(state["step"], cfg)
        batch = _to(task.sample(cfg.batch_size, gen), device)
        loss = batch_loss(model(batch.tokens), batch, cfg.loss_on)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        constrain_(model)
        loss.item()
        state["step"] += 1

    return step


def model_config(shape: Shape, arch: str):
    from kvshift_lens.models.config import ModelConfig

    return ModelConfig(mixer="kv_shift" if arch == "kvshift" else "none", n_layers=shape.n_layers,
                       d_model=shape.d_model, n_heads=shape.n_heads,
                       d_vocab=shape.d_vocab, n_ctx=shape.seq, seed=0)


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


def bench_shape(shape: Shape, device: torch.device, rounds: int, with_compile: bool, warmup: int = 3) -> dict:
    from kvshift_lens.models.transformer import build_model, build_module
    from kvshift_lens.data.tasks.base import make_task, task_config

    torch.manual_seed(0)
    task = make_task(task_config("induction", d_vocab=shape.d_vocab, seq_len=shape.seq))
    tokens = task.sample(shape.batch, torch.Generator().manual_seed(0)).tokens.to(device)
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
    # ~0.15 s of work per sample keeps per-sample timer noise small without long runs
    probe = interleaved({"kvshift": variants["kvshift"]}, 1, 1, device, warmup=1)["kvshift"][0]
    inner = max(1, min(20, round(0.15 / max(probe, 1e-6))))
    times = interleaved(variants, rounds, inner, device, warmup=warmup)

    dt = times.pop("datagen")
    datagen = shape.batch / statistics.median(dt)
    step_kv = statistics.median(times["kvshift"])
    loop_kv = statistics.median(times["train_loop_kvshift"])
    row = {
        "shape": shape.label, **{k: v for k, v in vars(shape).items()},
        "ms_per_step": {n: round(1e3 * statistics.median(t), 3) for n, t in times.items()},
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


# --------------------------------------------------------------------------- mixers

MIXER_TARGET = ("<=", 1.15)  # each mixer's training step vs vanilla at the default training shape
DEFAULT_RUN_STEPS = 3000  # conf/train/default.yaml: the run length a compile must pay back within


def mixer_model_config(shape: Shape, mixer: str):
    """The bare model of `shape` with `mixer` at its default options ("none" = vanilla)."""
    from kvshift_lens.models.config import ModelConfig

    return ModelConfig(mixer=mixer, n_layers=shape.n_layers, d_model=shape.d_model, n_heads=shape.n_heads,
                       d_vocab=shape.d_vocab, n_ctx=shape.seq, seed=0)


def shape_tokens(shape: Shape, device: torch.device) -> torch.Tensor:
    """One induction batch of the shape (the same tokens for every variant)."""
    from kvshift_lens.data.tasks.base import make_task, task_config

    task = make_task(task_config("induction", d_vocab=shape.d_vocab, seq_len=shape.seq))
    return task.sample(shape.batch, torch.Generator().manual_seed(0)).tokens.to(device)


def samples_per_round(step: Callable[[], None], device: torch.device) -> int:
    """Steps per timed sample so that one sample is ~0.15 s of work."""
    probe = interleaved({"probe": step}, 1, 1, device, warmup=1)["probe"][0]
    return max(1, min(20, round(0.15 / max(probe, 1e-6))))


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
    return {"shape": shape.label, "ms_per_step": {n: round(1e3 * statistics.median(t), 3) for n, t in times.items()},
            "mixer_vs_vanilla": {n: round(ratio(times, n, "none"), 3) for n in variants if n != "none"},
            "rounds": rounds, "steps_per_sample": inner}


COMPILE_SNIPPET = r"""
import json, statistics, sys, time, torch
from benchmarks.run import Shape, compile_probe
print("BENCH_JSON" + json.dumps(compile_probe(Shape(**json.loads(sys.argv[1])), sys.argv[2], int(sys.argv[3]),
                                              int(sys.argv[4]))))
"""


def compile_probe(shape: Shape, mixer: str, rounds: int, threads: int) -> dict:
    """In this process: the first `torch.compile`d training step (compile included) and, interleaved, the eager,
    compiled and eager-vanilla steps (seconds). Run by `bench_compile` in fresh processes."""
    from kvshift_lens.models.transformer import build_module

    torch.set_num_threads(threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokens = shape_tokens(shape, device)
    compiled = make_step(torch.compile(build_module(mixer_model_config(shape, mixer)).to(device).train()), tokens)
    sync(device)
    t0 = time.perf_counter()
    compiled()
    sync(device)
    first = time.perf_counter() - t0
    eager = make_step(build_module(mixer_model_config(shape, mixer)).to(device).train(), tokens)
    vanilla = make_step(build_module(mixer_model_config(shape, "none")).to(device).train(), tokens)
    times = interleaved({"vanilla": vanilla, "eager": eager, "compiled": compiled}, rounds,
                        samples_per_round(eager, device), device)
    return {"first_step": first, **{k: statistics.median(v) for k, v in times.items()},
            "compiled_vs_eager": ratio(times, "compiled", "eager"), "compiled_vs_vanilla": ratio(times, "compiled", "vanilla")}


def payback_summary(probes: dict[str, dict]) -> dict:
    """From the "cold" and "warm" `compile_probe` results of one mixer: compile seconds (first compiled step minus
    a compiled step), step times, and the steps after which the compile is paid back (None: not faster)."""
    warm = probes["warm"]
    saved = warm["eager"] - warm["compiled"]
    seconds = {k: max(p["first_step"] - p["compiled"], 0.0) for k, p in probes.items()}
    payback = {k: (math.ceil(v / saved) if saved > 0 else None) for k, v in seconds.items()}
    return {
        "compile_seconds": {k: round(v, 2) for k, v in seconds.items()},
        "ms_per_step": {"eager": round(1e3 * warm["eager"], 3), "compiled": round(1e3 * warm["compiled"], 3),
                        "vanilla_eager": round(1e3 * warm["vanilla"], 3)},
        "compiled_vs_eager": round(warm["compiled_vs_eager"], 3),
        "compiled_vs_vanilla": round(warm["compiled_vs_vanilla"], 3),
        "payback_steps": payback,
        "pays_back_in_default_run": {k: v is not None and v <= DEFAULT_RUN_STEPS for k, v in payback.items()},
    }


def bench_compile(shape: Shape, mixers: list[str], rounds: int, threads: int, cache_dir: Path) -> dict:
    """Whether `train.compile=true` pays back, per mixer: compile seconds (first compiled step minus a compiled
    step) in a fresh process with an empty inductor cache ("cold") and in a second fresh process that finds
    the first one's cache ("warm"), eager vs compiled step time, and the steps after which the compile is paid
    back (None: the compiled step is not faster)."""
    out = {}
    for name in mixers:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache_dir / name)}
        probes = {}
        for kind in ("cold", "warm"):
            r = subprocess.run([sys.executable, "-c", COMPILE_SNIPPET, json.dumps(vars(shape)), name, str(rounds),
                                str(threads)], cwd=ROOT, capture_output=True, text=True, timeout=1800, env=env)
            if r.returncode != 0:
                raise RuntimeError(f"compile probe of {name} failed:\n{r.stderr[-3000:]}")
            probes[kind] = json.loads(next(x for x in r.stdout.splitlines() if x.startswith("BENCH_JSON"))[10:])
        out[name] = payback_summary(probes)
    return {"shape": shape.label, "default_run_steps": DEFAULT_RUN_STEPS, "rounds": rounds, "mixers": out,
            "note": "compile seconds = first compiled step minus a compiled step, each in a fresh process: 'cold' with "
                    "an empty inductor cache (a fresh machine), 'warm' when an earlier process compiled the same "
                    "shapes (every run of a sweep after the first with that shape); step times from the warm process; "
                    "payback = compile seconds / seconds saved per step"}


def mixer_verdicts(mixer_vs_vanilla: dict[str, float]) -> dict:
    """Per mixer: its ratio to vanilla against MIXER_TARGET."""
    op, bound = MIXER_TARGET
    return {name: {"target": f"{op} {bound}", "value": v, "met": v <= bound} for name, v in mixer_vs_vanilla.items()}


def mixers_markdown(res: dict) -> list[str]:
    """bench.md lines for the mixer ratios and the compiled path."""
    m = res["mixers"]
    lines = ["", f"## Mixers: training step vs vanilla ({m['shape']}, default options, interleaved)", "",
             "| mixer | ms / step | / vanilla | target met |", "|---|---|---|---|",
             f"| none (vanilla) | {m['ms_per_step']['none']} | 1 | - |"]
    lines += [f"| {n} | {m['ms_per_step'][n]} | {v['value']} | {'yes' if v['met'] else 'NO'} |"
              for n, v in res["mixer_targets"].items()]
    c = res.get("compile_payback")
    if c and c["mixers"]:
        lines += ["", f"## `train.compile=true` ({c['shape']}): does the compile pay back within {c['default_run_steps']} steps?", "",
                  "| mixer | compile s cold / warm | eager ms | compiled ms | compiled / vanilla eager | payback steps cold / warm |",
                  "|---|---|---|---|---|---|"]
        for n, d in c["mixers"].items():
            lines.append(f"| {n} | {d['compile_seconds']['cold']} / {d['compile_seconds']['warm']} | {d['ms_per_step']['eager']} | "
                         f"{d['ms_per_step']['compiled']} | {d['compiled_vs_vanilla']} | "
                         f"{d['payback_steps']['cold']} / {d['payback_steps']['warm']} |")
        lines += ["", c["note"]]
    return lines
def bench_lm(shape: Shape, device: torch.device, rounds: int, warmup: int = 3) -> dict:
    """Issue 14: our vanilla LM (LayerNorm, GELU MLP, learned positions) vs the plain-SDPA reference with
    the same MLPs, one training step each on Shakespeare character windows; and the window sampler
    (`kvshift_lens.data.tasks.text.random_windows`) against what one vanilla step consumes."""
    from kvshift_lens.models.config import ModelConfig
    from kvshift_lens.models.transformer import build_module
    from kvshift_lens.data.tasks.text import random_windows
    from kvshift_lens.data.text_tokenizers import tokenized_corpus

    data = tokenized_corpus("shakespeare", "char")
    stream, vocab, d_mlp = torch.from_numpy(data.train), data.vocab_size, 4 * shape.d_model
    gen = torch.Generator().manual_seed(0)
    tokens = random_windows(stream, shape.batch, shape.seq, gen).to(device)
    torch.manual_seed(0)
    ref = RefModel(vocab, shape.d_model, shape.n_heads, shape.n_layers, shape.seq, d_mlp=d_mlp).to(device)
    cfg = ModelConfig(mixer="none", n_layers=shape.n_layers, d_model=shape.d_model, n_heads=shape.n_heads,
                      d_vocab=vocab, n_ctx=shape.seq, attn_only=False, mlp="gelu", d_mlp=d_mlp)
    variants = {"sdpa_ref": make_step(ref.train(), tokens),
                "vanilla": make_step(build_module(cfg).to(device).train(), tokens),
                "datagen": lambda: random_windows(stream, shape.batch, shape.seq, gen)}
    probe = interleaved({"vanilla": variants["vanilla"]}, 1, 1, device, warmup=1)["vanilla"][0]
    inner = max(1, min(20, round(0.15 / max(probe, 1e-6))))
    times = interleaved(variants, rounds, inner, device, warmup=warmup)
    tokens_per_step = shape.batch * shape.seq
    return {
        "shape": f"{shape.label} GELU MLP, vocab {vocab} (shakespeare char)", "rounds": rounds, "steps_per_sample": inner,
        "n_params": {"sdpa_ref": sum(p.numel() for p in ref.parameters()),
                     "vanilla": sum(p.numel() for p in build_module(cfg).parameters())},
        "ms_per_step": {n: round(1e3 * statistics.median(t), 3) for n, t in times.items()},
        "tokens_per_s": {n: round(tokens_per_step / statistics.median(times[n]), 1) for n in ("sdpa_ref", "vanilla")},
        "lm_tokens_per_s_vs_sdpa": round(ratio(times, "sdpa_ref", "vanilla"), 3),
        "lm_datagen_vs_consumption": round(ratio(times, "vanilla", "datagen"), 2),
    }


# --------------------------------------------------------------------------- subprocess benches

TRAIN_SNIPPET = r"""
import json, resource, sys, time
def peak_rss_mb():  # VmHWM: this process's own peak; ru_maxrss would include the forking parent's (Linux exec)
    try:
        return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t0 = time.perf_counter()
from kvshift_lens.training.run_config import compose
from kvshift_lens.training.trainer import train
run = compose(json.loads(sys.argv[1]))
summary = train(run.model, run.task, run.train, sys.argv[2], progress=False)
print("BENCH_JSON" + json.dumps({
    "seconds_to_90": summary["seconds_to_90"], "steps_to_90": summary["steps_to_90"],
    "train_seconds": summary["train_seconds"], "final_induction_acc": summary["final_induction_acc"],
    "process_seconds": time.perf_counter() - t0,
    "max_rss_mb": peak_rss_mb()}))
"""


def bench_training_run(overrides: list[str], tmp: Path, in_process: bool = False) -> dict:
    """Train the default 1L KV-shift config in a fresh process: seconds to 90% and its max RSS.

    `in_process` (--quick) trains here instead; max RSS is then this process's.
    """
    if in_process:
        import resource

        from kvshift_lens.training.run_config import compose
        from kvshift_lens.training.trainer import train

        t0 = time.perf_counter()
        run = compose(overrides)
        threads = torch.get_num_threads()
        summary = train(run.model, run.task, run.train, tmp / "train_run", progress=False)
        torch.set_num_threads(threads)
        return {"overrides": overrides, "seconds_to_90": summary["seconds_to_90"],
                "steps_to_90": summary["steps_to_90"], "train_seconds": summary["train_seconds"],
                "final_induction_acc": summary["final_induction_acc"],
                "process_seconds": time.perf_counter() - t0,
                "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    r = subprocess.run([sys.executable, "-c", TRAIN_SNIPPET, json.dumps(overrides), str(tmp / "train_run")],
                       cwd=ROOT, capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        raise RuntimeError(f"training run failed:\n{r.stderr[-3000:]}")
    line = next(x for x in r.stdout.splitlines() if x.startswith("BENCH_JSON"))
    return {"overrides": overrides, **json.loads(line[len("BENCH_JSON"):])}


def run_sweep(launcher: str, overrides: list[str], out: Path) -> tuple[float, float]:
    """Wall seconds of one `experiments.train -m` sweep (process start-up included) and the
    summed in-run train_seconds of its runs (the launcher sets its own threads: no 1-thread env)."""
    cmd = sweeps.sweep_command(None, out, launcher, overrides=[*overrides, "name=bench"])
    entry = sweeps.run_sweep(cmd, out / "sweeps" / "bench", out / "bench.log", threads_per_job=None)
    summaries = list(out.rglob("summary.json"))
    return entry["wall_seconds"], sum(json.loads(p.read_text())["train_seconds"] for p in summaries)


def bench_sweep(overrides: list[str], reps: int, tmp: Path) -> dict:
    walls: dict[str, list[float]] = {"basic": [], "local_parallel": []}
    train_s: dict[str, list[float]] = {"basic": [], "local_parallel": []}
    for r in range(reps):
        for launcher in ("basic", "local_parallel") if r % 2 == 0 else ("local_parallel", "basic"):
            wall, ts = run_sweep(launcher, overrides, tmp / f"sweep_{launcher}_{r}")
            walls[launcher].append(wall)
            train_s[launcher].append(ts)
    speedups = [b / p for b, p in zip(walls["basic"], walls["local_parallel"])]
    t_import = import_seconds()
    return {
        "overrides": overrides, "reps": reps,
        "wall_seconds": {k: [round(x, 2) for x in v] for k, v in walls.items()},
        "sum_run_train_seconds": {k: [round(x, 2) for x in v] for k, v in train_s.items()},
        "speedup": round(statistics.median(speedups), 3),
        "python_import_seconds": t_import,
        "note": "wall time includes process start-up: basic imports once and runs the 4 jobs in "
                "one process (torch default threads); local_parallel = joblib/loky, 2 workers that "
                "each import torch + transformer_lens + kvshift_lens, 1 torch thread per worker",
    }


def import_seconds() -> dict:
    """Cold-ish import cost of what a sweep worker loads (a fresh interpreter each time)."""
    out = {}
    for mod in ("torch", "transformer_lens", "kvshift_lens.training.trainer"):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", f"import {mod}"], cwd=ROOT, check=True, capture_output=True)
        out[mod] = round(time.perf_counter() - t0, 2)
    return out


# --------------------------------------------------------------------------- report


def machine_info(device: torch.device) -> dict:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "device": str(device), "python": platform.python_version()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def verdicts(result: dict) -> dict:
    out = {}
    for key, (op, bound) in TARGETS.items():
        v = result.get(key)
        out[key] = {"target": f"{op} {bound}", "value": v,
                    "met": None if v is None else (v <= bound if op == "<=" else v >= bound)}
    return out


def to_markdown(res: dict) -> str:
    m = res["machine"]
    lines = [
        "# kvshift_lens benchmark", "",
        f"`python -m benchmarks.run{' --quick' if res['quick'] else ''}` — commit `{res['git_commit']}`, "
        f"{m['cpu']} ({m['cores']} cores), torch {m['torch']}, {m['threads']} thread(s), device {m['device']}; "
        f"load average {res['load_average']['start']} at start, {res['load_average']['end']} at end; "
        f"{res['total_seconds']:.0f} s.", "",
        "## Targets (worst case over shapes)", "",
        "| metric | value | target | met |", "|---|---|---|---|",
    ]
    for k, v in res["targets"].items():
        lines.append(f"| {k} | {v['value']} | {v['target']} | {'yes' if v['met'] else 'NO' if v['met'] is not None else '-'} |")
    lines += [f"| seconds_to_90pct_induction | {res['seconds_to_90pct_induction']} | - | - |",
              f"| peak_rss_mb | {res['peak_rss_mb']} | - | - |", "",
              "## Training step (forward + backward + AdamW), ms per step, medians of interleaved rounds", "",
              "| shape | SDPA ref | vanilla | KV-shift | bridge KV-shift | train loop KV-shift | vanilla/ref | "
              "KV-shift/ref | bridge/ref | KV-shift/vanilla | datagen seq/s | consumed seq/s | datagen/consumed |",
              "|---|" + "---|" * 12]
    for d in res["details"]:
        ms = d["ms_per_step"]
        lines.append(f"| {d['shape']} | {ms['sdpa_ref']} | {ms['vanilla']} | {ms['kvshift']} | {ms['bridge_kvshift']} | "
                     f"{ms['train_loop_kvshift']} | {d['vanilla_vs_sdpa']} | {d['kvshift_vs_sdpa']} | "
                     f"{d['bridge_kvshift_vs_sdpa']} | {d['kvshift_vs_vanilla']} | {d['datagen_seq_per_s']} | "
                     f"{d['consumption_seq_per_s']} | {d['datagen_vs_consumption']} |")
    lm = res["lm"]
    lines += ["", f"## Language model: {lm['shape']}", "",
              f"ms per step: SDPA ref {lm['ms_per_step']['sdpa_ref']}, vanilla {lm['ms_per_step']['vanilla']} "
              f"(tokens/s {lm['tokens_per_s']['sdpa_ref']} vs {lm['tokens_per_s']['vanilla']}; parameters "
              f"{lm['n_params']['sdpa_ref']:,} vs {lm['n_params']['vanilla']:,}); window sampler "
              f"{lm['ms_per_step']['datagen']} ms per batch."]
    if any("compiled_kvshift_vs_kvshift" in d for d in res["details"]):
        lines += ["", "torch.compile (KV-shift, compiled / eager): " +
                  ", ".join(f"{d['shape']}: {d['compiled_kvshift_vs_kvshift']}" for d in res["details"])]
    s = res["sweep"]
    lines += ["", "## Sweep (4 runs) — `experiments.train -m`, wall seconds incl. process start-up", "",
              f"`{' '.join(s['overrides'])}`", "",
              f"- basic (sequential): {s['wall_seconds']['basic']} s (runs' own train_seconds {s['sum_run_train_seconds']['basic']})",
              f"- local_parallel (joblib, 2 workers): {s['wall_seconds']['local_parallel']} s "
              f"(runs' own train_seconds {s['sum_run_train_seconds']['local_parallel']})",
              f"- speedup: **{s['speedup']}×**; fresh-interpreter import seconds: {s['python_import_seconds']}",
              f"- {s['note']}", "",
              "## Training run (fresh process)", "",
              f"`{' '.join(res['training_run']['overrides'])}`: seconds_to_90 = {res['training_run']['seconds_to_90']} "
              f"(step {res['training_run']['steps_to_90']}), train_seconds = {res['training_run']['train_seconds']}, "
              f"process {res['training_run']['process_seconds']:.1f} s, max RSS {res['training_run']['max_rss_mb']:.0f} MB", ""]
    return "\n".join(lines + mixers_markdown(res))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny smoke run (seconds; numbers meaningless)")
    p.add_argument("--out", type=Path, default=ROOT / "results", help="directory for bench.json / bench.md")
    p.add_argument("--threads", type=int, default=1, help="torch threads for the step benchmarks (default 1)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds per shape")
    p.add_argument("--sweep-steps", type=int, default=600,
                   help="train.steps of each of the 4 sweep runs (long enough that worker start-up, ~10 s, is not the measurement)")
    p.add_argument("--sweep-reps", type=int, default=1, help="repetitions of the basic/local_parallel pair")
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd KV-shift")
    p.add_argument("--skip-subprocess", action="store_true", help="skip the sweep and training-run benches")
    p.add_argument("--compile-mixers", nargs="*", default=None, metavar="MIXER",
                   help="mixers whose train.compile payback is measured (default: kv_shift canon; none with --quick)")
    args = p.parse_args(argv)

    started = time.perf_counter()
    commit = git_commit() + ("-dirty" if git_dirty() else "")  # before the first partial write of bench.json
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    load_start = load_average()
    shapes = QUICK_SHAPES if args.quick else FULL_SHAPES
    rounds = args.rounds or (2 if args.quick else 10)

    details = []
    for shape in shapes:
        row = bench_shape(shape, device, rounds, args.compile, warmup=1 if args.quick else 3)
        details.append(row)
        print(f"[bench] {shape.label}: {row['ms_per_step']} kv/van={row['kvshift_vs_vanilla']} "
              f"van/ref={row['vanilla_vs_sdpa']} kv/ref={row['kvshift_vs_sdpa']} "
              f"datagen/consumed={row['datagen_vs_consumption']}", flush=True)

    mixers = bench_mixers(shapes[0], device, rounds, warmup=1 if args.quick else 3)
    print(f"[bench] mixers vs vanilla ({mixers['shape']}): {mixers['mixer_vs_vanilla']}", flush=True)
    compile_mixers = args.compile_mixers if args.compile_mixers is not None else ([] if args.quick else ["kv_shift", "canon"])
    with tempfile.TemporaryDirectory(prefix="kvshift_inductor_") as cache:
        compiled = bench_compile(shapes[0], compile_mixers, rounds, args.threads, Path(cache))
    for name, d in compiled["mixers"].items():
        print(f"[bench] compile {name}: {d['compile_seconds']} s, compiled/eager {d['compiled_vs_eager']}, "
              f"payback steps {d['payback_steps']}", flush=True)
    lm = bench_lm(QUICK_LM_SHAPE if args.quick else LM_SHAPE, device, rounds, warmup=1 if args.quick else 3)
    print(f"[bench] LM {lm['shape']}: {lm['ms_per_step']} tokens/s vanilla/ref={lm['lm_tokens_per_s_vs_sdpa']} "
          f"datagen/consumed={lm['lm_datagen_vs_consumption']}", flush=True)

    def emit(training: dict, sweep: dict) -> dict:
        res = {
            "step_ratio_vs_sdpa": max(max(d["vanilla_vs_sdpa"], d["kvshift_vs_sdpa"]) for d in details),
            "kvshift_vs_vanilla": max(d["kvshift_vs_vanilla"] for d in details),
            "sweep_speedup_2_workers": sweep["speedup"],
            "datagen_vs_consumption": min(d["datagen_vs_consumption"] for d in details),
            "lm_tokens_per_s_vs_sdpa": lm["lm_tokens_per_s_vs_sdpa"],
            "lm_datagen_vs_consumption": lm["lm_datagen_vs_consumption"],
            "seconds_to_90pct_induction": training["seconds_to_90"],
            "peak_rss_mb": round(training["max_rss_mb"], 1),
            "git_commit": commit,
            "machine": machine_info(device),
            "load_average": {"start": load_start, "end": load_average()},
            "quick": args.quick,
            "details": details,
            "lm": lm,
            "training_run": training,
            "sweep": sweep,
            "mixer_vs_vanilla": mixers["mixer_vs_vanilla"],
            "mixer_targets": mixer_verdicts(mixers["mixer_vs_vanilla"]),
            "mixers": mixers,
            "compile_payback": compiled,
        }
        res["targets"] = verdicts(res)
        res["total_seconds"] = round(time.perf_counter() - started, 1)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench.json").write_text(json.dumps(res, indent=2))
        (args.out / "bench.md").write_text(to_markdown(res))
        return res

    pending_train = {"overrides": [], "seconds_to_90": None, "steps_to_90": None, "train_seconds": None,
                     "process_seconds": 0.0, "max_rss_mb": float("nan"), "final_induction_acc": None}
    pending_sweep = {"overrides": [], "reps": 0, "wall_seconds": {"basic": [], "local_parallel": []},
                     "sum_run_train_seconds": {"basic": [], "local_parallel": []}, "speedup": None,
                     "python_import_seconds": {}, "note": "not measured (yet)"}
    emit(pending_train, pending_sweep)  # partial results survive an interrupted run
    with tempfile.TemporaryDirectory(prefix="kvshift_bench_") as tmpdir:
        tmp = Path(tmpdir)
        if args.skip_subprocess:
            training = {"overrides": [], "seconds_to_90": None, "steps_to_90": None, "train_seconds": None,
                        "process_seconds": 0.0, "max_rss_mb": float("nan"), "final_induction_acc": None}
            sweep = {"overrides": [], "reps": 0, "wall_seconds": {"basic": [], "local_parallel": []},
                     "sum_run_train_seconds": {"basic": [], "local_parallel": []}, "speedup": None,
                     "python_import_seconds": {}, "note": "skipped"}
        else:
            if args.quick:
                train_over = ["model=kvshift_1l", "train.steps=6", "train.warmup=1", "train.threads=1", "train.eval_every=3",
                              "train.eval_size=8", "train.batch_size=4", "train.n_checkpoints=2",
                              "task.d_vocab=16", "task.seq_len=16", "model.d_model=16", "model.n_heads=2"]
                sweep_over = ["model=vanilla_1l,kvshift_1l", "seed=0,1", "train.steps=2", "train.warmup=1", "train.eval_every=2",
                              "train.eval_size=4", "train.batch_size=4", "train.n_checkpoints=1",
                              "task.d_vocab=16", "task.seq_len=16", "model.d_model=16", "model.n_heads=2",
                              "progress=false"]
                sweep_reps = 1
            else:
                train_over = ["model=kvshift_1l", "train.steps=600", "train.threads=1"]
                sweep_over = ["model=vanilla_1l,kvshift_1l", "seed=0,1", f"train.steps={args.sweep_steps}", "progress=false"]
                sweep_reps = args.sweep_reps
            training = bench_training_run(train_over, tmp, in_process=args.quick)
            print(f"[bench] training run: {training}", flush=True)
            emit(training, pending_sweep)
            if args.quick:  # two hydra process trees cost ~30-60 s of imports on a loaded 2-core box
                sweep = {"overrides": sweep_over, "reps": 0, "wall_seconds": {"basic": [], "local_parallel": []},
                         "sum_run_train_seconds": {"basic": [], "local_parallel": []}, "speedup": None,
                         "python_import_seconds": {}, "note": "not measured in --quick mode"}
            else:
                sweep = bench_sweep(sweep_over, sweep_reps, tmp)
            print(f"[bench] sweep: {sweep['wall_seconds']} speedup {sweep['speedup']}", flush=True)

    res = emit(training, sweep)
    print(f"[bench] wrote {args.out / 'bench.json'} and bench.md in {res['total_seconds']} s", flush=True)
    return res


if __name__ == "__main__":
    main()
