"""bench.json's shared parts and bench.md: the machine, the targets every family declares, the verdicts."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from types import ModuleType

import torch


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


def targets(families: list[ModuleType]) -> dict[str, tuple[str, float]]:
    """Every family's `TARGETS` (headline key -> (op, bound)), in the families' order."""
    return {k: v for family in families for k, v in getattr(family, "TARGETS", {}).items()}


def verdicts(result: dict, bounds: dict[str, tuple[str, float]]) -> dict:
    """Per headline key: its target, value and whether it is met (None: not measured)."""
    out = {}
    for key, (op, bound) in bounds.items():
        v = result.get(key)
        out[key] = {"target": f"{op} {bound}", "value": v,
                    "met": None if v is None else (v <= bound if op == "<=" else v >= bound)}
    return out


def to_markdown(res: dict, families: list[ModuleType]) -> str:
    """bench.md: the run, the targets table, then the section of each family measured (`families`)."""
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
    for family in families:
        section = family.markdown(res)
        lines += ["", *section] if section else []
    return "\n".join(lines + [""])
