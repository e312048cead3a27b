"""A module imported at its first use, not when the importing module loads.

``cryptography`` is ~10 MB of RSS (docs/performance.md, "Idle RSS") that an
idle daemon does not need: ``trust`` names its modules through
:func:`module`, and they are imported when an attribute is first read (a
key made, a CSR signed, a certificate verified). Import the real module
under ``typing.TYPE_CHECKING`` beside it, so mypy checks every use.

Not ``importlib.util.LazyLoader``: on Python 3.11 two threads that touch
a lazily loaded module at once can see it half-initialised, and the
daemon's executor threads sign and verify. ``importlib.import_module``
takes the import system's per-module lock, so the first use from any
thread gets the whole module.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class _Module:
    __slots__ = ("_name", "_module")

    def __init__(self, name: str) -> None:
        self._name = name
        self._module: ModuleType | None = None

    def __getattr__(self, attribute: str) -> Any:
        module = self._module
        if module is None:
            module = self._module = importlib.import_module(self._name)
        return getattr(module, attribute)

    def __repr__(self) -> str:
        state = "imported" if self._module is not None else "not imported yet"
        return f"<lazy module {self._name!r}, {state}>"


def module(name: str) -> Any:
    """A stand-in for the module ``name`` that imports it on first use."""
    return _Module(name)
