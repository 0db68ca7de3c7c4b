"""Olsson et al.'s ICL score and our band variant (kvshift_lens.data.icl) on losses whose answer is known."""

import pytest
import torch

from kvshift_lens.data.icl import icl_band_from_token_losses, icl_from_token_losses, icl_positions, token_losses


def test_icl_positions_are_olssons_50th_and_500th_tokens_rescaled_to_the_context():
    assert icl_positions(512) == (49, 499)  # 0-based indices of the 50th and 500th token
    assert icl_positions(256) == (24, 249)
    assert icl_positions(63) == (5, 61)
    assert icl_positions(3) == (1, 2)


def test_icl_score_of_constructed_logits_is_the_late_minus_the_early_token_loss():
    seq, vocab = 256, 5
    tokens = torch.zeros(4, seq, dtype=torch.long)  # every next token is id 0
    p_right = torch.linspace(0.2, 0.9, seq)  # P(next token) predicted at each position rises along the context
    rest = ((1 - p_right) / (vocab - 1))[:, None].expand(seq, vocab - 1)
    logits = torch.cat([p_right[:, None], rest], dim=1).log().expand(4, seq, vocab)
    losses = token_losses(logits, tokens)
    early, late = icl_positions(seq)
    assert losses[:, 0].isnan().all() and torch.allclose(losses[:, 1:], -p_right[:-1].log().expand(4, -1))
    expected = (-p_right[late - 1].log() + p_right[early - 1].log()).item()  # position p is predicted at p - 1
    assert icl_from_token_losses(losses) == pytest.approx(expected) and expected < -1.0
    band = (-p_right[234 - 1 : 250 - 1].log().mean() + p_right[9 - 1 : 25 - 1].log().mean()).item()  # T/16 = 16 tokens
    assert icl_band_from_token_losses(losses) == pytest.approx(band, rel=1e-5)
