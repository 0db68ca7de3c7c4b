"""What `experiments.detect` runs on a run directory: checkpoint detectors and emergence steps for a
synthetic task (`emergence`), the LM probes for a text run (`lm_heads`); results in heads.csv and
summary.json."""

from __future__ import annotations

import json
from pathlib import Path

from kvshift_lens.analysis.emergence import PathLike, detect_run, update_summary
from kvshift_lens.analysis.lm_heads import analyze_lm_run
from kvshift_lens.training.runs import find_runs


def analyze_run(run_dir: PathLike, **detect_kwargs) -> dict:
    """detect_run + update_summary for one run directory (text runs: `kvshift_lens.analysis.lm_heads.analyze_lm_run`);
    returns its summary."""
    if json.loads(Path(run_dir, "config.json").read_text())["task"]["name"] == "text":
        return analyze_lm_run(run_dir, **{k: v for k, v in detect_kwargs.items() if k in ("batch_size", "seed")})
    heads = detect_run(run_dir, **detect_kwargs)
    return update_summary(run_dir, heads)


def analyze(path: PathLike, **detect_kwargs) -> dict[Path, dict]:
    """analyze_run on a run directory or on every run under a sweep directory."""
    runs = find_runs(path)
    if not runs:
        raise FileNotFoundError(f"no runs under {path} (a run directory holds config.json and metrics.csv)")
    return {run: analyze_run(run, **detect_kwargs) for run in runs}
