"""Train a bare kvshift_lens model on a synthetic task, resumably and reproducibly.

The bare module trains with SDPA attention; checkpoints are `save_model` files, so any of them
reloads as a TransformerBridge for analysis. Re-running `train` on the same run directory
resumes from the rolling `resume.pt` and ends with exactly the metrics of an uninterrupted run.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from kvshift_lens.models.checkpoints import save_model
from kvshift_lens.training.run_config import check_compatible
from kvshift_lens.core.errors import ConfigError, TrainingDiverged, TrainingInterrupted
from kvshift_lens.data.icl import token_losses
from kvshift_lens.models.config import ModelConfig
from kvshift_lens.models.transformer import build_module, constrain_, no_weight_decay_parameters
from kvshift_lens.training.provenance import git_commit
from kvshift_lens.data.tasks.base import Batch, Task, TaskConfig, make_task
from kvshift_lens.models.transformer import attach_tokenizer
from kvshift_lens.training.train_config import TrainConfig
from kvshift_lens.training.intervention_hooks import InterventionSchedule
from kvshift_lens.training.resume import RESUME_FILE, load_resume, longer_budget, same_run, save_resume

METRIC_COLUMNS = ["step", "train_loss", "eval_loss", "induction_acc", "lr", "train_seconds"]


def pick_device(name: str) -> torch.device:
    """`auto` -> CUDA when available, else CPU; `cuda` without a visible device is a `ConfigError`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no CUDA device is visible; use train.device=auto")
    return torch.device(name)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warmup, then constant or cosine."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    if cfg.schedule == "constant":
        return cfg.lr
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    floor = cfg.min_lr_ratio
    return cfg.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def checkpoint_steps(steps: int, n: int, every: int = 0) -> list[int]:
    """Step 0 plus ~n log-spaced steps up to `steps` (dense early, where circuits form), and with `every` > 0 also
    every `every` steps (a late phase change resolved to that many steps)."""
    if n <= 0:
        return []
    grid = np.unique(np.round(np.geomspace(1, steps, n)).astype(int))
    linear = range(every, steps, every) if every > 0 else ()
    return sorted({0, *grid.tolist(), *linear, steps})


def batch_loss(logits: torch.Tensor, batch: Batch, on: str) -> torch.Tensor:
    """Next-token cross-entropy over all next tokens (`on="all"`) or the scored positions only.

    logits [batch, pos, vocab]; position t predicts tokens[:, t+1].
    """
    pred = logits[:, :-1]  # [batch, pos-1, vocab]
    target = batch.tokens[:, 1:]  # [batch, pos-1]
    ce = F.cross_entropy(pred.reshape(-1, pred.shape[-1]), target.reshape(-1), reduction="none").view_as(target)
    return ce.mean() if on == "all" else ce[batch.mask[:, :-1]].mean()


def scored_correct(logits: torch.Tensor, batch: Batch) -> tuple[int, int]:
    """(correct, total) next-token predictions at the scored positions; logits [batch, pos, vocab]."""
    scored = batch.mask[:, :-1]  # [batch, pos-1]
    correct = (logits[:, :-1].argmax(-1) == batch.tokens[:, 1:]) & scored
    return int(correct.sum()), int(scored.sum())


@torch.no_grad()
def evaluate(model: torch.nn.Module, eval_batches: list[Batch], loss_on: str,
             task: Optional[Task] = None) -> tuple[float, float, dict[str, float]]:
    """Mean eval loss, scored-position accuracy and the task's own held-out metrics (`task.metric_names`,
    from the per-token losses of all batches) over a fixed list of batches."""
    was_training = model.training
    model.eval()
    losses, correct, total, per_token = [], 0, 0, []
    for batch in eval_batches:
        logits = model(batch.tokens)
        losses.append(batch_loss(logits, batch, loss_on).item())
        c, n = scored_correct(logits, batch)
        correct, total = correct + c, total + n
        if task is not None and task.metric_names:
            per_token.append(token_losses(logits, batch.tokens).cpu())
    model.train(was_training)
    extra = task.held_out_metrics(torch.cat(per_token), torch.cat([b.tokens.cpu() for b in eval_batches])) \
        if per_token else {}
    return float(np.mean(losses)), correct / max(total, 1), extra


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay only on matrices, not on biases, norm gains or what each mixer module lists in
    `no_weight_decay()` (its mixing coefficients).

    `foreach=True`: one multi-tensor kernel per update instead of a Python loop over parameters; on CPU
    it is bit-identical to the loop (pinned by a test) and ~20 % faster per step for the smallest models.
    """
    skip = no_weight_decay_parameters(model)
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.dim() < 2 or id(p) in skip else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), foreach=True)


def _read_metrics(path: Path, upto: int) -> list[dict]:
    """Rows of metrics.csv with step <= upto (rows past the resume point are recomputed)."""
    if not path.exists():
        return []
    with path.open() as f:
        return [r for r in csv.DictReader(f) if int(r["step"]) <= upto]


def _write_metrics(path: Path, rows: list[dict], columns: list[str] = METRIC_COLUMNS) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def train(
    model_cfg: ModelConfig,
    task_cfg: TaskConfig,
    cfg: TrainConfig,
    run_dir: os.PathLike | str,
    *,
    progress: bool = True,
) -> dict:
    """Train (or resume) one run in `run_dir`; return its summary (also written to summary.json).

    Writes metrics.csv (one row per evaluation), checkpoints/step_XXXXXXX.safetensors at
    log-spaced steps, a rolling resume.pt (sha256-checked), and summary.json (`status`: completed, or
    diverged when the loss turns non-finite: then `TrainingDiverged` is raised after writing it).
    """
    cfg.validate()
    model_cfg.validate()
    check_compatible(model_cfg, task_cfg)
    task = make_task(task_cfg)
    run_dir = Path(run_dir)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    metrics_path, resume_path = run_dir / "metrics.csv", run_dir / RESUME_FILE
    train_dict = dataclasses.asdict(cfg)
    if not cfg.interventions:  # runs without interventions keep the config (and resume identity) they always had
        train_dict.pop("interventions")
    run_config = json.dumps({"model": model_cfg.to_dict(), "task": dataclasses.asdict(task_cfg),
                             "train": train_dict}, sort_keys=True)
    identity = json.loads(run_config)
    for where in ("threads", "device", "compile"):  # how a run executes does not change what it computes (up to rounding)
        identity["train"].pop(where)
    state = load_resume(resume_path) if resume_path.exists() else None
    if state is not None:  # checked before anything is built
        longer = longer_budget(state.get("config"), identity)
        if longer is not None:  # an adaptive round trained this run on: the grid's job is that run, at its budget
            return train(model_cfg, task_cfg, dataclasses.replace(cfg, steps=longer), run_dir, progress=progress)
        if not same_run(state.get("config"), identity):
            raise ConfigError(f"{run_dir} holds a run with a different config; resume it with its own "
                              f"config, or pick a fresh run directory (hydra.run.dir=...)")

    model = build_module(model_cfg).to(device)
    model.train()
    interventions = InterventionSchedule(model, cfg.interventions, cfg.steps, task_cfg.seq_len)  # bad hook: no run dir
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    if task.tokenizer is not None:  # text: checkpoints carry it, so TL's string tools work on reloaded models
        attach_tokenizer(model, task.tokenizer, **task.special_tokens)
    forward = torch.compile(model) if cfg.compile else model  # training steps only: evaluation and checkpoints stay eager
    opt = make_optimizer(model, cfg)
    data_gen = torch.Generator().manual_seed(model_cfg.seed)
    eval_gen = torch.Generator().manual_seed(model_cfg.seed + 7_919)  # disjoint held-out stream
    eval_batches = [b.to(device) for b in task.held_out(cfg.eval_size, cfg.batch_size, eval_gen)]
    columns = METRIC_COLUMNS + list(task.metric_names)
    ckpt_steps = set(checkpoint_steps(cfg.steps, cfg.n_checkpoints, cfg.checkpoint_every))
    step, train_seconds, rows, recent = 0, 0.0, [], []
    saved = 0  # the step the rolling resume state holds (0: none yet, a rerun starts over)
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        data_gen.set_state(state["data_rng"])
        torch.set_rng_state(state["torch_rng"])  # unused by our code; kept for user hooks
        step, train_seconds, recent = int(state["step"]), float(state["train_seconds"]), list(state["recent"])
        rows = _read_metrics(metrics_path, step)
        saved = step
    _write_text(run_dir / "config.json", json.dumps(json.loads(run_config), indent=2))
    started = time.perf_counter()

    def log_eval() -> dict:
        eval_loss, acc, extra = evaluate(model, eval_batches, cfg.loss_on, task)
        row = {"step": step, "train_loss": float(np.mean(recent)) if recent else None,  # step 0: an empty cell
               "eval_loss": eval_loss, "induction_acc": acc, "lr": lr_at(max(step - 1, 0), cfg),
               "train_seconds": round(train_seconds, 3), **extra}
        rows.append(row)
        _write_metrics(metrics_path, rows, columns)
        return row

    interventions.at(max(step - 1, 0))  # an evaluation sees the interventions of the step just taken
    if step == 0:
        log_eval()
        save_model(model, run_dir / "checkpoints" / "step_0000000.safetensors")

    def write_summary(status: str, error: Optional[str] = None) -> dict:
        summary = {"status": status, **({"error": error} if error else {}), **summarize(rows, threshold=0.9)}
        tokens = step * cfg.batch_size * task_cfg.seq_len
        summary.update({
            **{f"final_{name}": float(rows[-1][name]) for name in task.metric_names},
            "train_tokens": tokens,
            "tokens_per_second": round(tokens / train_seconds, 1) if train_seconds > 0 else None,
            "wall_seconds_this_session": round(time.perf_counter() - started, 3),
            "train_seconds": round(train_seconds, 3),
            "device": str(device),
            "threads": torch.get_num_threads(),
            "git_commit": git_commit(),
            "config": json.loads(run_config),
            "chance_accuracy": task.chance_accuracy,
            "stopped_early": step < cfg.steps,
        })
        path = run_dir / "summary.json"
        before = json.loads(path.read_text()) if path.exists() else {}
        if before.get("status") == status and before.get("final_step") == summary.get("final_step"):
            summary = {**{k: v for k, v in before.items() if k not in summary}, **summary}  # nothing new trained:
            # the analyses added to it (emergence, developmental measures) still describe this run
        _write_text(path, json.dumps(summary, indent=2))
        return summary

    def reached_stop() -> bool:
        return cfg.stop_at > 0 and bool(rows) and float(rows[-1]["induction_acc"]) >= cfg.stop_at

    bar = tqdm(total=cfg.steps, initial=step, disable=not progress, desc=run_dir.name, leave=False)
    try:  # Ctrl-C: the CLI prints one line naming the step; a rerun resumes from the rolling resume.pt
        while step < cfg.steps and not reached_stop():
            t0 = time.perf_counter()
            loss_value = train_step(model, forward, opt, task.sample(cfg.batch_size, data_gen).to(device), step,
                                    cfg, interventions)
            if not math.isfinite(loss_value):  # nothing was updated: the last checkpoints stay finite
                message = f"diverged at step {step + 1} (loss {loss_value}): lower train.lr"
                write_summary("diverged", message)
                raise TrainingDiverged(message)
            step += 1
            recent = (recent + [loss_value])[-cfg.eval_every:]
            train_seconds += time.perf_counter() - t0
            bar.update(1)
            if step in ckpt_steps:
                save_model(model, run_dir / "checkpoints" / f"step_{step:07d}.safetensors")
            if step in ckpt_steps and cfg.eval_at_checkpoints and not (step % cfg.eval_every == 0 or step == cfg.steps):
                log_eval()
            if step % cfg.eval_every == 0 or step == cfg.steps:
                row = log_eval()
                bar.set_postfix(loss=f"{row['train_loss']:.3f}", acc=f"{row['induction_acc']:.3f}")
                save_resume({"model": model.state_dict(), "optimizer": opt.state_dict(),
                              "data_rng": data_gen.get_state(), "torch_rng": torch.get_rng_state(), "step": step,
                              "train_seconds": train_seconds, "recent": recent,
                              "config": json.dumps(identity, sort_keys=True)}, resume_path)
                saved = step
    except KeyboardInterrupt:
        bar.close()
        raise TrainingInterrupted(step, saved) from None
    bar.close()
    interventions.close()
    final = run_dir / "checkpoints" / f"step_{step:07d}.safetensors"
    if cfg.n_checkpoints > 0 and not final.exists():  # stopped between scheduled checkpoints: keep the last model
        save_model(model, final)

    return write_summary("completed")


def train_step(model: torch.nn.Module, forward: Callable[[torch.Tensor], torch.Tensor], opt: torch.optim.Optimizer,
               batch: Batch, step: int, cfg: TrainConfig, interventions: InterventionSchedule) -> float:
    """One step of `train`'s loop (what `make bench` times): lr schedule, interventions, loss, backward, clip, AdamW,
    constraints. Returns the loss before the update; a non-finite loss returns before anything is updated."""
    for group in opt.param_groups:
        group["lr"] = lr_at(step, cfg)
    interventions.at(step)
    loss = batch_loss(forward(batch.tokens), batch, cfg.loss_on)
    value = loss.item()
    if not math.isfinite(value):
        return value
    opt.zero_grad(set_to_none=True)
    loss.backward()
    interventions.after_backward()
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    opt.step()
    constrain_(model)
    interventions.after_update()
    return value


def summarize(rows: list[dict], threshold: float = 0.9) -> dict:
    """Final metrics plus the first evaluated step / training seconds reaching `threshold` accuracy."""
    last = rows[-1]
    hit = next((r for r in rows if float(r["induction_acc"]) >= threshold), None)
    return {
        "final_step": int(last["step"]),
        "final_train_loss": float(last["train_loss"]) if last["train_loss"] not in (None, "") else float("nan"),
        "final_eval_loss": float(last["eval_loss"]),
        "final_induction_acc": float(last["induction_acc"]),
        "best_induction_acc": max(float(r["induction_acc"]) for r in rows),
        "steps_to_90": int(hit["step"]) if hit else None,
        "seconds_to_90": float(hit["train_seconds"]) if hit else None,
    }
