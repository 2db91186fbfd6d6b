"""Package namespaces filled on first use (PEP 562 module ``__getattr__``).

A package whose ``__init__`` imported every submodule made each command pay for all of them:
``from fhirimg.push import PushOptions`` (a dataclass) imported the push engine and httpx, about
0.15 s of every ``convert`` and ``validate`` start (issue 15). A package built with
:func:`exports` imports a submodule when one of its names is first looked up, then keeps the
name, so later lookups cost nothing; type checkers read the same names from an
``if TYPE_CHECKING:`` import block beside it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def exports(
    namespace: dict[str, Any], where: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for the package whose globals are ``namespace``: each name of
    ``where`` is looked up in the module ``where[name]`` when first asked for.

    >>> ns = {"__name__": "pkg"}
    >>> get, names = exports(ns, {"dumps": "json"})
    >>> get("dumps").__name__, "dumps" in ns, names()
    ('dumps', True, ['__name__', 'dumps'])
    >>> get("loads")
    Traceback (most recent call last):
    AttributeError: module 'pkg' has no attribute 'loads'
    """

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {namespace['__name__']!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value  # once: later lookups find it without this function
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(where))

    return __getattr__, __dir__
