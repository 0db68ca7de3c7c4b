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
        keys = ("induction_heads", "induction_mechanisms", "first_induction_head", "induction_layers", "emergence_step",
                "phase_change_step", "icl_jump_step")  # text runs report layers and the ICL jump (kvshift_lens.lm)
        print(f"{run_dir}: " + " ".join(f"{k}={s[k]}" for k in keys if k in s))


if __name__ == "__main__":
    main()
