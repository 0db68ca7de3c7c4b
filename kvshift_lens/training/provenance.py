"""Where a result came from: git commit, dirty files, software, machine, load and training time.

Written once for every producer of results (trainer, figure and phase-diagram pipelines, theory,
benchmarks), so every provenance JSON carries the same keys.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Iterable, Optional

ROOT = Path(__file__).resolve().parents[2]


def _git(*args: str) -> Optional[str]:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def git_commit() -> str:
    """HEAD commit of the source tree this package runs from ('unknown' outside git)."""
    return (_git("rev-parse", "HEAD") or "").strip() or "unknown"


def git_dirty() -> list[str]:
    """`git status --porcelain` lines of tracked files that differ from HEAD (empty: a clean tree)."""
    return (_git("status", "--porcelain", "--untracked-files=no") or "").splitlines()


def load_average() -> Optional[list[float]]:
    """1, 5 and 15-minute load averages (None where the OS has none): timings under load are not quiet timings."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def environment() -> dict:
    """Software and machine: python, torch (if imported), platform, CPU count."""
    import sys

    torch = sys.modules.get("torch")
    return {"python": platform.python_version(), "torch": getattr(torch, "__version__", None),
            "machine": platform.machine(), "platform": platform.platform(), "cpu_count": os.cpu_count()}


def record(command: str, **fields: object) -> dict:
    """A provenance record: the command, commit, dirty files, environment, load and UTC time, plus `fields`."""
    return {"command": command, "git_commit": git_commit(), "git_dirty": git_dirty(), **environment(),
            "load_average": load_average(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **fields}


def training_time(run_dirs: Iterable[Path]) -> dict:
    """Summed train seconds of the finished runs (core-seconds at 1 thread per run) and the wall span from
    the first run's step-0 checkpoint to the last summary.json; covers interrupted and resumed sweeps."""
    summaries = [d / "summary.json" for d in run_dirs if (d / "summary.json").exists()]
    if not summaries:
        return {"finished_runs": 0, "train_seconds_sum": 0.0, "wall_span_s": None}
    firsts = [p.parent / "checkpoints" / "step_0000000.safetensors" for p in summaries]  # written at step 0 only
    starts = [(f if f.exists() else f.parents[1] / "config.json").stat().st_mtime for f in firsts]
    train_s = sum(json.loads(p.read_text()).get("train_seconds", 0.0) for p in summaries)
    span = max(p.stat().st_mtime for p in summaries) - min(starts)
    return {"finished_runs": len(summaries), "train_seconds_sum": round(train_s, 1), "wall_span_s": round(span, 1)}


def wall_text(record: dict) -> str:
    """"training sweeps X min wall (n sweeps), this invocation Y min, on C cores (load average L)": the sweeps'
    own wall times survive a later `--skip-train` or a resumed study, the invocation's alone would not."""
    history = record.get("sweep_history") or []
    sweeps_min = sum(h.get("wall_seconds", 0.0) for h in history) / 60
    return (f"training sweeps {sweeps_min:.1f} min wall ({len(history)} sweep{'s' if len(history) != 1 else ''}), "
            f"this invocation {record.get('wall_seconds_this_invocation', 0.0) / 60:.1f} min, on "
            f"{record['cpu_count']} cores (load average {record['load_average']})")


def write_json(path: Path, data: dict) -> Path:
    """Write `data` as indented JSON (non-JSON values as strings) and return the path."""
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path
