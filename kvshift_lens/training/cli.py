"""Plumbing shared by the hydra entry points: one-line errors, failed jobs recorded in their run
directory, and one line per failed job at the end of a sweep, whatever the launcher.

A job never lets an exception (or `SystemExit`) reach the launcher during a sweep: it writes
`error.txt` and a `status` into its summary.json and returns, so every other job runs. The
`SweepFailureReport` callback (conf/train.yaml) then prints `<run dir>: <error>` for each job that
failed in this sweep and exits with status 1. Ctrl-C prints one line (`interrupted at step N; rerun the same
command to resume`), leaves no stub run directory and exits 130. Pure Python: nothing here imports torch.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import shutil
import sys
import threading
import traceback
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, MissingConfigException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from kvshift_lens.core.errors import ConfigError, TrainingDiverged, interrupt_message

ERROR_FILE = "error.txt"  # first line: the one-line error; then the traceback of an unexpected exception
SUMMARY_FILE = "summary.json"
CONFIG_FILE = "config.json"
GROUPS = ("model", "task", "train")
PRIMARY_CONFIGS = ("train", "detect")  # conf/<name>.yaml of the entry points: "In 'train': ..." names no culprit
LEGACY_FIELDS = {  # model fields before the mixers (kvshift_lens.models.config.LEGACY_FIELDS) -> what replaced them
    "model.arch": "model/mixer=none (vanilla) or model/mixer=kv_shift (kvshift), or any other mixer; model.arch is "
                  "derived from the mixer",
    "model.shift": "model/mixer=kv_shift model.mixer.sides=<kv|k|v>",
    "model.shift_param": "model/mixer=kv_shift model.mixer.param=<free|gate|clamp01>",
    "model.shift_window": "model/mixer=kv_shift model.mixer.window=<lags>",
}
T = TypeVar("T")


def fail(message: str, status: int = 2) -> None:
    """Print `error: <message>` (one line per line of `message`) and exit with `status`."""
    for line in message.splitlines() or [""]:
        print(f"error: {line}", file=sys.stderr)
    sys.exit(status)


def interrupted(e: KeyboardInterrupt) -> None:
    """Ctrl-C: one line saying where the run stopped (a `TrainingInterrupted`'s `step` and `saved`, when `e` is one)
    and what rerunning does, then exit status 130."""
    print(interrupt_message(getattr(e, "step", None), getattr(e, "saved", None)), file=sys.stderr)
    sys.exit(130)


def thread_lock_for_bars() -> None:
    """Progress bars lock with a thread lock: tqdm's default adds a named semaphore, which joblib's workers (spawned,
    so never sharing it) leak when a Ctrl-C makes joblib kill them mid-job (a resource_tracker warning)."""
    from tqdm import tqdm

    tqdm.set_lock(threading.RLock())


def hydra_entry(main: Callable[[], Any]) -> None:
    """Call a `@hydra.main` function; Hydra's own errors (unknown preset, override grammar, unknown key)
    become one line and exit status 2, Ctrl-C one line and 130. `HYDRA_FULL_ERROR=1` keeps Hydra's tracebacks."""
    _SWEEP_STARTED.clear()
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        try:
            main()
        except (HydraException, OmegaConfBaseException, ValueError):
            drop_stub_sweep()
            raise
        return
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra then re-raises instead of printing a multi-line report
    try:
        main()
    except (HydraException, OmegaConfBaseException, ValueError) as e:  # jobs never raise: these are Hydra's
        drop_stub_sweep()
        fail(hydra_error_line(e))
    except KeyboardInterrupt as e:  # a sweep's launcher process (its jobs stop silently), or while Hydra starts
        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.RUN:  # before the job: no stub left
            drop_if_empty(Path(HydraConfig.get().runtime.output_dir))
        interrupted(e)


def hydra_error_line(e: BaseException) -> str:
    """One line for a Hydra composition or override error."""
    cause = e.__cause__
    if isinstance(cause, OmegaConfBaseException) and "not in struct" in str(cause):
        if cause.full_key in LEGACY_FIELDS:
            return f"{cause.full_key} is a legacy field (before the mixers); use {LEGACY_FIELDS[cause.full_key]}"
        return f"{cause.full_key} is not a config field: {spelling_hint(cause)}"
    lines = []
    for line in str(e).splitlines():
        if line.startswith(("Config search path", "Available options")):
            break
        if line.strip() and not line.strip().startswith(("full_key:", "object_type=", "reference_type=")):
            lines.append(line.strip())
    message = re.sub(rf"^In '({'|'.join(PRIMARY_CONFIGS)})': ", "", " ".join(lines)) or type(e).__name__
    bare = re.match(r"Error parsing override '([^']+)' missing EQUAL at '<EOF>'", message)
    if bare:  # `train.steps` alone
        message = f"override '{bare[1]}' has no value: write {bare[1]}=<value>"
    if isinstance(e, OmegaConfBaseException) and e.full_key:
        message += f" (resolving {e.full_key})"
    if isinstance(e, MissingConfigException) and e.options:
        message += f"; available: {', '.join(e.options)}"
    return message


def spelling_hint(error: OmegaConfBaseException) -> str:
    """`did you mean <key>?` for the closest field beside an unknown key, else where to find the fields."""
    parent = getattr(error, "parent_node", None)
    close = difflib.get_close_matches(str(error.key), [str(k) for k in parent] if isinstance(parent, DictConfig) else [],
                                      n=1)
    if not close:
        return "check its spelling (`--cfg job` prints the config)"
    return f"did you mean {'.'.join([*str(error.full_key).split('.')[:-1], close[0]])}?"


def guard_job(run_dir: Path, work: Callable[[], T], *, config: Any = None, in_sweep: bool = False,
              root: Optional[Path] = None) -> Optional[T]:
    """Run one job's `work` in `run_dir` so that a failure costs nothing else.

    Ctrl-C: one line naming the step, no stub directory left, exit 130 (`interrupted`). On an exception:
    one `error: ...` line on stderr and, in a sweep, `error.txt` + summary status in
    `run_dir`, then return None (the launcher sees a finished job). Outside a sweep, a `ConfigError` leaves
    no run directory behind (nor empty parents below `root`) and exits 2; any other failure is recorded
    in `run_dir` and exits 1.
    """
    clear_failure(run_dir)
    if in_sweep:
        thread_lock_for_bars()
    try:
        return work()
    except KeyboardInterrupt as e:
        drop_if_empty(run_dir, root)  # stopped before the run wrote anything: no stub directory
        if in_sweep:  # the launcher process says it once for the whole sweep
            raise
        interrupted(e)
    except Exception as e:  # noqa: BLE001  (a job records every failure; KeyboardInterrupt still stops)
        expected = isinstance(e, (ValueError, OSError))  # ConfigError, divergence, missing/corrupt files
        text = str(e).strip() or type(e).__name__
        message = text.splitlines()[0] if expected else f"{type(e).__name__}: {text.splitlines()[0]}"
        if not in_sweep and isinstance(e, ConfigError):
            drop_if_empty(run_dir, root)
            fail(text)
        detail = "" if expected else traceback.format_exc()
        record_failure(run_dir, message, detail, config, "diverged" if isinstance(e, TrainingDiverged) else "failed")
        where = "" if expected else f" (traceback in {run_dir / ERROR_FILE})"
        print(f"error: {message}{where}", file=sys.stderr)
        if not in_sweep:
            sys.exit(1)
        return None


def record_failure(run_dir: Path, message: str, detail: str = "", config: Any = None, status: str = "failed") -> None:
    """Write `error.txt` and set summary.json's `status` and `error` (keeping its other keys); add config.json
    from the raw config if the run never got to write one."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / ERROR_FILE).write_text(message + "\n" + detail)
    path = run_dir / SUMMARY_FILE
    summary = json.loads(path.read_text()) if path.exists() else {}
    summary.update(status=status, error=message)
    _write_json(path, summary)
    if config is not None and not (run_dir / CONFIG_FILE).exists():
        _write_json(run_dir / CONFIG_FILE, raw_groups(config))


def clear_failure(run_dir: Path) -> None:
    """Forget an earlier attempt's failure (a re-run that succeeds must not look failed)."""
    (run_dir / ERROR_FILE).unlink(missing_ok=True)


def read_failure(run_dir: Path) -> Optional[str]:
    """The one-line error of a failed run, or None."""
    path = Path(run_dir, ERROR_FILE)
    return path.read_text().splitlines()[0] if path.exists() else None


def raw_groups(config: Any) -> dict:
    """The model/task/train groups of a config as given (interpolations resolved where they resolve)."""
    if not isinstance(config, DictConfig):
        return {g: dict(config.get(g, {})) for g in GROUPS}
    try:
        data = OmegaConf.to_container(config, resolve=True)
    except OmegaConfBaseException:
        data = OmegaConf.to_container(config, resolve=False)
    return {g: data.get(g) for g in GROUPS if isinstance(data.get(g), dict)}


def _hydra_stub(path: Path) -> bool:
    return path.name == ".hydra" or path.suffix == ".log"


def drop_if_empty(run_dir: Path, root: Optional[Path] = None, stub: Callable[[Path], bool] = _hydra_stub) -> None:
    """Remove a run (or sweep) directory holding only what Hydra wrote before any job ran (`stub` entries), and its
    empty parents strictly below `root`."""
    if not run_dir.is_dir() or not all(stub(p) for p in run_dir.iterdir()):
        return
    shutil.rmtree(run_dir)
    if root is None:
        return
    root = root.resolve()
    for parent in run_dir.resolve().parents:
        if parent == root or root not in parent.parents or any(parent.iterdir()):
            break
        parent.rmdir()


def error_files(sweep_dir: Path) -> dict[Path, int]:
    """Every recorded failure under `sweep_dir`: error file -> modification time in ns."""
    return {p: p.stat().st_mtime_ns for p in Path(sweep_dir).rglob(ERROR_FILE)}


def sweep_failures(sweep_dir: Path, before: Optional[dict[Path, int]] = None) -> list[tuple[Path, str]]:
    """(run dir, error) of every run under `sweep_dir` whose failure was recorded after the snapshot `before`
    (`error_files` when the sweep started; None: every failure): new error files and rewritten ones. Compared
    file by file, not against a clock, so an old failure written just before the sweep started is not reported."""
    before = before or {}
    found = [p for p, mtime in error_files(sweep_dir).items() if before.get(p) != mtime]
    return [(p.parent, read_failure(p.parent) or "") for p in sorted(found)]


_SWEEP_STARTED: list = []  # [sweep dir, out_dir root] of a multirun whose sweep dir did not exist before it started


def drop_stub_sweep() -> None:
    """After a multirun failed composing its jobs (`model=a,nosuch`): remove the sweep directory it created if it
    holds only Hydra's multirun.yaml."""
    if _SWEEP_STARTED:
        drop_if_empty(*_SWEEP_STARTED, stub=lambda p: p.name == "multirun.yaml")
        _SWEEP_STARTED.clear()


class SweepFailureReport(Callback):
    """After a multirun: `<run dir>: <error>` on stderr for each job that failed, then exit status 1. At its start it
    notes a new sweep directory, so `hydra_entry` removes it if the sweep fails before any job ran."""

    def __init__(self) -> None:
        self.before: dict[Path, int] = {}

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.exists():
            _SWEEP_STARTED[:] = [sweep_dir, Path(str(config.get("out_dir", sweep_dir.parent)))]
        self.before = error_files(sweep_dir)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        _SWEEP_STARTED.clear()  # the jobs ran: the sweep directory is no stub
        failed = sweep_failures(Path(config.hydra.sweep.dir), self.before)
        for run_dir, error in failed:
            print(f"{run_dir}: {error}", file=sys.stderr)
        if failed:
            sys.exit(1)


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)
