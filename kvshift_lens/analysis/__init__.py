"""Analysis of trained models: head detectors (`head_detectors`: TL/ARENA induction score, prefix matching,
copying, ...), circuits (`circuits`), induction-head emergence over checkpoints (`emergence`), LM probes
(`lm_heads`), what `experiments.detect` runs on a run directory (`run_detection`), the paper's theorem
constructions (`theory`) and attention plots (`attention_plots`). Imports training, models, data and core.

`load_runs`, `load_summaries`, `load_heads` and `find_runs` lived here before the subpackages; they read
run directories and moved to `kvshift_lens.training.runs` (importable from here with a DeprecationWarning)."""

from kvshift_lens.core.lazy import lazy_namespace

_RUNS = "kvshift_lens.training.runs"
__getattr__, __dir__ = lazy_namespace(__name__, globals(), {}, moved={
    n: _RUNS for n in ("load_runs", "load_summaries", "load_heads", "find_runs", "run_status")})
