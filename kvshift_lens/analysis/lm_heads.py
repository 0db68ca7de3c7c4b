"""Induction heads and in-context learning in real-text language models.

Every saved checkpoint of a text run is scored with the suite's detectors on two kinds of input:

* `[EOT] r r` / `[EOT] r r r r` with r uniform over the ids that occur in the training text
  (`induction_score`, `previous_token_score`, `prefix_matching`: the synthetic-task definitions);
* the same layout with r a held-out text segment: `text_prefix_matching` is Olsson et al.'s prefix
  matching on repeated real text, and `text_induction_score` is the attention from every second-copy
  token to the token after its own earlier copy (`induction_score` without the unique-token filter,
  which real text, where every character repeats, would leave almost empty);

plus α/β of every KV-shift head. The ICL score and held-out loss at each checkpoint step come from the
trainer's metrics.csv (text runs evaluate at every checkpoint). `emergence_step` of the first
induction head is compared with `icl_jump_step`, Olsson et al.'s co-occurrence.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from transformer_lens import TransformerBridge

from kvshift_lens.analysis.head_detectors import (
    COLUMNS, PREFIX_REPEATS, attention_patterns, induction_score, prefix_matching, prefix_targets, previous_token_score, repeated_tokens, target_attention,
)
from kvshift_lens.analysis.emergence import EMERGENCE_THRESHOLD, detect_run, merge_summary, shift_rows
from kvshift_lens.data.tasks.base import make_task
from kvshift_lens.data.tasks.text import EVAL_CHAIN, eval_windows

ICL_MIN_DROP = 0.05  # nats: a final ICL score above -0.05 is no in-context learning worth a step
ICL_COLUMN = "icl_band_score"  # jumps are read from the band variant (single-token ICL is too noisy at CPU sizes)
LM_METRICS = ("induction_score", "previous_token_score", "prefix_matching", "text_induction_score",
              "text_prefix_matching")


@dataclass
class Probe:
    """The inputs every checkpoint of a run is scored on (fixed per run, so scores compare across steps)."""

    ids: Tensor  # [n_ids] token ids that occur in the training text, EOT excluded
    text: Tensor  # [n, T] held-out text windows (their starts are used as repeated segments)
    batch_size: int = 16
    seed: int = 0

    @classmethod
    def from_streams(cls, train: np.ndarray, windows: Tensor, batch_size: int = 16, seed: int = 0) -> "Probe":
        """Ids of the `train` stream [n_tokens] and `batch_size` held-out `windows` [n, T]."""
        ids = torch.from_numpy(np.unique(train))
        pick = torch.linspace(0, len(windows) - 1, min(batch_size, len(windows))).round().long()
        return cls(ids[ids != 0], windows[pick], batch_size, seed)


def random_repeats(ids: Tensor, batch: int, period: int, generator: torch.Generator, n_repeats: int = 2) -> Tensor:
    """`[EOT] r r ...` with r drawn like `detect.repeated_tokens` but over `ids`: [batch, 1 + n_repeats·period]."""
    table = torch.cat([torch.zeros(1, dtype=torch.long), ids.long()])  # compact id k -> ids[k - 1]; 0 stays EOT
    return table[repeated_tokens(batch, period, len(ids) + 1, generator, n_repeats=n_repeats)]


def text_repeats(text: Tensor, period: int, n_repeats: int = 2) -> Tensor:
    """`[EOT] x x ...` with x the first `period` tokens of each text window [batch, T]: [batch, 1 + n_repeats·period]."""
    eot = torch.zeros(len(text), 1, dtype=torch.long)
    return torch.cat([eot, text[:, :period].repeat(1, n_repeats)], dim=1)


def copy_targets(seq_len: int, period: int) -> Tensor:
    """Key t − L + 1 for every second-copy query t ∈ [L+1, 2L] of `[EOT] x x`: bool [1, q, k]."""
    targets = torch.ones(seq_len - period + 1, dtype=torch.bool).diag(1 - period)  # [seq, seq]
    targets[: period + 1] = False
    return targets[None]


def text_induction_score(pattern: Tensor, period: int) -> Tensor:
    """Mean attention of every second-copy query of `[EOT] x x` to the token after its own earlier copy: [*heads]."""
    return target_attention(pattern, copy_targets(pattern.shape[-1], period))


def _tidy(metric: str, values: Tensor) -> pd.DataFrame:
    layers, heads = values.shape
    return pd.DataFrame({"layer": np.repeat(np.arange(layers), heads), "head": np.tile(np.arange(heads), layers),
                         "metric": metric, "value": values.detach().cpu().flatten().numpy()})


@torch.no_grad()
def lm_head_scores(model: TransformerBridge, probe: Probe) -> pd.DataFrame:
    """`LM_METRICS` of every head as tidy rows (layer, head, metric, value), on sequences of n_ctx (or less)."""
    seq = min(model.cfg.n_ctx, probe.text.shape[1] * 2 + 1)
    period, prefix_period = (seq - 1) // 2, (seq - 1) // PREFIX_REPEATS
    generator = torch.Generator().manual_seed(probe.seed)
    rand = random_repeats(probe.ids, probe.batch_size, period, generator)
    rand4 = random_repeats(probe.ids, probe.batch_size, prefix_period, generator, n_repeats=PREFIX_REPEATS)
    text, text4 = text_repeats(probe.text, period), text_repeats(probe.text, prefix_period, PREFIX_REPEATS)
    pattern, pattern_text = attention_patterns(model, rand), attention_patterns(model, text)  # [batch, layer, head, q, k]
    scores = {
        "induction_score": induction_score(pattern, rand),
        "previous_token_score": previous_token_score(pattern),
        "prefix_matching": prefix_matching(attention_patterns(model, rand4), rand4),
        "text_induction_score": text_induction_score(pattern_text, period),
        "text_prefix_matching": target_attention(attention_patterns(model, text4), prefix_targets(text4)),
    }
    return pd.concat([_tidy(m, scores[m]) for m in LM_METRICS], ignore_index=True)[COLUMNS]


def checkpoint_rows(model: TransformerBridge, step: int, probe: Probe) -> pd.DataFrame:
    """`lm_head_scores` and α/β of one checkpoint as tidy rows step, layer, head, metric, value."""
    frames = [f for f in (lm_head_scores(model, probe), shift_rows(model)) if len(f)]
    rows = pd.concat(frames, ignore_index=True)
    rows.insert(0, "step", step)
    return rows.astype({"step": int, "layer": int, "head": int, "value": float})


def head_emergence(heads: pd.DataFrame, threshold: float = EMERGENCE_THRESHOLD,
                   metric: str = "induction_score") -> pd.DataFrame:
    """Per head: the first checkpoint from which its `metric` stays >= threshold (NaN if never) and its final
    value; sorted by emergence, so row 0 is the first induction head. Columns layer, head, emergence_step, final."""
    scores = heads[heads["metric"] == metric].pivot_table(index="step", columns=["layer", "head"], values="value")
    rows = []
    for (layer, head), s in scores.sort_index().items():
        below = s.index[s < threshold]
        after = s.index[s.index > below.max()] if len(below) else s.index
        rows.append({"layer": int(layer), "head": int(head), "emergence_step": float(after.min()) if len(after) else np.nan,
                     "final": float(s.iloc[-1])})
    out = pd.DataFrame(rows, columns=["layer", "head", "emergence_step", "final"])
    return out.sort_values(["emergence_step", "final"], ascending=[True, False], na_position="last", ignore_index=True)


def icl_jump_step(metrics: pd.DataFrame, column: str = ICL_COLUMN, min_drop: float = ICL_MIN_DROP) -> Optional[int]:
    """Step of the ICL-score jump: the first evaluated step from which `column` stays at or below the midpoint
    between its step-0 value and its final level (mean of the last 3 evaluations); None when the final level is
    not `min_drop` below the start (no in-context learning to date)."""
    m = metrics.dropna(subset=[column]).sort_values("step")
    if len(m) < 2:
        return None
    start, final = float(m[column].iloc[0]), float(m[column].iloc[-3:].mean())
    if start - final < min_drop:
        return None
    above = m["step"][m[column] > (start + final) / 2]
    after = m["step"][m["step"] > above.max()] if len(above) else m["step"]
    return int(after.min()) if len(after) else None


def bracket(steps: Union[list[int], np.ndarray], step: float) -> tuple[float, float]:
    """The checkpoint steps just before and just after `step` among `steps` (the interval it is known within)."""
    s = np.sort(np.asarray(steps, dtype=float))
    before, after = s[s < step], s[s > step]
    return (float(before.max()) if len(before) else float(step), float(after.min()) if len(after) else float(step))


def run_induction_summary(heads: pd.DataFrame, metrics: pd.DataFrame,
                          threshold: float = EMERGENCE_THRESHOLD) -> dict:
    """What one run says about induction heads and ICL: the first induction head (layer, head, emergence step),
    layers holding an induction head at the end, the ICL-jump step and whether it falls within the checkpoint
    bracket around the first head's emergence (Olsson et al.'s co-occurrence; None when either is missing)."""
    per_head = head_emergence(heads, threshold)
    first = per_head.iloc[0] if len(per_head) and per_head["emergence_step"].notna().iloc[0] else None
    final_step = heads["step"].max()
    final = heads[(heads["step"] == final_step) & (heads["metric"] == "induction_score")]
    jump = icl_jump_step(metrics)
    emerged = None if first is None else int(first["emergence_step"])
    co = None
    if emerged is not None and jump is not None:
        lo, hi = bracket(sorted(heads["step"].unique()), emerged)
        co = bool(lo <= jump <= hi)
    return {
        "first_induction_head": None if first is None else f"L{int(first['layer'])}H{int(first['head'])}",
        "first_induction_layer": None if first is None else int(first["layer"]),
        "emergence_step": emerged,
        "induction_layers": sorted(int(x) for x in final.loc[final["value"] >= threshold, "layer"].unique()),
        "best_final_induction_score": float(final["value"].max()) if len(final) else np.nan,
        "icl_jump_step": jump,
        "icl_jump_with_emergence": co,
    }


def run_probe(run_dir: Union[str, Path], batch_size: int = 16, seed: int = 0) -> Probe:
    """The `Probe` of a text run: its task rebuilt from config.json (token streams from the cache), the ids of
    its training text and `batch_size` held-out windows spread over the validation split."""
    task = make_task(json.loads(Path(run_dir, "config.json").read_text())["task"])
    windows = eval_windows(task.validation_stream, EVAL_CHAIN * batch_size, task.cfg.seq_len)
    return Probe.from_streams(task.train_stream.numpy(), windows, batch_size, seed)


def analyze_lm_run(run_dir: Union[str, Path], batch_size: int = 16, seed: int = 0,
                   threshold: float = EMERGENCE_THRESHOLD) -> dict:
    """Score every checkpoint of a text run (heads.csv, resumable) and add `run_induction_summary` to its
    summary.json; returns the summary."""
    probe = run_probe(run_dir, batch_size, seed)
    heads = detect_run(run_dir, score=lambda model, step: checkpoint_rows(model, step, probe))
    found = run_induction_summary(heads, pd.read_csv(Path(run_dir, "metrics.csv")), threshold)
    return merge_summary(run_dir, {"emergence_threshold": threshold, **found})
