"""What `experiments.detect` runs on a run directory: checkpoint detectors and emergence steps for a
synthetic task (`emergence`), the LM probes for a text run (`lm_heads`); results in heads.csv and
summary.json."""

from __future__ import annotations

import json
from pathlib import Path

from kvshift_lens.analysis.development import analyze_development
from kvshift_lens.analysis.emergence import PathLike, detect_run, update_summary
from kvshift_lens.analysis.lm_heads import analyze_lm_run
from kvshift_lens.training.runs import find_runs, no_runs_error


def analyze_run(run_dir: PathLike, development: bool = False, **detect_kwargs) -> dict:
    """detect_run + update_summary for one run directory (text runs: `kvshift_lens.analysis.lm_heads.analyze_lm_run`),
    then, with `development`, `kvshift_lens.analysis.development.analyze_development`; returns its summary."""
    if json.loads(Path(run_dir, "config.json").read_text())["task"]["name"] == "text":
        summary = analyze_lm_run(run_dir, **{k: v for k, v in detect_kwargs.items() if k in ("batch_size", "seed")})
    else:
        summary = update_summary(run_dir, detect_run(run_dir, **detect_kwargs))
    if development:
        analyze_development(run_dir, **{k: v for k, v in detect_kwargs.items() if k in ("batch_size", "seed")})
        summary = json.loads(Path(run_dir, "summary.json").read_text())
    return summary


def analyze(path: PathLike, **detect_kwargs) -> dict[Path, dict]:
    """analyze_run on a run directory or on every run under a sweep directory."""
    runs = find_runs(path)
    if not runs:
        raise no_runs_error(path)
    return {run: analyze_run(run, **detect_kwargs) for run in runs}
