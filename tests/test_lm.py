"""Language-model analysis (kvshift_lens.analysis.lm_heads) and the text-task data path (kvshift_lens.text_task)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from kvshift_lens.data.corpora import CorpusError
from kvshift_lens.data.icl import icl_positions, token_losses
from kvshift_lens.analysis.lm_heads import (
    LM_METRICS, Probe, copy_targets, head_emergence, icl_jump_step, lm_head_scores, random_repeats, run_induction_summary, text_induction_score, text_repeats,
)
from kvshift_lens.models.config import ModelConfig
from kvshift_lens.models.transformer import build_model
from kvshift_lens.data.tasks.text import eval_windows, lm_metrics, random_windows


@pytest.fixture(scope="module")
def text_cache(tmp_path_factory) -> str:
    """One token-stream cache for the module's runs: the corpus is encoded once."""
    return str(tmp_path_factory.mktemp("text_cache"))


def test_random_windows_are_seeded_slices_of_the_stream():
    stream = torch.arange(1000)
    a = random_windows(stream, 8, 16, torch.Generator().manual_seed(0))
    b = random_windows(stream, 8, 16, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == (8, 16)
    assert (a[:, 1:] - a[:, :-1] == 1).all() and a.max() < 1000  # consecutive tokens, never past the end


def test_eval_windows_chain_so_the_late_icl_token_is_the_next_windows_early_token():
    stream, seq = torch.arange(100_000), 256
    w = eval_windows(stream, 64, seq, chain=8)
    early, late = icl_positions(seq)
    assert w.shape == (64, seq) and (w[:, 1:] - w[:, :-1] == 1).all()
    within = [i for i in range(63) if (i + 1) % 8]  # consecutive windows of one chain
    assert torch.equal(w[within, late], w[[i + 1 for i in within], early])
    assert w[0, 0] == 0 and w[-1, -1] == len(stream) - 1  # chains spread from the start to the end
    with pytest.raises(CorpusError, match="task.seq_len"):
        eval_windows(torch.arange(500), 8, seq)


def test_lm_metrics_give_bits_per_byte_from_the_predicted_tokens_bytes():
    tokens = torch.tensor([[0, 1, 2, 1], [2, 2, 1, 0]])
    token_bytes = torch.tensor([0, 1, 3])  # EOT has no bytes; id 2 stands for a 3-byte character
    losses = torch.full((2, 4), 2.0)
    losses[:, 0] = math.nan
    m = lm_metrics(losses, tokens, token_bytes)
    assert m["eval_bpb"] == pytest.approx(2.0 * 6 / math.log(2) / ((1 + 3 + 1) + (3 + 1 + 0)))  # targets x[:, 1:]


def test_random_repeats_draw_only_the_given_ids_after_eot():
    ids = torch.tensor([5, 9, 40])
    tokens = random_repeats(ids, 6, 10, torch.Generator().manual_seed(0))
    assert tokens.shape == (6, 21) and (tokens[:, 0] == 0).all()
    assert set(tokens[:, 1:].unique().tolist()) <= {5, 9, 40}
    assert torch.equal(tokens[:, 1:11], tokens[:, 11:])


def test_text_induction_score_counts_every_second_copy_token_even_when_it_repeats_in_the_text():
    text = torch.tensor([[7, 7, 7, 3, 7, 3]])  # every token repeats inside the segment
    tokens = text_repeats(text, 6)
    seq, period = tokens.shape[1], 6
    assert tokens.tolist() == [[0, 7, 7, 7, 3, 7, 3, 7, 7, 7, 3, 7, 3]]
    targets = copy_targets(seq, period)[0]
    assert targets.sum() == period and targets[period + 1, 2] and targets[2 * period, period + 1]
    perfect = targets.float()
    perfect[~targets.any(-1)] = torch.eye(seq)[~targets.any(-1)]  # other rows attend to themselves
    assert text_induction_score(perfect[None, None], period).item() == pytest.approx(1.0)
    uniform = torch.ones(seq, seq).tril()
    uniform = uniform / uniform.sum(-1, keepdim=True)
    assert text_induction_score(uniform[None, None], period).item() < 0.2


def test_lm_head_scores_give_every_metric_for_every_head():
    model = build_model(ModelConfig(mixer="kv_shift", n_layers=2, d_model=16, n_heads=2, d_vocab=30, n_ctx=33))
    probe = Probe.from_streams(np.arange(1, 30).repeat(3), torch.randint(1, 30, (20, 32),
                               generator=torch.Generator().manual_seed(0)), batch_size=4)
    df = lm_head_scores(model, probe)
    assert set(df.metric) == set(LM_METRICS) and len(df) == len(LM_METRICS) * 4
    assert df.value.between(0, 1).all()


def heads_frame(series: dict[tuple[int, int], list[float]], steps: list[int]) -> pd.DataFrame:
    return pd.DataFrame([{"step": s, "layer": l, "head": h, "metric": "induction_score", "value": v}
                         for (l, h), vals in series.items() for s, v in zip(steps, vals)])


def test_first_induction_head_is_the_one_that_stays_above_threshold_earliest():
    steps = [0, 10, 20, 40, 80]
    heads = heads_frame({(0, 0): [0.0, 0.6, 0.2, 0.7, 0.8],  # dips back below: emerges at 40
                         (1, 1): [0.0, 0.1, 0.55, 0.6, 0.9],  # stays from 20
                         (1, 0): [0.0, 0.0, 0.0, 0.1, 0.1]}, steps)
    order = head_emergence(heads, 0.5)
    assert order[["layer", "head"]].values.tolist()[:2] == [[1, 1], [0, 0]]
    assert order["emergence_step"].tolist()[:2] == [20, 40] and np.isnan(order["emergence_step"].iloc[2])


@pytest.mark.parametrize("icl, expected", [
    ([0.0, 0.01, -0.02, -0.3, -0.4, -0.42, -0.41], 30),  # midpoint -0.205: from step 30 on it stays below
    ([0.0, -0.3, 0.0, -0.3, -0.4, -0.42, -0.41], 30),  # an early dip that comes back does not count
    ([0.0, 0.01, -0.01, 0.0, -0.02, -0.01, -0.02], None),  # no drop of 0.05 nats: no ICL, no jump
])
def test_icl_jump_is_where_the_score_stays_past_half_its_drop(icl, expected):
    metrics = pd.DataFrame({"step": [0, 10, 20, 30, 40, 50, 60], "icl_band_score": icl})
    assert icl_jump_step(metrics) == expected


def test_run_summary_calls_a_jump_inside_the_emergence_bracket_co_occurring():
    steps = [0, 10, 20, 40, 80]
    heads = heads_frame({(0, 1): [0.0, 0.1, 0.2, 0.7, 0.8]}, steps)  # emerges at 40, bracket [20, 80]
    together = pd.DataFrame({"step": [0, 20, 30, 40, 80], "icl_band_score": [0.0, 0.0, -0.3, -0.4, -0.4]})
    apart = pd.DataFrame({"step": [0, 5, 10, 40, 80], "icl_band_score": [0.0, -0.4, -0.4, -0.4, -0.4]})
    s = run_induction_summary(heads, together, 0.5)
    assert s["first_induction_head"] == "L0H1" and s["emergence_step"] == 40 and s["induction_layers"] == [0]
    assert s["icl_jump_step"] == 30 and s["icl_jump_with_emergence"] is True
    assert run_induction_summary(heads, apart, 0.5)["icl_jump_with_emergence"] is False
    none = run_induction_summary(heads_frame({(0, 0): [0.0] * 5}, steps), together, 0.5)
    assert none["first_induction_head"] is None and none["icl_jump_with_emergence"] is None


def test_token_losses_feed_lm_metrics_on_a_real_model():
    model = build_model(ModelConfig(mixer="none", n_layers=1, d_model=16, n_heads=2, d_vocab=12, n_ctx=32))
    tokens = torch.randint(12, (4, 32), generator=torch.Generator().manual_seed(0))
    m = lm_metrics(token_losses(model(tokens), tokens), tokens, torch.ones(12, dtype=torch.long))
    assert m["eval_bpb"] == pytest.approx(token_losses(model(tokens), tokens)[:, 1:].mean().item() / math.log(2))


def test_tiny_lm_run_beats_the_unigram_baseline_and_logs_lm_metrics_at_every_checkpoint(tmp_path, text_cache):
    from kvshift_lens.models.config import ModelConfig as Config
    from kvshift_lens.data.tasks.base import make_task
    from kvshift_lens.data.tasks.text import TextConfig, unigram_cross_entropy
    from kvshift_lens.training.train_config import TrainConfig
    from kvshift_lens.training.trainer import checkpoint_steps, train

    task_cfg = TextConfig(seq_len=64, cache_dir=text_cache)
    model_cfg = Config(mixer="none", n_layers=1, d_model=32, n_heads=2, d_vocab=task_cfg.d_vocab, n_ctx=64,
                       attn_only=False, seed=0)
    cfg = TrainConfig(steps=120, lr=1e-2, batch_size=16, warmup=10, schedule="cosine", eval_every=60,
                      eval_size=64, n_checkpoints=4, eval_at_checkpoints=True, threads=1)
    summary = train(model_cfg, task_cfg, cfg, tmp_path / "run", progress=False)
    task = make_task(task_cfg)
    held = torch.cat([b.tokens for b in task.held_out(cfg.eval_size, cfg.batch_size, torch.Generator())])
    baseline = unigram_cross_entropy(task.train_stream, held, task_cfg.d_vocab)
    assert summary["final_eval_loss"] < baseline - 0.3  # context is used: better than token frequencies alone
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert {"eval_bpb", "icl_score", "icl_band_score"} <= set(metrics.columns)
    assert set(checkpoint_steps(120, 4)) <= set(metrics.step)  # evaluated where the detectors will run
    assert summary["train_tokens"] == 120 * 16 * 64 and summary["tokens_per_second"] > 0
    assert summary["final_eval_bpb"] == pytest.approx(metrics.eval_bpb.iloc[-1])
    from kvshift_lens.analysis.run_detection import analyze_run

    s = analyze_run(tmp_path / "run", batch_size=4)  # text runs get the LM detectors on every checkpoint
    heads = pd.read_csv(tmp_path / "run" / "heads.csv")
    assert set(heads.step) == set(checkpoint_steps(120, 4)) and set(LM_METRICS) <= set(heads.metric)
    assert {"first_induction_head", "induction_layers", "icl_jump_step", "icl_jump_with_emergence"} <= set(s)
    from kvshift_lens.models.checkpoints import load_model

    model = load_model(tmp_path / "run" / "checkpoints" / "step_0000120.safetensors")  # carries the char tokenizer
    assert model.to_str_tokens("ROMEO:") == ["<|endoftext|>", "R", "O", "M", "E", "O", ":"]


def test_a_killed_text_run_resumes_to_the_metrics_of_an_uninterrupted_one(tmp_path, monkeypatch, text_cache):
    from kvshift_lens.training import trainer
    from kvshift_lens.models.config import ModelConfig as Config
    from kvshift_lens.data.tasks.text import TextConfig

    task_cfg = TextConfig(seq_len=32, cache_dir=text_cache)
    model_cfg = Config(mixer="kv_shift", n_layers=1, d_model=16, n_heads=2, d_vocab=task_cfg.d_vocab, n_ctx=32)
    cfg = trainer.TrainConfig(steps=40, batch_size=4, warmup=5, schedule="cosine", eval_every=20, eval_size=16,
                              n_checkpoints=6, eval_at_checkpoints=True, threads=1)
    trainer.train(model_cfg, task_cfg, cfg, tmp_path / "full", progress=False)
    save = trainer.save_resume

    def killed_after_first_resume_point(obj, path):
        save(obj, path)
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "save_resume", killed_after_first_resume_point)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(model_cfg, task_cfg, cfg, tmp_path / "part", progress=False)
    monkeypatch.setattr(trainer, "save_resume", save)
    trainer.train(model_cfg, task_cfg, cfg, tmp_path / "part", progress=False)
    a, b = (pd.read_csv(tmp_path / d / "metrics.csv").drop(columns="train_seconds") for d in ("full", "part"))
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.parametrize("overrides, field", [
    ({"tokenizer": "word"}, "task.tokenizer='word'"),
    ({"corpus": "wiki"}, "task.corpus='wiki'"),
    ({"tokenizer": "bpe", "vocab_size": 100}, "task.vocab_size=100"),
    ({"d_vocab": 64}, "task.d_vocab=64"),
    ({"seq_len": 2}, "task.seq_len=2"),
])
def test_impossible_text_configs_name_the_field(overrides, field):
    from kvshift_lens.core.errors import ConfigError
    from kvshift_lens.data.tasks.base import task_config

    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        task_config("text", **overrides)


def test_text_configs_compose_with_the_tokenizer_vocabulary_and_bad_names_fail_in_one_line():
    from kvshift_lens.training.run_config import compose
    from kvshift_lens.core.errors import ConfigError

    run = compose(["model=vanilla_lm", "task=text", "train=lm", "task.tokenizer=bpe", "task.vocab_size=512"])
    assert run.model.d_vocab == run.task.d_vocab == 512 and run.model.n_ctx == run.task.seq_len == 256
    with pytest.raises(ConfigError, match=r"task\.tokenizer='word' is unknown: use one of"):
        compose(["task=text", "task.tokenizer=word"])  # one line: where the resolver failed, then our message


def test_one_command_runs_the_tiny_lm_study_end_to_end(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    res = tmp_path / "results"
    cmd = [sys.executable, "-m", "experiments.lm", "--profile", "tiny", "--out-dir", str(tmp_path / "runs"),
           "--results-dir", str(res)]
    r = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    runs = pd.read_csv(res / "lm_runs.csv")
    assert sorted(runs.label.unique()) == ["kvshift 2L llama", "vanilla 2L llama", "vanilla 4L babygpt"]
    assert len(runs) == 13 and (runs.train_tokens > 0).all()  # 2 archs × 2 seeds × (2 grid rates + 1 added) + anchor
    lrs = pd.read_csv(res / "lm_lrs.csv").set_index(["label", "lr"])
    assert "lr round 1: 4 runs" in r.stdout and "lr round 2" not in r.stdout  # 3e-2 added; 1e-1 is past tiny's bound
    assert lrs.loc[("kvshift 2L llama", 0.03), "seeds"] == lrs.loc[("vanilla 2L llama", 0.03), "seeds"] == 2
    for name in ("curves.csv", "heads.csv", "alpha_beta.csv", "curves.png", "heads.png", "table4.png"):
        assert (res / f"lm_{name}").stat().st_size > 0
    prov = json.loads((res / "lm.provenance.json").read_text())
    assert prov["adaptive_rounds_this_invocation"] == 1 and prov["adaptive_policy"]["lr_bounds"] == [1e-3, 3e-2]
    assert prov["seeds"] == [0, 1] and set(prov["verdicts"]) == {"lm_gap", "lm_induction_heads", "lm_table4"}
    report = (res / "REPORT.md").read_text()
    assert "<!-- lm -->" in report and "### lm_gap" in report and "**Verdict:" in report
    again = subprocess.run([*cmd, "--skip-train"], cwd=root, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and pd.read_csv(res / "lm_runs.csv").equals(runs)  # outputs are functions of the runs
