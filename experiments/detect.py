"""Find induction heads on every checkpoint: `python -m experiments.detect run_dir=<run or sweep dir>`.

Writes heads.csv into each run directory and adds emergence keys to its summary.json; re-running
skips checkpoints already scored. A bad or missing directory stops with one line.
"""

from __future__ import annotations

import sys

import hydra
import torch
from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue

from kvshift_lens.emergence import analyze


@hydra.main(version_base="1.3", config_path="../conf", config_name="detect")
def main(cfg: DictConfig) -> None:
    try:
        torch.set_num_threads(cfg.threads)
        results = analyze(cfg.run_dir, batch_size=cfg.batch_size, seed=cfg.seed)
    except MissingMandatoryValue:
        print("error: give the run or sweep directory: run_dir=<dir>", file=sys.stderr)
        sys.exit(2)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    for run_dir, s in results.items():
        print(f"{run_dir}: induction_heads={s['induction_heads']} mechanisms={s['induction_mechanisms']} "
              f"emergence_step={s['emergence_step']} phase_change_step={s['phase_change_step']}")


if __name__ == "__main__":
    main()
