"""Ready-made attention patterns to clamp `hook_pattern` to (Singh et al. 2024's "artificial optogenetics"): a perfect
previous-token head, a perfect induction head, uniform causal attention. Rows are queries, columns keys; every row
sums to 1 and puts nothing on later positions. A query with nothing to attend to by the rule (position 0 for the
previous token, a token's first occurrence for induction) attends to position 0, the [BOS] every sequence starts with.
"""

from __future__ import annotations

import torch


def previous_token_pattern(seq: int) -> torch.Tensor:
    """[q, k]: query t attends to key t - 1 (query 0 to itself).

    >>> previous_token_pattern(3)
    tensor([[1., 0., 0.],
            [1., 0., 0.],
            [0., 1., 0.]])
    """
    keys = (torch.arange(seq) - 1).clamp(min=0)  # [q]: the attended key
    return torch.nn.functional.one_hot(keys, seq).float()


def induction_pattern(tokens: torch.Tensor) -> torch.Tensor:
    """[batch, q, k] from tokens [batch, pos]: query t attends to the position after the previous occurrence of
    its token (j + 1, j = max{s < t : tokens[s] = tokens[t]}), i.e. to the token that followed it last time
    (Olsson et al. 2022's induction target); no earlier occurrence: key 0.

    >>> induction_pattern(torch.tensor([[0, 5, 7, 5]]))[0].argmax(-1)
    tensor([0, 0, 0, 2])
    """
    seq = tokens.shape[1]
    same = tokens[:, :, None] == tokens[:, None, :]  # [batch, q, k]
    earlier = torch.ones(seq, seq, dtype=torch.bool, device=tokens.device).tril(-1)  # k < q
    after = torch.arange(1, seq + 1, device=tokens.device)  # key s -> s + 1
    keys = ((same & earlier) * after).amax(-1)  # [batch, q]: j + 1 of the last earlier match, 0 for none
    return torch.nn.functional.one_hot(keys, seq).float()


def uniform_pattern(seq: int) -> torch.Tensor:
    """[q, k]: query t attends equally to keys 0..t (what an attention with all scores equal computes).

    >>> uniform_pattern(3)[2]
    tensor([0.3333, 0.3333, 0.3333])
    """
    causal = torch.ones(seq, seq).tril()
    return causal / causal.sum(-1, keepdim=True)
