"""docs/extending.md in practice: a mixer and a task defined and registered in this file alone (no library
edit), composed through hydra from one yaml each, trained with the real trainer and analysed with the
detectors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest
import torch

from kvshift_lens.analysis.circuits import classify_heads
from kvshift_lens.training.run_config import CONF_DIR, compose
from kvshift_lens.analysis.head_detectors import head_scores
from kvshift_lens.analysis.emergence import run_checkpoints
from kvshift_lens.models.mixers.base import MIXERS, LagMixer, MixerOptions, register_mixer
from kvshift_lens.core.errors import ConfigError
from kvshift_lens.models.config import ModelConfig
from kvshift_lens.models.transformer import build_module
from kvshift_lens.models.checkpoints import load_model
from kvshift_lens.models.coefficients import mixer_coefficients
from kvshift_lens.data.tasks.base import TASKS, Batch, Task, TaskConfig, make_task, register_task
from kvshift_lens.core.vocab import N_SPECIAL
from kvshift_lens.data.tasks.base import check, with_bos
from kvshift_lens.training.train_config import TrainConfig
from kvshift_lens.training.trainer import train

ROOT = Path(__file__).resolve().parents[1]


class EchoKey(LagMixer):
    """k̂_t = k_t + s_h·k_{t-1}: a per-head learned echo of the previous key."""

    def __init__(self, heads: int, strength: float):
        super().__init__()
        self.strength = strength
        self.weight = torch.nn.Parameter(torch.empty(heads, 1))

    def lag_coefficients(self) -> torch.Tensor:
        return torch.stack([torch.ones_like(self.weight), self.weight])  # [2, heads, 1]

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator) -> None:
        self.weight.fill_(self.strength)


@dataclass
class EchoKeyOptions(MixerOptions):
    name: Literal["toy_echo_key"] = "toy_echo_key"
    strength: float = 0.5  # initial echo

    def build(self, cfg, layer: int) -> dict[str, LagMixer]:
        return {"k": EchoKey(cfg.kv_heads, self.strength)}


@dataclass
class PairsConfig(TaskConfig):
    """`[BOS] a a b b ...`: the first of each pair predicts its twin."""

    name: Literal["toy_pairs"] = "toy_pairs"

    def validate(self) -> None:
        check(self.seq_len >= 3, f"task.seq_len={self.seq_len} must be >= 3 (BOS a a)")

    def build(self) -> "PairsTask":
        return PairsTask(self)


class PairsTask(Task):
    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        n = self.cfg.seq_len // 2  # pairs covering the seq_len - 1 positions after BOS
        body = (N_SPECIAL + torch.randint(self.n_content, (batch_size, n), generator=generator)).repeat_interleave(2, 1)
        scored = torch.zeros_like(body, dtype=torch.bool)
        scored[:, 0::2] = True
        body, scored = body[:, : self.cfg.seq_len - 1], scored[:, : self.cfg.seq_len - 1]
        scored[:, -1] = False
        return with_bos(body, scored)

    @property
    def chance_accuracy(self) -> float:
        return 1.0 / self.n_content


@pytest.fixture
def registered():
    register_mixer(EchoKeyOptions)
    register_task(PairsConfig)
    yield
    MIXERS.unregister("toy_echo_key")
    TASKS.unregister("toy_pairs")


def test_a_mixer_and_a_task_from_one_file_each_train_and_are_analysed_like_the_built_ins(registered, tmp_path):
    conf = shutil.copytree(CONF_DIR, tmp_path / "conf")
    (conf / "model" / "mixer" / "toy_echo_key.yaml").write_text("name: toy_echo_key\nstrength: 0.5\n")
    (conf / "task" / "toy_pairs.yaml").write_text("name: toy_pairs\nd_vocab: 16\nseq_len: 15\nseed: ${seed}\n")
    run = compose(["model=vanilla_1l", "model/mixer=toy_echo_key", "model.mixer.strength=0.25", "task=toy_pairs",
                   "model.d_model=16", "model.n_heads=2"], conf_dir=conf)
    assert run.model.mixer == EchoKeyOptions(strength=0.25) and run.model.arch == "toy_echo_key"
    assert make_task(run.task).chance_accuracy == pytest.approx(1 / 13)

    cfg = TrainConfig(steps=20, lr=1e-2, batch_size=16, warmup=2, eval_every=10, eval_size=32, n_checkpoints=2,
                      threads=1)
    summary = train(run.model, run.task, cfg, tmp_path / "run", progress=False)
    assert summary["final_induction_acc"] > summary["chance_accuracy"]  # the pairs are learned in 20 steps
    model = load_model(run_checkpoints(tmp_path / "run")[20])
    coefficients = mixer_coefficients(model)
    assert set(coefficients.slot) == {"k"} and (coefficients[coefficients.lag == 1].value != 0.25).any()  # trained

    _, cache = model.run_with_cache(torch.zeros(1, 7, dtype=torch.long))
    assert "blocks.0.attn.hook_k_mixed" in cache and "blocks.0.hook_k_mixed" in cache
    scores = head_scores(model, batch_size=4, metrics=("induction_score", "previous_token_score", "copying_score"))
    assert len(scores) == 3 * 2 and scores.value.notna().all()
    table = classify_heads(model, batch_size=4)
    assert len(table) == 2 and set(table.mechanism) <= {"none", "mixer-mediated", "composition-mediated"}


def test_a_mixer_whose_modules_need_an_mlp_is_refused_on_an_attention_only_model():
    @dataclass
    class HiddenOnly(MixerOptions):
        name: Literal["toy_hidden_only"] = "toy_hidden_only"

        def build(self, cfg, layer: int) -> dict[str, LagMixer]:
            return {"mlp_hidden": EchoKey(cfg.mlp_width, 0.5)}

    register_mixer(HiddenOnly)
    try:
        with pytest.raises(ConfigError, match="model.attn_only=true"):
            build_module(ModelConfig(mixer="toy_hidden_only", d_model=8, n_heads=2))
        assert build_module(ModelConfig(mixer="toy_hidden_only", d_model=8, n_heads=2, attn_only=False))
    finally:
        MIXERS.unregister("toy_hidden_only")


def test_a_built_in_name_cannot_be_registered_twice():
    @dataclass
    class Impostor(MixerOptions):
        name: Literal["canon"] = "canon"

    with pytest.raises(ValueError, match="already registered"):
        register_mixer(Impostor)
    assert MIXERS.get("canon").__name__ == "CanonOptions"  # the registry is untouched


PLUGIN = '''"""A mixer and a task kept outside the package: `plugins=[toy_plugin]` imports them."""
from dataclasses import dataclass
from typing import Literal

import torch

from kvshift_lens.core.vocab import N_SPECIAL
from kvshift_lens.data.tasks.base import Batch, Task, TaskConfig, register_task, with_bos
from kvshift_lens.models.mixers.base import LagMixer, MixerOptions, register_mixer


class Skip2(LagMixer):
    """k̂_t = k_t + w·k_{t-2}."""

    def __init__(self, heads):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(heads, 1))

    def lag_coefficients(self):
        return torch.stack([torch.ones_like(self.weight), torch.zeros_like(self.weight), self.weight])

    def reset_parameters(self, generator):
        torch.nn.init.zeros_(self.weight)


@register_mixer
@dataclass
class Skip2Options(MixerOptions):
    name: Literal["skip2"] = "skip2"

    def build(self, cfg, layer):
        return {"k": Skip2(cfg.kv_heads)}


class AbaTask(Task):
    def sample(self, batch_size, generator):
        body = N_SPECIAL + torch.randint(self.n_content, (batch_size, self.cfg.seq_len - 1), generator=generator)
        body[:, 2::2] = body[:, 0:1]  # a b a c a ...: every other token repeats the first
        scored = torch.zeros_like(body, dtype=torch.bool)
        scored[:, 1:-1:2] = True
        return with_bos(body, scored)

    @property
    def chance_accuracy(self):
        return 1.0 / self.n_content


@register_task
@dataclass
class AbaConfig(TaskConfig):
    name: Literal["toy_aba"] = "toy_aba"

    def build(self):
        return AbaTask(self)
'''
TINY_CLI = ["task.d_vocab=16", "task.seq_len=16", "model.d_model=16", "model.n_heads=2", "train.steps=4",
            "train.eval_size=8", "train.batch_size=4", "train.n_checkpoints=2", "train.threads=1", "progress=false"]


@pytest.fixture(scope="module")
def plugin_run(tmp_path_factory):
    """One CLI run of a mixer and a task defined in a module outside the package, with their yaml on
    hydra.searchpath; returns (plugin folder, run directory, environment with the folder on PYTHONPATH)."""
    tmp = tmp_path_factory.mktemp("plugin")
    (tmp / "toy_plugin.py").write_text(PLUGIN)
    (tmp / "conf" / "model" / "mixer").mkdir(parents=True)
    (tmp / "conf" / "task").mkdir()
    (tmp / "conf" / "model" / "mixer" / "skip2.yaml").write_text("name: skip2\n")
    (tmp / "conf" / "task" / "toy_aba.yaml").write_text("name: toy_aba\nd_vocab: 16\nseq_len: 16\nseed: ${seed}\n")
    env = {**os.environ, "PYTHONPATH": str(tmp), "HYDRA_FULL_ERROR": "0"}
    args = ["model/mixer=skip2", "task=toy_aba", f"hydra.searchpath=[file://{tmp / 'conf'}]", *TINY_CLI,
            f"out_dir={tmp / 'runs'}"]
    without = subprocess.run([sys.executable, "-m", "experiments.train", *args], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=600)
    r = subprocess.run([sys.executable, "-m", "experiments.train", "plugins=[toy_plugin]", *args], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return tmp, next((tmp / "runs").rglob("metrics.csv")).parent, env, without


def test_without_its_plugin_a_user_task_is_unknown_and_the_error_says_how_to_import_it(plugin_run):
    without = plugin_run[3]
    assert without.returncode == 2 and without.stderr.strip().splitlines() == [
        "error: task.name='toy_aba' is not a known task; use one of " + str(TASKS.names())
        + ", or import the module that registers it (plugins=[my_pkg.my_task])"]


def test_plugins_from_the_cli_train_a_user_mixer_and_task_and_detect_scores_them(plugin_run):
    tmp, run_dir, env, _ = plugin_run
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model"]["mixer"] == {"name": "skip2"} and config["task"]["name"] == "toy_aba"
    assert "plugins" not in run_dir.name  # a plugin import does not change the run
    detect = [sys.executable, "-m", "experiments.detect", str(run_dir), "batch_size=4"]
    bare = subprocess.run(detect, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert bare.returncode == 2 and "mixer 'skip2' is not registered: import its module or pass plugins=" in bare.stderr
    assert len(bare.stderr.strip().splitlines()) == 1
    d = subprocess.run([*detect, "plugins=[toy_plugin]"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert d.returncode == 0, d.stderr
    assert (run_dir / "heads.csv").exists()


def test_loading_a_checkpoint_whose_mixer_is_unregistered_names_the_mixer_and_plugins(plugin_run, monkeypatch):
    tmp, run_dir, _, _ = plugin_run
    checkpoint = run_dir / "checkpoints" / "step_0000004.safetensors"
    with pytest.raises(ValueError, match=r"mixer 'skip2' is not registered: import its module or pass plugins="):
        load_model(checkpoint)
    monkeypatch.syspath_prepend(str(tmp))
    try:
        model = load_model(checkpoint, plugins=["toy_plugin"])
        assert "blocks.0.attn.hook_k_mixed" in model.run_with_cache(torch.zeros(1, 5, dtype=torch.long))[1]
    finally:
        MIXERS.unregister("skip2")
        TASKS.unregister("toy_aba")
        sys.modules.pop("toy_plugin", None)
    with pytest.raises(ConfigError, match=r"plugins: cannot import 'no_such_plugin'"):
        load_model(checkpoint, plugins=["no_such_plugin"])
