"""Language-model analysis (kvshift_lens.lm) and the text-task data path (kvshift_lens.text_task)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from kvshift_lens.detect import icl_positions, token_losses
from kvshift_lens.lm import (
    LM_METRICS, Probe, copy_targets, head_emergence, icl_jump_step, lm_head_scores, random_repeats,
    run_induction_summary, text_induction_score, text_repeats,
)
from kvshift_lens.models import ModelConfig, build_model
from kvshift_lens.text_task import eval_windows, lm_metrics, random_windows


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
    with pytest.raises(ValueError, match="task.seq_len"):
        eval_windows(torch.arange(500), 8, seq)


def test_lm_metrics_give_bits_per_byte_from_the_predicted_tokens_bytes():
    tokens = torch.tensor([[0, 1, 2, 1], [2, 2, 1, 0]])
    token_bytes = torch.tensor([0, 1, 3])  # EOT has no bytes; id 2 stands for a 3-byte character
    losses = torch.full((2, 4), 2.0)
    losses[:, 0] = math.nan
    m = lm_metrics(losses, tokens, token_bytes)
    assert m["eval_loss"] == pytest.approx(2.0)
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
    model = build_model(ModelConfig(arch="kvshift", n_layers=2, d_model=16, n_heads=2, d_vocab=30, n_ctx=33))
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
    model = build_model(ModelConfig(arch="vanilla", n_layers=1, d_model=16, n_heads=2, d_vocab=12, n_ctx=32))
    tokens = torch.randint(12, (4, 32), generator=torch.Generator().manual_seed(0))
    m = lm_metrics(token_losses(model(tokens), tokens), tokens, torch.ones(12, dtype=torch.long))
    assert m["eval_bpb"] == pytest.approx(m["eval_loss"] / math.log(2))
