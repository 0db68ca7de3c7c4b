"""Interventions during training: the pattern builders, exactness (a no-op edit changes nothing), effect, the bridge
and the training path agreeing under every action, freeze, stop-gradient, the step window, and bad input."""

import copy
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
import torch

from kvshift_lens.core.errors import ConfigError
from kvshift_lens.data.tasks.base import task_config
from kvshift_lens.models.checkpoints import load_model
from kvshift_lens.models.config import ModelConfig
from kvshift_lens.models.transformer import attention_layers, bare_state_dict, build_module, to_bridge
from kvshift_lens.training.intervention_hooks import InterventionSchedule, bridge_hooks, freeze_gradients, hook_sites
from kvshift_lens.training.interventions import Intervention
from kvshift_lens.training.patterns import induction_pattern, previous_token_pattern, uniform_pattern
from kvshift_lens.training.train_config import TrainConfig
from kvshift_lens.training.trainer import train

ROOT = Path(__file__).resolve().parents[1]
SEQ = 12
TASK = task_config("induction", d_vocab=16, seq_len=16, seed=0)
KV_2L = ModelConfig(mixer="kv_shift", n_layers=2, d_model=16, n_heads=2, d_vocab=20, n_ctx=SEQ, seed=0)
KV_1L = ModelConfig(mixer="kv_shift", n_layers=1, d_model=16, n_heads=2, d_vocab=16, n_ctx=16, seed=0)
TOKENS = torch.randint(3, 20, (3, SEQ), generator=torch.Generator().manual_seed(0))
TOL = dict(rtol=1e-4, atol=1e-5)  # float32: the SDPA and explicit-softmax paths differ in the last bits


def tiny_train(**kw) -> TrainConfig:
    base = dict(steps=20, batch_size=8, eval_every=5, eval_size=16, warmup=2, n_checkpoints=20, threads=1)
    base.update(kw)
    return TrainConfig(**base)


def test_previous_token_pattern_attends_to_the_token_before():
    assert previous_token_pattern(4).tolist() == [[1, 0, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]


def test_induction_pattern_attends_after_the_previous_occurrence_of_the_current_token():
    tokens = torch.tensor([[0, 5, 6, 5, 6, 7, 5]])  # [BOS] a b a b c a
    pattern = induction_pattern(tokens)
    assert pattern.shape == (1, 7, 7)
    # a at 3 -> after the a at 1 (2); b at 4 -> after b at 2 (3); a at 6 -> after the latest a, at 3 (4); firsts -> 0
    assert pattern[0].argmax(-1).tolist() == [0, 0, 0, 2, 3, 0, 4]
    assert torch.equal(pattern.sum(-1), torch.ones(1, 7)) and not pattern[0].triu(1).any()


def test_uniform_pattern_spreads_each_query_over_itself_and_earlier_keys():
    assert torch.allclose(uniform_pattern(3), torch.tensor([[1, 0, 0], [1 / 2, 1 / 2, 0], [1 / 3, 1 / 3, 1 / 3]]))


def grads(model: torch.nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    params = dict(zip(names, model.parameters()))
    return {n: p.grad for n, p in params.items()}


ACTIONS = [
    Intervention("blocks.0.attn.hook_pattern", "clamp", "previous_token"),
    Intervention("blocks.0.attn.hook_pattern", "clamp", "induction", heads=[1]),
    Intervention("blocks.1.attn.hook_pattern", "clamp", "uniform"),
    Intervention("blocks.0.attn.hook_pattern", "clamp", torch.eye(SEQ)),
    Intervention("blocks.1.attn.hook_pattern", "zero", heads=[0]),
    Intervention("blocks.0.attn.hook_pattern", "mean"),
    Intervention("blocks.0.attn.hook_pattern", "stop_grad"),
    Intervention("blocks.0.attn.hook_pattern", "freeze", heads=[1]),
    Intervention("blocks.1.attn.hook_v", "zero"),
    Intervention("blocks.0.attn.hook_q", "clamp", 0.5, heads=[0]),
    Intervention("blocks.0.attn.hook_k", "stop_grad"),
    Intervention("blocks.0.attn.hook_z", "mean", heads=[1]),
    Intervention("blocks.0.attn.hook_z", "freeze"),
    Intervention("blocks.0.attn.hook_k_shifted", "zero"),
    Intervention("blocks.1.hook_v_shifted", "mean"),
    Intervention("blocks.0.attn.k_shift.coefficients", "clamp", "shift_off"),
    Intervention("blocks.1.attn.v_shift.coefficients", "clamp", [[1.0], [0.0]], heads=[0]),
    Intervention("blocks.0.attn.v_shift.coefficients", "stop_grad"),
    Intervention("blocks.0.attn.k_shift.coefficients", "freeze"),
]


@pytest.mark.parametrize("iv", ACTIONS, ids=[f"{iv.hook}-{iv.action}-{iv.value if isinstance(iv.value, str) else ''}"
                                               f"{iv.heads or ''}" for iv in ACTIONS])
def test_the_bridge_and_the_training_path_agree_under_the_same_intervention(iv):
    module = build_module(KV_2L)
    names = [n for n, _ in module.named_parameters()]
    bare, bridge = copy.deepcopy(module), to_bridge(copy.deepcopy(module)).train()
    schedule = InterventionSchedule(bare, [iv], steps=10, seq_len=SEQ)
    schedule.at(0)
    trained = bare(TOKENS)  # [batch, pos, vocab], through the bare module's SDPA path where nothing is clamped
    trained.logsumexp(-1).mean().backward()
    schedule.after_backward()
    with bridge_hooks(bridge, [iv], TOKENS, steps=10) as hooks:
        analysed = bridge.run_with_hooks(TOKENS, fwd_hooks=hooks)
    analysed.logsumexp(-1).mean().backward()
    freeze_gradients(bridge, [iv], steps=10, seq_len=SEQ)
    torch.testing.assert_close(trained, analysed, **TOL)
    g_bare, g_bridge = grads(bare, names), grads(bridge.original_model, names)
    assert {n for n, g in g_bare.items() if g is None} == {n for n, g in g_bridge.items() if g is None}
    for n, g in g_bare.items():
        if g is not None:
            torch.testing.assert_close(g, g_bridge[n], **TOL, msg=n)


def test_a_clamp_changes_the_output_and_the_edits_leave_with_the_window():
    model = build_module(KV_2L)
    plain = model(TOKENS)
    schedule = InterventionSchedule(model, [Intervention("blocks.0.attn.hook_pattern", "clamp", "previous_token",
                                                         start=0, end=5)], steps=10, seq_len=SEQ)
    schedule.at(0)
    assert not torch.allclose(model(TOKENS), plain, atol=1e-3)
    schedule.at(5)
    assert torch.equal(model(TOKENS), plain)


def test_a_previous_token_clamp_makes_layer_0_write_the_value_of_the_token_before_and_still_trains_v_and_o():
    """What the all-heads clamp computes (docs/interventions.md, Known results): layer 0's output at t is exactly
    W_O W_V LN(x_{t-1}) (query 0: the [BOS] itself), gradients reach W_V and W_O, and none reach W_Q or W_K."""
    model = build_module(ModelConfig(mixer="none", n_layers=2, d_model=16, n_heads=2, d_vocab=20, n_ctx=SEQ, seed=0))
    attn = attention_layers(model)[0]
    schedule = InterventionSchedule(model, [Intervention("blocks.0.attn.hook_pattern", "clamp", "previous_token")],
                                    steps=10, seq_len=SEQ)
    schedule.at(0)
    seen = {}
    handles = [attn.register_forward_pre_hook(lambda m, args, kwargs: seen.update(x=args[0]), with_kwargs=True),
               attn.register_forward_hook(lambda m, args, out: seen.update(out=out[0]))]
    model(TOKENS).logsumexp(-1).mean().backward()
    for h in handles:
        h.remove()
    v = attn.v(seen["x"])  # [batch, pos, heads·d_head]
    torch.testing.assert_close(seen["out"], attn.o(torch.cat([v[:, :1], v[:, :-1]], 1)))
    assert attn.q.weight.grad is None and attn.k.weight.grad is None
    assert attn.v.weight.grad.abs().sum() > 0 and attn.o.weight.grad.abs().sum() > 0


def test_an_edit_that_writes_the_value_the_hook_holds_leaves_the_forward_bit_identical():
    model = build_module(KV_2L)
    plain = model(TOKENS)
    held = attention_layers(model)[0].mixers()["k"].lag_coefficients().detach()  # [lags, head, 1]
    schedule = InterventionSchedule(model, [
        Intervention("blocks.0.attn.k_shift.coefficients", "clamp", held),
        Intervention("blocks.1.attn.hook_v", "stop_grad"),
        Intervention("blocks.0.attn.hook_z", "freeze")], steps=10, seq_len=SEQ)
    schedule.at(0)
    assert torch.equal(model(TOKENS), plain)


def test_an_intervention_that_writes_the_value_the_hook_holds_leaves_a_run_bit_identical(tmp_path):
    held = build_module(KV_1L).layers[0].attn.mixers()["k"].lag_coefficients().detach()
    freeze = Intervention("blocks.0.attn.k_shift.coefficients", "freeze")
    clamp = Intervention("blocks.0.attn.k_shift.coefficients", "clamp", held)  # the value freeze holds it at
    runs = {}
    for name, ivs in (("frozen", [freeze]), ("frozen_and_clamped", [freeze, clamp])):
        train(KV_1L, TASK, tiny_train(interventions=ivs), tmp_path / name, progress=False)
        runs[name] = tmp_path / name
    metrics = [pd.read_csv(p / "metrics.csv").drop(columns="train_seconds") for p in runs.values()]
    pd.testing.assert_frame_equal(*metrics, check_exact=True)
    last = [bare_state_dict(load_model(p / "checkpoints" / "step_0000020.safetensors")) for p in runs.values()]
    assert all(torch.equal(last[0][k], last[1][k]) for k in last[0])


def test_freeze_keeps_the_parameters_bit_identical_through_the_window_and_they_move_after(tmp_path):
    iv = Intervention("blocks.0.attn.hook_pattern", "freeze", heads=[1], end=9)
    train(KV_1L, TASK, tiny_train(interventions=[iv]), tmp_path, progress=False)
    state = {s: bare_state_dict(load_model(tmp_path / "checkpoints" / f"step_{s:07d}.safetensors")) for s in (0, 9, 20)}
    rows = slice(8, 16)  # head 1 of d_head 8
    for name in ("layers.0.attn.q.weight", "layers.0.attn.k.weight"):
        assert torch.equal(state[0][name][rows], state[9][name][rows]), name  # frozen through the window
        assert not torch.equal(state[9][name][rows], state[20][name][rows]), name  # moves after it
        assert not torch.equal(state[0][name][:8], state[9][name][:8]), name  # head 0 was never frozen
    assert torch.equal(state[0]["layers.0.attn.k_shift.weight"][1], state[9]["layers.0.attn.k_shift.weight"][1])
    assert not torch.equal(state[0]["layers.0.attn.v.weight"], state[9]["layers.0.attn.v.weight"])


def test_a_run_resumed_inside_a_freeze_window_ends_bit_identical_to_an_uninterrupted_one(tmp_path):
    from kvshift_lens.training.resume import load_resume, save_resume

    freeze = dict(hook="blocks.0.attn.hook_pattern", action="freeze", heads=[1])
    full, part = tmp_path / "full", tmp_path / "part"
    train(KV_1L, TASK, tiny_train(interventions=[Intervention(**freeze, end=15)]), full, progress=False)
    # Killed after step 10, inside the window [0, 15): the same run to that point; then resumed under the full config.
    train(KV_1L, TASK, tiny_train(steps=10, interventions=[Intervention(**freeze, end=10)]), part, progress=False)
    state = load_resume(part / "resume.pt")
    state["config"] = load_resume(full / "resume.pt")["config"]
    save_resume(state, part / "resume.pt")
    train(KV_1L, TASK, tiny_train(interventions=[Intervention(**freeze, end=15)]), part, progress=False)
    a, b = (pd.read_csv(p / "metrics.csv").drop(columns="train_seconds") for p in (full, part))
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    last = [bare_state_dict(load_model(p / "checkpoints" / "step_0000020.safetensors")) for p in (full, part)]
    assert all(torch.equal(last[0][k], last[1][k]) for k in last[0])
    at_12 = bare_state_dict(load_model(part / "checkpoints" / "step_0000012.safetensors"))
    init = bare_state_dict(load_model(part / "checkpoints" / "step_0000000.safetensors"))
    assert torch.equal(at_12["layers.0.attn.k.weight"][8:16], init["layers.0.attn.k.weight"][8:16])  # still frozen


def test_stop_gradient_zeroes_the_upstream_grads_only():
    model = build_module(KV_2L)
    plain = model(TOKENS)
    schedule = InterventionSchedule(model, [Intervention("blocks.0.attn.hook_pattern", "stop_grad")], 10, SEQ)
    schedule.at(0)
    out = model(TOKENS)
    torch.testing.assert_close(out, plain, **TOL)  # the value is untouched (explicit softmax instead of SDPA)
    out.logsumexp(-1).mean().backward()
    g = {n: p.grad for n, p in model.named_parameters()}
    upstream = ["layers.0.attn.q.weight", "layers.0.attn.q.bias", "layers.0.attn.k.weight", "layers.0.attn.k.bias",
                "layers.0.attn.k_shift.weight"]
    assert all(g[n] is None or not g[n].any() for n in upstream)
    elsewhere = ["layers.0.attn.v.weight", "layers.0.attn.v_shift.weight", "layers.0.attn.o.weight",
                 "layers.1.attn.q.weight", "layers.1.attn.k.weight", "tok_embed.weight"]
    assert all(g[n].abs().sum() > 0 for n in elsewhere)


def test_the_window_is_respected(tmp_path):
    plain = train(KV_1L, TASK, tiny_train(), tmp_path / "plain", progress=False)
    iv = Intervention("blocks.0.attn.hook_pattern", "clamp", "uniform", start=10, end=15)
    train(KV_1L, TASK, tiny_train(interventions=[iv]), tmp_path / "clamped", progress=False)
    a, b = (pd.read_csv(tmp_path / p / "metrics.csv").set_index("step").drop(columns="train_seconds")
            for p in ("plain", "clamped"))
    pd.testing.assert_frame_equal(a.loc[:10], b.loc[:10], check_exact=True)  # evaluation 10 sees step 9: untouched
    assert (a.loc[15:, "eval_loss"] != b.loc[15:, "eval_loss"]).all()
    assert plain["status"] == "completed"


def test_interventions_come_from_hydra_and_from_python_alike():
    from kvshift_lens.training.run_config import compose

    run = compose(["train.interventions=[{hook: blocks.0.attn.hook_pattern, action: clamp, value: previous_token, "
                   "heads: [1], end: 100}]"])
    assert run.train.interventions == [Intervention("blocks.0.attn.hook_pattern", "clamp", "previous_token", [1], 0, 100)]
    assert TrainConfig(interventions=[Intervention("blocks.0.attn.hook_v", "zero")]).interventions[0].action == "zero"
    assert compose([]).train.interventions == []
    with pytest.raises(ConfigError, match=r"^train.compile=true with train.interventions is not supported"):
        TrainConfig(compile=True, interventions=[Intervention("blocks.0.attn.hook_v", "zero")]).validate()


def test_every_hook_name_is_one_the_bridge_has():
    bridge = to_bridge(build_module(KV_2L))
    names = set(bridge.hook_dict) | set(bridge._hook_alias_registry) if hasattr(bridge, "_hook_alias_registry") \
        else set(bridge.hook_dict)
    _, cache = bridge.run_with_cache(TOKENS)
    hooks = [n for n in hook_sites(bridge) if not n.endswith(".coefficients")]
    assert hooks and all(n in cache or n in names for n in hooks)


BAD = [  # (case, intervention, text of the one line)
    ("unknown-hook", Intervention("blocks.9.attn.hook_pattern", "zero"),
     "no hook 'blocks.9.attn.hook_pattern' to intervene on in this model; closest: blocks.0.attn.hook_pattern"),
    ("shape", Intervention("blocks.0.attn.hook_pattern", "clamp", [[1.0, 0.0, 0.0]]),
     "value has shape [1, 3], which does not broadcast to the hook's shape without the batch axis [2, 16, 16]"),
    ("window", Intervention("blocks.0.attn.hook_v", "zero", start=30), "the window [30, None) lies outside"),
    ("heads", Intervention("blocks.0.attn.hook_z", "zero", heads=[2]), "heads=[2]: out of range, the hook has 2 heads"),
    ("pattern-name", Intervention("blocks.0.attn.hook_v", "clamp", "induction"),
     "value='induction' is an attention pattern: it clamps a blocks.<layer>.attn.hook_pattern hook"),
    ("empty-heads", Intervention("blocks.0.attn.hook_pattern", "clamp", "previous_token", heads=[]), "list each head once"),
]


@pytest.mark.parametrize("case,iv,message", BAD, ids=[c[0] for c in BAD])
def test_bad_interventions_raise_one_line_and_leave_no_run_directory(tmp_path, case, iv, message):
    with pytest.raises(ConfigError) as e:
        train(KV_1L, TASK, tiny_train(interventions=[iv]), tmp_path / "run", progress=False)
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert not (tmp_path / "run").exists()


CLI_BAD = [
    ("{hook: blocks.9.attn.hook_pattern, action: zero}", "closest: blocks.0.attn.hook_pattern"),
    ("{hook: blocks.0.attn.hook_pattern, action: clamp, value: [[1.0, 0.0]]}", "does not broadcast to the hook's shape"),
    ("{hook: blocks.0.attn.hook_v, action: zero, start: 9}", "lies outside the run's steps [0, 4)"),
    ("{hook: blocks.0.attn.hook_z, action: zero, heads: [5]}", "out of range, the hook has 4 heads"),
]


def test_bad_interventions_on_the_command_line_get_one_line_and_no_run_directory(tmp_path):
    tiny = ["train.steps=4", "train.warmup=1", "train.eval_every=2", "progress=false"]  # the run directory's name
    # holds every override, and one path component allows 255 characters
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}

    def run(i: int, spec: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "experiments.train", *tiny, f"train.interventions=[{spec}]",
                               f"out_dir={tmp_path / str(i)}"], cwd=ROOT, env=env, text=True, capture_output=True,
                              timeout=300)

    with ThreadPoolExecutor(max_workers=2) as pool:  # each case costs one interpreter start
        results = list(pool.map(run, range(len(CLI_BAD)), [spec for spec, _ in CLI_BAD]))
    for i, (r, (_, message)) in enumerate(zip(results, CLI_BAD)):
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert r.returncode == 2 and len(lines) == 1 and message in lines[0], r.stderr
        out = tmp_path / str(i)
        assert not [p for p in out.rglob("*") if p.is_file()] if out.exists() else True


# ----------------------------------------------------------------------------------------- the studies (§2)

from kvshift_lens.report import interventions as study  # noqa: E402
from kvshift_lens.report.verdicts import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED  # noqa: E402


@pytest.mark.parametrize("lo,hi,outcome,reason", [
    (0.6, 1.3, REPRODUCED, ""),  # includes 100 %, excludes 0
    (-0.3, 0.4, NOT_REPRODUCED, ""),  # consistent with closing none, excludes 100 %
    (-0.9, -0.1, NOT_REPRODUCED, ""),  # the clamp slows vanilla down
    (-0.2, 1.4, INCONCLUSIVE, "interval too wide"),
    (0.2, 0.7, INCONCLUSIVE, "closes part of the gap"),
    (1.2, 1.8, INCONCLUSIVE, "closes more than the gap"),
    (float("nan"), float("nan"), INCONCLUSIVE, "gap or medians undefined"),
])
def test_the_gap_rule_gives_each_outcome(lo, hi, outcome, reason):
    v = study.gap_verdict((lo + hi) / 2, lo, hi)
    assert (v.outcome, v.reason) == (outcome, reason)


def synthetic_cells(times: dict[tuple[str, int], list[float]], budget: float = 2000) -> pd.DataFrame:
    """`cell_results`-like rows: (arm, release) -> time to 90 % per seed (NaN: never reached, censored at budget)."""
    rows = [{"task": "induction", "arm": arm, "release": release, "seed": seed, "time": budget if t != t else t, "event": t == t,
             "run": f"{arm}/{release}/{seed}"}
            for (arm, release), ts in times.items() for seed, t in enumerate(ts)]
    return pd.DataFrame(rows)


VANILLA_TIMES = [1000, 1100, 1150, 1200, 1050, 1250]
KV_TIMES = [300, 300, 325, 300, 275, 350]


@pytest.mark.parametrize("clamped,outcome", [
    (KV_TIMES, REPRODUCED),  # the clamp makes vanilla 2L as fast as KV-shift 1L
    (VANILLA_TIMES[::-1], NOT_REPRODUCED),  # the clamp changes nothing
    ([650, 700, 675, 725, 600, 700], INCONCLUSIVE),  # half the gap
])
def test_a_free_previous_token_head_is_judged_on_synthetic_times(clamped, outcome):
    cells = synthetic_cells({(study.VANILLA, 0): VANILLA_TIMES, (study.CLAMPED, 0): clamped, (study.KV, 0): KV_TIMES})
    table, verdict = study.free_head(cells, n_boot=500)
    assert verdict.outcome == outcome, verdict.evidence
    assert list(table.arm) == [study.VANILLA, study.CLAMPED, study.KV] and (table.seeds == 6).all()


@pytest.mark.parametrize("released,outcome", [
    ({200: [500, 525, 475, 550, 500, 525], 1000: [1300, 1325, 1275, 1350, 1300, 1300]}, REPRODUCED),
    ({200: [500, 525, 475, 550, 500, 525], 1000: [1900, float("nan"), 1950, float("nan"), float("nan"), 1975]},
     NOT_REPRODUCED),  # a late release takes far longer (or never gets there)
])
def test_switching_the_shift_off_then_on_is_judged_on_synthetic_times(released, outcome):
    times = {(study.KV, 0): KV_TIMES, **{(study.RELEASED, s): t for s, t in released.items()}}
    table, verdict = study.release_delays(synthetic_cells(times))
    assert verdict.outcome == outcome and list(table.release) == sorted(released)


def test_a_release_arm_cut_before_the_bound_is_inconclusive_not_a_failure():
    # s = 1000, bound 2 x 300 = 600 steps after release; the runs stopped at 1,400 without reaching 90 %: not yet late
    times = {(study.KV, 0): KV_TIMES, (study.RELEASED, 1000): [float("nan")] * 6}
    table, verdict = study.release_delays(synthetic_cells(times, budget=1400))
    assert verdict.outcome == INCONCLUSIVE and table.watched_after_release.iloc[0] == 400
    assert study.release_delays(synthetic_cells(times, budget=2000))[1].outcome == NOT_REPRODUCED  # watched 1,000


def test_the_release_rule_is_inconclusive_without_a_baseline_median():
    times = {(study.KV, 0): [float("nan")] * 6, (study.RELEASED, 200): [500] * 6}
    assert study.release_delays(synthetic_cells(times))[1].outcome == INCONCLUSIVE


def test_arms_are_read_from_the_run_config():
    clamp = [{"hook": "blocks.0.attn.hook_pattern", "action": "clamp", "value": "previous_token"}]
    off = [{"hook": f"blocks.0.attn.{s}_shift.coefficients", "action": "clamp", "value": "shift_off", "end": 500}
           for s in "kv"]
    assert study.arm_of("none", 2, None) == (study.VANILLA, 0)
    assert study.arm_of("none", 2, clamp) == (study.CLAMPED, 0)
    assert study.arm_of("kv_shift", 1, []) == (study.KV, 0)
    assert study.arm_of("kv_shift", 1, off) == (study.RELEASED, 500)


def test_one_command_runs_the_tiny_intervention_study_end_to_end(tmp_path):
    cmd = [sys.executable, "-m", "experiments.interventions", "--profile", "tiny", "--out-dir", str(tmp_path / "runs"),
           "--results-dir", str(tmp_path / "results")]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    res = tmp_path / "results"
    cells = pd.read_csv(res / "interventions_tiny_cells.csv")
    induction = cells[cells.task == "induction"]
    assert set(induction.arm) == {study.VANILLA, study.CLAMPED, study.KV, study.RELEASED, f"{study.ABLATED}0",
                                  f"{study.ABLATED}1"} and (induction.n_lrs == 3).all()
    assert set(cells.loc[cells.task == "mqar", "arm"]) == {
        "kvshift_1l", "kvshift_1l+lags_off[k_shift,v_shift]", "kvshift_1l+lags_off[k_shift]", "canon_1l",
        "canon_1l+lags_off[k_mix,q_mix,v_mix,x_mix]", "canon_1l+lags_off[x_mix]", "canon_1l+lags_off[k_mix,q_mix,v_mix]",
        "short_conv_1l", "short_conv_1l+lags_off[x_mix]"}
    assert set(cells.loc[cells.arm == study.RELEASED, "release"]) == {2}
    for suffix in ("_free_head.csv", "_release.csv", ".png", "_provenance.json", "_subcircuits.png", "_ablation.csv",
                   "_development.csv"):
        assert (res / f"interventions_tiny{suffix}").stat().st_size > 0
    timings = pd.read_csv(res / "interventions_tiny_subcircuits.csv")  # from the detected arms' heads.csv
    assert set(timings.arm) == {study.VANILLA, study.KV} and (timings.groupby("arm").seed.nunique() == 2).all()
    assert set(timings.loc[timings.arm == study.KV, "subcircuit"]) == {"A", "A_shift", "B", "C", "induction"}
    family = pd.read_csv(res / "interventions_tiny_family.csv")
    assert family.groupby("arm").size().to_dict() == {"canon_1l": 3, "kvshift_1l": 2, "short_conv_1l": 1}
    md = (res / "interventions_tiny.md").read_text()  # 5 studies and one verdict per lags-off arm
    assert md.count("**Verdict:") == 11 and md.count("Rule:") == 11 and md.count("Baseline:") == 11
    development = pd.read_csv(res / "interventions_tiny_development.csv")  # the LLC of the detected arms' runs
    assert set(development.arm) == {study.VANILLA, study.KV} and (development.groupby("arm").seed.nunique() == 2).all()
    trained = [json.loads(p.read_text())["train"].get("interventions") for p in (tmp_path / "runs").rglob("config.json")]
    assert sum(ivs is not None and ivs[0]["value"] == "previous_token" for ivs in trained) == 6  # 3 lrs x 2 seeds
    assert sum(ivs is not None and ivs[0].get("heads") == [1] for ivs in trained) == 6


def test_the_intervention_benchmark_family_reports_its_ratio_without_timing_asserts(tmp_path):
    import argparse

    from benchmarks import interventions as family
    from benchmarks.harness import Context

    ctx = Context(device=torch.device("cpu"), quick=True, rounds=1, threads=1, tmp=tmp_path, options=argparse.Namespace())
    res = family.measure(ctx)
    assert res["intervention_step_ratio"] > 0 and set(res["interventions"]["ratio_vs_plain"]) == set(family.CLAMPS) - {"plain"}
    assert "| previous_token |" in "\n".join(family.markdown(res))


def test_a_long_interventions_override_gets_a_short_stable_run_directory_that_resumes(tmp_path):
    from kvshift_lens.training.run_dirs import MAX_COMPONENT, path_safe

    ivs = ", ".join(f"{{hook: blocks.0.attn.hook_{side}, action: zero, heads: [{h}], start: 1, end: 3}}"
                    for side in "qkv" for h in range(2))  # well past one file name's 255 characters
    cmd = [sys.executable, "-m", "experiments.train", "model.d_model=8", "model.n_heads=2", "task.d_vocab=16",
           "task.seq_len=8", "train.steps=4", "train.warmup=1", "train.eval_every=2", "train.eval_size=8",
           "train.batch_size=4", "train.n_checkpoints=0", "progress=false", f"train.interventions=[{ivs}]",
           f"out_dir={tmp_path}"]
    first, again = (subprocess.run(cmd, cwd=ROOT, text=True, capture_output=True, timeout=300) for _ in range(2))
    assert first.returncode == 0 and again.returncode == 0, first.stderr[-2000:] + again.stderr[-2000:]
    runs = [p.parent for p in tmp_path.rglob("summary.json")]
    assert len(runs) == 1  # the same command found the same directory
    level = runs[0].parent.name
    assert len(level) <= MAX_COMPONENT and level.startswith("model.d_model=8,") and "~" in level
    assert path_safe("train.interventions=" + "x" * 300) != path_safe("train.interventions=" + "x" * 299 + "y")
    metrics = pd.read_csv(runs[0] / "metrics.csv")
    assert metrics["step"].is_unique and metrics["step"].max() == 4  # resumed at the end: no step trained twice
    saved = json.loads((runs[0] / "config.json").read_text())["train"]["interventions"]
    assert len(saved) == 6 and saved[0]["heads"] == [0]


def group_interventions(name: str) -> list[Intervention]:
    import yaml

    return [Intervention(**iv) for iv in yaml.safe_load((ROOT / "conf" / "interventions" / f"{name}.yaml").read_text())
            ["interventions"]]


GROUP_MODELS = {  # conf/interventions group -> (mixer, layers) of the arm it is trained on in the study
    "none": ("kv_shift", 1), "prev_token_clamp": ("none", 2), "lags_off_kv_shift": ("kv_shift", 1),
    "lags_off_kv_shift_k": ("kv_shift", 1), "lags_off_canon": ("canon", 1), "lags_off_canon_a": ("canon", 1),
    "lags_off_canon_b": ("canon", 1), "lags_off_short_conv": ("short_conv", 1),
    **{f"ablate_l0h{h}": ("none", 2) for h in range(4)},
    **{f"shift_off_{s}": ("kv_shift", 1) for s in (2, 200, 500, 1000)},
}


def test_every_intervention_group_binds_to_the_model_of_its_arm():
    assert set(GROUP_MODELS) == {p.stem for p in (ROOT / "conf" / "interventions").glob("*.yaml")}
    for name, (mixer, layers) in GROUP_MODELS.items():
        model = build_module(ModelConfig(mixer=mixer, n_layers=layers, d_model=16, n_heads=4, d_vocab=16, n_ctx=16))
        schedule = InterventionSchedule(model, group_interventions(name), steps=3000, seq_len=16)
        assert len(schedule.bound) == len(group_interventions(name)), name
        arm, release = study.arm_of(mixer, layers, [vars(iv) for iv in group_interventions(name)])
        assert "+interventions" not in arm, (name, arm)  # every group is an arm the report knows


def test_the_cpu_and_cluster_profiles_compose_with_every_arm():
    from kvshift_lens.training import sweeps

    for experiment, n_jobs in (("interventions", 342), ("interventions_cluster", 912)):
        jobs = sweeps.expand_jobs(sweeps.experiment_spec(experiment))
        assert len(jobs) == n_jobs, experiment
        groups = {o.split("=", 1)[1] for job in jobs for o in job if o.startswith("+interventions=")}
        assert groups <= set(GROUP_MODELS) and {"ablate_l0h3", "lags_off_canon"} <= groups, groups


def test_a_pattern_value_on_a_misspelled_hook_names_the_hook_a_pattern_belongs_to():
    from kvshift_lens.core.errors import ConfigError
    from kvshift_lens.training.interventions import Intervention

    with pytest.raises(ConfigError, match=r"is an attention pattern: it clamps a blocks.<layer>.attn.hook_pattern "
                                          r"hook, not 'blocks.0.attn.hook_patern'"):
        Intervention(hook="blocks.0.attn.hook_patern", action="clamp", value="previous_token").validate()


def split_table(vanilla: list, kv: list) -> pd.DataFrame:
    """development_table-like rows: per seed, does the bump split (None: induction never formed)?"""
    return pd.DataFrame([{"arm": arm, "seed": seed, "induction_split": split}
                         for arm, splits in ((study.VANILLA, vanilla), (study.KV, kv)) for seed, split in enumerate(splits)])


@pytest.mark.parametrize("vanilla,kv,outcome", [
    ([True] * 5 + [False], [False] * 6, REPRODUCED),  # 5/6 split vs 0/6: Fisher p = 0.008
    ([True, True, False, False, False, False], [False] * 6, NOT_REPRODUCED),  # vanilla 2L rarely splits
    ([True] * 6, [True] * 5 + [False], NOT_REPRODUCED),  # KV-shift 1L splits too
    ([True] * 4 + [False] * 2, [False] * 4 + [True] * 2, INCONCLUSIVE),  # between the bounds: 4/6 vs 2/6, p = 0.28
    ([True, True, None, None, None, None], [False] * 6, INCONCLUSIVE),  # too few decided vanilla runs
    ([False] * 6, [None] * 6, NOT_REPRODUCED),  # vanilla never splits: decided whatever KV-shift 1L shows
])
def test_the_developmental_split_rule_gives_each_outcome(vanilla, kv, outcome):
    verdict = study.split_verdict(split_table(vanilla, kv))
    assert verdict.outcome == outcome, verdict.evidence


def test_the_development_table_reads_the_best_lr_runs_of_the_two_detected_arms():
    cells = synthetic_cells({(study.VANILLA, 0): VANILLA_TIMES[:2], (study.KV, 0): KV_TIMES[:2],
                             (study.CLAMPED, 0): KV_TIMES[:2]})
    summaries = {run: {"induction_split": i % 2 == 0, "llc_stage_boundaries": [100]} for i, run in enumerate(cells.run)}
    table = study.development_table(cells, summaries)
    assert list(table.arm) == [study.KV, study.KV, study.VANILLA, study.VANILLA]
    assert list(table.columns) == study.DEV_COLUMNS and table.llc_stage_boundaries.iloc[0] == [100]
