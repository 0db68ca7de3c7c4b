"""Train one model (or a sweep with -m): `python -m experiments.train model=kvshift_1l task=induction`.

Re-running the same command resumes the run in its directory; bad configs stop with one line.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

if not OmegaConf.has_resolver("path_safe"):  # run directories (conf/train.yaml): model/mixer=x -> model.mixer=x
    OmegaConf.register_new_resolver("path_safe", lambda s: str(s).replace("/", "."))


def _text_vocab(corpus: str, tokenizer: str, vocab_size: int) -> int:
    """conf/task/text.yaml's `${text_vocab:...}`, registered here (importing torch only when resolved) because
    hydra's launchers reset every job's resolvers to the launcher process's set."""
    from kvshift_lens.tasks.text import text_vocab

    return text_vocab(str(corpus), str(tokenizer), int(vocab_size))


if not OmegaConf.has_resolver("text_vocab"):
    OmegaConf.register_new_resolver("text_vocab", _text_vocab)

ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:  # Hydra finds our sweeper plugin (hydra_plugins/, beside conf/) on sys.path
    sys.path.append(ROOT)


def fail(message: str, run_dir: Path) -> None:
    """Print one error line, drop the directory hydra made if nothing was written, and exit 2."""
    print(f"error: {message}", file=sys.stderr)
    leftovers = {p.name for p in run_dir.iterdir()} - {".hydra", "train.log"} if run_dir.exists() else set()
    if run_dir.exists() and not leftovers:
        shutil.rmtree(run_dir)
    sys.exit(2)


def launcher_threads() -> int:
    """Torch threads per run implied by the launcher: cores / parallel jobs, or the cluster's cpus_per_task."""
    launcher = HydraConfig.get().launcher
    n_jobs = OmegaConf.select(launcher, "n_jobs", default=None)
    if n_jobs:
        cores = os.cpu_count() or 1
        return max(1, cores // (cores if n_jobs < 0 else n_jobs))
    return int(OmegaConf.select(launcher, "cpus_per_task", default=0) or 0)


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float:
    # Imported here, not at module level: a sweep's launcher process then skips torch + transformer_lens
    # (~10 s); only the processes that train pay for them.
    from kvshift_lens.config import run_config
    from kvshift_lens.emergence import analyze_run
    from kvshift_lens.errors import ConfigError
    from kvshift_lens.train import train

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        run = run_config(cfg)
        if run.train.threads == 0:
            run.train.threads = launcher_threads()
        summary = train(run.model, run.task, run.train, run_dir, progress=cfg.progress)
        if cfg.detect:
            summary = analyze_run(run_dir)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        fail(str(e), run_dir)
    acc = summary["final_induction_acc"]
    print(f"{run_dir}: induction_acc={acc:.3f} steps_to_90={summary['steps_to_90']} "
          f"train_seconds={summary['train_seconds']:.1f}")
    return acc


if __name__ == "__main__":
    main()
