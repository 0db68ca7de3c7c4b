"""Every config under conf/ composes into valid dataclasses; the mixer and task choice syntax."""

from __future__ import annotations

import itertools

import pytest

from kvshift_lens.training.run_config import CONF_DIR, compose
from kvshift_lens.training.sweeps import experiment_spec
from kvshift_lens.core.errors import ConfigError
from kvshift_lens.models.mixers.base import MIXERS
from kvshift_lens.data.tasks.base import TASKS

PRESETS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml") if p.stem != "base")
EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


def test_every_registered_mixer_and_task_has_its_yaml_and_every_yaml_a_registration():
    assert sorted(p.stem for p in (CONF_DIR / "model" / "mixer").glob("*.yaml")) == MIXERS.names()
    assert sorted(p.stem for p in (CONF_DIR / "task").glob("*.yaml")) == TASKS.names()


@pytest.mark.parametrize("preset", PRESETS)
def test_every_model_preset_composes(preset):
    run = compose([f"model={preset}"])
    assert run.model.arch == preset.split("_")[0]  # vanilla_* -> no mixer, kvshift_* -> kv_shift


@pytest.mark.parametrize("mixer", MIXERS.names())
def test_every_mixer_is_selected_by_its_group_with_its_yaml_defaults(mixer):
    run = compose(["model=vanilla_1l", f"model/mixer={mixer}", "model.attn_only=false"])
    assert run.model.mixer == MIXERS.get(mixer)()  # the yaml restates the dataclass defaults


@pytest.mark.parametrize("task", TASKS.names())
def test_every_task_composes_with_the_default_model(task):
    run = compose([f"task={task}"])
    assert run.task.name == task and run.model.d_vocab == run.task.d_vocab and run.model.n_ctx == run.task.seq_len


def test_mixer_options_are_set_with_dots_and_the_dot_form_of_the_choice_means_default_options():
    run = compose(["model/mixer=canon", "model.mixer.positions=A", "model.mixer.kernel=3"])
    assert (run.model.mixer.name, run.model.mixer.positions, run.model.mixer.kernel) == ("canon", "A", 3)
    run = compose(["model.mixer=token_shift"])  # hydra replaces the node by the string
    assert run.model.mixer == MIXERS.get("token_shift")()
    with pytest.raises(ConfigError, match=r"model\.mixer\.name='mamba' is not a known mixer; use one of"):
        compose(["model.mixer=mamba"])


def _grid_points(params: dict) -> list[list[str]]:
    """The first and last job of a sweep-parameter mapping, as override lists."""
    values = [[f"{k}={v}" for v in str(vs).split(",")] for k, vs in params.items()]
    return [list(p) for p in (next(itertools.product(*values)), [v[-1] for v in values])]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_sweep_point_composes(experiment):
    spec = experiment_spec(experiment)  # as hydra composes it: an experiment may inherit another's grids
    shared = {k: v for k, v in spec["params"].items() if k != "seed"}
    grids = spec["grids"] or {"all": {}}
    for grid in grids.values():
        for point in _grid_points({**shared, **grid}):
            run = compose([f"+experiment={experiment}", *point])
            assert run.model.n_layers >= 1


def test_run_config_columns_flatten_the_mixer_and_derive_arch_for_new_and_legacy_runs(tmp_path):
    import json

    from kvshift_lens.training.runs import load_runs
    from kvshift_lens.models.config import ModelConfig

    legacy_model = {"arch": "kvshift", "shift": "k", "shift_param": "gate", "shift_window": 2, "n_layers": 1, "seed": 3}
    configs = {
        "legacy": {"model": legacy_model, "task": {"name": "induction", "d_vocab": 16, "seq_len": 16, "seed": 3,
                                                   "n_pairs": 200, "hops": 2, "alphabet_size": 4}},
        "canon": {"model": ModelConfig(mixer="canon", seed=3).to_dict(), "task": {"name": "mqar", "seed": 3}},
        "vanilla": {"model": ModelConfig(mixer="none", seed=3).to_dict(), "task": {"name": "induction", "seed": 3}},
    }
    for name, cfg in configs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps({**cfg, "train": {"lr": 0.01}}))
        (tmp_path / name / "metrics.csv").write_text("step,induction_acc\n0,0.1\n")
    df = load_runs(tmp_path).set_index("run")
    assert dict(df["model.arch"]) == {"legacy": "kvshift", "canon": "canon", "vanilla": "vanilla"}
    assert dict(df["model.mixer.name"]) == {"legacy": "kv_shift", "canon": "canon", "vanilla": "none"}
    assert df.loc["legacy", "model.mixer.sides"] == "k" and df.loc["legacy", "model.mixer.window"] == 2
    assert df.loc["canon", "model.mixer.positions"] == "AB" and (df["seed"] == 3).all()
    assert "model.shift" not in df and "task.n_pairs" not in df  # legacy knobs read in the current layout
