"""Name -> method registry shared by the Hydra runner and the lmms-eval plugin (one validation path for both)."""

from __future__ import annotations

import dataclasses
from typing import Any

from sparsevlm import Dense, FastV, PruningMethod, RandomPrune, SparseVLM

METHODS: dict[str, type[PruningMethod]] = {
    "dense": Dense,
    "sparsevlm": SparseVLM,
    "fastv": FastV,
    "random": RandomPrune,
}


def method_options(name: str) -> tuple[str, ...]:
    """Field names a method accepts (besides `budget`)."""
    return tuple(f.name for f in dataclasses.fields(METHODS[name]) if f.name != "budget")


def make_method(name: str, budget: int | None = None, **options: Any) -> PruningMethod:
    """Build a method by registry name; one-line errors for unknown names, budgets given to dense, unknown options."""
    if name not in METHODS:
        raise ValueError(f"method: got {name!r}, allowed: {', '.join(sorted(METHODS))}")
    if name == "dense":
        if budget is not None:
            raise ValueError(f"budget: dense keeps every visual token, so budget must be null (got {budget!r})")
    elif budget is None:
        raise ValueError(f"budget: method {name!r} needs a token budget (e.g. 64, 128, 192)")
    unknown = sorted(set(options) - set(method_options(name)))
    if unknown:
        allowed = ", ".join(method_options(name)) or "none"
        raise ValueError(f"method.options.{unknown[0]}: not an option of {name!r}; allowed: {allowed}")
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
    try:
        return METHODS[name](**options) if name == "dense" else METHODS[name](budget=budget, **options)
    except ValueError as err:  # name the option as it is written in configs: method.options.<field>
        field, _, rest = str(err).partition(":")
        if field in options:
            raise ValueError(f"method.options.{field}:{rest}") from None
        raise


def describe(method: PruningMethod) -> dict[str, Any]:
    """All resolved fields of a method plus its registry name, for run records."""
    fields = {f.name: getattr(method, f.name) for f in dataclasses.fields(method)}
    return {"name": method.name, **{k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}}
