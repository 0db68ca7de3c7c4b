"""Train one model (or a sweep with -m): `python -m experiments.train model=kvshift_1l task=induction`.

Re-running the same command resumes the run in its directory (Ctrl-C says so in one line and exits 130). A
`plugins=[my_pkg.my_mixer]` list is imported first (docs/extending.md). A bad value stops with one line before
transformer_lens is imported; in a sweep a failing job is recorded in its run directory (error.txt, summary.json
status) while every other job runs, and the sweep ends with one line per failed job and exit status 1.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from kvshift_lens.training.run_dirs import register_resolvers  # torch-free

register_resolvers()  # run directories (conf/train.yaml), shared with kvshift_lens.train


def _text_vocab(corpus: str, tokenizer: str, vocab_size: int) -> int:
    """conf/task/text.yaml's `${text_vocab:...}`, registered here (importing torch only when resolved) because
    hydra's launchers reset every job's resolvers to the launcher process's set."""
    from kvshift_lens.data.tasks.text import text_vocab

    return text_vocab(str(corpus), str(tokenizer), int(vocab_size))


if not OmegaConf.has_resolver("text_vocab"):
    OmegaConf.register_new_resolver("text_vocab", _text_vocab)

ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:  # Hydra finds our sweeper plugin (hydra_plugins/, beside conf/) on sys.path
    sys.path.append(ROOT)

from kvshift_lens.training.cli import guard_job, hydra_entry  # noqa: E402  (torch-free)


def launcher_threads() -> int:
    """Torch threads per run implied by the launcher: cores / parallel jobs (joblib), the job's
    cpus_per_task (submitit: 1 when unset, since submitit_local starts every job at once), else 0."""
    launcher = HydraConfig.get().launcher
    n_jobs = OmegaConf.select(launcher, "n_jobs", default=None)
    if n_jobs:
        cores = os.cpu_count() or 1
        return max(1, cores // (cores if n_jobs < 0 else n_jobs))
    if "submitit" in str(OmegaConf.select(launcher, "_target_", default="")):
        return int(OmegaConf.select(launcher, "cpus_per_task", default=None) or 1)
    return 0


def train_run(cfg: DictConfig, run_dir: Path) -> float:
    """Validate every value, then train (and optionally detect) one run; returns its final accuracy."""
    from kvshift_lens.training.run_config import run_config

    run = run_config(cfg)
    # Imported only now: a bad value costs no transformer_lens import, and a sweep's launcher process
    # never pays for them.
    from kvshift_lens.analysis.run_detection import analyze_run
    from kvshift_lens.training.trainer import train

    if run.train.threads == 0:
        run.train.threads = launcher_threads()
    summary = train(run.model, run.task, run.train, run_dir, progress=run.progress)
    if run.detect:
        summary = analyze_run(run_dir)
    acc = summary["final_induction_acc"]
    print(f"{run_dir}: held-out acc={acc:.3f} steps_to_90={summary['steps_to_90']} "
          f"train_seconds={summary['train_seconds']:.1f}")
    return acc


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> Optional[float]:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    root = Path(str(OmegaConf.select(cfg, "out_dir", default="runs", throw_on_resolution_failure=False)))
    return guard_job(run_dir, lambda: train_run(cfg, run_dir), config=cfg,
                     in_sweep=hydra_cfg.mode == RunMode.MULTIRUN, root=root)


if __name__ == "__main__":
    hydra_entry(main)
