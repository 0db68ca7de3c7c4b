"""Suite-wide set-up: under pytest-xdist (`-n auto`, pyproject.toml) each worker gets its share of the cores,
so parallel workers and the training runs they start do not oversubscribe the CPU."""

import os


def pytest_configure(config) -> None:
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not workers:
        return
    threads = max(1, (os.cpu_count() or 1) // int(workers))
    os.environ["OMP_NUM_THREADS"] = str(threads)  # subprocesses (CLI and study tests) inherit it
    import torch

    torch.set_num_threads(threads)
