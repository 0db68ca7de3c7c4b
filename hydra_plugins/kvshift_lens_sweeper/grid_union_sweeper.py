"""`hydra/sweeper=grids`: one multirun over the union of several cartesian grids.

Hydra's basic sweeper runs one cartesian product per invocation. A study made of sub-grids
(say, every width at seq 32 plus a few widths at other lengths) then needs one invocation per
sub-grid, each paying the launcher's worker start-up and an idle tail. This sweeper takes named
grids, expands each like the basic sweeper (`params` are shared by all grids, a grid's own entry
wins over them and the command line over both; a grid's keys vary slowest, shared params fastest),
drops duplicate jobs, and hands the whole list to the launcher at once (the expansion is
`kvshift_lens.training.sweeps.grid_jobs`, which studies also use to find their own runs):

    hydra:
      sweeper:
        params: {seed: "0,1,2"}
        grids:
          main: {model.n_layers: "1,2", model.d_model: "64,32"}
          deep: {model.n_layers: "3", model.d_model: "32"}
        only: null          # or a list of grid names to run a subset
        description: ...    # what the study runs (reports quote it)
        search: grid        # how a study picks its runs: grid (all) | scan (kvshift_lens.report.search)
        select: null        # or a YAML file listing jobs (override lists): run only those of the grids' jobs
        seed_offset: 0      # every job on seed + K (a study's replication on fresh seeds)

Jobs run in grid order, so put the grids whose results matter most first. `select` is how a study
that decides its next runs from the finished ones (`kvshift_lens.report.search`) launches one round:
the file holds a subset of the expanded jobs (`kvshift_lens.training.sweeps.write_selection`), or such a job at
another budget or learning rate (an adaptive round, `kvshift_lens.report.adaptive`); a listed job that is
neither is an error.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException

from kvshift_lens.training.sweeps import grid_jobs, select_jobs


@dataclass
class GridUnionSweeperConf:
    _target_: str = "hydra_plugins.kvshift_lens_sweeper.grid_union_sweeper.GridUnionSweeper"
    max_batch_size: Optional[int] = None
    params: Optional[Dict[str, str]] = None  # shared by every grid
    grids: Dict[str, Any] = field(default_factory=dict)  # name -> {key: "v1,v2" sweep string}
    only: Optional[List[str]] = None  # run these grids only (default: all)
    description: str = ""  # what the study runs, one paragraph (reports quote it; the sweeper ignores it)
    search: str = "grid"  # how a study picks its runs: grid | scan (kvshift_lens.report.search; the sweeper ignores it)
    select: Optional[str] = None  # YAML file of jobs to run, a subset of the grids' jobs (default: all)
    seed_offset: int = 0  # every job's seed s runs as s + seed_offset (replication on fresh seeds)


ConfigStore.instance().store(group="hydra/sweeper", name="grids", node=GridUnionSweeperConf, provider="kvshift_lens")


class GridUnionSweeper(BasicSweeper):
    """Basic sweeper over the union of named grids (see the module docstring)."""

    def __init__(self, max_batch_size: Optional[int], params: Optional[Dict[str, str]] = None,
                 grids: Optional[Dict[str, Dict[str, str]]] = None, only: Optional[List[str]] = None,
                 description: str = "", search: str = "grid", select: Optional[str] = None,
                 seed_offset: int = 0) -> None:
        super().__init__(max_batch_size, params)
        self.select, self.seed_offset = select, seed_offset
        self.grids = {name: dict(grid or {}) for name, grid in (grids or {}).items()}
        unknown = sorted(set(only or ()) - set(self.grids))
        if unknown:
            raise HydraException(f"hydra.sweeper.only={unknown}: no such grid; grids are {sorted(self.grids)}")
        self.only = list(only) if only else list(self.grids)

    def split_arguments(self, overrides: List[Override], max_batch_size: Optional[int]) -> List[List[List[str]]]:
        """Jobs of every selected grid (shared params and command line already in `overrides`), deduplicated."""
        if not self.grids:
            return BasicSweeper.split_arguments(overrides, max_batch_size)
        n_params = len(self.params)  # `overrides` = shared params, then the command line (BasicSweeper.sweep)
        jobs = grid_jobs(self.grids, overrides[:n_params], overrides[n_params:], self.only, self.seed_offset)
        if self.select:
            try:
                jobs = select_jobs(jobs, Path(self.select))
            except (OSError, ValueError) as e:
                raise HydraException(f"hydra.sweeper.select={self.select}: {e}") from None
        return list(BasicSweeper.split_overrides_to_chunks(jobs, max_batch_size))
