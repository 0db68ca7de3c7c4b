"""Replication on fresh seeds: the verdict table (kvshift_lens/report/replication.py) and the seed-offset folders."""

from pathlib import Path

import pandas as pd
import pytest

from kvshift_lens.report import replication as R
from kvshift_lens.report.verdicts import Verdict
from kvshift_lens.training import sweeps


@pytest.mark.parametrize("committed, fresh, status", [
    ("reproduced", "reproduced", R.REPLICATED),
    ("not reproduced", "not reproduced", R.REPLICATED),
    ("reproduced", "inconclusive", R.FRAGILE),
    ("not reproduced", "reproduced", R.FRAGILE),
    ("inconclusive", "reproduced", R.NOT_DECISIVE),
    ("partly reproduced", "partly reproduced", R.NOT_DECISIVE),
    ("reproduced", "", R.MISSING),
    ("", "reproduced", R.NEW),
])
def test_each_verdict_pair_gets_its_replication_status(committed, fresh, status):
    assert R.classify(committed, fresh) == status


def _rows(study, outcomes):
    return R.verdict_rows(study, [(claim, Verdict(o, "rule", "base"), [("part a", Verdict(o, "r", "b"))])
                                  for claim, o in outcomes.items()])


def test_table_compares_only_the_studies_rerun_and_lists_fragile_verdicts(tmp_path):
    committed = pd.concat([_rows("phase_diagram", {"depth": "reproduced", "width": "inconclusive"}),
                           _rows("lm", {"gap": "reproduced"})])
    fresh = _rows("phase_diagram", {"depth": "not reproduced", "width": "reproduced"})
    R.write_verdicts(tmp_path / "a_verdicts.csv", committed)
    R.write_verdicts(tmp_path / "b" / "phase_diagram_verdicts.csv", fresh)
    table = R.replication_table(R.read_verdicts([tmp_path / "a_verdicts.csv"]),
                                R.read_verdicts([tmp_path / "b" / "phase_diagram_verdicts.csv"]))
    assert set(table["study"]) == {"phase_diagram"} and len(table) == 4
    assert table.set_index(["claim", "part"]).loc[("depth", ""), "status"] == R.FRAGILE
    assert table.set_index(["claim", "part"]).loc[("width", "part a"), "status"] == R.NOT_DECISIVE
    text = R.replication_markdown(table, 10, "cmd")
    assert "0 of 2 decisive verdicts replicated" in text and "Fragile: phase_diagram — depth" in text


def test_the_table_command_names_the_folders_it_read(tmp_path):
    from experiments import replication as cli

    (tmp_path / "results").mkdir()
    R.write_verdicts(tmp_path / "results" / "lm_verdicts.csv", _rows("lm", {"gap": "reproduced"}))
    R.write_verdicts(tmp_path / "fresh" / "lm_verdicts.csv", _rows("lm", {"gap": "reproduced"}))
    cli.main(["seed_offset=7", "--from", str(tmp_path / "fresh"), "--results-dir", str(tmp_path / "results")])
    text = (tmp_path / "results" / "replication.md").read_text()
    assert f"`python -m experiments.replication seed_offset=7 --from {tmp_path / 'fresh'}`" in text
    assert "| lm      | gap     | part a | reproduced  | reproduced    | replicated |" in text


def test_seed_offset_shifts_every_jobs_seed_and_lands_in_its_own_folders(tmp_path):
    spec = sweeps.with_seed_offset(sweeps.experiment_spec("phase_diagram_tiny"), 7)
    seeds = {o for j in sweeps.expand_jobs(spec) for o in j if o.startswith("seed=")}
    assert seeds == {"seed=7"}
    args = sweeps.parse_study_args(sweeps.study_parser("x", {"cpu": 0}, tmp_path), ["seed_offset=7"])
    runs, results = sweeps.study_dirs(args, tmp_path, None)
    assert runs == (tmp_path / "seed_offset_7").resolve() and results == runs / "results"
    committed = Path(sweeps.ROOT / "results")
    assert not str(results).startswith(str(committed.resolve()))
    with pytest.raises(SystemExit, match="committed results"):
        sweeps.study_dirs(args, tmp_path, committed)
    plain = sweeps.parse_study_args(sweeps.study_parser("x", {"cpu": 0}, tmp_path), [])
    assert sweeps.study_dirs(plain, tmp_path, None) == (tmp_path.resolve(), committed.resolve())


def test_the_tiny_profile_never_writes_into_the_committed_results(tmp_path):
    tiny = sweeps.parse_study_args(sweeps.study_parser("x", {"cpu": 0, "tiny": 0}, tmp_path), ["--profile", "tiny"])
    assert sweeps.study_dirs(tiny, tmp_path, None) == (tmp_path.resolve(), (tmp_path / "tiny_results").resolve())
    with pytest.raises(SystemExit, match="--profile tiny"):
        sweeps.study_dirs(tiny, tmp_path, Path(sweeps.ROOT / "results"))


def test_a_seed_offset_study_trains_and_writes_outside_results(tmp_path):
    from experiments import phase_diagram

    before = {p: p.stat().st_mtime for p in (sweeps.ROOT / "results").iterdir()}
    phase_diagram.main(["--profile", "tiny", "--out-dir", str(tmp_path), "seed_offset=3"])
    out = tmp_path / "seed_offset_3"
    runs = list((out / "sweeps" / "phase_diagram_tiny").rglob("summary.json"))
    assert runs and all("/seed3/" in str(r) for r in runs)
    verdicts = pd.read_csv(out / "results" / "phase_diagram_tiny_verdicts.csv")
    assert set(verdicts["study"]) == {"phase_diagram"} and len(verdicts) >= 2
    assert {p: p.stat().st_mtime for p in (sweeps.ROOT / "results").iterdir()} == before
