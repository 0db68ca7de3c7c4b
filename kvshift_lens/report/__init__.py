"""The results layer: tidy tables from run directories, plots of those tables, and claims judged by rules.

* `report.tables`       — run directories -> tidy frames (learning curves, shift coefficients);
* `report.figures`      — figures as pure functions of those frames (no backend chosen here);
  `report.development_figures` — the developmental measures of runs side by side;
* `report.stats`        — intervals and tests from scipy.stats (exact sign-flip, Clopper–Pearson, Wilson,
  exact binomial, log-rank, Kaplan–Meier medians);
* `report.multiplicity` — Holm adjustment within each claim's family of tests (statsmodels);
* `report.verdicts`     — the verdict vocabulary and rule primitives every study uses;
* `report.plateau`      — the noise-aware plateau rule: failed (plateaued) or censored;
* `report.protocol`     — the capacity protocol (best of >= 3 learning rates, status across rates, frontier);
* `report.search`       — the width scan that returns the full grid's frontier;
* `report.adaptive`     — adaptive budgets and learning rates between a study's rounds;
* `report.robustness`   — each verdict recomputed under nudged thresholds (fragile = counts as inconclusive);
* `report.claims`       — the paper's claims, each with its rule next to it (`lm_claims`, `family`, `phase`,
  `interventions`: the other studies' claims);
* `report.replication`  — verdicts on fresh seeds against the committed ones;
* `report.markdown`     — REPORT.md sections and tables, and the end of every study command.
"""
