"""The method registry as the harness sees it: the library's one registry (sparsevlm.registry), re-exported."""

from __future__ import annotations

from sparsevlm.registry import available_methods, describe, make_method, method_options

METHODS = available_methods()  # name -> class, in registration order

__all__ = ["METHODS", "describe", "make_method", "method_options"]
