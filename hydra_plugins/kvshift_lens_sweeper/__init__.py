"""Hydra plugins of kvshift_lens (found by Hydra's `hydra_plugins` namespace scan)."""
