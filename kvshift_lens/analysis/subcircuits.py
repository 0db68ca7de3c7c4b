"""Sub-circuit timing over checkpoints (Singh et al. 2024, "What needs to go right for an induction head?"): the
induction circuit as three sub-circuits, each scored per checkpoint from heads.csv, with the step each forms.

* **A, previous token** (attend to the previous token and copy it forward): `previous_token_score` of the best head
  of any layer but the last (of the only layer in a 1-layer model).
* **B, QK match** (the induction head's query matches keys whose previous token is the current one): Olsson et al.'s
  `prefix_matching` of the best head of the last layer.
* **C, copy** (the induction head's OV raises the logit of the token it attends to): Elhage et al.'s OV eigenvalue
  `copying_score` of the best head of the last layer.

In KV-shift models the previous token reaches the key through the shift, not through a head: **A_shift**
(`shift_previous_token_share`, our variant, not a literature measure) is the share of a key's coefficients on earlier
tokens, Σ_{j≥1}|α_{j+1}| / Σ_j|α_j| (window 1: |α2| / (|α1| + |α2|)), of the best KV head of any layer, read from
the α rows heads.csv holds. 1: the key is the previous token's (Theorem 2's head); 0: no shift.

A sub-circuit forms at the first checkpoint from which its score stays ≥ its threshold to the end
(`development.formation_step`, the rule of `emergence.emergence_step`). The scores are the TL/ARENA-exact detectors
of `head_detectors` (docs/detect.md); nothing here recomputes them.
"""

from __future__ import annotations

from typing import Optional

import pandas as pd

from kvshift_lens.analysis.circuits import PREVIOUS_THRESHOLD
from kvshift_lens.analysis.development import formation_step
from kvshift_lens.analysis.emergence import EMERGENCE_THRESHOLD

SUBCIRCUITS = ("A", "A_shift", "B", "C", "induction")
THRESHOLDS = {
    "A": PREVIOUS_THRESHOLD,  # previous_token_score of a K-composition source head (circuits.PREVIOUS_THRESHOLD)
    "A_shift": PREVIOUS_THRESHOLD,  # the same share of the key on the previous token, through the shift
    "B": EMERGENCE_THRESHOLD,  # prefix_matching is the induction statistic on [BOS] r r r r: the induction threshold
    "C": 0.5,  # copying_score: random heads |0.1|, trained induction heads 0.72-0.97 (docs/detect.md)
    "induction": EMERGENCE_THRESHOLD,  # induction_score (emergence_step)
}
METRIC = {"A": "previous_token_score", "B": "prefix_matching", "C": "copying_score", "induction": "induction_score"}
TIMING_COLUMNS = ["subcircuit", "metric", "threshold", "formation_step", "score_at_first", "score_at_last"]


def shift_previous_token_share(heads: pd.DataFrame) -> pd.DataFrame:
    """A_shift per step, layer and KV head from heads.csv's α rows: Σ_{j≥2}|α_j| / Σ_j|α_j| (empty without α)."""
    alphas = heads[heads["metric"].str.fullmatch(r"alpha\d+")]
    if alphas.empty:
        return pd.DataFrame(columns=["step", "layer", "head", "value"])
    lag = alphas["metric"].str[5:].astype(int) - 1  # alpha1 -> lag 0
    size = alphas["value"].abs()
    total = size.groupby([alphas["step"], alphas["layer"], alphas["head"]]).sum()
    lagged = size[lag >= 1].groupby([alphas["step"], alphas["layer"], alphas["head"]]).sum()
    return (lagged / total).rename("value").reset_index()


def subcircuit_scores(heads: pd.DataFrame) -> pd.DataFrame:
    """Per checkpoint the best head's score of each sub-circuit present in `heads` (a run's heads.csv): columns step,
    subcircuit, value; A over every layer but the last (the only one in a 1-layer model), B and C over the last layer,
    A_shift over every KV head, induction over every head."""
    if heads.empty:
        return pd.DataFrame(columns=["step", "subcircuit", "value"])
    last = int(heads["layer"].max())
    frames = []
    for name, metric in METRIC.items():
        rows = heads[heads["metric"] == metric]
        if name == "A":
            rows = rows[rows["layer"] < max(last, 1)]
        elif name in ("B", "C"):
            rows = rows[rows["layer"] == last]
        if len(rows):
            frames.append(rows.groupby("step")["value"].max().rename(name))
    shift = shift_previous_token_share(heads)
    if len(shift):
        frames.append(shift.groupby("step")["value"].max().rename("A_shift"))
    wide = pd.concat(frames, axis=1).sort_index()
    return wide.reset_index(names="step").melt(id_vars="step", var_name="subcircuit", value_name="value").dropna()


def subcircuit_timing(heads: pd.DataFrame, thresholds: Optional[dict[str, float]] = None) -> pd.DataFrame:
    """One row per sub-circuit present in a run's heads.csv: its metric, threshold, formation step (None: never
    formed, or not to the end) and its score at the first and last checkpoint."""
    thresholds = {**THRESHOLDS, **(thresholds or {})}
    scores = subcircuit_scores(heads)
    rows = []
    for name in SUBCIRCUITS:
        series = scores[scores["subcircuit"] == name].set_index("step")["value"].sort_index()
        if series.empty:
            continue
        rows.append({"subcircuit": name, "metric": METRIC.get(name, "shift_previous_token_share"),
                     "threshold": thresholds[name], "formation_step": formation_step(series, thresholds[name]),
                     "score_at_first": float(series.iloc[0]), "score_at_last": float(series.iloc[-1])})
    return pd.DataFrame(rows, columns=TIMING_COLUMNS)


def formation_order(timing: pd.DataFrame) -> str:
    """The order in which the sub-circuits of a `subcircuit_timing` table formed, e.g. "A_shift < B = C < induction"
    (equal formation checkpoints tie; those that never formed are listed last as "never: ...")."""
    formed = timing.dropna(subset=["formation_step"]).sort_values("formation_step", kind="stable")
    groups = [" = ".join(g["subcircuit"]) for _, g in formed.groupby("formation_step", sort=True)]
    never = timing.loc[timing["formation_step"].isna(), "subcircuit"].tolist()
    return " < ".join(groups) + (f"{'; ' if groups else ''}never: {', '.join(never)}" if never else "")


def strongest_previous_head(heads: pd.DataFrame, layer: int = 0) -> Optional[int]:
    """The head of `layer` with the highest previous_token_score at the run's last checkpoint in heads.csv (None
    without such rows): the head the ablation study removes (Singh et al.'s previous-token head)."""
    rows = heads[(heads["metric"] == "previous_token_score") & (heads["layer"] == layer)]
    if rows.empty:
        return None
    last = rows[rows["step"] == rows["step"].max()]
    return int(last.loc[last["value"].idxmax(), "head"])
