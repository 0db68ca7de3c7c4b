"""The results layer: tidy tables from run directories, plots of those tables, and claims judged by rules.

* `report.tables`   — run directories -> tidy frames (learning curves, shift coefficients);
* `report.plots`    — figures as pure functions of those frames (no backend chosen here);
* `report.stats`    — intervals and tests from scipy.stats (t, Wilson, exact binomial, log-rank);
* `report.verdicts` — the verdict vocabulary and rule primitives every study uses;
* `report.protocol` — the capacity protocol (best of >= 3 learning rates, plateau, censoring, frontier);
* `report.claims`   — the paper's claims, each with its rule next to it;
* `report.phase`    — the depth × width × length phase diagram on top of the protocol;
* `report.markdown` — REPORT.md sections and tables.

Helpers shared with other producers of results live beside it: `kvshift_lens.training.provenance` and
`kvshift_lens.training.sweeps`.
"""
