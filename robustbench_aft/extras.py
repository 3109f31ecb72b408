"""Optional dependencies: import one, or fail in one line that names the extra that installs it."""
from __future__ import annotations

import importlib
from types import ModuleType

from .errors import DependencyError


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """``import module``, or a DependencyError: ``<purpose> needs <module>: pip install 'robustbench-aft[extra]'``.

    Only a missing module is translated; an installed package that fails on import is a bug to see in full.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is None or not module.startswith(exc.name.split(".")[0]):
            raise
        raise DependencyError(f"{purpose} needs {module.split('.')[0]}: pip install 'robustbench-aft[{extra}]' "
                              f"(from a checkout: pip install -e '.[{extra}]')") from None


__all__ = ["require"]
