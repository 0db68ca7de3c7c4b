"""Behaviour of the synthetic task generators in kvshift_lens.data.tasks."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from kvshift_lens.core.errors import ConfigError
from kvshift_lens.core.vocab import BOS, N_SPECIAL, NO_ANSWER, PAD
from kvshift_lens.data.tasks.base import TASKS, TaskConfig, make_task, previous_occurrence, task_config
from kvshift_lens.data.tasks.base import random_subsets, upgrade_legacy, walk
from kvshift_lens.data.tasks.hop_k import hop_k, hop_k_reference
from kvshift_lens.data.tasks.induction import _induction_layout
from kvshift_lens.data.tasks.mqar import power_law_gaps

SHAPES = [(5, 16), (6, 16), (33, 64), (64, 64), (64, 8000)]  # (seq_len, d_vocab): odd/even, tiny, paper vocab
BOS_TASKS = ("induction", "repeated_tokens", "ngram", "hop_k")  # the tasks on the shared BOS/PAD/NO_ANSWER layout
ALL_TASKS = TASKS.names()
SYNTHETIC = [n for n in ALL_TASKS if n != "text"]  # text reads a corpus, its vocabulary is its tokenizer's: test_lm.py
PINNED = json.loads((Path(__file__).parent / "data" / "pinned_digests.json").read_text())


def _sample(name: str, seed: int = 0, batch: int = 16, **overrides) -> tuple:
    """A task built from the `overrides` its config has and one batch drawn with a generator seeded `seed`."""
    fields = {f.name for f in dataclasses.fields(TASKS.get(name))}
    task = make_task(task_config(name, **{k: v for k, v in overrides.items() if k in fields}))
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


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()


@pytest.mark.parametrize("record", PINNED["tasks"], ids=lambda r: f"{r['name']}-{r['config']['seq_len']}-{r['seed']}-{r['draw']}")
def test_batches_are_bit_identical_to_the_pre_registry_generators(record):
    """Digests recorded from the single-module tasks.py (commit d211285) before the move to one file per task."""
    task = make_task(task_config(record["name"], **record["config"]))
    generator = torch.Generator().manual_seed(record["seed"])
    for _ in range(record["draw"] + 1):
        batch = task.sample(record["batch_size"], generator)
    assert _digest(batch.tokens) == record["tokens"] and _digest(batch.mask) == record["mask"]


@pytest.mark.parametrize("name", SYNTHETIC)
def test_same_generator_state_gives_identical_batches(name):
    _, first = _sample(name, seed=3)
    _, second = _sample(name, seed=3)
    assert torch.equal(first.tokens, second.tokens) and torch.equal(first.mask, second.mask)


@pytest.mark.parametrize("name", SYNTHETIC)
def test_different_generator_seeds_give_different_batches(name):
    _, first = _sample(name, seed=3)
    _, second = _sample(name, seed=4)
    assert not torch.equal(first.tokens, second.tokens)


@pytest.mark.parametrize("name", SYNTHETIC)
@pytest.mark.parametrize("seq_len,d_vocab", SHAPES)
def test_batches_are_exactly_batch_by_seq_len_with_ids_in_vocab(name, seq_len, d_vocab):
    _, batch = _sample(name, batch=7, seq_len=seq_len, d_vocab=d_vocab, n_pairs=20, num_kv_pairs=1)
    assert batch.tokens.shape == batch.mask.shape == (7, seq_len)
    assert batch.tokens.dtype == torch.int64 and batch.mask.dtype == torch.bool
    assert batch.tokens.device.type == "cpu"
    assert batch.tokens.min() >= 0 and batch.tokens.max() < d_vocab


@pytest.mark.parametrize("name", BOS_TASKS)
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
    draws = walk(100, length, n, torch.Generator().manual_seed(n))
    ids, scored = _induction_layout(draws, n, length)
    for row in range(100):
        expected_ids, expected_scored = _induction_layout_loop(draws[row].tolist(), n, length)
        assert ids[row].tolist() == expected_ids and scored[row].tolist() == expected_scored


@pytest.mark.parametrize("n,size", [(10, 12), (10, 1000)])
def test_random_subsets_are_distinct_members_of_the_range(n, size):
    subsets = random_subsets(50, n, size, torch.Generator().manual_seed(0))
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
    table = make_task(task_config("ngram", n_pairs=200, seed=5)).table
    assert table.shape == (200, 3) and len({tuple(row[:2]) for row in table.tolist()}) == 200
    assert table.min() >= N_SPECIAL and table.max() < 64
    assert torch.equal(table, make_task(task_config("ngram", seed=5)).table)
    assert not torch.equal(table, make_task(task_config("ngram", seed=6)).table)


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
    assert make_task("induction").chance_accuracy == pytest.approx(1 / 61)
    assert make_task(task_config("repeated_tokens", d_vocab=100)).chance_accuracy == pytest.approx(1 / 97)
    assert make_task(task_config("hop_k", alphabet_size=4)).chance_accuracy == pytest.approx(1 / 5)
    assert make_task(task_config("mqar", d_vocab=100)).chance_accuracy == pytest.approx(1 / 50)
    assert make_task(task_config("stacked_mqar", d_vocab=100)).chance_accuracy == pytest.approx(1 / 9)
    ngram = make_task(task_config("ngram", n_pairs=2, d_vocab=50))
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
        ({"name": "induction", "n_pairs": 20}, "task.n_pairs"),  # another task's knob
        ({"name": "mqar", "seq_len": 31, "num_kv_pairs": 8}, "task.seq_len"),
        ({"name": "mqar", "d_vocab": 17, "num_kv_pairs": 8}, "task.d_vocab"),
        ({"name": "mqar", "num_kv_pairs": 0}, "task.num_kv_pairs"),
        ({"name": "mqar", "power_a": 0.0}, "task.power_a"),
        ({"name": "stacked_mqar", "d_vocab": 80, "num_kv_pairs": 8}, "task.d_vocab"),
        ({"name": "stacked_mqar", "seq_len": 23, "num_kv_pairs": 8}, "task.seq_len"),
    ],
)
def test_impossible_configs_raise_config_error_naming_the_field(overrides, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        make_task(overrides)


def test_unknown_task_name_error_lists_the_valid_names():
    with pytest.raises(ConfigError) as error:
        make_task({"name": "copy"})
    assert all(name in str(error.value) for name in ALL_TASKS)


def test_task_configs_import_without_transformer_lens():
    import subprocess
    import sys
    code = "import sys, kvshift_lens.data.tasks, kvshift_lens.models.config; assert 'transformer_lens' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def test_legacy_flat_task_configs_load_without_the_other_tasks_knobs():
    legacy = {"name": "induction", "d_vocab": 32, "seq_len": 16, "seed": 1, "n_pairs": 200, "hops": 2, "alphabet_size": 4}
    assert task_config(upgrade_legacy(legacy)) == task_config("induction", d_vocab=32, seq_len=16, seed=1)
    assert task_config(upgrade_legacy({**legacy, "name": "hop_k"})).hops == 2


# --- MQAR (Zoology's multiquery_ar) and the stacked control --------------------------------------

def _recall_rows(name: str, batch: int = 64, **overrides):
    task, b = _sample(name, batch=batch, **overrides)
    return task, b, b.mask.nonzero(as_tuple=True)


def test_mqar_context_holds_distinct_keys_and_values_from_their_halves_of_the_vocabulary():
    task, b, _ = _recall_rows("mqar", d_vocab=64, seq_len=64, num_kv_pairs=12)
    keys, values = b.tokens[:, 0:24:2], b.tokens[:, 1:24:2]
    assert keys.min() >= 1 and keys.max() < 32 and values.min() >= 32 and values.max() < 64
    assert all(len(set(r)) == 12 for r in keys.tolist()) and all(len(set(r)) == 12 for r in values.tolist())


def test_mqar_scores_exactly_each_key_once_after_the_context_and_targets_its_value():
    _, b, (rows, cols) = _recall_rows("mqar", d_vocab=64, seq_len=64, num_kv_pairs=12)
    assert (b.mask.sum(1) == 12).all() and (cols >= 24).all() and ((cols - 24) % 2 == 0).all()
    for row in range(b.tokens.shape[0]):
        pairs = dict(zip(b.tokens[row, 0:24:2].tolist(), b.tokens[row, 1:24:2].tolist()))
        q = cols[rows == row]
        assert sorted(b.tokens[row, q].tolist()) == sorted(pairs)  # every key is asked once, after its pair
        assert all(pairs[k] == v for k, v in zip(b.tokens[row, q].tolist(), b.tokens[row, q + 1].tolist()))


def test_mqar_without_random_fill_leaves_zeros_everywhere_else():
    _, b, (rows, cols) = _recall_rows("mqar", d_vocab=64, seq_len=64, num_kv_pairs=4, random_non_queries=False)
    rest = torch.ones_like(b.mask)
    rest[:, :8] = False
    rest[rows, cols] = rest[rows, cols + 1] = False
    assert (b.tokens[rest] == 0).all()


@pytest.mark.parametrize("power_a", [0.01, 0.5, 1.0])
def test_power_law_gaps_follow_zoologys_distribution_and_never_repeat(power_a):
    space, n = 12, 4
    gaps = power_law_gaps(20000, n, space, power_a, torch.Generator().manual_seed(0))
    assert all(len(set(r)) == n for r in gaps[:500].tolist()) and gaps.min() >= 0 and gaps.max() < space
    p = power_a * np.arange(1, space + 1) ** (power_a - 1)  # Zoology: p = a·i^(a-1), i = 1..space
    p /= p.sum()
    first = np.bincount(gaps[:, 0].numpy(), minlength=space) / len(gaps)  # the first draw is distributed as p
    assert np.abs(first - p).max() < 4 * math.sqrt(p.max() / len(gaps))


def test_stacked_mqar_pairs_decode_to_distinct_keys_and_values_and_queries_target_the_stacked_value():
    task, b, (rows, cols) = _recall_rows("stacked_mqar", d_vocab=81, seq_len=64, num_kv_pairs=8)
    n = task.cfg.n_symbols
    assert n == 8
    pair = b.tokens[:, :8] - (2 * n + 1)  # [batch, N] = key·n + value (0-based)
    assert pair.min() >= 0 and pair.max() < n * n
    key, value = 1 + pair // n, n + 1 + pair % n
    assert all(len(set(r)) == 8 for r in key.tolist()) and all(len(set(r)) == 8 for r in value.tolist())
    assert (b.mask.sum(1) == 8).all() and (cols >= 8).all() and ((cols - 8) % 2 == 0).all()
    for row in range(b.tokens.shape[0]):
        bound = dict(zip(key[row].tolist(), value[row].tolist()))
        q = cols[rows == row]
        assert sorted(b.tokens[row, q].tolist()) == sorted(bound)
        assert all(bound[k] == v for k, v in zip(b.tokens[row, q].tolist(), b.tokens[row, q + 1].tolist()))
    after = b.tokens[:, 8:]
    assert (after < 2 * n + 1).all()  # fillers, keys and values only: no pair token after the context


@pytest.mark.parametrize("name,knobs", [("induction", dict(d_vocab=64, seq_len=64)), ("induction", dict(d_vocab=16, seq_len=33)),
                                        ("repeated_tokens", dict(d_vocab=64, seq_len=33)),
                                        ("mqar", dict(d_vocab=64, seq_len=64, num_kv_pairs=12)),
                                        ("stacked_mqar", dict(d_vocab=81, seq_len=64, num_kv_pairs=8))])
def test_attention_targets_mark_one_earlier_key_per_scored_query_and_it_holds_the_answer(name, knobs):
    task = make_task(task_config(name, **knobs))
    b = task.sample(32, torch.Generator().manual_seed(3))
    targets = task.attention_targets(b)  # [batch, q, k]
    assert targets.shape == (*b.tokens.shape, b.tokens.shape[1]) and targets.dtype == torch.bool
    assert torch.equal(targets.sum(-1), b.mask.long())  # exactly one key per scored query, none elsewhere
    assert not targets.triu(1).any()  # causal: the key is at or before its query
    rows, q, k = targets.nonzero(as_tuple=True)
    answer = b.tokens[rows, q + 1]
    if name == "stacked_mqar":  # the pair token holds the query's key and the answer as its value
        n = task.cfg.n_symbols
        pair = b.tokens[rows, k] - (2 * n + 1)
        assert torch.equal(1 + pair // n, b.tokens[rows, q]) and torch.equal(n + 1 + pair % n, answer)
    else:  # the key after an earlier occurrence of the query token holds the answer (the induction pattern)
        assert torch.equal(b.tokens[rows, k], answer) and torch.equal(b.tokens[rows, k - 1], b.tokens[rows, q])
        assert (k - 1 < q).all()


@pytest.mark.parametrize("name", ["ngram", "hop_k"])
def test_tasks_without_a_single_answer_key_define_no_attention_targets(name):
    task = make_task(task_config(name))
    assert task.attention_targets(task.sample(2, torch.Generator().manual_seed(0))) is None
