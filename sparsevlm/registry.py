"""One registry of pruning methods: `@register("name")` on the class; configs, the harness and reports read it.

A new method is one module in sparsevlm/methods/ (listed in sparsevlm/methods/__init__.py) plus, for the harness, a
conf/method/<name>.yaml. Importing this module imports the method modules, which import no torch: building and
validating a method from a config stays fast.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:  # not at import time: method modules import this module while sparsevlm.methods initialises
    from sparsevlm.methods.base import PruningMethod

_METHODS: dict[str, type[PruningMethod]] = {}
Method = TypeVar("Method", bound=type)


def register(name: str) -> Callable[[Method], Method]:
    """Class decorator: file the method under `name` (also its `name` class attribute, used in records and tables)."""

    def add(cls: Method) -> Method:
        if name in _METHODS and _METHODS[name] is not cls:
            raise ValueError(f"method {name!r} is registered twice ({_METHODS[name].__name__}, {cls.__name__})")
        cls.name = name
        _METHODS[name] = cls
        return cls

    return add


def available_methods() -> dict[str, type[PruningMethod]]:
    """Every registered method by name, in registration order (dense, sparsevlm, then the baselines)."""
    import sparsevlm.methods  # noqa: F401  (registers every method module)

    return dict(_METHODS)


def method_options(name: str) -> tuple[str, ...]:
    """Field names a method accepts (besides `budget`)."""
    return tuple(f.name for f in dataclasses.fields(available_methods()[name]) if f.name != "budget")


def make_method(name: str, budget: int | None = None, **options: Any) -> PruningMethod:
    """Build a method by registry name; one-line errors for unknown names, budgets given to dense, unknown options."""
    registry = available_methods()
    if name not in registry:
        raise ValueError(f"method: got {name!r}, allowed: {', '.join(registry)}")
    takes_budget = "budget" in {f.name for f in dataclasses.fields(registry[name])}
    if not takes_budget and budget is not None:
        raise ValueError(f"budget: {name} keeps every visual token, so budget must be null (got {budget!r})")
    if takes_budget and budget is None and options.get("retain_ratio") is None:
        raise ValueError(f"budget: method {name!r} needs a token budget (e.g. 64, 128, 192) or a retain_ratio")
    unknown = sorted(set(options) - set(method_options(name)))
    if unknown:
        allowed = ", ".join(method_options(name)) or "none"
        raise ValueError(f"method.options.{unknown[0]}: not an option of {name!r}; allowed: {allowed}")
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
    try:
        if budget is None:  # dense, or a retain_ratio (which sets each sample's budget)
            return registry[name](**options)
        return registry[name](budget=budget, **options)
    except ValueError as err:  # name the option as it is written in configs: method.options.<field>
        field, _, rest = str(err).partition(":")
        if field in options:
            raise ValueError(f"method.options.{field}:{rest}") from None
        raise


def describe(method: PruningMethod) -> dict[str, Any]:
    """All resolved fields of a method plus its registry name, for run records."""
    fields = {f.name: getattr(method, f.name) for f in dataclasses.fields(method)}
    return {"name": method.name, **{k: _plain(v) for k, v in fields.items()}}


def _plain(value: Any) -> Any:
    """Tuples as lists and nested dataclasses as dicts (JSON-ready)."""
    if dataclasses.is_dataclass(value):
        return {k: _plain(v) for k, v in dataclasses.asdict(value).items()}
    return list(value) if isinstance(value, tuple) else value
