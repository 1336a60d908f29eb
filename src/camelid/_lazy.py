"""PEP 562 lazy exports for sub-packages: a name's module is imported when the name is first used, so
importing one leaf module (or the package) does not pull in its siblings and their dependencies."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module


def lazy_exports(package: str, homes: dict[str, tuple[str, ...]]) -> tuple[list[str], Callable[[str], object]]:
    """`__all__` and a module `__getattr__` for `package`, whose `homes` maps submodule -> names it exports."""
    module_of = {name: module for module, names in homes.items() for name in names}

    def __getattr__(name: str) -> object:
        if name not in module_of:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(import_module(f"{package}.{module_of[name]}"), name)

    return sorted(module_of), __getattr__
