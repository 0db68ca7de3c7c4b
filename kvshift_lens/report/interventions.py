"""The intervention studies (issue 20 §2): is KV shift a free previous-token head, and does induction follow the shift's
release? Tables are functions of the per-run frame `tidy_runs(curves)`; verdicts state their rule and are unit-tested
on synthetic data for every outcome.

* **A free previous-token head.** Arms: vanilla 2L, vanilla 2L with layer 0's pattern clamped to a perfect previous-token
  pattern from step 0, KV-shift 1L. Per arm and seed the best of the learning rates (capacity protocol, censoring-aware);
  time to 90 % compared by log-rank; the share of the vanilla-2L-to-KV-1L gap in (Kaplan–Meier median) time to 90 %
  that the clamp closes, `(m_vanilla - m_clamped) / (m_vanilla - m_kv)`, with a seed-bootstrap interval.
* **Switch the shift off, then on.** KV-shift 1L with every lag ≥ 1 coefficient held at 0 (α2 = β2 = 0: vanilla 1L)
  for steps [0, s), then released: the delay from release to 90 %, per s.
* **Sub-circuit timing** (Singh et al. 2024's A/B/C, `analysis.subcircuits`): the prediction that KV shift carries A
  from init, so KV-shift 1L's induction forms when vanilla 2L's B and C do.
* **Ablate during training.** Vanilla 2L with one layer-0 head's output (`hook_z`) zero-ablated for the whole run, one
  arm per head; per seed the arm of the plain run's strongest layer-0 previous-token head: does induction still form
  (Singh et al.'s redundancy), and how much later.
* **The family on MQAR.** One-layer kv_shift, canon and short_conv with and without the lag ≥ 1 coefficients of all or
  some of their components (K or V of KV shift, Canon's A or B convolutions): which part carries the previous token?
* **Developmental stages** (Hoogland et al. 2024, `analysis.development`): does the induction bump split into
  "previous-token heads, then the rest" (an LLC stage boundary between the two formations) in vanilla 2L but not in
  KV-shift 1L?
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, Optional, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from kvshift_lens.analysis.subcircuits import TIMING_COLUMNS, formation_order, subcircuit_timing
from kvshift_lens.report.multiplicity import holm
from kvshift_lens.report.protocol import Protocol, cell_results, run_outcomes
from kvshift_lens.report.stats import fmt_p, km_median, logrank_test
from kvshift_lens.report.verdicts import ALPHA, INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, Verdict

PROTOCOL = Protocol(lr="lr")
VANILLA, CLAMPED, KV = "vanilla_2l", "vanilla_2l+prev_token_clamp", "kvshift_1l"
RELEASED = "kvshift_1l+shift_off"  # arm of the release study; `release` holds s
ABLATED = "vanilla_2l+ablate_l0h"  # + the head: layer 0's head zero-ablated for the whole run
LAGS_OFF = "+lags_off"  # + [components]: a mixer's arm with their lag >= 1 coefficients held at 0 for the whole run
INDUCTION = "induction"  # the task of every study but the family's
CELL = ["task", "arm", "release"]
RENAME = {"train.lr": "lr", "train.steps": "budget"}
GAP_CLAIM = ("KV shift's advantage over vanilla 2L (time to 90 %) is the previous-token sub-circuit: clamping vanilla "
             "2L's layer 0 to a perfect previous-token pattern closes the gap to KV-shift 1L.")
RELEASE_CLAIM = "Induction follows the shift's release within a bounded delay, whatever the release step s."
RELEASE_BOUND = 2.0  # a delay counts as bounded up to this multiple of KV-shift 1L's own time to 90 % (s = 0)
TIMING_CLAIM = ("KV shift carries the previous-token sub-circuit (A) from initialisation, so KV-shift 1L's induction "
                "forms when vanilla 2L's QK-match (B) and copy (C) sub-circuits do (Singh et al. 2024's A/B/C).")
MATCH_FACTOR = 1.5  # "matches": the ratio of median steps lies within [1/1.5, 1.5]
RESOLUTION = 2.0  # a formation step is known to a factor of this: consecutive log-spaced checkpoints (>= 12 per run)
ABLATION_CLAIM = ("Zero-ablating vanilla 2L's strongest layer-0 previous-token head for the whole run does not stop "
                  "induction: another head takes the role (Singh et al. 2024's redundancy).")
LAGS_CLAIM = "The previous-token role of {mixer} on MQAR is carried by the lag >= 1 coefficients of {parts}."
LAG_ALPHA = 0.05  # family-wise, Holm over the lags-off arms
LAG_BOUND = 1.5  # lags off "changes nothing" when its median is within this multiple of the lags-on median


def arm_of(mixer: str, n_layers: int, interventions: Optional[Sequence[dict]]) -> tuple[str, int]:
    """(arm, release step) of a run from its config: the study's arms by mixer, depth and interventions."""
    ivs = list(interventions or [])
    depth = f"{'kvshift' if mixer == 'kv_shift' else 'vanilla' if mixer == 'none' else mixer}_{n_layers}l"
    if not ivs:
        return depth, 0
    if all(iv.get("value") == "shift_off" for iv in ivs):
        if all(iv.get("end") is None for iv in ivs):  # the parts: the mixer components whose lags are held at 0
            return f"{depth}{LAGS_OFF}[{','.join(sorted(iv['hook'].split('.')[-2] for iv in ivs))}]", 0
        return f"{depth}+shift_off", int(max(iv.get("end") or 0 for iv in ivs))
    if [iv.get("value") for iv in ivs] == ["previous_token"]:
        return f"{depth}+prev_token_clamp", 0
    if len(ivs) == 1 and ivs[0].get("hook") == "blocks.0.attn.hook_z" and ivs[0].get("action") == "zero" and \
            len(ivs[0].get("heads") or []) == 1 and ivs[0].get("end") is None:
        return f"{depth}+ablate_l0h{ivs[0]['heads'][0]}", 0
    return f"{depth}+interventions", 0


def tidy_runs(curves: pd.DataFrame) -> pd.DataFrame:
    """Learning curves (`training.runs.load_runs`) with `arm`, `release`, `lr` and `budget` columns, the list-valued
    interventions column folded into the arm."""
    interventions = curves["train.interventions"] if "train.interventions" in curves else pd.Series(None, curves.index)
    arms = [arm_of(m, int(n), ivs if isinstance(ivs, list) else None)
            for m, n, ivs in zip(curves["model.mixer.name"], curves["model.n_layers"], interventions)]
    dropped = [c for c in ("train.interventions", "lr") if c in curves]  # `lr`: the schedule's, per evaluation
    out = curves.drop(columns=dropped).rename(columns=RENAME)
    out["arm"] = [a for a, _ in arms]
    out["release"] = [s for _, s in arms]
    out["task"] = curves["task.name"] if "task.name" in curves else INDUCTION
    return out


def cells(curves: pd.DataFrame) -> pd.DataFrame:
    """Per arm, release step and seed: the run at the best learning rate, time to 90 % as right-censored data."""
    runs = run_outcomes(curves, [*CELL, "lr", PROTOCOL.seed], PROTOCOL)
    return cell_results(runs, CELL, PROTOCOL)


Times = dict[str, tuple[np.ndarray, np.ndarray]]


def bootstrap(statistic: Callable[[Times], float], times: Times, n_boot: int = 2000, seed: int = 0,
              level: float = 0.95) -> tuple[float, float, float]:
    """`statistic` of right-censored times per arm (`times[arm] = (time, event)`) with a percentile interval from
    resampling seeds within each arm; the interval is NaN when more than 5 % of the resamples are."""
    point = statistic(times)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_boot):
        resampled = {}
        for arm, (t, e) in times.items():
            idx = rng.integers(0, len(t), len(t))
            resampled[arm] = (t[idx], e[idx])
        draws.append(statistic(resampled))
    draws = np.asarray(draws)
    finite = draws[np.isfinite(draws)]
    if len(finite) < 0.95 * n_boot:
        return point, math.nan, math.nan
    alpha = (1 - level) / 2
    return point, float(np.quantile(finite, alpha)), float(np.quantile(finite, 1 - alpha))


def bootstrap_gap(times: Times, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """Share of the vanilla-to-KV gap in KM-median time to 90 % the clamp closes, with a percentile interval from
    resampling seeds within each arm. `times[arm] = (time, event)` for VANILLA, CLAMPED, KV. NaN where a median is
    undefined (fewer than half the seeds reached 90 %) or the gap is not positive; the interval is NaN when more than
    5 % of the resamples are."""
    def share(t: Times) -> float:
        m = {arm: km_median(*t[arm]) for arm in (VANILLA, CLAMPED, KV)}
        gap = m[VANILLA] - m[KV]
        return (m[VANILLA] - m[CLAMPED]) / gap if gap > 0 else math.nan

    return bootstrap(share, times, n_boot, seed, level)


def gap_verdict(share: float, lo: float, hi: float, evidence: Sequence[str] = ()) -> Verdict:
    """Reproduced if the interval of the share closed includes 100 % and excludes 0; not reproduced if it is consistent
    with closing none (includes or lies below 0) and excludes 100 %; else inconclusive (too wide, partial, or n/a)."""
    rule = ("share of the vanilla-2L-to-KV-1L gap in KM-median time to 90 % closed by the clamp, 95 % seed-bootstrap "
            "interval: reproduced if it includes 100 % and excludes 0, not reproduced if it excludes 100 % and does "
            "not exclude 0 (closes none), else inconclusive")
    baseline = "vanilla 2L unclamped (share 0) and KV-shift 1L (share 100 %)"
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return Verdict(INCONCLUSIVE, rule, baseline, list(evidence), reason="gap or medians undefined")
    if lo > 0 and lo <= 1 <= hi:
        return Verdict(REPRODUCED, rule, baseline, list(evidence))
    if lo <= 0 and hi < 1:
        return Verdict(NOT_REPRODUCED, rule, baseline, list(evidence))
    reason = "closes part of the gap" if lo > 0 and hi < 1 else "interval too wide" if lo <= 0 <= 1 <= hi else \
        "closes more than the gap"
    return Verdict(INCONCLUSIVE, rule, baseline, list(evidence), reason=reason)


def arm_times(cells_: pd.DataFrame, arm: str, release: int = 0, task: str = INDUCTION) -> tuple[np.ndarray, np.ndarray]:
    """(time to 90 % or censoring step, reached) over the seeds of one arm, at their best learning rate."""
    g = cells_[(cells_["task"] == task) & (cells_["arm"] == arm) & (cells_["release"] == release)]
    return g["time"].to_numpy(float), g["event"].to_numpy(bool)


def free_head(cells_: pd.DataFrame, n_boot: int = 2000) -> tuple[pd.DataFrame, Verdict]:
    """Per arm: seeds, reached, KM median time to 90 %, log-rank vs vanilla 2L; and the gap verdict."""
    times = {arm: arm_times(cells_, arm) for arm in (VANILLA, CLAMPED, KV)}
    rows = []
    for arm, (t, e) in times.items():
        test = logrank_test(t, e, *times[VANILLA], alternative="a_sooner") if arm != VANILLA else None
        rows.append({"arm": arm, "seeds": len(t), "reached_90": int(e.sum()), "km_median_steps_to_90": km_median(t, e),
                     "logrank_p_sooner_than_vanilla_2l": test.p if test else math.nan})
    table = pd.DataFrame(rows)
    share, lo, hi = bootstrap_gap(times, n_boot=n_boot) if all(len(t) for t, _ in times.values()) else (math.nan,) * 3
    evidence = [f"share closed {share:.0%} [{lo:.0%}, {hi:.0%}]" if math.isfinite(lo) else
                f"share closed {share:.0%} (no interval: a KM median undefined in resamples)" if math.isfinite(share)
                else "share closed n/a (a KM median undefined)"]
    evidence += [f"{r.arm}: KM median {r.km_median_steps_to_90:g} steps ({r.reached_90}/{r.seeds} reached 90 %"
                 + ("" if r.arm == VANILLA else f", log-rank vs vanilla 2L {fmt_p(r.logrank_p_sooner_than_vanilla_2l)}")
                 + ")" for r in table.itertuples()]
    return table, gap_verdict(share, lo, hi, evidence)


def release_delays(cells_: pd.DataFrame) -> tuple[pd.DataFrame, Verdict]:
    """Per release step s: KM median time to 90 % and its delay after s; verdict: reproduced if every delay is at most
    `RELEASE_BOUND` × KV-shift 1L's own median (s = 0), not reproduced if some s exceeds it (or never reaches 90 %
    although its runs were watched past the bound), inconclusive when s = 0 has no median or an arm was cut early."""
    base = km_median(*arm_times(cells_, KV))
    rows = []
    for s in sorted(cells_.loc[cells_["arm"] == RELEASED, "release"].unique()):
        t, e = arm_times(cells_, RELEASED, int(s))
        median = km_median(t, e)
        rows.append({"release": int(s), "seeds": len(t), "reached_90": int(e.sum()), "km_median_steps_to_90": median,
                     "delay_after_release": median - s,
                     "watched_after_release": t.max() - s if len(t) else math.nan})  # an undefined median > t.max()
    table = pd.DataFrame(rows, columns=["release", "seeds", "reached_90", "km_median_steps_to_90", "delay_after_release",
                                        "watched_after_release"])
    rule = (f"KM-median steps from release to 90 % for every release step s: reproduced if each is <= {RELEASE_BOUND:g}× "
            "KV-shift 1L's median (never switched off), not reproduced if one exceeds it (a median never reached "
            "counts only when the runs were watched past the bound after release), else inconclusive")
    baseline = "KV-shift 1L never switched off (s = 0)"
    evidence = [f"s = 0: {base:g} steps"] + [
        f"s = {r.release}: " + (f"delay {r.delay_after_release:g} steps" if math.isfinite(r.delay_after_release)
                                else "median not reached")
        + f" ({r.reached_90}/{r.seeds} reached 90 %"
        + (f"; watched {r.watched_after_release:g} steps after release)" if r.reached_90 < r.seeds else ")")
        for r in table.itertuples()]
    if not math.isfinite(base) or table.empty:
        return table, Verdict(INCONCLUSIVE, rule, baseline, evidence, reason="no median at s = 0 or no release arm")
    bound = RELEASE_BOUND * base
    delay = table["delay_after_release"]
    exceeded = (delay > bound) | (delay.isna() & (table["watched_after_release"] > bound))
    if exceeded.any():
        return table, Verdict(NOT_REPRODUCED, rule, baseline, evidence)
    if (delay <= bound).all():
        return table, Verdict(REPRODUCED, rule, baseline, evidence)
    return table, Verdict(INCONCLUSIVE, rule, baseline, evidence,
                          reason="a release arm never reached 90 % but was cut before the bound")


# --- sub-circuit timing (Singh et al. 2024's A/B/C) ----------------------------------------------

def timing_table(cells_: pd.DataFrame, heads: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """`analysis.subcircuits.subcircuit_timing` of each cell's best-lr run whose heads.csv is in `heads` (run -> frame):
    one row per arm, seed and sub-circuit, with `last_step` (the last checkpoint: where a formation step not reached
    is censored)."""
    frames = []
    for cell in cells_.itertuples():
        h = heads.get(cell.run)
        if h is None or h.empty:
            continue
        t = subcircuit_timing(h)
        frames.append(t.assign(task=cell.task, arm=cell.arm, seed=cell.seed, run=cell.run, last_step=int(h["step"].max())))
    columns = ["task", "arm", "seed", "run", *TIMING_COLUMNS, "last_step"]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)


def formation_times(timings: pd.DataFrame, arm: str, subcircuits: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(step, formed) per seed of `arm` when all of `subcircuits` have formed (the latest of their formation steps),
    right-censored at the run's last checkpoint when one never did."""
    g = timings[(timings["arm"] == arm) & timings["subcircuit"].isin(subcircuits)]
    times, events = [], []
    for _, s in g.groupby("seed"):
        if set(s["subcircuit"]) != set(subcircuits):
            continue
        formed = s["formation_step"].notna().all()
        times.append(float(s["formation_step"].max()) if formed else float(s["last_step"].max()))
        events.append(bool(formed))
    return np.asarray(times, dtype=float), np.asarray(events, dtype=bool)


def subcircuit_order(timings: pd.DataFrame, n_boot: int = 2000) -> tuple[pd.DataFrame, Verdict]:
    """Per arm and sub-circuit: seeds, formed, KM-median formation step, and the arm's order; the verdict on the
    prediction that KV shift carries A from init so KV-shift 1L's induction forms when vanilla 2L's B and C do."""
    rows = []
    for (arm, name), g in timings.groupby(["arm", "subcircuit"], sort=True):
        t, e = formation_times(timings, arm, [name])
        rows.append({"arm": arm, "subcircuit": name, "metric": g["metric"].iloc[0], "threshold": g["threshold"].iloc[0],
                     "seeds": len(t), "formed": int(e.sum()), "km_median_formation_step": km_median(t, e)})
    table = pd.DataFrame(rows, columns=["arm", "subcircuit", "metric", "threshold", "seeds", "formed",
                                        "km_median_formation_step"])
    table["order"] = table["arm"].map({arm: formation_order(g.rename(columns={"km_median_formation_step":
                                                                               "formation_step"}))
                                       for arm, g in table.groupby("arm")})
    shift = timings[(timings["arm"] == KV) & (timings["subcircuit"] == "A_shift")]
    at_init = shift["score_at_first"] >= shift["threshold"]
    times = {"kv": formation_times(timings, KV, ["induction"]), "bc": formation_times(timings, VANILLA, ["B", "C"])}
    return table, timing_verdict(at_init.to_numpy(bool), times, n_boot)


def timing_verdict(at_init: np.ndarray, times: Times, n_boot: int = 2000) -> Verdict:
    """Reproduced if A_shift is above its threshold at the first checkpoint (step 0) in every KV-shift 1L seed and
    the seed-bootstrap interval of median(KV-shift 1L induction step) / median(vanilla 2L B-and-C step) lies within
    [1/MATCH_FACTOR, MATCH_FACTOR]; not reproduced if A_shift is absent at init in half the seeds or more, or the
    interval lies wholly outside; else inconclusive. A zero-width interval (every seed at the same checkpoints) never
    shows a match, and shows a mismatch only beyond the checkpoints' resolution (RESOLUTION × the bounds).
    `times["kv"]`, `times["bc"]`: (step, formed) per seed."""
    rule = (f"A_shift (share of the key on earlier tokens, best KV head) >= threshold at step 0 in every KV-shift 1L "
            f"seed, and the 95 % seed-bootstrap interval of KM-median KV-shift 1L induction formation step / KM-median "
            f"vanilla 2L max(B, C) formation step inside [1/{MATCH_FACTOR:g}, {MATCH_FACTOR:g}]: reproduced; A_shift "
            "absent at init in half the seeds or more, or the interval wholly outside: not reproduced; else inconclusive")
    baseline = "vanilla 2L's QK-match (prefix matching) and copy (OV eigenvalue) formation steps"
    if not len(at_init) or not all(len(t) for t, _ in times.values()):
        return Verdict(INCONCLUSIVE, rule, baseline, ["no sub-circuit timings (heads.csv) for both arms"],
                       reason="no data")

    def ratio(t: Times) -> float:
        return km_median(*t["kv"]) / km_median(*t["bc"])

    point, lo, hi = bootstrap(ratio, times, n_boot)
    evidence = [f"A_shift at init in {int(at_init.sum())}/{len(at_init)} KV-shift 1L seeds",
                f"KV-shift 1L induction: KM median {km_median(*times['kv']):g} steps "
                f"({int(times['kv'][1].sum())}/{len(times['kv'][0])} formed)",
                f"vanilla 2L B and C: KM median {km_median(*times['bc']):g} steps "
                f"({int(times['bc'][1].sum())}/{len(times['bc'][0])} formed)",
                f"ratio {point:.2f} [{lo:.2f}, {hi:.2f}]"]
    if at_init.mean() <= 0.5:
        return Verdict(NOT_REPRODUCED, rule, baseline, evidence, reason="A absent at init")
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return Verdict(INCONCLUSIVE, rule, baseline, evidence, reason="a median undefined")
    if lo == hi:  # every seed formed at the same checkpoints: no spread, only the checkpoints' resolution
        if point < 1 / (MATCH_FACTOR * RESOLUTION) or point > MATCH_FACTOR * RESOLUTION:
            return Verdict(NOT_REPRODUCED, rule, baseline, evidence + [
                f"zero-width interval, but outside the match bounds by more than the checkpoint resolution "
                f"({RESOLUTION:g}x)"])
        return Verdict(INCONCLUSIVE, rule, baseline, evidence,
                       reason="zero-width interval: every seed at the same checkpoints (denser checkpoints needed)")
    if at_init.all() and 1 / MATCH_FACTOR <= lo and hi <= MATCH_FACTOR:
        return Verdict(REPRODUCED, rule, baseline, evidence)
    if hi < 1 / MATCH_FACTOR or lo > MATCH_FACTOR:
        return Verdict(NOT_REPRODUCED, rule, baseline, evidence)
    return Verdict(INCONCLUSIVE, rule, baseline, evidence, reason="interval crosses a match bound")


# --- ablate during training ---------------------------------------------------------------------

def ablation(cells_: pd.DataFrame, prev_heads: Mapping[int, int], n_boot: int = 2000) -> tuple[pd.DataFrame, Verdict]:
    """Per ablated head (and the matched arm: per seed the head `prev_heads[seed]`, the plain vanilla 2L run's
    strongest layer-0 previous-token head): seeds, reached, KM median time to 90 %; the redundancy verdict."""
    plain = arm_times(cells_, VANILLA)
    rows = [{"arm": VANILLA, "seeds": len(plain[0]), "reached_90": int(plain[1].sum()),
             "km_median_steps_to_90": km_median(*plain)}]
    ablated = cells_[(cells_["task"] == INDUCTION) & cells_["arm"].str.startswith(ABLATED)]
    for arm, g in ablated.groupby("arm", sort=True):
        rows.append({"arm": arm, "seeds": len(g), "reached_90": int(g["event"].sum()),
                     "km_median_steps_to_90": km_median(g["time"], g["event"])})
    matched = ablated[np.array([arm == f"{ABLATED}{prev_heads.get(seed)}"
                                for arm, seed in zip(ablated["arm"], ablated["seed"])], dtype=bool)]
    times = {VANILLA: plain, "matched": (matched["time"].to_numpy(float), matched["event"].to_numpy(bool))}
    rows.append({"arm": f"{ABLATED}<strongest>", "seeds": len(matched), "reached_90": int(matched["event"].sum()),
                 "km_median_steps_to_90": km_median(*times["matched"])})
    table = pd.DataFrame(rows, columns=["arm", "seeds", "reached_90", "km_median_steps_to_90"])
    return table, ablation_verdict(times, n_boot)


def ablation_verdict(times: Times, n_boot: int = 2000) -> Verdict:
    """Reproduced (redundancy) if induction reaches 90 % in more than half the seeds with the strongest layer-0
    previous-token head ablated throughout (a finite KM median); not reproduced if not, while plain vanilla 2L does;
    inconclusive if plain vanilla 2L has no median or there are no ablated runs. The delay is evidence."""
    rule = ("KM median time to 90 % of vanilla 2L with its strongest layer-0 previous-token head (per seed, from the "
            "plain run) zero-ablated for the whole run: reproduced if finite (more than half the seeds reach 90 %), "
            "not reproduced if not while plain vanilla 2L's is; inconclusive otherwise")
    baseline = "plain vanilla 2L"
    plain, matched = times[VANILLA], times["matched"]
    m_plain, m_matched = km_median(*plain), km_median(*matched)
    delay, lo, hi = bootstrap(lambda t: km_median(*t["matched"]) - km_median(*t[VANILLA]), times, n_boot) \
        if len(matched[0]) and len(plain[0]) else (math.nan,) * 3
    evidence = [f"plain vanilla 2L: KM median {m_plain:g} steps ({int(plain[1].sum())}/{len(plain[0])} reached 90 %)",
                f"strongest previous-token head ablated: KM median {m_matched:g} steps "
                f"({int(matched[1].sum())}/{len(matched[0])} reached 90 %)",
                f"delay {delay:g} steps " + (f"[{lo:g}, {hi:g}]" if math.isfinite(lo) else
                                             "(no interval: a KM median undefined in resamples)")]
    if not len(matched[0]) or not math.isfinite(m_plain):
        return Verdict(INCONCLUSIVE, rule, baseline, evidence,
                       reason="no ablated runs" if not len(matched[0]) else "plain vanilla 2L has no median")
    return Verdict(REPRODUCED if math.isfinite(m_matched) else NOT_REPRODUCED, rule, baseline, evidence)


# --- the family on MQAR: which part of each mixer carries the previous token ---------------------

def lag_roles(cells_: pd.DataFrame, task: str = "mqar") -> tuple[pd.DataFrame, dict[str, Verdict]]:
    """Per one-layer mixer and lags-off arm on `task` (`<mixer arm>+lags_off[<components>]`): time to 90 % with and
    without those components' lag >= 1 coefficients, the log-rank p that the lags make it sooner (Holm over every
    pair), and a verdict per lags-off arm (`lags_verdict`)."""
    arms = set(cells_.loc[cells_["task"] == task, "arm"])
    pairs = sorted((a.split(LAGS_OFF)[0], a) for a in arms if LAGS_OFF in a and a.split(LAGS_OFF)[0] in arms)
    rows = []
    for arm, off_arm in pairs:
        on, off = arm_times(cells_, arm, task=task), arm_times(cells_, off_arm, task=task)
        rows.append({"arm": arm, "lags_off": off_arm.split(LAGS_OFF)[1].strip("[]"), "seeds": len(on[0]),
                     "reached_90": int(on[1].sum()), "km_median_steps_to_90": km_median(*on),
                     "lags_off_seeds": len(off[0]), "lags_off_reached_90": int(off[1].sum()),
                     "lags_off_km_median_steps_to_90": km_median(*off),
                     "logrank_p_lags_sooner": logrank_test(*on, *off, alternative="a_sooner").p})
    table = pd.DataFrame(rows, columns=["arm", "lags_off", "seeds", "reached_90", "km_median_steps_to_90",
                                        "lags_off_seeds", "lags_off_reached_90", "lags_off_km_median_steps_to_90",
                                        "logrank_p_lags_sooner"])
    table["p_holm"] = holm(table["logrank_p_lags_sooner"]) if len(table) else []
    return table, {f"{r.arm}{LAGS_OFF}[{r.lags_off}]": lags_verdict(r.km_median_steps_to_90,
                                                                     r.lags_off_km_median_steps_to_90, r.p_holm)
                   for r in table.itertuples()}


def lags_verdict(on: float, off: float, p_holm: float) -> Verdict:
    """Reproduced if the mixer with its lags reaches 90 % significantly sooner (log-rank, Holm-adjusted p < LAG_ALPHA)
    and without them takes more than LAG_BOUND × as long (or never gets there); not reproduced if without its lags it
    reaches 90 % within LAG_BOUND × the time with them; else inconclusive (no median with lags, or not significant)."""
    rule = (f"KM-median time to 90 % on MQAR with the lag >= 1 coefficients held at 0 for the whole run vs with them: "
            f"reproduced if the lags make it sooner (log-rank, Holm over the lags-off arms, p < {LAG_ALPHA:g}) and "
            f"without them it takes > {LAG_BOUND:g}x as long or never gets there; not reproduced if within "
            f"{LAG_BOUND:g}x; else inconclusive")
    baseline = "the same mixer with its lags"
    evidence = [f"KM median with lags {on:g} steps", f"lags off {off:g} steps",
                f"log-rank, Holm-adjusted {fmt_p(p_holm)}"]
    if not math.isfinite(on):
        return Verdict(INCONCLUSIVE, rule, baseline, evidence, reason="no median with the lags", p=p_holm)
    if math.isfinite(off) and off <= LAG_BOUND * on:
        return Verdict(NOT_REPRODUCED, rule, baseline, evidence, p=p_holm)
    if p_holm < LAG_ALPHA:
        return Verdict(REPRODUCED, rule, baseline, evidence, p=p_holm)
    return Verdict(INCONCLUSIVE, rule, baseline, evidence, reason="not significant", p=p_holm)


# --- developmental stages (Hoogland et al. 2024) --------------------------------------------------

DEV_CLAIM = ("In vanilla 2L the induction bump splits into two developmental stages, previous-token heads first and "
             "then the rest of the circuit (an LLC stage boundary between the two formations); in KV-shift 1L, whose "
             "shift supplies the previous token, it does not (Hoogland et al. 2024).")
DEV_COLUMNS = ["arm", "seed", "run", "loss_pca_turn_step", "llc_stage_boundaries", "previous_token_formation_step",
               "induction_formation_step", "induction_split"]
SPLIT_SHARE = 2 / 3  # "splits" in at least this share of an arm's decided runs; "does not" in at most 1 - this


def development_table(cells_: pd.DataFrame, summaries: Mapping[str, dict]) -> pd.DataFrame:
    """One row per best-lr run of vanilla 2L and KV-shift 1L with developmental keys in `summaries` (run -> its
    summary.json after `analysis.development.analyze_development`)."""
    picks = cells_[(cells_["task"] == INDUCTION) & cells_["arm"].isin([VANILLA, KV]) & (cells_["release"] == 0)]
    rows = [{"arm": c.arm, "seed": int(c.seed), "run": c.run, **{k: summaries[c.run].get(k) for k in DEV_COLUMNS[3:]}}
            for c in picks.itertuples() if c.run in summaries]
    return pd.DataFrame(rows, columns=DEV_COLUMNS).sort_values(["arm", "seed"], ignore_index=True)


def split_verdict(table: pd.DataFrame, min_decided: int = 3) -> Verdict:
    """Reproduced if vanilla 2L's induction bump splits in ≥ 2/3 of its decided runs, KV-shift 1L's in ≤ 1/3, and
    vanilla splits more often (Fisher's exact test, one-sided, p < 0.05); not reproduced if vanilla 2L splits in ≤ 1/3
    of its decided runs or KV-shift 1L in ≥ 2/3 of its own (that arm with ≥ `min_decided` decided runs); else
    inconclusive (too few decided runs in an arm, shares between the bounds, or not significant)."""
    rule = (f"share of runs (induction formed) whose bump splits, an LLC stage boundary between the previous-token and "
            f"the induction formation steps: reproduced if vanilla 2L >= {SPLIT_SHARE:.2f}, KV-shift 1L <= "
            f"{1 - SPLIT_SHARE:.2f} and vanilla more often (Fisher exact, one-sided, p < {ALPHA}); not reproduced if "
            f"vanilla 2L <= {1 - SPLIT_SHARE:.2f} or KV-shift 1L >= {SPLIT_SHARE:.2f}; else inconclusive")
    baseline = "KV-shift 1L (the same measures, the same LLC settings)"
    split, decided, evidence = {}, {}, []  # per arm: runs whose bump splits, runs decided (induction_split not None)
    for arm in (VANILLA, KV):
        runs = table.loc[table["arm"] == arm, "induction_split"]
        split[arm], decided[arm] = int(runs.dropna().astype(bool).sum()), int(runs.notna().sum())
        evidence.append(f"{arm}: split in {split[arm]}/{decided[arm]} decided runs ({len(runs) - decided[arm]} "
                        "undecided: induction never formed, or it first held at the same checkpoint as the "
                        "previous-token head)")
    share = {arm: split[arm] / decided[arm] if decided[arm] else math.nan for arm in (VANILLA, KV)}
    if (decided[VANILLA] >= min_decided and share[VANILLA] <= 1 - SPLIT_SHARE) or \
            (decided[KV] >= min_decided and share[KV] >= SPLIT_SHARE):
        return Verdict(NOT_REPRODUCED, rule, baseline, evidence)
    if min(decided.values()) < min_decided:
        return Verdict(INCONCLUSIVE, rule, baseline, evidence, reason="too few decided runs")
    table2x2 = [[split[arm], decided[arm] - split[arm]] for arm in (VANILLA, KV)]
    p = float(stats.fisher_exact(table2x2, alternative="greater").pvalue)
    evidence.append(f"vanilla 2L splits more often: Fisher exact {fmt_p(p)}")
    if share[VANILLA] >= SPLIT_SHARE and share[KV] <= 1 - SPLIT_SHARE and p < ALPHA:
        return Verdict(REPRODUCED, rule, baseline, evidence, p=p)
    return Verdict(INCONCLUSIVE, rule, baseline, evidence, reason="shares between the bounds or not significant")
