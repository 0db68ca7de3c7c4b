"""The replication table: the verdicts of studies rerun on fresh seeds against the committed ones.

    python -m experiments.reproduce seed_offset=10         # each study on seeds 10, 11, ... (own folders)
    python -m experiments.phase_diagram seed_offset=10
    python -m experiments.mixers seed_offset=10
    python -m experiments.lm seed_offset=10
    python -m experiments.replication seed_offset=10       # results/replication.md + .csv

Reads `results/*_verdicts.csv` (committed) and every `*_verdicts.csv` under `runs/**/seed_offset_K/results`
(or `--from` folders), compares them (`kvshift_lens/report/replication.py`) and splices the table into
results/REPORT.md between `<!-- replication -->` markers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from kvshift_lens.report import replication
from kvshift_lens.report.markdown import splice_section
from kvshift_lens.training import sweeps

ROOT = Path(__file__).resolve().parents[1]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sweeps.add_seed_offset(parser, help="the offset K the studies were rerun with (their seed_offset_K results)")
    parser.add_argument("--from", dest="sources", nargs="+", type=Path, default=None, metavar="DIR",
                        help="results folders of the rerun studies (default: runs/**/seed_offset_K/results)")
    parser.add_argument("--results-dir", type=Path, default=ROOT / "results", help="the committed verdicts")
    args = sweeps.parse_study_args(parser, argv)
    if not args.seed_offset and not args.sources:
        raise SystemExit("error: give seed_offset=K (the offset the studies were rerun with) or --from DIR ...")
    sources = args.sources or sorted((ROOT / "runs").glob(f"**/seed_offset_{args.seed_offset}/results"))
    fresh = replication.read_verdicts(p for d in sources for p in sorted(Path(d).glob("*_verdicts.csv")))
    if fresh.empty:
        raise SystemExit(f"error: no *_verdicts.csv in {[str(s) for s in sources] or 'runs/**/seed_offset_K/results'}; "
                         "run the studies with seed_offset=K first")
    committed = replication.read_verdicts(sorted(args.results_dir.glob("*_verdicts.csv")))
    command = f"python -m experiments.replication seed_offset={args.seed_offset}" + (
        " --from " + " ".join(str(Path(d).resolve().relative_to(ROOT)) if Path(d).resolve().is_relative_to(ROOT)
                              else str(d) for d in args.sources) if args.sources else "")
    paths = replication.write_replication(args.results_dir, committed, fresh, args.seed_offset, command)
    splice_section(args.results_dir / "REPORT.md", "replication", paths["md"].read_text())
    print("\n".join(f"wrote {p}" for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
