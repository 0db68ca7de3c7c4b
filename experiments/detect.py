"""Find induction heads on every checkpoint: `python -m experiments.detect <run or sweep dir> [batch_size=16 ...]`.

Writes heads.csv into each run directory and adds emergence keys to its summary.json; re-running
skips checkpoints already scored; `development=true` also writes development.csv (loss by position, loss
PCA, QK eigenvalues, the LLC; kvshift_lens.analysis.development). The directory may be any path -- sweep run
directories contain `=` and `,` -- given first or as `run_dir=<path>`. A bad value or a missing directory stops
with one line.
"""

from __future__ import annotations

import os
import sys

import hydra
from omegaconf import DictConfig

from kvshift_lens.training.cli import fail, hydra_entry

TAKES_VALUE = {"-c", "--cfg", "-p", "--package", "-cp", "--config-path", "-cn", "--config-name", "-cd", "--config-dir"}


def path_overrides(argv: list[str]) -> list[str]:
    """argv with the run directory (a bare path, or `run_dir=<any path>`) as a quoted Hydra override, so
    `=` and `,` in the path are not read as override grammar."""
    out, skip = [], False
    for arg in argv:
        value = None
        if not skip and arg.startswith("run_dir="):
            value = arg[len("run_dir="):]
        elif not skip and not arg.startswith("-") and ("=" not in arg or os.path.exists(arg)):
            value = arg
        skip = arg in TAKES_VALUE
        out.append(arg if value is None else "run_dir='{}'".format(value.replace("'", "\\'")))
    return out


@hydra.main(version_base="1.3", config_path="../conf", config_name="detect")
def main(cfg: DictConfig) -> None:
    from kvshift_lens.training.run_config import DetectConfig, validated
    from kvshift_lens.core.errors import ConfigError

    try:
        run = validated(DetectConfig, cfg)
    except ConfigError as e:
        fail(str(e))
    import torch  # only now: a bad value costs no torch import

    from kvshift_lens.analysis.run_detection import analyze

    torch.set_num_threads(run.threads)
    try:
        results = analyze(run.run_dir, batch_size=run.batch_size, seed=run.seed, development=run.development)
    except (OSError, ValueError) as e:
        fail(str(e))
    for run_dir, s in results.items():
        keys = ("induction_heads", "induction_mechanisms", "first_induction_head", "induction_layers", "emergence_step",
                "phase_change_step", "icl_jump_step",  # text runs report layers and the ICL jump (kvshift_lens.analysis.lm_heads)
                "loss_pca_turn_step", "llc_stage_boundaries", "induction_split")  # development=true
        print(f"{run_dir}: " + " ".join(f"{k}={s[k]}" for k in keys if k in s))


if __name__ == "__main__":
    sys.argv[1:] = path_overrides(sys.argv[1:])
    hydra_entry(main)
