"""Training: the trainer (`trainer`) and its config (`train_config`), its resume state (`resume`), the run
config composed from `conf/` and checked against one schema (`run_config`), where a run's directory is
(`run_dirs`), the command line's plumbing (`cli`), hydra sweeps (`sweeps`), provenance records (`provenance`) and run directories read back as
frames (`runs`). Imports models, data and core."""
