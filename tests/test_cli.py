"""The hydra command line: single runs, sweeps with every launcher, bad input, failed jobs, load_runs."""

import functools
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import pytest

from kvshift_lens.training.runs import load_runs, load_summaries

ROOT = Path(__file__).resolve().parents[1]
TINY = ["task.d_vocab=16", "task.seq_len=16", "model.d_model=16", "model.n_heads=2",
        "train.steps=4", "train.warmup=1", "train.eval_every=2", "train.eval_size=8", "train.batch_size=4",
        "train.n_checkpoints=2", "train.threads=1", "progress=false"]


def cli(*args: str, out: Path, module: str = "experiments.train") -> subprocess.CompletedProcess:
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    extra = [f"out_dir={out}"] if module == "experiments.train" else []
    return subprocess.run([sys.executable, "-m", module, *args, *extra],
                          cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)


def test_single_run_writes_its_files_and_loads_into_pandas(tmp_path):
    r = cli("model=vanilla_2l", "seed=3", *TINY, out=tmp_path)
    assert r.returncode == 0, r.stderr
    run_dir = next(tmp_path.glob("vanilla_2l/induction/*/seed3"))  # <overrides>/seed<N>: runs never nest
    assert {"metrics.csv", "summary.json", "config.json", "checkpoints", "resume.pt"} <= {p.name for p in run_dir.iterdir()}
    df = load_runs(tmp_path)
    assert set(df["model.n_layers"]) == {2} and set(df.seed) == {3} and list(df.step) == [0, 2, 4]
    assert set(df.status) == {"completed"}


def test_rerunning_the_same_command_resumes_instead_of_restarting(tmp_path):
    assert cli("model=kvshift_1l", *TINY, out=tmp_path).returncode == 0
    r = cli("model=kvshift_1l", *TINY, out=tmp_path)
    assert r.returncode == 0, r.stderr
    assert len(load_runs(tmp_path)) == 3  # steps 0, 2, 4 once each


# One line each, named field: (case id, overrides, text the line must contain). Each runs the real CLI.
BAD_INPUT = [
    ("seed-not-int", "seed=abc", "seed='abc': expected an integer, got str"),
    ("steps-not-int", "train.steps=abc", "train.steps='abc': expected an integer"),
    ("lr-not-number", "train.lr=abc", "train.lr='abc': expected a number"),
    ("d_model-word", "model.d_model=sixty", "model.d_model='sixty': expected an integer"),
    ("steps-fraction", "train.steps=1.5", "train.steps=1.5: expected an integer, got float"),
    ("lr-nan", "train.lr=nan", "train.lr=nan: expected a finite number"),
    ("progress-not-bool", "progress=maybe", "progress='maybe': expected true or false"),
    ("attn_only-not-bool", "model.attn_only=yes", "model.attn_only='yes': expected true or false"),
    ("d_head-not-int", "model.d_head=abc", "model.d_head='abc': expected an integer or null"),
    ("d_vocab-list", "task.d_vocab=[1,2]", "task.d_vocab=[1, 2]: expected an integer, got list"),
    ("batch-null", "train.batch_size=null", "train.batch_size=None: expected an integer, got null"),
    ("n_layers-mapping", "model.n_layers={a:1}", "model.n_layers={'a': 1}: expected an integer, got dict"),
    ("warmup-beyond-steps", "train.warmup=1e9", "train.warmup=1000000000 must be < train.steps=4"),
    ("eval_every-beyond-steps", "train.eval_every=100", "train.eval_every=100 exceeds train.steps=4"),
    ("steps-zero", "train.steps=0", "train.steps=0 must be >= 1"),
    ("lr-negative", "train.lr=-1", "train.lr=-1.0 must be > 0"),
    ("schedule-unknown", "train.schedule=linear", "train.schedule='linear' is not supported"),
    ("device-unknown", "train.device=tpu", "train.device='tpu' is not supported"),
    ("beta1-above-one", "train.beta1=1.5", "train.beta1=1.5 must lie in [0, 1)"),
    ("stop_at-above-one", "train.stop_at=2", "train.stop_at=2.0 must lie in [0, 1]"),
    ("threads-negative", "train.threads=-1", "train.threads=-1 must be >= 0"),
    ("checkpoint_every-without-checkpoints", "train.checkpoint_every=2 train.n_checkpoints=0",
     "train.checkpoint_every=2 needs checkpoints: set train.n_checkpoints > 0"),
    ("mixer-unknown", "model.mixer=transformer", "model.mixer.name='transformer' is not a known mixer"),
    ("mixer-option-choice", "model.mixer.param=sigmoid", "model.mixer.param='sigmoid': expected one of ['free',"),
    ("canon-in-attention-only-model", "model/mixer=canon model.mixer.positions=AC",
     "model.mixer.positions='AC' puts Canon layers in the MLP (C) but model.attn_only=true"),
    ("heads-not-dividing", "model.n_heads=4 model.d_model=30", "model.d_model=30 is not divisible by model.n_heads=4"),
    ("mixer-window-zero", "model.mixer.window=0", "model.mixer.window=0 must be >= 1"),
    ("rotary-odd-d_head", "model.positions=rotary model.d_head=3", "model.d_head=3 must be even for positions=rotary"),
    ("kv_heads-not-dividing", "model.n_kv_heads=3", "model.n_kv_heads=3 must divide model.n_heads=2"),
    ("init_std-negative", "model.init_std=-1", "model.init_std=-1.0 must be > 0"),
    ("context-too-short", "model.n_ctx=8", "task.seq_len=16 exceeds model.n_ctx=8"),
    ("task-unknown", "task.name=copying", "task.name='copying' is not a known task"),
    ("mqar-too-short", "task=mqar task.num_kv_pairs=40", "task.seq_len=16 is too short for mqar with task.num_kv_pairs=40"),
    ("seq_len-too-short", "task.seq_len=2 model.n_ctx=16", "task.seq_len=2 is too short for induction"),
    ("n_pairs-impossible", "task=ngram task.n_pairs=100000", "task.n_pairs=100000 is impossible for ngram"),
    ("unknown-field", "train.foo=1", "train.foo is not a config field: check its spelling"),
    ("misspelt-field", "train.stepz=3", "train.stepz is not a config field: did you mean train.steps?"),
    ("override-without-value", "train.stepz", "override 'train.stepz' has no value: write train.stepz=<value>"),
    ("legacy-field", "model.arch=vanilla", "model.arch is a legacy field (before the mixers); use model/mixer=none"),
    ("seed-negative", "seed=-1", "seed=-1 must be >= 0"),
    ("unknown-appended-field", "+train.bar=2", "unknown field(s) ['train.bar']"),
    ("model-preset-unknown", "model=nonexistent", "error: Could not find 'model/nonexistent'; available: base,"),
    ("override-grammar", "train.steps=[1", "no viable alternative at input '[1'"),
    ("interpolation-broken", "model.d_vocab=${nope}", "Interpolation key 'nope' not found (resolving hydra.run.dir)"),
]


@pytest.fixture(scope="module")
def bad_input_runs(tmp_path_factory):
    """Every BAD_INPUT case through the CLI, two processes at a time (each costs one interpreter start)."""
    def run(case):
        out = tmp_path_factory.mktemp(case[0]) / "runs"
        return out, cli(*TINY, *case[1].split(), out=out)

    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {case[0]: pool.submit(run, case) for case in BAD_INPUT}
        yield {name: future for name, future in futures.items()}


@pytest.mark.parametrize("case,overrides,message", BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
def test_bad_input_gets_one_line_naming_the_value_and_leaves_nothing_on_disk(bad_input_runs, case, overrides, message):
    out, r = bad_input_runs[case].result()
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert not [p for p in out.rglob("*") if p.is_file()] if out.exists() else True


def test_a_sweep_over_an_unknown_preset_gets_one_line_and_leaves_no_sweep_directory(tmp_path):
    r = cli("-m", *TINY, "model=vanilla_1l,nonexistent", out=tmp_path / "runs")
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "Could not find 'model/nonexistent'" in lines[0], r.stderr
    assert not [p for p in (tmp_path / "runs").rglob("*") if p.is_file()]
    assert not (tmp_path / "runs" / "sweeps").exists()


@pytest.mark.numerics
def test_a_diverging_run_stops_with_one_line_and_keeps_its_metrics(tmp_path):
    # The step whose loss first turns non-finite is float rounding (4 on one AVX-512 CPU, 3 on an AVX2 one): it is
    # read from the run's own files. train.eval_every=1 puts every step's loss in metrics.csv.
    tiny = [a for a in TINY if not a.startswith("train.eval_every")]
    r = cli(*tiny, "train.lr=1e3", "train.steps=40", "train.eval_every=1", out=tmp_path)
    assert r.returncode == 1
    run, metrics = load_summaries(tmp_path), load_runs(tmp_path)
    assert list(run.status) == ["diverged"]
    last = int(run.final_step.item())  # the last step trained
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert re.fullmatch(rf"error: diverged at step {last + 1} \(loss (nan|inf|-inf)\): lower train\.lr", lines[0])
    assert list(metrics.step) == list(range(last + 1))  # evaluations before the divergence stay on disk
    assert last > 0 and all(map(math.isfinite, metrics.train_loss.iloc[1:]))  # it stopped at the first non-finite loss


SWEEP_JOBS = "model.d_model=16,sixty,32"  # three jobs, the middle one invalid
# torch threads each job gets when train.threads is left at 0
LAUNCHER_THREADS = {"local_parallel": max(1, (os.cpu_count() or 1) // 2), "cluster_local": 1, "submitit_local": 1}


@pytest.mark.parametrize("launcher", ["basic", "local_parallel", "cluster_local"])  # cluster_local: submitit's local executor
def test_a_failing_job_costs_no_other_job_and_the_sweep_reports_it(tmp_path, launcher):
    tiny = [a for a in TINY if not a.startswith(("model.d_model", "train.threads"))]
    r = cli("-m", f"hydra/launcher={launcher}", SWEEP_JOBS, "name=t", *tiny, out=tmp_path)
    sweep = tmp_path / "sweeps" / "t"
    assert r.returncode == 1, r.stderr[-3000:]
    assert "Traceback" not in r.stderr and "UncompletedJobError" not in r.stderr
    failed = [p.parent for p in sweep.rglob("error.txt")]
    assert len(failed) == 1 and "model.d_model=sixty" in failed[0].parent.name  # <overrides>/seed0
    error = "model.d_model='sixty': expected an integer, got str"
    assert r.stderr.strip().splitlines()[-1] == f"{failed[0]}: {error}"  # the sweep's last line
    summaries = load_summaries(sweep).sort_values("run")
    assert list(zip(summaries["model.d_model"].astype(str), summaries.status)) == [
        ("16", "completed"), ("32", "completed"), ("sixty", "failed")]
    assert summaries.error.iloc[-1] == error and list(summaries.final_step[:2]) == [4, 4]
    if launcher in LAUNCHER_THREADS:  # jobs side by side share the cores
        assert set(summaries.threads[:2]) == {LAUNCHER_THREADS[launcher]}
    with pytest.warns(UserWarning, match=r"1 run\(s\) failed before their first evaluation.*'sixty'"):
        runs = load_runs(sweep)  # the failed job has no metrics rows: named, not silently skipped
    assert set(runs.status) == {"completed"} and len(runs) == 6  # steps 0, 2, 4 of the two finished runs


def test_a_rerun_that_succeeds_clears_the_failure_and_old_failures_are_not_reported(tmp_path):
    sweep = tmp_path / "sweeps" / "t"
    assert cli("-m", "name=t", *TINY, out=tmp_path).returncode == 0
    resume = next(sweep.rglob("resume.pt"))
    resume.write_bytes(b"garbage")
    r = cli("-m", "name=t", *TINY, out=tmp_path)
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1].startswith(f"{resume.parent}: {resume} is corrupt")
    assert load_summaries(sweep).status.tolist() == ["failed"]
    other = cli("-m", "name=t", "seed=1", *TINY, out=tmp_path)  # another job of the same sweep directory
    assert other.returncode == 0, other.stderr  # the earlier failure is not this invocation's
    resume.unlink()
    assert cli("-m", "name=t", *TINY, out=tmp_path).returncode == 0
    assert not list(sweep.rglob("error.txt")) and set(load_summaries(sweep).status) == {"completed"}


def test_detect_accepts_any_run_directory_path(tmp_path):
    r = cli("-m", "seed=0", "name=t", *TINY, out=tmp_path)
    assert r.returncode == 0, r.stderr
    run_dir = next(p.parent for p in (tmp_path / "sweeps" / "t").rglob("metrics.csv"))
    assert "=" in run_dir.parent.name and "," in run_dir.parent.name  # <overrides>/seed0: unquoted, Hydra rejects it
    d = cli(str(run_dir), "batch_size=4", out=tmp_path, module="experiments.detect")
    assert d.returncode == 0, d.stderr
    assert json.loads((run_dir / "summary.json").read_text())["emergence_threshold"] > 0
    bad = cli(str(tmp_path / "nowhere"), out=tmp_path, module="experiments.detect")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        f"error: run_dir={tmp_path / 'nowhere'}: no such directory (give a run or sweep directory)"]


def test_detect_given_a_checkpoint_file_asks_for_its_run_directory(tmp_path):
    assert cli(*TINY, out=tmp_path).returncode == 0
    checkpoint = next(tmp_path.rglob("step_0000004.safetensors"))
    d = cli(str(checkpoint), out=tmp_path, module="experiments.detect")
    assert d.returncode == 2 and d.stderr.strip().splitlines() == [
        f"error: run_dir={checkpoint} is a file; pass its run directory (the folder holding checkpoints/), or a sweep "
        f"directory"]


def test_a_short_run_needs_no_warmup_or_evaluation_knob_and_writes_no_empty_log(tmp_path):
    short = [a for a in TINY if not a.startswith(("train.steps", "train.warmup", "train.eval_every"))]
    r = cli(*short, "train.steps=20", out=tmp_path)
    assert r.returncode == 0, r.stderr
    assert list(load_runs(tmp_path).step) == list(range(0, 21, 2))  # ten evaluations
    assert not list(tmp_path.rglob("*.log"))


def interrupt(*args: str, out: Path, when: Callable[[], bool]) -> subprocess.CompletedProcess:
    """Run the train CLI in its own process group and send it Ctrl-C's SIGINT once `when()` holds."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    # A shell without job control starts background jobs with SIGINT ignored, and Python then installs no Ctrl-C
    # handler in the child: give it the default disposition, as a terminal's foreground process has.
    restore = functools.partial(signal.signal, signal.SIGINT, signal.SIG_DFL)
    p = subprocess.Popen([sys.executable, "-m", "experiments.train", *args, f"out_dir={out}"], cwd=ROOT, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                         preexec_fn=restore)
    deadline = time.monotonic() + 300
    while not when() and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: every process of the group
    stdout, stderr = p.communicate(timeout=300)
    return subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr)


LONG = [a for a in TINY if not a.startswith("train.steps")] + ["train.steps=1000000"]


def test_ctrl_c_during_training_prints_one_line_naming_the_step_and_exits_130(tmp_path):
    r = interrupt(*LONG, out=tmp_path, when=lambda: any(tmp_path.rglob("resume.pt")))
    assert r.returncode == 130, r.stderr
    assert re.fullmatch(r"interrupted at step \d+; rerun the same command to resume from step \d+", r.stderr.strip()), r.stderr


def test_the_interrupt_line_says_a_rerun_starts_over_when_no_resume_point_was_written_yet():
    from kvshift_lens.core.errors import interrupt_message

    assert interrupt_message(23, 0) == ("interrupted at step 23, before its first resume point; "
                                        "rerun the same command to start it again")
    assert interrupt_message(123, 100) == "interrupted at step 123; rerun the same command to resume from step 100"
    assert interrupt_message(None, None) == "interrupted; rerun the same command to resume"


def test_ctrl_c_in_a_joblib_sweep_prints_one_line_and_no_leaked_semaphore_warning(tmp_path):
    r = interrupt("-m", "hydra/launcher=local_parallel", "seed=0,1", *LONG, out=tmp_path,
                  when=lambda: len(list(tmp_path.rglob("resume.pt"))) == 2)
    assert r.returncode == 130, r.stderr
    assert r.stderr.strip() == "interrupted; rerun the same command to resume"


def test_ctrl_c_before_training_starts_leaves_no_stub_run_directory(tmp_path):
    r = interrupt(*LONG, out=tmp_path, when=lambda: any(tmp_path.rglob("overrides.yaml")))  # Hydra's last file
    assert r.returncode == 130, r.stderr
    assert r.stderr.strip() == "interrupted; rerun the same command to resume"
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_detect_quotes_the_run_directory_for_hydra(tmp_path):
    from experiments.detect import path_overrides

    run = tmp_path / "a" / "train.steps=300,x=1"
    run.mkdir(parents=True)
    assert path_overrides([str(run), "batch_size=4"]) == [f"run_dir='{run}'", "batch_size=4"]  # an existing path
    assert path_overrides(["run_dir=runs/x=1,y=2"]) == ["run_dir='runs/x=1,y=2'"]  # any path after run_dir=
    assert path_overrides(["runs/it's"]) == ["run_dir='runs/it\\'s'"]  # no "=": a path, existing or not
    assert path_overrides(["--cfg", "job", "runs/a"]) == ["--cfg", "job", "run_dir='runs/a'"]
    assert path_overrides(["seed=1"]) == ["seed=1"]


def test_a_sweep_reports_failures_written_after_its_snapshot_however_close_in_time(tmp_path):
    from kvshift_lens.training.cli import error_files, record_failure, sweep_failures

    old, new = tmp_path / "a", tmp_path / "b"
    record_failure(old, "old failure")
    before = error_files(tmp_path)  # taken at once: no clock slack can mistake the old failure for a new one
    assert sweep_failures(tmp_path, before) == []
    record_failure(new, "new failure")
    os.utime(old / "error.txt", ns=(1, 1))  # rewritten by this sweep (same run failing again)
    assert [(p.name, e) for p, e in sweep_failures(tmp_path, before)] == [("a", "old failure"), ("b", "new failure")]
    assert len(sweep_failures(tmp_path)) == 2  # no snapshot: every recorded failure
