"""Hydra plugins of the SparseVLM harness (found by Hydra's plugin scan of the `hydra_plugins` namespace)."""
