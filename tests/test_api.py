"""The Python front door (`kvshift_lens.train`, `open_run`, `open_runs`) matches the command line, legacy
spellings still work with a DeprecationWarning, run directories never nest, and every loader reads one run
directory as that run only and skips interrupt stubs alike."""

import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pandas as pd
import pytest

import kvshift_lens as kl
from kvshift_lens.analysis.run_detection import analyze
from kvshift_lens.api import keyword_overrides
from kvshift_lens.training.run_config import compose_hydra
from kvshift_lens.training.run_dirs import run_directory
from kvshift_lens.training.runs import find_runs, load_heads, load_runs, load_summaries

ROOT = Path(__file__).resolve().parents[1]
TINY = ["task.d_vocab=16", "task.seq_len=16", "model.d_model=16", "model.n_heads=2", "train.steps=20",
        "train.warmup=2", "train.eval_every=10", "train.eval_size=8", "train.batch_size=4", "train.n_checkpoints=3",
        "train.threads=1", "progress=false"]
TIMING = ["train_seconds"]  # the only metric that differs between two identical runs


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, "-m", "experiments.train", *args], cwd=ROOT, capture_output=True,
                          text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> kl.Run:
    return kl.train("kvshift_1l", "induction", 0, *TINY, out_dir=str(tmp_path_factory.mktemp("api")))


def files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")
            if p.is_file() and ".hydra" not in p.parts and p.suffix != ".log"}  # what hydra adds beside the run


def test_train_and_the_cli_write_the_same_run_directory_with_the_same_metrics(run, tmp_path):
    out = run.path.parents[3]
    r = cli("model=kvshift_1l", "task=induction", "seed=0", *TINY, f"out_dir={tmp_path}")
    assert r.returncode == 0, r.stderr
    cli_run = tmp_path / run.path.relative_to(out)
    assert cli_run.is_dir() and files(cli_run) == files(run.path)
    pd.testing.assert_frame_equal(pd.read_csv(cli_run / "metrics.csv").drop(columns=TIMING),
                                  pd.read_csv(run.path / "metrics.csv").drop(columns=TIMING))


def test_train_resumes_a_finished_run_instead_of_training_it_again(run):
    before = run.summary
    again = kl.train("kvshift_1l", "induction", 0, *TINY, out_dir=str(run.path.parents[3]))
    assert again.path == run.path and len(again.metrics) == 3  # steps 0, 10, 20 once each
    assert again.summary["train_seconds"] == before["train_seconds"]  # no step was trained twice


def test_keyword_overrides_are_the_command_line_strings():
    assert keyword_overrides({"train": {"steps": 300}}) == keyword_overrides({"train.steps": 300}) == ["train.steps=300"]
    assert keyword_overrides({"detect": True, "model.d_head": None, "plugins": ["my_pkg.mixer"], "name": "a b"}) == \
        ["detect=true", "model.d_head=null", "plugins=[my_pkg.mixer]", "name='a b'"]


@pytest.mark.parametrize("overrides, message", [
    (["train.steps=1.5"], "train.steps=1.5: expected an integer, got float"),
    (["model=nope"], "Could not find 'model/nope'"),
    (["train.stepz=3"], "train.stepz is not a config field"),
    (["model.d_vocab=${nope}"], "Interpolation key 'nope' not found (resolving hydra.run.dir)"),
], ids=["value", "preset", "key", "interpolation"])
def test_bad_input_raises_the_cli_one_line_config_error_and_leaves_no_run_directory(tmp_path, overrides, message):
    with pytest.raises(kl.ConfigError) as error:
        kl.train("kvshift_1l", "induction", 0, *overrides, out_dir=str(tmp_path / "runs"))
    assert message in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "runs").exists()


def test_bad_input_message_is_the_cli_line(tmp_path):
    r = cli("train.steps=1.5", f"out_dir={tmp_path}")
    with pytest.raises(kl.ConfigError) as error:
        kl.train(**{"train.steps": 1.5}, out_dir=str(tmp_path))
    assert r.returncode == 2 and r.stderr.strip() == f"error: {error.value}"


def test_open_run_reads_metrics_summary_config_checkpoints_and_models(run):
    opened = kl.open_run(run.path)
    assert list(opened.metrics["step"]) == [0, 10, 20] and set(opened.metrics["run"]) == {str(run.path)}  # not "."
    assert opened.summary["status"] == opened.status == "completed"
    assert (opened.config.model.d_model, opened.config.train.steps, opened.config.seed) == (16, 20, 0)
    assert min(opened.checkpoints) == 0 and max(opened.checkpoints) == 20
    first, last = opened.model(0), opened.model()
    assert type(last).__name__ == "TransformerBridge"
    assert not all(a.equal(b) for a, b in zip(first.state_dict().values(), last.state_dict().values()))
    with pytest.raises(ValueError, match="no checkpoint at step 5"):
        opened.model(5)


def test_detect_scores_the_run_and_returns_its_heads(run):
    heads = run.detect(batch_size=4)
    assert set(heads["step"]) == set(run.checkpoints) and {"layer", "head", "metric", "value"} <= set(heads.columns)
    assert "emergence_step" in run.summary


def test_open_runs_lists_every_run_of_a_sweep_with_its_status(run, tmp_path):
    shutil.copytree(run.path, tmp_path / "done")
    shutil.copytree(run.path, tmp_path / "killed")
    (tmp_path / "killed" / "summary.json").unlink()
    runs = kl.open_runs(tmp_path).set_index("run")
    assert runs["status"].to_dict() == {"done": "completed", "killed": "incomplete"}
    assert kl.open_run(runs.loc["killed", "path"]).status == "incomplete"
    with pytest.raises(FileNotFoundError, match="open_runs reads a sweep"):
        kl.open_run(tmp_path)


def test_legacy_model_config_fields_warn_naming_the_mixer_and_equal_the_new_config():
    with pytest.warns(DeprecationWarning, match=r"ModelConfig\(arch=\.\.\., shift=\.\.\.\) is deprecated: use "
                                                r"ModelConfig\(mixer=.*model/mixer=kv_shift model.mixer.sides=k"):
        old = kl.ModelConfig(arch="kvshift", shift="k", d_model=32)
    assert old == kl.ModelConfig(mixer={"name": "kv_shift", "sides": "k"}, d_model=32)
    with pytest.warns(DeprecationWarning, match="model/mixer=none"):
        assert kl.ModelConfig(arch="vanilla") == kl.ModelConfig(mixer="none")
    with pytest.warns(DeprecationWarning):
        assert kl.ModelConfig(shift_param="gate", shift_window=2).mixer == kl.ModelConfig(
            mixer={"name": "kv_shift", "param": "gate", "window": 2}).mixer


def test_legacy_train_call_warns_naming_the_trainer_and_returns_its_summary(tmp_path):
    import kvshift_lens.train  # noqa: F401  (the old module path must not replace the exported function)

    task = kl.task_config("induction", d_vocab=16, seq_len=16)
    cfg = kl.TrainConfig(steps=4, warmup=1, eval_every=2, eval_size=8, batch_size=4, n_checkpoints=2, threads=1)
    with pytest.warns(DeprecationWarning, match="kvshift_lens.training.trainer.train"):
        summary = kl.train(kl.ModelConfig(d_model=16, n_heads=2, d_vocab=16, n_ctx=16), task, cfg, tmp_path, progress=False)
    assert callable(kl.train) and summary["status"] == "completed" and summary["final_step"] == 4


def test_runs_never_nest():
    def run_dir(*overrides: str) -> Path:
        return run_directory(compose_hydra(["out_dir=/runs", *overrides], with_hydra=True))

    default, canon, seed1 = run_dir(), run_dir("model/mixer=canon", "train.steps=20"), run_dir("seed=1")
    assert default == Path("/runs/kvshift_1l/induction/seed0")
    assert canon == Path("/runs/kvshift_1l/induction/model.mixer=canon,train.steps=20/seed0")
    for a in (default, canon, seed1):
        assert not any(b != a and a in b.parents for b in (default, canon, seed1))


def test_loaders_on_one_run_directory_read_that_run_only_even_in_the_old_nested_layout(run, tmp_path):
    outer = tmp_path / "kvshift_1l" / "induction" / "seed0"  # before: overridden runs lived inside the default run
    shutil.copytree(run.path, outer)
    shutil.copytree(run.path, outer / "model.mixer=canon")
    assert find_runs(outer) == [outer] and list(analyze(outer, batch_size=4)) == [outer]
    for frame in (load_runs(outer), load_summaries(outer), load_heads(outer)):
        assert set(frame["run"]) == {"."}
    assert set(kl.open_run(outer).metrics["run"]) == {str(outer.absolute())}
    assert set(load_summaries(tmp_path)["run"]) == {"kvshift_1l/induction/seed0", "kvshift_1l/induction/seed0/model.mixer=canon"}


def test_interrupt_stubs_are_skipped_by_every_loader_alike(run, tmp_path):
    stub = tmp_path / "kvshift_1l" / "induction" / "train.steps=9" / "seed0"
    (stub / ".hydra").mkdir(parents=True)
    (stub / ".hydra" / "overrides.yaml").write_text("- train.steps=9\n")
    loaders = [load_runs, load_summaries, load_heads, kl.open_runs, analyze]
    for load in loaders:
        with pytest.raises(FileNotFoundError, match="1 run\\(s\\) were interrupted before training began"):
            load(tmp_path)
    shutil.copytree(run.path, tmp_path / "done")
    analyze(tmp_path / "done", batch_size=4)  # heads.csv, for load_heads
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a stub is not a failed run either
        assert set(load_runs(tmp_path)["run"]) == set(load_summaries(tmp_path)["run"]) == {"done"}
    assert set(kl.open_runs(tmp_path)["run"]) == set(load_heads(tmp_path)["run"]) == {"done"}
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        kl.open_run(stub)


def test_the_package_lists_its_front_door():
    assert {"train", "Run", "open_run", "open_runs", "compose", "load_runs"} <= set(dir(kl)) & set(kl.__all__)
    assert all(name in kl.__doc__ for name in ("train(", "open_run(", "open_runs("))
