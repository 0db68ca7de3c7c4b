"""Behaviour of the synthetic task generators in kvshift_lens.tasks."""

from __future__ import annotations

import pytest
import torch

from kvshift_lens.tasks import (
    BOS,
    N_SPECIAL,
    NO_ANSWER,
    PAD,
    TASK_NAMES,
    TaskConfig,
    _induction_layout,
    _random_subsets,
    _walk,
    hop_k,
    hop_k_reference,
    make_task,
    previous_occurrence,
)

SHAPES = [(5, 16), (6, 16), (33, 64), (64, 64), (64, 8000)]  # (seq_len, d_vocab): odd/even, tiny, paper vocab


def _sample(name: str, seed: int = 0, batch: int = 16, **overrides) -> tuple:
    """A task built from `overrides` and one batch drawn with a generator seeded `seed`."""
    task = make_task(TaskConfig(name=name, **overrides))
    return task, task.sample(batch, torch.Generator().manual_seed(seed))


def _scored(batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, position) of every scored position."""
    rows, cols = batch.mask.nonzero(as_tuple=True)
    return rows, cols


def _previous_occurrence_loop(row: list[int]) -> list[int]:
    """Most recent earlier index of the same value, -1 if none."""
    seen: dict[int, int] = {}
    out = []
    for i, value in enumerate(row):
        out.append(seen.get(value, -1))
        seen[value] = i
    return out


def _induction_layout_loop(draws: list[int], n: int, length: int) -> tuple[list[int], list[bool]]:
    """The documented pairing rule, one draw at a time: windows of 2n draws, two passes."""
    span = 2 * n
    key = [(k // span, v) for k, v in enumerate(draws)]
    prev = _previous_occurrence_loop(key)  # previous draw of the same candidate in the window

    def pair(placed: int) -> tuple[list[bool], dict, list[int]]:
        pair_from: dict = {}
        paired, starts, position = [], [], 0
        for k in range(len(draws)):
            if prev[k] >= 0 and key[k] not in pair_from:
                copied = draws[prev[k] + 1]
                horizon = min(placed, (k // span + 1) * span + 1)  # rest of the window + next window's first
                if all(draws[j] != copied for j in range(k + 1, horizon)):
                    pair_from[key[k]] = k
            paired.append(prev[k] >= 0 and key[k] in pair_from)
            starts.append(position)
            position += 1 + paired[-1]
        return paired, pair_from, starts

    _, _, starts = pair(len(draws))
    paired, pair_from, starts = pair(sum(s < length for s in starts))
    ids: list[int] = []
    scored: list[bool] = []
    for k, v in enumerate(draws):
        ids.append(v)
        scored.append(paired[k] and starts[k] + 1 < length)
        if paired[k]:
            ids.append(draws[prev[pair_from[key[k]]] + 1])
            scored.append(False)
    return ids[:length], scored[:length]


@pytest.mark.parametrize("name", TASK_NAMES)
def test_same_generator_state_gives_identical_batches(name):
    _, first = _sample(name, seed=3)
    _, second = _sample(name, seed=3)
    assert torch.equal(first.tokens, second.tokens) and torch.equal(first.mask, second.mask)


@pytest.mark.parametrize("name", TASK_NAMES)
def test_different_generator_seeds_give_different_batches(name):
    _, first = _sample(name, seed=3)
    _, second = _sample(name, seed=4)
    assert not torch.equal(first.tokens, second.tokens)


@pytest.mark.parametrize("name", TASK_NAMES)
@pytest.mark.parametrize("seq_len,d_vocab", SHAPES)
def test_batches_are_exactly_batch_by_seq_len_with_ids_in_vocab(name, seq_len, d_vocab):
    _, batch = _sample(name, batch=7, seq_len=seq_len, d_vocab=d_vocab, n_pairs=20)
    assert batch.tokens.shape == batch.mask.shape == (7, seq_len)
    assert batch.tokens.dtype == torch.int64 and batch.mask.dtype == torch.bool
    assert batch.tokens.device.type == "cpu"
    assert batch.tokens.min() >= 0 and batch.tokens.max() < d_vocab


@pytest.mark.parametrize("name", TASK_NAMES)
@pytest.mark.parametrize("seq_len,d_vocab", SHAPES)
def test_every_row_starts_with_bos_and_the_last_position_is_never_scored(name, seq_len, d_vocab):
    _, batch = _sample(name, seq_len=seq_len, d_vocab=d_vocab, n_pairs=20)
    assert (batch.tokens[:, 0] == BOS).all() and (batch.tokens[:, 1:] != BOS).all()
    assert not batch.mask[:, -1].any() and not batch.mask[:, 0].any()


def test_previous_occurrence_matches_a_loop():
    tokens = torch.randint(-3, 6, (40, 25), generator=torch.Generator().manual_seed(0))
    expected = [_previous_occurrence_loop(row) for row in tokens.tolist()]
    assert previous_occurrence(tokens).tolist() == expected


@pytest.mark.parametrize("seq_len,d_vocab", [(64, 64), (256, 64), (64, 8000), (12, 6)])
def test_induction_targets_are_the_token_after_the_most_recent_previous_occurrence(seq_len, d_vocab):
    _, batch = _sample("induction", batch=64, seq_len=seq_len, d_vocab=d_vocab)
    rows, cols = _scored(batch)
    prev = previous_occurrence(batch.tokens)[rows, cols]
    assert len(rows) > 0 and (prev >= 0).all()
    assert torch.equal(batch.tokens[rows, cols + 1], batch.tokens[rows, prev + 1])


@pytest.mark.parametrize("seq_len,d_vocab", [(64, 64), (256, 64), (64, 8000)])
def test_induction_never_emits_a_token_twice_in_a_row_or_a_special_after_bos(seq_len, d_vocab):
    _, batch = _sample("induction", batch=64, seq_len=seq_len, d_vocab=d_vocab)
    assert (batch.tokens[:, 1:] != batch.tokens[:, :-1]).all()
    assert (batch.tokens[:, 1:] >= N_SPECIAL).all()


def test_induction_rows_draw_from_seq_len_minus_one_candidate_tokens():
    _, batch = _sample("induction", batch=32, seq_len=24, d_vocab=1000)
    assert max(len(set(row[1:])) for row in batch.tokens.tolist()) <= 23


def test_induction_scores_about_a_fifth_of_the_positions_at_default_size():
    _, batch = _sample("induction", batch=512)
    assert 10.0 < batch.mask.sum(dim=1).float().mean() < 14.0  # measured 12.0 per 64-token row


@pytest.mark.parametrize("n,length", [(3, 20), (5, 60), (12, 40), (40, 40), (4, 9)])
def test_induction_layout_matches_the_loop_reference(n, length):
    draws = _walk(100, length, n, torch.Generator().manual_seed(n))
    ids, scored = _induction_layout(draws, n, length)
    for row in range(100):
        expected_ids, expected_scored = _induction_layout_loop(draws[row].tolist(), n, length)
        assert ids[row].tolist() == expected_ids and scored[row].tolist() == expected_scored


@pytest.mark.parametrize("n,size", [(10, 12), (10, 1000)])
def test_random_subsets_are_distinct_members_of_the_range(n, size):
    subsets = _random_subsets(50, n, size, torch.Generator().manual_seed(0))
    assert subsets.shape == (50, n) and subsets.min() >= 0 and subsets.max() < size
    assert all(len(set(row)) == n for row in subsets.tolist())


@pytest.mark.parametrize("seq_len", [5, 6, 64, 65])
def test_repeated_tokens_second_copy_equals_first_and_scores_r1_onwards(seq_len):
    _, batch = _sample("repeated_tokens", seq_len=seq_len)
    half = (seq_len - 1) // 2
    first, second = batch.tokens[:, 1 : 1 + half], batch.tokens[:, 1 + half : 1 + 2 * half]
    assert torch.equal(first, second) and (first >= N_SPECIAL).all()
    assert (batch.tokens[:, 1 + 2 * half :] == PAD).all()
    scored = batch.mask.nonzero(as_tuple=True)[1].unique().tolist()
    assert scored == list(range(1 + half, 2 * half))  # r[i - 1] of the second copy, predicting r[i]


def test_repeated_tokens_targets_copy_the_token_half_a_sequence_back():
    _, batch = _sample("repeated_tokens", seq_len=41)
    rows, cols = _scored(batch)
    assert torch.equal(batch.tokens[rows, cols + 1], batch.tokens[rows, cols + 1 - 20])


def test_ngram_scored_targets_are_the_table_entry_of_the_preceding_pair():
    task, batch = _sample("ngram", batch=32, seq_len=65)
    table = {tuple(row[:2]): row[2] for row in task.table.tolist()}
    rows, cols = _scored(batch)
    assert len(rows) == 32 * 21
    tokens = batch.tokens.tolist()
    for row, col in zip(rows.tolist(), cols.tolist()):
        assert table[(tokens[row][col - 1], tokens[row][col])] == tokens[row][col + 1]


def test_ngram_table_has_n_pairs_distinct_pairs_fixed_by_the_config_seed():
    table = make_task(TaskConfig(name="ngram", n_pairs=200, seed=5)).table
    assert table.shape == (200, 3) and len({tuple(row[:2]) for row in table.tolist()}) == 200
    assert table.min() >= N_SPECIAL and table.max() < 64
    assert torch.equal(table, make_task(TaskConfig(name="ngram", seed=5)).table)
    assert not torch.equal(table, make_task(TaskConfig(name="ngram", seed=6)).table)


@pytest.mark.parametrize("hops", [1, 2, 3, 5])
def test_hop_k_matches_the_reference_implementation(hops):
    x = torch.randint(4, (60, 30), generator=torch.Generator().manual_seed(hops))
    expected = [[-1 if a is None else a for a in hop_k_reference(row, hops)] for row in x.tolist()]
    assert hop_k(x, hops).tolist() == expected


def test_hop_1_is_induction():
    x = torch.randint(5, (20, 30), generator=torch.Generator().manual_seed(0))
    prev = previous_occurrence(x)
    induction = torch.where(prev >= 0, x.gather(1, (prev + 1).clamp(min=0)), -1)
    assert torch.equal(hop_k(x, 1), induction)


@pytest.mark.parametrize("hops,alphabet_size", [(1, 4), (2, 4), (4, 3), (8, 2)])
def test_hop_k_task_scores_only_the_last_symbol_and_its_answer_matches_the_reference(hops, alphabet_size):
    _, batch = _sample("hop_k", batch=64, seq_len=30, hops=hops, alphabet_size=alphabet_size)
    assert batch.mask.sum(dim=1).eq(1).all() and batch.mask[:, -2].all()
    x = batch.tokens[:, 1:-1]
    assert (x[:, 1:] != x[:, :-1]).all() and x.min() >= N_SPECIAL and x.max() < N_SPECIAL + alphabet_size
    for row, answer in zip(x.tolist(), batch.tokens[:, -1].tolist()):
        expected = hop_k_reference(row, hops)[-1]
        assert answer == (NO_ANSWER if expected is None else expected)


def test_chance_accuracy_is_one_over_the_number_of_possible_targets():
    assert make_task(TaskConfig(name="induction")).chance_accuracy == pytest.approx(1 / 61)
    assert make_task(TaskConfig(name="repeated_tokens", d_vocab=100)).chance_accuracy == pytest.approx(1 / 97)
    assert make_task(TaskConfig(name="hop_k", alphabet_size=4)).chance_accuracy == pytest.approx(1 / 5)
    ngram = make_task(TaskConfig(name="ngram", n_pairs=2, d_vocab=50))
    assert ngram.chance_accuracy == pytest.approx(1 / len(set(ngram.table[:, 2].tolist())))


@pytest.mark.parametrize(
    "overrides,field",
    [
        ({"name": "copy"}, "task.name"),
        ({"name": "induction", "seq_len": 3}, "task.seq_len"),
        ({"name": "repeated_tokens", "seq_len": 4}, "task.seq_len"),
        ({"name": "ngram", "seq_len": 3}, "task.seq_len"),
        ({"name": "hop_k", "seq_len": 4, "hops": 2}, "task.seq_len"),
        ({"name": "induction", "d_vocab": 5}, "task.d_vocab"),
        ({"name": "hop_k", "d_vocab": 6, "alphabet_size": 4}, "task.d_vocab"),
        ({"name": "ngram", "d_vocab": 10, "n_pairs": 50}, "task.n_pairs"),
        ({"name": "ngram", "n_pairs": 0}, "task.n_pairs"),
        ({"name": "hop_k", "hops": 0}, "task.hops"),
        ({"name": "hop_k", "alphabet_size": 1}, "task.alphabet_size"),
    ],
)
def test_impossible_configs_raise_value_error_naming_the_field(overrides, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        make_task(TaskConfig(**overrides))


def test_unknown_task_name_error_lists_the_valid_names():
    with pytest.raises(ValueError) as error:
        make_task(TaskConfig(name="copy"))
    assert all(name in str(error.value) for name in TASK_NAMES)
