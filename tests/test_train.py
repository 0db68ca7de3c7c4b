"""Trainer: schedules, resume exactness, metrics files, bad input."""

import json
import math
import re

import pandas as pd
import pytest
import torch

from kvshift_lens.core.errors import ConfigError
from kvshift_lens.models.config import ModelConfig
from kvshift_lens.models.transformer import build_module
from kvshift_lens.models.checkpoints import load_model
from kvshift_lens.data.tasks.base import make_task, task_config
from kvshift_lens.training.train_config import TrainConfig
from kvshift_lens.core.errors import TrainingDiverged
from kvshift_lens.training.trainer import batch_loss, checkpoint_steps, lr_at, make_optimizer, scored_correct, train
from kvshift_lens.training.resume import load_resume, save_resume

TINY_TASK = task_config("induction", d_vocab=16, seq_len=16, seed=0)
TINY_MODEL = ModelConfig(mixer="kv_shift", n_layers=1, d_model=16, n_heads=2, d_vocab=16, n_ctx=16, seed=0)


def tiny_train(**kw) -> TrainConfig:
    base = dict(steps=12, batch_size=8, eval_every=4, eval_size=16, warmup=2, n_checkpoints=4, threads=1)
    base.update(kw)
    return TrainConfig(**base)


def test_warmup_is_linear_then_constant():
    cfg = TrainConfig(lr=1e-3, warmup=4, steps=10)
    assert [lr_at(s, cfg) for s in range(6)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])


@pytest.mark.parametrize("steps,warmup,eval_every", [(3000, 50, 50), (300, 50, 50), (51, 50, 50), (50, 5, 50),
                                                     (20, 2, 2), (5, 0, 1)])
def test_the_default_warmup_and_evaluation_interval_are_50_steps_or_a_tenth_of_a_run_too_short_for_that(
        steps, warmup, eval_every):
    cfg = TrainConfig(steps=steps)  # runs that were valid before keep the warmup and evaluations they always had
    assert (cfg.warmup, cfg.eval_every) == (warmup, eval_every)
    cfg.validate()


def test_a_short_run_trains_with_the_default_warmup_and_records_the_steps_used(tmp_path):
    from kvshift_lens.training.run_config import compose

    run = compose(["train.steps=20"])
    assert run.train.warmup == 2 and compose([]).train.warmup == 50
    with pytest.raises(ConfigError, match=r"train\.warmup=20 must be < train\.steps=20"):
        compose(["train.steps=20", "train.warmup=20"])  # an explicit warmup is still checked
    train(TINY_MODEL, TINY_TASK, tiny_train(steps=20, warmup=None, eval_every=None), tmp_path, progress=False)
    assert {k: v for k, v in json.loads((tmp_path / "config.json").read_text())["train"].items()
            if k in ("warmup", "eval_every")} == {"warmup": 2, "eval_every": 2}


def test_cosine_decays_to_floor():
    cfg = TrainConfig(lr=1e-3, warmup=0, steps=100, schedule="cosine", min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(1e-3)
    assert lr_at(50, cfg) == pytest.approx(0.55e-3)
    assert lr_at(100, cfg) == pytest.approx(1e-4)


@pytest.mark.numerics
def test_foreach_optimizer_is_bit_identical_to_the_per_parameter_loop():
    # The trainer's multi-tensor AdamW must not change a single bit of any run trained before it.
    task = make_task(TINY_TASK)
    init = build_module(TINY_MODEL).state_dict()
    states = []
    for foreach in (True, False):
        model = build_module(TINY_MODEL)
        opt = make_optimizer(model, TrainConfig(lr=1e-2))
        for group in opt.param_groups:
            group["foreach"] = foreach
        gen = torch.Generator().manual_seed(0)
        for _ in range(5):
            batch = task.sample(8, gen)
            loss = batch_loss(model(batch.tokens), batch, "all")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        states.append(model.state_dict())
    assert make_optimizer(build_module(TINY_MODEL), TrainConfig()).defaults["foreach"] is True
    assert any(not torch.equal(states[0][k], init[k]) for k in init)  # the steps did update the weights
    assert all(torch.equal(states[0][k], states[1][k]) for k in init)


def test_scored_accuracy_counts_only_scored_positions():
    batch = make_task(TINY_TASK).sample(4, torch.Generator().manual_seed(0))
    perfect = torch.nn.functional.one_hot(batch.tokens.roll(-1, dims=1), 16).float() * 10  # predicts every next token
    correct, total = scored_correct(perfect, batch)
    assert total == int(batch.mask[:, :-1].sum()) > 0 and correct == total
    assert scored_correct(-perfect, batch)[0] == 0


def test_checkpoint_steps_are_log_spaced_and_include_ends():
    steps = checkpoint_steps(1000, 8)
    assert steps[0] == 0 and steps[-1] == 1000
    gaps = [b - a for a, b in zip(steps[1:], steps[2:])]
    assert gaps == sorted(gaps)  # denser early


def test_checkpoint_every_adds_evenly_spaced_steps_to_the_log_spaced_ones():
    logs, both = checkpoint_steps(1000, 8), checkpoint_steps(1000, 8, every=100)
    assert set(logs) | set(range(0, 1001, 100)) == set(both)
    assert max(b - a for a, b in zip(both, both[1:])) <= 100  # a late phase change is resolved to 100 steps
    assert checkpoint_steps(1000, 0, every=100) == []  # no checkpoints asked for: none


def test_run_writes_metrics_checkpoints_and_summary(tmp_path):
    summary = train(TINY_MODEL, TINY_TASK, tiny_train(), tmp_path, progress=False)
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert list(metrics.step) == [0, 4, 8, 12]
    assert {"step", "train_loss", "eval_loss", "induction_acc"} <= set(metrics.columns)
    ckpts = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert ckpts[0] == "step_0000000.safetensors" and ckpts[-1] == "step_0000012.safetensors"
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["final_induction_acc"] == summary["final_induction_acc"] == metrics.induction_acc.iloc[-1]
    assert on_disk["config"]["model"]["mixer"] == {"name": "kv_shift", "sides": "kv", "param": "free", "window": 1}
    assert on_disk["git_commit"]


def test_resumed_run_ends_with_identical_metrics(tmp_path):
    full = tmp_path / "full"
    train(TINY_MODEL, TINY_TASK, tiny_train(), full, progress=False)
    part = tmp_path / "part"
    train(TINY_MODEL, TINY_TASK, tiny_train(steps=8), part, progress=False)
    # An interrupted run: same config, killed after step 8. Rewrite its resume config to the full run's.
    state = load_resume(part / "resume.pt")
    state["config"] = load_resume(full / "resume.pt")["config"]
    save_resume(state, part / "resume.pt")
    train(TINY_MODEL, TINY_TASK, tiny_train(), part, progress=False)
    a, b = pd.read_csv(full / "metrics.csv"), pd.read_csv(part / "metrics.csv")
    pd.testing.assert_frame_equal(a.drop(columns="train_seconds"), b.drop(columns="train_seconds"))
    x = torch.randint(0, 16, (2, 16))
    assert torch.equal(load_model(full / "checkpoints/step_0000012.safetensors")(x),
                       load_model(part / "checkpoints/step_0000012.safetensors")(x))


def test_a_run_written_before_the_mixer_registry_resumes_under_its_new_config(tmp_path):
    train(TINY_MODEL, TINY_TASK, tiny_train(steps=4), tmp_path, progress=False)
    state = load_resume(tmp_path / "resume.pt")  # saved back below without a checksum, as such runs were
    old = json.loads(state["config"])
    old["model"] = {**{k: v for k, v in old["model"].items() if k != "mixer"},
                    "arch": "kvshift", "shift": "kv", "shift_param": "free", "shift_window": 1}
    old["task"].update(n_pairs=200, hops=2, alphabet_size=4)  # the flat TaskConfig carried every knob
    state["config"] = json.dumps(old, sort_keys=True)
    torch.save(state, tmp_path / "resume.pt")
    assert train(TINY_MODEL, TINY_TASK, tiny_train(steps=4), tmp_path, progress=False)["final_step"] == 4
    old["model"]["shift"] = "k"
    state["config"] = json.dumps(old, sort_keys=True)
    torch.save(state, tmp_path / "resume.pt")
    with pytest.raises(ConfigError, match="different config"):
        train(TINY_MODEL, TINY_TASK, tiny_train(steps=4), tmp_path, progress=False)


def test_a_run_written_before_a_train_field_existed_resumes_as_if_it_had_the_default(tmp_path):
    train(TINY_MODEL, TINY_TASK, tiny_train(steps=4), tmp_path, progress=False)
    state = load_resume(tmp_path / "resume.pt")
    old = json.loads(state["config"])
    del old["train"]["checkpoint_every"]  # as a run trained before the field was added wrote it
    state["config"] = json.dumps(old, sort_keys=True)
    save_resume(state, tmp_path / "resume.pt")
    assert train(TINY_MODEL, TINY_TASK, tiny_train(steps=8), tmp_path, progress=False)["final_step"] == 8  # extends
    state = load_resume(tmp_path / "resume.pt")
    old = json.loads(state["config"])
    del old["train"]["checkpoint_every"]  # the old format again: the default fills it, not the new value
    state["config"] = json.dumps(old, sort_keys=True)
    save_resume(state, tmp_path / "resume.pt")
    with pytest.raises(ConfigError, match="different config"):  # a non-default value is a different run
        train(TINY_MODEL, TINY_TASK, tiny_train(steps=8, checkpoint_every=2), tmp_path, progress=False)


def test_rerunning_the_grid_budget_of_a_run_an_adaptive_round_extended_keeps_the_longer_run(tmp_path):
    train(TINY_MODEL, TINY_TASK, tiny_train(steps=4), tmp_path, progress=False)
    longer = train(TINY_MODEL, TINY_TASK, tiny_train(steps=8), tmp_path, progress=False)  # the adaptive round
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    again = train(TINY_MODEL, TINY_TASK, tiny_train(steps=4), tmp_path, progress=False)  # the grid job, rerun
    assert again["final_step"] == longer["final_step"] == 8 and again["status"] == "completed"
    assert json.loads((tmp_path / "config.json").read_text())["train"]["steps"] == 8
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "metrics.csv"), metrics)  # nothing trained twice


def test_rerunning_a_finished_run_keeps_the_analyses_in_its_summary_until_it_trains_on(tmp_path):
    from kvshift_lens.analysis.emergence import merge_summary

    train(TINY_MODEL, TINY_TASK, tiny_train(steps=4), tmp_path, progress=False)
    merge_summary(tmp_path, {"llc_stage_boundaries": [2]})  # what experiments.detect adds
    assert train(TINY_MODEL, TINY_TASK, tiny_train(steps=4), tmp_path, progress=False)["llc_stage_boundaries"] == [2]
    assert "llc_stage_boundaries" not in train(TINY_MODEL, TINY_TASK, tiny_train(steps=8), tmp_path, progress=False)


def test_mixer_coefficients_get_no_weight_decay_through_the_protocol():
    model = build_module(ModelConfig(mixer={"name": "canon", "positions": "AB"}, d_model=16, n_heads=2, d_vocab=16, n_ctx=16))
    decay, no_decay = make_optimizer(model, TrainConfig()).param_groups
    mixer = {id(p) for n, p in model.named_parameters() if "_mix." in n}
    assert len(mixer) == 4 and mixer <= {id(p) for p in no_decay["params"]}
    assert not mixer & {id(p) for p in decay["params"]} and decay["weight_decay"] > 0


def test_resume_refuses_a_different_config(tmp_path):
    train(TINY_MODEL, TINY_TASK, tiny_train(steps=4), tmp_path, progress=False)
    with pytest.raises(ConfigError, match="different config"):
        train(TINY_MODEL, TINY_TASK, tiny_train(steps=4, lr=1e-2), tmp_path, progress=False)


def test_corrupt_resume_checkpoint_gets_one_clear_error(tmp_path):
    train(TINY_MODEL, TINY_TASK, tiny_train(steps=4), tmp_path, progress=False)
    (tmp_path / "resume.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="resume.pt is corrupt"):
        train(TINY_MODEL, TINY_TASK, tiny_train(steps=4), tmp_path, progress=False)


def test_resume_checkpoint_with_flipped_tensor_bytes_is_refused_naming_the_file(tmp_path):
    train(TINY_MODEL, TINY_TASK, tiny_train(steps=4), tmp_path, progress=False)
    path = tmp_path / "resume.pt"
    state = load_resume(path)
    name = max(state["model"], key=lambda k: state["model"][k].numel())
    good = state["model"][name].clone()
    raw = bytearray(path.read_bytes())
    at = bytes(raw).find(good.numpy().tobytes()[:64])  # the tensor's bytes inside torch's zip archive
    assert at > 0
    raw[at + 5] ^= 0xFF
    path.write_bytes(bytes(raw))
    assert torch.load(path, weights_only=True)["model"][name].ne(good).any()  # torch loads it silently
    with pytest.raises(ValueError, match="resume.pt is corrupt.*delete it to restart this run from scratch"):
        train(TINY_MODEL, TINY_TASK, tiny_train(steps=4), tmp_path, progress=False)


@pytest.mark.numerics
def test_non_finite_loss_stops_the_run_at_that_step_and_keeps_its_metrics(tmp_path):
    # The step whose loss first turns non-finite is float rounding (4 on one AVX-512 CPU, 3 on an AVX2 one): it is
    # read from the run's own files. eval_every=1 puts every step's loss in metrics.csv.
    with pytest.raises(TrainingDiverged) as diverged:
        train(TINY_MODEL, TINY_TASK, tiny_train(lr=1e3, steps=40, eval_every=1), tmp_path, progress=False)
    summary = json.loads((tmp_path / "summary.json").read_text())
    last = summary["final_step"]  # the last step trained
    assert summary["status"] == "diverged" and summary["error"] == str(diverged.value)
    assert re.fullmatch(rf"diverged at step {last + 1} \(loss (nan|inf|-inf)\): lower train\.lr", summary["error"])
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert list(metrics.step) == list(range(last + 1))  # evaluations before the divergence stay on disk
    assert last > 0 and all(map(math.isfinite, metrics.train_loss.iloc[1:]))  # it stopped at the first non-finite loss
    for ckpt in (tmp_path / "checkpoints").iterdir():  # nothing non-finite was saved
        assert all(t.isfinite().all() for t in load_model(ckpt).state_dict().values())


def test_step_0_leaves_the_train_loss_cell_empty_and_readers_see_nan(tmp_path):
    from kvshift_lens.training.runs import load_runs

    train(TINY_MODEL, TINY_TASK, tiny_train(steps=4), tmp_path, progress=False)
    assert (tmp_path / "metrics.csv").read_text().splitlines()[1].startswith("0,,")  # no training loss before a step
    metrics = load_runs(tmp_path)
    assert math.isnan(metrics.train_loss.iloc[0]) and metrics.train_loss.iloc[1:].notna().all()


def test_loading_a_resume_state_as_a_model_says_what_it_is_and_which_file_to_load(tmp_path):
    train(TINY_MODEL, TINY_TASK, tiny_train(steps=4), tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"is a resume state .*not a model checkpoint: load a model with "
                                         r"load_model\('.*step_0000004\.safetensors'\)"):
        load_model(tmp_path / "resume.pt")


def test_finished_run_summary_says_completed(tmp_path):
    assert train(TINY_MODEL, TINY_TASK, tiny_train(steps=4), tmp_path, progress=False)["status"] == "completed"


@pytest.mark.parametrize("field,value,message", [
    ("warmup", 12, "train.warmup=12 must be < train.steps=12"),
    ("eval_every", 13, "train.eval_every=13 exceeds train.steps=12"),
    ("beta2", 1.0, "train.beta2=1.0 must lie in"),
    ("min_lr_ratio", 2.0, "train.min_lr_ratio=2.0 must lie in"),
    ("n_checkpoints", -1, "train.n_checkpoints=-1 must be >= 0"),
])
def test_nonsense_train_values_are_errors(tmp_path, field, value, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        train(TINY_MODEL, TINY_TASK, tiny_train(**{field: value}), tmp_path, progress=False)


@pytest.mark.parametrize("field,value", [("steps", 0), ("batch_size", 0), ("lr", -1.0), ("schedule", "linear")])
def test_bad_train_config_names_the_field(tmp_path, field, value):
    with pytest.raises(ConfigError, match=f"train.{field}"):
        train(TINY_MODEL, TINY_TASK, tiny_train(**{field: value}), tmp_path, progress=False)
    assert not (tmp_path / "metrics.csv").exists()


def test_sequence_longer_than_context_is_rejected_before_training(tmp_path):
    model = ModelConfig(mixer="kv_shift", n_layers=1, d_model=16, n_heads=2, d_vocab=16, n_ctx=8)
    with pytest.raises(ConfigError, match="n_ctx"):
        train(model, TINY_TASK, tiny_train(), tmp_path, progress=False)


def test_clamp01_raw_parameters_are_projected_after_every_step(tmp_path):
    from kvshift_lens.models.checkpoints import read_checkpoint

    model = ModelConfig(mixer={"name": "kv_shift", "param": "clamp01"}, n_layers=1, d_model=16, n_heads=2,
                        d_vocab=16, n_ctx=16)
    train(model, TINY_TASK, tiny_train(lr=0.5, warmup=0), tmp_path, progress=False)
    _, tensors, _ = read_checkpoint(tmp_path / "checkpoints/step_0000012.safetensors")
    raw = torch.cat([t.flatten() for k, t in tensors.items() if "_shift" in k])
    assert raw.numel() == 8 and (raw >= 0).all() and (raw <= 1).all()


def test_stop_at_ends_at_first_evaluation_reaching_threshold_and_stays_stopped_on_rerun(tmp_path):
    task = task_config("repeated_tokens", d_vocab=16, seq_len=16, seed=0)  # many scored tokens: acc > 0
    train(TINY_MODEL, task, tiny_train(), tmp_path / "full", progress=False)
    full = pd.read_csv(tmp_path / "full" / "metrics.csv")
    later = full[full.step > 0]
    threshold = later.induction_acc.iloc[0] - 1e-9  # reached at the first evaluation; CSV floats parse within an ulp
    assert later.induction_acc.iloc[0] > full.induction_acc.iloc[0]  # step 0 does not stop it already
    first = int(later.step.iloc[0])
    summary = train(TINY_MODEL, task, tiny_train(stop_at=threshold), tmp_path / "stop", progress=False)
    stopped = pd.read_csv(tmp_path / "stop" / "metrics.csv")
    assert summary["final_step"] == first < 12 and summary["stopped_early"]
    pd.testing.assert_frame_equal(stopped.drop(columns="train_seconds"),
                                  full[full.step <= first].drop(columns="train_seconds").reset_index(drop=True))
    again = train(TINY_MODEL, task, tiny_train(stop_at=threshold), tmp_path / "stop", progress=False)
    assert again["final_step"] == first
    assert (tmp_path / "stop" / "checkpoints" / f"step_{first:07d}.safetensors").exists()  # the stopped model is kept


def test_compiled_training_reaches_the_eager_losses_within_float_tolerance(tmp_path):
    # train.compile=true runs the same optimisation through torch.compile: same losses up to rounding.
    task = task_config("induction", d_vocab=16, seq_len=8, seed=0)
    model = ModelConfig(mixer="canon", n_layers=1, d_model=8, n_heads=1, d_vocab=16, n_ctx=8, seed=0)
    cfg = dict(steps=6, batch_size=4, eval_every=3, eval_size=8, warmup=1, n_checkpoints=0)
    eager = train(model, task, tiny_train(**cfg), tmp_path / "eager", progress=False)
    compiled = train(model, task, tiny_train(**cfg, compile=True), tmp_path / "compiled", progress=False)
    a, b = (pd.read_csv(tmp_path / d / "metrics.csv") for d in ("eager", "compiled"))
    assert a["train_loss"].notna().sum() == 2
    pd.testing.assert_series_equal(a["train_loss"], b["train_loss"], rtol=1e-4, atol=1e-5)
    pd.testing.assert_series_equal(a["eval_loss"], b["eval_loss"], rtol=1e-4, atol=1e-5)
    assert compiled["final_step"] == eager["final_step"] == 6
